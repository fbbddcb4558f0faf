"""Command-line plumbing shared by the bin/ scripts.

`run(main)` is `absl.app.run(main)` where every failure a user can act on
ends in one stderr line and no traceback: a bad flag or a
`tff_feddst.running.errors.RunError` (a worker that cannot be reached, an output
that cannot be written) or another OSError is `<program>: error: <what>`,
exit code 1; Ctrl-C is `<program>: interrupted[; <what now>]`, exit code 130.
"""

import os
import re
import sys
from typing import Callable, Optional

from absl import flags

from tff_feddst.running import errors

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C.
EXIT_TERMINATED = 143  # 128 + SIGTERM.


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
    sys.exit(f'{_program(argv)}: error: {_flag_error_text(error)}')


def _flag_error_text(error: BaseException) -> str:
  """absl's flag error in one line, without its 'ERROR::' prefix; a
  flagfile that cannot be read is named with the flag."""
  message = re.sub(r'^ERROR::\s*', '', _one_line(error))
  unreadable = re.match(
      r"^Unable to open flagfile: \[Errno \d+\] ([^:]+): '(.*)'$", message)
  if unreadable:
    reason, path = unreadable.groups()
    return (f'--flagfile={path}: cannot be read ({reason.lower()}); give '
            'an existing flag file.')
  return message


def _one_line(error: BaseException) -> str:
  return ' '.join(str(error).split())


def _program(argv: list[str]) -> str:
  return os.path.basename(argv[0]) if argv else 'bin'


def interrupted(program: str, what_now: str = '') -> None:
  """Reports Ctrl-C in one stderr line and exits with code 130.

  Args:
    program: The script name.
    what_now: What the user can do (e.g. resume), or ''.
  """
  message = f'{program}: interrupted'
  if what_now:
    message += f'; {_one_line(what_now)}'
  print(message, file=sys.stderr, flush=True)
  sys.exit(EXIT_INTERRUPTED)


def reporting_errors(main: Callable[[list[str]], None]
                     ) -> Callable[[list[str]], None]:
  """Wraps `main` so that run-time failures end in one stderr line.

  `errors.RunError` and OSError: `<program>: error: <message>`, exit code 1;
  KeyboardInterrupt: `interrupted` (see `interrupted`), exit code 130. Other
  exceptions are bugs and keep their traceback.

  Args:
    main: The script's `main(argv)`.

  Returns:
    The wrapped `main`.
  """
  def wrapped(argv: list[str]) -> None:
    try:
      return main(argv)
    except KeyboardInterrupt as interrupt:
      interrupted(_program(argv), str(interrupt))
    except (errors.RunError, OSError) as error:
      sys.exit(f'{_program(argv)}: error: {_one_line(error)}')
  return wrapped


def _exit_now(code: int) -> None:
  """Exits at once, skipping interpreter teardown.

  A round cut short by a signal leaves TFF's executor threads running in
  C++; tearing the interpreter down under them aborts the process
  ('FATAL: exception not rethrown', SIGABRT) after the message was printed.
  The run's files are closed and synced by then, and the workers this
  process owns were stopped when their context closed (and die with it).
  """
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def _flags_parser(check_flags: Optional[Callable[[], None]],
                  uses_tensorflow: bool) -> Callable[[list[str]], list[str]]:
  """`one_line_flags_parser`, then `check_flags()`, then TensorFlow's import.

  TensorFlow is imported here, while absl is still setting up, because
  Keras builds no functional models when TensorFlow is first imported after
  `absl.app.run` has finished its set-up (inside `main`): `tf.keras.Input`
  then gives a graph placeholder, not a KerasTensor, and every Sequential
  model with an input shape fails ('Output tensors of a Sequential model
  must be the output of a TensorFlow Layer'; Keras 2.14, found with a
  four-line script). Until then the scripts loaded TensorFlow on import, so
  that even a bad flag took its seconds of loading.
  """
  def parse(argv: list[str]) -> list[str]:
    args = one_line_flags_parser(argv)
    if check_flags is not None:
      check_flags()
    if uses_tensorflow:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return args
  return parse


def run(main: Callable[[list[str]], None],
        check_flags: Optional[Callable[[], None]] = None,
        uses_tensorflow: bool = True) -> None:
  """`absl.app.run(main)` with one-line flag and run-time errors.

  Args:
    main: The script's `main(argv)`.
    check_flags: Checks the parsed flags' values without TensorFlow and
      exits with a one-line error on a bad one (so that it is refused in a
      fraction of a second); None: `main` checks them.
    uses_tensorflow: Whether `main` builds Keras models: TensorFlow is then
      imported once the flags are checked (see `_flags_parser`).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    try:
      app.run(reporting_errors(main),
              flags_parser=_flags_parser(check_flags, uses_tensorflow))
    except KeyboardInterrupt:  # While parsing flags, before main.
      interrupted(_program(sys.argv))
  except SystemExit as exit_request:
    if exit_request.code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
      _exit_now(exit_request.code)
    raise
