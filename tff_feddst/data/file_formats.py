"""Readers of the files image data sets come in, and the error they raise.

Each reader checks what it reads and reports every problem as a
`DataFileError` whose message is a single line that starts with the
offending path:

* IDX, the MNIST file format, gzip-compressed or raw (`read_idx`);
* Keras's `mnist.npz` archive (`read_mnist_npz`);
* the pickled batches of CIFAR-10 and CIFAR-100 (`read_cifar_batch`);
* TFF's federated EMNIST SQLite database (`read_emnist_client_ids`,
  `read_emnist_split`).

Where each data set keeps these files, and how its arrays are normalised,
is `datasets`' business. TensorFlow is imported only by the EMNIST readers
that parse with it: the scripts import this module for `DataFileError`, and
a bad flag must be refused before TensorFlow's seconds of loading.
"""

from __future__ import annotations

import gzip
import pickle
import sqlite3
import zipfile
import zlib
from typing import Any, Mapping

import numpy as np

# Federated EMNIST as TFF 0.87 stores it: one SQLite database, which TFF
# downloads from `EMNIST_URL` and decompresses to `EMNIST_FILE` in its cache
# directory (`~/.tff` unless told otherwise).
EMNIST_FILE = 'emnist_all.sqlite'
EMNIST_URL = ('https://storage.googleapis.com/tff-datasets-public/'
              'emnist_all.sqlite.lzma')
# The splits TFF's `emnist.load_data(only_digits=False)` reads: 62 classes
# (digits, then upper-case, then lower-case letters).
EMNIST_TRAIN_SPLIT = 'all_train'
EMNIST_TEST_SPLIT = 'all_test'
EMNIST_NUM_CLASSES = 62

# IDX type codes (third byte of the magic number) and the big-endian numpy
# dtype each one stands for.
IDX_DTYPES = {
    0x08: np.dtype('u1'),
    0x09: np.dtype('i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'
_CIFAR_IMAGE_BYTES = 3 * 32 * 32


class DataFileError(ValueError):
  """A data file is missing, unreadable or does not hold what was expected.

  The message is one line: the path, a colon, and what was expected.
  """


def _one_line(text: Any) -> str:
  """Joins the lines of `str(text)` with single spaces."""
  return ' '.join(str(text).splitlines())


def file_error(path: str, problem: str) -> DataFileError:
  """Builds a `DataFileError` whose one-line message starts with `path`.

  Args:
    path: The file (or the place a file was looked for) at fault.
    problem: What is wrong and what was expected; line breaks in it become
      spaces.

  Returns:
    The error, to be raised by the caller.
  """
  return DataFileError(_one_line(f'{path}: {problem}'))


# ---------------------------------------------------------------------------
# IDX files.
# ---------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
  """Reads a whole file, turning OS errors into `DataFileError`."""
  try:
    with open(path, 'rb') as file:
      return file.read()
  except FileNotFoundError as error:
    raise file_error(path, 'file not found') from error
  except OSError as error:
    raise file_error(path, f'cannot read file: {error.strerror}') from error


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (the MNIST file format), gzip-compressed or raw.

  Compression is detected from the gzip magic bytes (1f 8b), not from the
  file name. The IDX layout is: two zero bytes, a type code byte, a byte with
  the number of dimensions, one big-endian uint32 per dimension, then the
  big-endian data in row-major order.

  Args:
    path: Path of the file.

  Returns:
    A writable array in native byte order with the shape and element type the
    header declares.

  Raises:
    DataFileError: If the file is missing or unreadable, the gzip stream is
      corrupt, the header is malformed (nonzero leading bytes, unknown type
      code, zero dimensions) or the data length is not exactly what the
      header declares.
  """
  raw = _read_bytes(path)
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
      raise file_error(path, f'corrupt gzip data: {error}') from error
  if len(raw) < 4:
    raise file_error(
        path, f'too short for an IDX header: expected at least 4 bytes, '
        f'found {len(raw)}')
  if raw[0] != 0 or raw[1] != 0:
    raise file_error(
        path, f'bad IDX magic number: expected first two bytes 00 00, found '
        f'{raw[0]:02x} {raw[1]:02x}')
  type_code, num_dims = raw[2], raw[3]
  if type_code not in IDX_DTYPES:
    known = ', '.join(f'0x{code:02X}' for code in IDX_DTYPES)
    raise file_error(
        path, f'unknown IDX data type code 0x{type_code:02X}: expected one of '
        f'{known}')
  if num_dims < 1:
    raise file_error(path, 'IDX header declares 0 dimensions, expected >= 1')
  header_length = 4 + 4 * num_dims
  if len(raw) < header_length:
    raise file_error(
        path, f'truncated IDX header: {num_dims} dimensions need '
        f'{header_length} header bytes, found {len(raw)}')
  shape = tuple(
      int(size) for size in np.frombuffer(
          raw, dtype='>u4', count=num_dims, offset=4))
  dtype = IDX_DTYPES[type_code]
  expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  found_bytes = len(raw) - header_length
  if found_bytes < expected_bytes:
    raise file_error(
        path, f'truncated IDX file: header says {expected_bytes} data bytes, '
        f'found {found_bytes}')
  if found_bytes > expected_bytes:
    raise file_error(
        path, f'trailing bytes after IDX data: header says {expected_bytes} '
        f'data bytes, found {found_bytes}')
  data = np.frombuffer(raw, dtype=dtype, offset=header_length)
  return data.reshape(shape).astype(dtype.newbyteorder('='))


# ---------------------------------------------------------------------------
# Keras's mnist.npz.
# ---------------------------------------------------------------------------


def read_mnist_npz(
    path: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray,
                                                             np.ndarray]]:
  """Reads a Keras-style `mnist.npz` (x_train, y_train, x_test, y_test).

  The arrays are returned as stored; `datasets` checks their shapes.

  Args:
    path: The `.npz` file.

  Returns:
    `((x_train, y_train), (x_test, y_test))`.

  Raises:
    DataFileError: If the file is unreadable or lacks one of the arrays.
  """
  expected_keys = ('x_train', 'y_train', 'x_test', 'y_test')
  try:
    with np.load(path, allow_pickle=False) as archive:
      found_keys = set(archive.files)
      arrays = {key: archive[key] for key in expected_keys
                if key in found_keys}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise file_error(
        path, f'not a readable .npz file with arrays '
        f'{", ".join(expected_keys)}: {error}') from error
  missing = [key for key in expected_keys if key not in arrays]
  if missing:
    raise file_error(
        path, f'missing arrays {missing}; expected keys '
        f'{", ".join(expected_keys)}')
  return ((arrays['x_train'], arrays['y_train']), (arrays['x_test'],
                                                   arrays['y_test']))


# ---------------------------------------------------------------------------
# CIFAR batches.
# ---------------------------------------------------------------------------


def read_cifar_batch(
    path: str, label_key: str = 'labels') -> tuple[np.ndarray, np.ndarray]:
  """Reads one pickled CIFAR batch (a dict with b'data' and labels).

  Pickle files can run code when loaded: only read batches you trust (the
  same holds for Keras's loader).

  Args:
    path: The batch file.
    label_key: Key of the labels: 'labels' (CIFAR-10) or 'fine_labels'
      (CIFAR-100).

  Returns:
    uint8 images of shape (N, 32, 32, 3) and int64 labels of shape (N,).

  Raises:
    DataFileError: If the file is missing, not a pickled dict, or its arrays
      have the wrong shape.
  """
  raw = _read_bytes(path)
  try:
    batch = pickle.loads(raw, encoding='bytes')
  except Exception as error:  # Unpickling garbage can raise almost anything.
    raise file_error(path, f'not a pickled CIFAR batch: {error}') from error
  if not isinstance(batch, dict):
    raise file_error(
        path, f'expected a pickled dict with data and labels, found '
        f'{type(batch).__name__}')
  batch = {
      key.decode('utf-8') if isinstance(key, bytes) else key: value
      for key, value in batch.items()
  }
  if 'data' not in batch or label_key not in batch:
    raise file_error(
        path, f"expected keys b'data' and b'{label_key}', found "
        f'{sorted(map(str, batch))}')
  data = np.asarray(batch['data'])
  labels = np.asarray(batch[label_key])
  if data.dtype != np.uint8 or data.ndim != 2 or (data.shape[1] !=
                                                  _CIFAR_IMAGE_BYTES):
    raise file_error(
        path, f'expected uint8 data of shape (N, {_CIFAR_IMAGE_BYTES}), found '
        f'{data.dtype} {data.shape}')
  # Rows are stored channel-major (1024 red, 1024 green, 1024 blue values).
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.reshape(-1).astype(np.int64)


# ---------------------------------------------------------------------------
# TFF's federated EMNIST database.
# ---------------------------------------------------------------------------


_EMNIST_ROWS_PER_CHUNK = 20_000


def read_emnist_split(
    path: str, split: str,
    position_of: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray,
                                             np.ndarray]:
  """Reads every example of one split of TFF's EMNIST database.

  Rows of the `examples` table are read in one pass and their protos parsed
  in chunks, which is much faster than one `SqlDataset` per client.

  Args:
    path: The database file.
    split: Its `split_name`, e.g. 'all_train'.
    position_of: Client id -> position in the sorted client names.

  Returns:
    float32 pixels (N, 28, 28), int64 labels (N,), and the int64 client
    position of each example (N,).

  Raises:
    DataFileError: If the split is empty, a proto does not parse as TFF's
      EMNIST example, or an example's client is not in `position_of`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # How TFF's EMNIST loader parses each stored tf.train.Example
  # (tff.simulation.datasets.emnist._add_proto_parsing).
  emnist_features = {
      'pixels': tf.io.FixedLenFeature(shape=(28, 28), dtype=tf.float32),
      'label': tf.io.FixedLenFeature(shape=(), dtype=tf.int64),
  }
  connection = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
  try:
    (count,) = connection.execute(
        'SELECT COUNT(*) FROM examples WHERE split_name = ?',
        (split,)).fetchone()
    if count == 0:
      raise file_error(
          path, f"no examples with split_name '{split}'; expected TFF's "
          f'{EMNIST_FILE} (decompressed from {EMNIST_URL})')
    pixels = np.empty((count, 28, 28), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    clients = np.empty(count, dtype=np.int64)
    cursor = connection.execute(
        'SELECT client_id, serialized_example_proto FROM examples '
        'WHERE split_name = ?', (split,))
    start = 0
    while rows := cursor.fetchmany(_EMNIST_ROWS_PER_CHUNK):
      stop = start + len(rows)
      try:
        clients[start:stop] = [position_of[client_id] for client_id, _ in rows]
      except KeyError as error:
        raise file_error(
            path, f"split '{split}' has an example of client {error} that "
            'the client_metadata table does not list') from error
      try:
        parsed = tf.io.parse_example(
            tf.constant([bytes(proto) for _, proto in rows]), emnist_features)
      except (tf.errors.InvalidArgumentError, TypeError) as error:
        message = getattr(error, 'message', str(error))
        raise file_error(
            path, f"split '{split}': examples are not tf.train.Examples with "
            f'float pixels (28, 28) and an int64 label: {message}') from error
      pixels[start:stop] = parsed['pixels'].numpy()
      labels[start:stop] = parsed['label'].numpy()
      start = stop
  except sqlite3.Error as error:
    raise file_error(path,
                     f'cannot read the SQLite database: {error}') from error
  finally:
    connection.close()
  if labels.min() < 0 or labels.max() >= EMNIST_NUM_CLASSES:
    raise file_error(
        path, f"split '{split}': labels must lie in [0, {EMNIST_NUM_CLASSES}), "
        f'found values from {labels.min()} to {labels.max()}')
  return pixels, labels, clients


def read_emnist_client_ids(path: str,
                           cache_dir: str) -> tuple[list[str], list[str]]:
  """Opens the database with TFF's loader; returns its train and test ids.

  `tff.simulation.datasets.emnist.load_data` checks the tables and columns
  and lists each split's clients from `client_metadata`.

  Args:
    path: The database file, `cache_dir/EMNIST_FILE` (for error messages).
    cache_dir: The directory TFF's loader reads it from.

  Returns:
    The client ids of the training split and of the test split.

  Raises:
    DataFileError: If TFF cannot open the database.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  try:
    train, test = tff.simulation.datasets.emnist.load_data(
        only_digits=False, cache_dir=cache_dir)
  except Exception as error:  # sqlite3 and TFF's own format errors.
    raise file_error(
        path, f"not TFF's EMNIST database ({type(error).__name__}: {error}); "
        f'expected {EMNIST_FILE} decompressed from {EMNIST_URL}') from error
  return list(train.client_ids), list(test.client_ids)
