"""Tests for bin/cli.py: run-time failures end in one stderr line."""

import contextlib
import errno
import io
import os
import sys

import tensorflow as tf

from tff_feddst.running import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bin'))

import cli  # pylint: disable=g-import-not-at-top,wrong-import-position


class ReportingErrorsTest(tf.test.TestCase):

  def run_main(self, error: BaseException) -> tuple[object, str]:
    """Runs a main that raises `error`; returns the exit code and stderr."""
    def main(unused_argv):
      raise error
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), self.assertRaises(
        SystemExit) as exited:
      cli.reporting_errors(main)(['/x/bin/train.py'])
    code = exited.exception.code
    if isinstance(code, str):  # sys.exit(message): printed, exit code 1.
      stderr.write(code + '\n')
      code = 1
    return code, stderr.getvalue()

  def test_run_errors_are_one_line_with_exit_code_1(self):
    code, stderr = self.run_main(errors.RunError(
        'TFF worker at 127.0.0.1:1 did not answer within 10 s; start it or '
        'fix --workers.'))
    self.assertEqual(code, 1)
    self.assertEqual(stderr, 'train.py: error: TFF worker at 127.0.0.1:1 did '
                     'not answer within 10 s; start it or fix --workers.\n')

  def test_os_errors_are_one_line_with_exit_code_1(self):
    code, stderr = self.run_main(PermissionError(
        errno.EACCES, 'Permission denied', 'runs/x/flags.txt'))
    self.assertEqual(code, 1)
    self.assertEqual(stderr, "train.py: error: [Errno 13] Permission denied: "
                     "'runs/x/flags.txt'\n")

  def test_ctrl_c_is_one_line_with_exit_code_130(self):
    self.assertEqual(self.run_main(KeyboardInterrupt()),
                     (130, 'train.py: interrupted\n'))
    self.assertEqual(
        self.run_main(KeyboardInterrupt('rerun with --resume to continue')),
        (130, 'train.py: interrupted; rerun with --resume to continue\n'))

  def test_other_exceptions_keep_their_traceback(self):
    def main(unused_argv):
      raise ZeroDivisionError('a bug')
    with self.assertRaises(ZeroDivisionError):
      cli.reporting_errors(main)(['train.py'])


if __name__ == '__main__':
  tf.test.main()
