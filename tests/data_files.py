"""Data files and small data for the data tests (not tests themselves).

Writers of files in the formats `tff_feddst.data.file_formats` reads (IDX,
TFF's EMNIST SQLite database), a small EMNIST database with known contents,
and balanced label arrays for the partition tests.
"""

import gzip
import os
import shutil
import sqlite3
import tempfile
from typing import Mapping

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tff_feddst.data import file_formats


def make_temp_dir(test_case: absltest.TestCase) -> str:
  """Creates a temporary directory removed when the test ends."""
  path = tempfile.mkdtemp()
  test_case.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def write_bytes(path: str, payload: bytes) -> str:
  """Writes raw bytes to `path` and returns the path."""
  with open(path, 'wb') as file:
    file.write(payload)
  return path


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes an array as an IDX file, gzip-compressed if `path` ends in .gz.

  The inverse of `file_formats.read_idx`.

  Args:
    path: Destination path; a name ending in `.gz` gets a gzip stream (with a
      zero timestamp, so equal arrays give equal files).
    array: Array of dtype uint8, int8, int16, int32, float32 or float64 with
      at least one dimension.

  Raises:
    ValueError: If the dtype has no IDX type code, the array is 0-d, or has
      more than 255 dimensions or a dimension of 2**32 or more.
  """
  array = np.asarray(array)
  type_code = None
  for code, idx_dtype in file_formats.IDX_DTYPES.items():
    if array.dtype == idx_dtype.newbyteorder('='):
      type_code = code
  if type_code is None:
    raise ValueError(
        f'dtype {array.dtype} has no IDX type code; use uint8, int8, int16, '
        'int32, float32 or float64')
  if not 1 <= array.ndim <= 255:
    raise ValueError(
        f'IDX arrays need 1 to 255 dimensions, got shape {array.shape}')
  if any(size >= 2**32 for size in array.shape):
    raise ValueError(f'IDX dimensions must be < 2**32, got {array.shape}')
  header = bytes([0, 0, type_code, array.ndim])
  header += np.asarray(array.shape, dtype='>u4').tobytes()
  payload = header + np.ascontiguousarray(
      array, dtype=file_formats.IDX_DTYPES[type_code]).tobytes()
  if path.endswith('.gz'):
    with gzip.GzipFile(path, mode='wb', mtime=0) as file:
      file.write(payload)
  else:
    with open(path, 'wb') as file:
      file.write(payload)


def write_emnist_sqlite(
    path: str,
    train: Mapping[str, tuple[np.ndarray, np.ndarray]],
    test: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
  """Writes examples in the layout of TFF's `emnist_all.sqlite`.

  `datasets.load_emnist` and TFF's `emnist.load_data(only_digits=False,
  cache_dir=...)` read the result.

  Args:
    path: Destination file; must not exist.
    train: Client id -> (pixels (n, 28, 28) in [0, 1], labels (n,)) of the
      'all_train' split.
    test: Likewise for the 'all_test' split.

  Raises:
    FileExistsError: If `path` exists.
  """
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists')
  connection = sqlite3.connect(path)
  try:
    connection.execute('CREATE TABLE examples (split_name TEXT, client_id '
                       'TEXT, serialized_example_proto BLOB)')
    connection.execute('CREATE TABLE client_metadata (client_id TEXT, '
                       'split_name TEXT, num_examples INTEGER)')
    for split, clients in ((file_formats.EMNIST_TRAIN_SPLIT, train),
                           (file_formats.EMNIST_TEST_SPLIT, test)):
      for client_id, (pixels, labels) in clients.items():
        for image, label in zip(pixels, labels):
          example = tf.train.Example(features=tf.train.Features(feature={
              'pixels': tf.train.Feature(float_list=tf.train.FloatList(
                  value=np.asarray(image, np.float32).reshape(-1))),
              'label': tf.train.Feature(int64_list=tf.train.Int64List(
                  value=[int(label)])),
          }))
          connection.execute(
              'INSERT INTO examples VALUES (?, ?, ?)',
              (split, client_id, example.SerializeToString()))
        connection.execute('INSERT INTO client_metadata VALUES (?, ?, ?)',
                           (client_id, split, len(labels)))
    connection.commit()
  finally:
    connection.close()


def emnist_pixels(num_examples: int, first_value: float) -> np.ndarray:
  """(n, 28, 28) floats; example i is `first_value + i / 100` everywhere,
  except pixel (3, 4), which is 0.5 (it locates the row-major layout)."""
  pixels = np.broadcast_to(
      (first_value + np.arange(num_examples) / 100).astype(np.float32)[
          :, None, None], (num_examples, 28, 28)).copy()
  pixels[:, 3, 4] = 0.5
  return pixels


def write_small_emnist(directory: str) -> str:
  """Writes TFF's EMNIST layout: 3 writers with train, 4 with test data.

  Writer 'f0002_10' has 3 training examples (labels 0, 61, 35), 'f0000_14'
  has 2 (labels 10, 10) and 'f0001_41' has 1 (label 36). Test examples:
  'f0002_10' 1, 'f0000_14' 2, 'f0001_41' 1, and 'f0003_00' (no training
  data) 1.

  Returns:
    The database path.
  """
  path = os.path.join(directory, file_formats.EMNIST_FILE)
  write_emnist_sqlite(
      path,
      train={'f0002_10': (emnist_pixels(3, 0.1), [0, 61, 35]),
             'f0000_14': (emnist_pixels(2, 0.2), [10, 10]),
             'f0001_41': (emnist_pixels(1, 0.3), [36])},
      test={'f0002_10': (emnist_pixels(1, 0.6), [1]),
            'f0000_14': (emnist_pixels(2, 0.7), [11, 12]),
            'f0001_41': (emnist_pixels(1, 0.8), [37]),
            'f0003_00': (emnist_pixels(1, 0.9), [2])})
  return path


def balanced_labels(examples_per_class: int = 100,
                    num_classes: int = 10) -> np.ndarray:
  """Shuffled labels with `examples_per_class` examples of every class."""
  labels = np.repeat(np.arange(num_classes), examples_per_class)
  return np.random.default_rng(1).permutation(labels)
