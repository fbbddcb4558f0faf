"""Command-line plumbing shared by the bin/ scripts."""

import os
import sys
from typing import Callable

from absl import flags


def one_line_flags_parser(argv: list[str]) -> list[str]:
  """Parses flags like absl, but reports a bad flag in one stderr line.

  absl's default prints the error and a second line about --helpshort; here
  an unknown flag, a malformed value or a missing --flagfile ends with
  `<program>: error: <what>`, exit code 1.

  Args:
    argv: The command line.

  Returns:
    The positional arguments left after the flags.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    program = os.path.basename(argv[0]) if argv else 'bin'
    message = ' '.join(str(error).split())
    sys.exit(f'{program}: error: {message}')


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with the one-line flag error parser."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=one_line_flags_parser)
