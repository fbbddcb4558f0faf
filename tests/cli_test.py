"""Tests for bin/cli.py: run-time failures end in one stderr line."""

import contextlib
import errno
import io
import os
import subprocess
import sys

from absl.testing import flagsaver
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


# A script run through cli.run: --value=bad fails check_flags; otherwise main
# builds a Keras Sequential model with an input shape and prints the type of
# its output, and which modules were loaded when check_flags ran.
_SCRIPT = """
import sys
sys.path[:0] = %r
from absl import flags
import cli
flags.DEFINE_string('value', 'good', '')
loaded_at_check = []

def check_flags():
  loaded_at_check.append('tensorflow' in sys.modules)
  if flags.FLAGS.value == 'bad':
    sys.exit('script.py: error: --value=bad is invalid')

def main(argv):
  import tensorflow as tf
  model = tf.keras.Sequential([tf.keras.layers.InputLayer((4, 4, 1)),
                               tf.keras.layers.Conv2D(2, 3, activation='relu'),
                               tf.keras.layers.Flatten()])
  print(type(model.output).__name__, loaded_at_check)

cli.run(main, check_flags)
"""


class FlagErrorTest(tf.test.TestCase):

  def parse_error(self, *args: str) -> str:
    """The exit message of parsing `args` as bin/train.py does."""
    with flagsaver.flagsaver(), self.assertRaises(SystemExit) as exited:
      cli.one_line_flags_parser(['/x/bin/train.py', *args])
    return exited.exception.code

  def test_an_unreadable_flagfile_is_named_with_the_flag(self):
    missing = os.path.join(self.create_tempdir().full_path, 'missing.cfg')
    self.assertEqual(
        self.parse_error(f'--flagfile={missing}'),
        f'train.py: error: --flagfile={missing}: cannot be read (no such '
        'file or directory); give an existing flag file.')
    folder = self.create_tempdir().full_path
    self.assertEqual(
        self.parse_error(f'--flagfile={folder}'),
        f'train.py: error: --flagfile={folder}: cannot be read (is a '
        'directory); give an existing flag file.')

  def test_other_flag_errors_lose_only_absls_prefix(self):
    self.assertEqual(self.parse_error('--not_a_flag_of_ours=3'),
                     "train.py: error: Unknown command line flag "
                     "'not_a_flag_of_ours'")


class RunTest(tf.test.TestCase):

  def run_script(self, *args: str):
    script = os.path.join(self.create_tempdir().full_path, 'script.py')
    with open(script, 'w') as f:
      f.write(_SCRIPT % [ROOT, os.path.join(ROOT, 'bin')])
    return subprocess.run([sys.executable, script, *args],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))

  def test_flags_are_checked_before_tensorflow_and_keras_still_works(self):
    # TensorFlow imported inside main, after absl's set-up, would make
    # Keras build graph placeholders instead of KerasTensors, and this
    # Sequential model would fail (see cli._flags_parser).
    result = self.run_script()
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout.strip(), 'KerasTensor [False]')
    result = self.run_script('--value=bad')
    self.assertEqual(result.returncode, 1)
    self.assertEqual(result.stderr.strip(),
                     'script.py: error: --value=bad is invalid')

if __name__ == '__main__':
  tf.test.main()
