"""Test fixtures shared by several test files (not tests themselves)."""

import errno
import os
import shutil
import subprocess
import tempfile

import tensorflow as tf

from tff_feddst.data import datasets
from tff_feddst.data import file_formats
from tests import data_files


def disk_full_after(num_bytes: int):
  """An `os.write` that writes `num_bytes` in all, then fails with ENOSPC."""
  real_write = os.write
  left = [num_bytes]

  def write(fd, data):
    if left[0] <= 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    written = real_write(fd, bytes(data)[:left[0]])
    left[0] -= written
    return written
  return write


def write_fashion_mnist_slice(directory: str, num_train: int = 1200,
                              num_test: int = 300) -> None:
  """Copies the first examples of the real Fashion-MNIST IDX files.

  Args:
    directory: Where to write the four `.gz` IDX files.
    num_train: Training examples to keep.
    num_test: Test examples to keep.
  """
  for prefix, count in (('train', num_train), ('t10k', num_test)):
    for kind in ('images-idx3', 'labels-idx1'):
      name = f'{prefix}-{kind}-ubyte.gz'
      array = file_formats.read_idx(
          os.path.join(datasets.DEFAULT_FASHION_MNIST_DIR, name))
      data_files.write_idx(os.path.join(directory, name), array[:count])


class FashionMnistSliceTestCase(tf.test.TestCase):
  """Test case with a small slice of real Fashion-MNIST in `cls.data_dir`.

  Subclasses may set `NUM_TRAIN` / `NUM_TEST` for another slice size.
  """

  NUM_TRAIN = 1200
  NUM_TEST = 300

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='fmnist_slice_')
    write_fashion_mnist_slice(cls.data_dir, cls.NUM_TRAIN, cls.NUM_TEST)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    super().tearDownClass()


def assert_one_line_error(test_case: tf.test.TestCase,
                          result: subprocess.CompletedProcess,
                          *expected_words: str) -> None:
  """Asserts a bin/ script failed with exit code 1 and one stderr line.

  Args:
    test_case: The running test.
    result: The finished subprocess (text mode, stderr captured).
    *expected_words: Strings the error line must contain.
  """
  test_case.assertEqual(result.returncode, 1, result.stderr)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  test_case.assertLen(lines, 1, result.stderr)
  test_case.assertNotIn('Traceback', result.stderr)
  for word in expected_words:
    test_case.assertIn(word, lines[0])


def copy_killed_before_round_4(whole: str, killed: str) -> None:
  """Copies a finished 4-round run as if killed after round 3.

  Its last checkpoint is then round 2's; round 3's metrics row stays, to be
  dropped and recomputed on resume.

  Args:
    whole: The finished run's output directory (checkpoint every 2 rounds).
    killed: Where the copy goes (must not exist).
  """
  shutil.copytree(whole, killed)
  for name in ('summary.json', 'global_model.npz',
               os.path.join('checkpoints', 'ckpt-000004.npz')):
    os.remove(os.path.join(killed, name))
