"""Image data sets and their federated partitions for FedDST.

This module turns the raw files of Fashion-MNIST, MNIST, CIFAR-10,
CIFAR-100 and federated EMNIST into channels-last float32 arrays (`Dataset`),
and shares a data set out among simulated clients (`FederatedData`) the way
the FedDST reference code does:

* `iid`: shuffle, then cut into equal slices.
* `dirichlet`: for every class, split its examples among the clients in
  proportions drawn from Dirichlet(beta); small beta gives each client a few
  dominant classes.
* `pathological` (the reference calls it 'lotteryfl'): every client gets
  exactly `classes_per_client` distinct classes with exactly
  `examples_per_class` examples of each.
* `natural`: for data sets whose examples come with their client (federated
  EMNIST: the writer of each character), every client is one such natural
  client, with its own training and its own test examples.

In the other splits, each client also gets a local test split drawn from
the global test set with the client's own training class proportions (see
`client_test_indices`), so that per-client accuracy measures how well a
model serves that client's distribution.

Every problem with a data file is reported as a `DataFileError` whose message
is a single line that starts with the offending path.
"""

from __future__ import annotations

import collections
import gzip
import os
import pickle
import sqlite3
import zipfile
import zlib
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

# Per-channel mean and standard deviation of the training images after
# scaling pixels to [0, 1], used as `(pixel - mean) / std` the way the
# reference's torchvision `Normalize` transforms do.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
# Computed once over all 60000 x 28 x 28 pixels of the Fashion-MNIST training
# images (train-images-idx3-ubyte.gz): mean 0.2860406, population standard
# deviation 0.3530242.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# The values the reference (datasets.py) uses for CIFAR-10.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# The reference normalises CIFAR-100 with the CIFAR-10 values too.
CIFAR100_MEAN = CIFAR10_MEAN
CIFAR100_STD = CIFAR10_STD

DATASET_NAMES = ('cifar10', 'cifar100', 'emnist', 'fashion_mnist', 'mnist')
DISTRIBUTIONS = ('dirichlet', 'iid', 'natural', 'pathological')
# Data sets whose examples come with their clients (`Dataset.natural_clients`).
NATURAL_DATASET_NAMES = ('emnist',)

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

_FASHION_MNIST_HINT = (
    'install it with `apt-get install dataset-fashion-mnist` (files go to '
    f'{DEFAULT_FASHION_MNIST_DIR}) or pass a directory holding the IDX files '
    'with --data_dir')
_MNIST_IDX_HINT = (
    'put the MNIST IDX files (train-images-idx3-ubyte.gz, '
    'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, '
    't10k-labels-idx1-ubyte.gz) or a Keras mnist.npz there, or leave '
    '--data_dir unset to use the Keras cache')
_CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
_CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
_MNIST_URL = ('https://storage.googleapis.com/tensorflow/tf-keras-datasets/'
              'mnist.npz')

# IDX type codes (third byte of the magic number) and the big-endian numpy
# dtype each one stands for.
_IDX_DTYPES = {
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


def _file_error(path: str, problem: str) -> DataFileError:
  """Builds a `DataFileError` whose one-line message starts with `path`."""
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
    raise _file_error(path, 'file not found') from error
  except OSError as error:
    raise _file_error(path, f'cannot read file: {error.strerror}') from error


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
      raise _file_error(path, f'corrupt gzip data: {error}') from error
  if len(raw) < 4:
    raise _file_error(
        path, f'too short for an IDX header: expected at least 4 bytes, '
        f'found {len(raw)}')
  if raw[0] != 0 or raw[1] != 0:
    raise _file_error(
        path, f'bad IDX magic number: expected first two bytes 00 00, found '
        f'{raw[0]:02x} {raw[1]:02x}')
  type_code, num_dims = raw[2], raw[3]
  if type_code not in _IDX_DTYPES:
    known = ', '.join(f'0x{code:02X}' for code in _IDX_DTYPES)
    raise _file_error(
        path, f'unknown IDX data type code 0x{type_code:02X}: expected one of '
        f'{known}')
  if num_dims < 1:
    raise _file_error(path, 'IDX header declares 0 dimensions, expected >= 1')
  header_length = 4 + 4 * num_dims
  if len(raw) < header_length:
    raise _file_error(
        path, f'truncated IDX header: {num_dims} dimensions need '
        f'{header_length} header bytes, found {len(raw)}')
  shape = tuple(
      int(size) for size in np.frombuffer(
          raw, dtype='>u4', count=num_dims, offset=4))
  dtype = _IDX_DTYPES[type_code]
  expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  found_bytes = len(raw) - header_length
  if found_bytes < expected_bytes:
    raise _file_error(
        path, f'truncated IDX file: header says {expected_bytes} data bytes, '
        f'found {found_bytes}')
  if found_bytes > expected_bytes:
    raise _file_error(
        path, f'trailing bytes after IDX data: header says {expected_bytes} '
        f'data bytes, found {found_bytes}')
  data = np.frombuffer(raw, dtype=dtype, offset=header_length)
  return data.reshape(shape).astype(dtype.newbyteorder('='))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes an array as an IDX file, gzip-compressed if `path` ends in .gz.

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
  for code, idx_dtype in _IDX_DTYPES.items():
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
      array, dtype=_IDX_DTYPES[type_code]).tobytes()
  if path.endswith('.gz'):
    with gzip.GzipFile(path, mode='wb', mtime=0) as file:
      file.write(payload)
  else:
    with open(path, 'wb') as file:
      file.write(payload)


# ---------------------------------------------------------------------------
# Data sets.
# ---------------------------------------------------------------------------


class NaturalClients(NamedTuple):
  """The client each example of a data set comes from (e.g. its writer).

  Attributes:
    names: The natural clients' names (TFF's client ids), sorted.
    train_clients: int64 array, shape (N_train,): the position in `names` of
      each training example's client.
    test_clients: int64 array, shape (N_test,): likewise for test examples.
  """
  names: tuple[str, ...]
  train_clients: np.ndarray
  test_clients: np.ndarray


class Dataset(NamedTuple):
  """A centralised image classification data set, ready for training.

  Attributes:
    name: One of `DATASET_NAMES`.
    x_train: float32 images, shape (N, H, W, C), normalised per channel
      (EMNIST: TFF's pixel values, see `load_emnist`).
    y_train: int32 labels in [0, num_classes), shape (N,).
    x_test: float32 test images, normalised like `x_train`.
    y_test: int32 test labels.
    num_classes: Number of classes.
    natural_clients: Which client each example belongs to, for data sets
      that come federated (EMNIST); None for the others.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  natural_clients: Optional[NaturalClients] = None


def normalize_images(images: np.ndarray, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
  """Scales uint8 pixels to [0, 1], then applies `(x - mean) / std`.

  This is what torchvision's `ToTensor()` followed by `Normalize(mean, std)`
  computes, here for channels-last arrays.

  Args:
    images: uint8 array of shape (N, H, W, C).
    mean: One mean per channel (C values).
    std: One standard deviation per channel (C values).

  Returns:
    A new float32 array of the same shape.

  Raises:
    ValueError: If `images` is not 4-D uint8 or `mean`/`std` do not have one
      value per channel.
  """
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(
        f'expected uint8 images of shape (N, H, W, C), got {images.dtype} '
        f'{images.shape}')
  num_channels = images.shape[-1]
  if len(mean) != num_channels or len(std) != num_channels:
    raise ValueError(
        f'need {num_channels} mean and std values, got {len(mean)} and '
        f'{len(std)}')
  normalized = images.astype(np.float32)
  normalized /= np.float32(255.0)
  normalized -= np.asarray(mean, dtype=np.float32)
  normalized /= np.asarray(std, dtype=np.float32)
  return normalized


def _check_split(images_source: str, labels_source: str, images: np.ndarray,
                 labels: np.ndarray, num_classes: int,
                 image_shape: tuple[int, ...]) -> None:
  """Checks the image and label arrays of one split.

  Args:
    images_source: Where the images came from, for error messages.
    labels_source: Where the labels came from, for error messages.
    images: Image array.
    labels: Label array.
    num_classes: Labels must lie in [0, num_classes).
    image_shape: Expected shape of one image.

  Raises:
    DataFileError: If the arrays have the wrong dtype or shape, the counts
      disagree, there are no examples, or a label is out of range.
  """
  expected_shape = ', '.join(map(str, ('N',) + tuple(image_shape)))
  if images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape):
    raise _file_error(
        images_source, f'expected uint8 images of shape ({expected_shape}), '
        f'found {images.dtype} {images.shape}')
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise _file_error(
        labels_source, f'expected a 1-D integer label array, found '
        f'{labels.dtype} {labels.shape}')
  if len(labels) != len(images):
    raise _file_error(
        labels_source, f'{len(labels)} labels but {images_source} holds '
        f'{len(images)} images; the counts must agree')
  if len(labels) == 0:
    raise _file_error(labels_source,
                      'expected at least one example, found none')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise _file_error(
        labels_source, f'labels must lie in [0, {num_classes}), found values '
        f'from {labels.min()} to {labels.max()}')


def _find_idx_file(data_dir: str, stem: str, hint: str) -> str:
  """Returns `data_dir/stem.gz` or `data_dir/stem`, whichever exists.

  Raises:
    DataFileError: If neither exists; the message carries `hint`.
  """
  base = os.path.join(data_dir, stem)
  for candidate in (base + '.gz', base):
    if os.path.isfile(candidate):
      return candidate
  raise _file_error(f'{base}[.gz]', f'file not found; {hint}')


def _load_idx_split(data_dir: str, prefix: str, hint: str,
                    num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte`.

  Returns:
    uint8 images of shape (N, 28, 28) and integer labels of shape (N,).

  Raises:
    DataFileError: If a file is missing or malformed (images must be uint8
      28 x 28), the files disagree, or a label is out of range.
  """
  images_path = _find_idx_file(data_dir, f'{prefix}-images-idx3-ubyte', hint)
  labels_path = _find_idx_file(data_dir, f'{prefix}-labels-idx1-ubyte', hint)
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  _check_split(images_path, labels_path, images, labels, num_classes,
               (28, 28))
  return images, labels


def _mnist_like_dataset(name: str, train: tuple[np.ndarray, np.ndarray],
                        test: tuple[np.ndarray, np.ndarray],
                        mean: Sequence[float],
                        std: Sequence[float]) -> Dataset:
  """Adds the channel axis, normalises and packs grey-scale splits."""
  (x_train, y_train), (x_test, y_test) = train, test
  return Dataset(
      name=name,
      x_train=normalize_images(x_train[..., np.newaxis], mean, std),
      y_train=y_train.astype(np.int32),
      x_test=normalize_images(x_test[..., np.newaxis], mean, std),
      y_test=y_test.astype(np.int32),
      num_classes=10)


def load_fashion_mnist(data_dir: Optional[str] = None) -> Dataset:
  """Loads Fashion-MNIST from its four IDX files.

  Args:
    data_dir: Directory holding `train-images-idx3-ubyte`,
      `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
      `t10k-labels-idx1-ubyte`, each with or without `.gz`. Defaults to
      `DEFAULT_FASHION_MNIST_DIR`, where the Debian package
      dataset-fashion-mnist installs them.

  Returns:
    The data set, images (N, 28, 28, 1) normalised with `FASHION_MNIST_MEAN`
    and `FASHION_MNIST_STD`.

  Raises:
    DataFileError: If a file is missing (the message says how to get it) or
      malformed, image and label counts disagree, or a label is not < 10.
  """
  data_dir = DEFAULT_FASHION_MNIST_DIR if data_dir is None else data_dir
  train = _load_idx_split(data_dir, 'train', _FASHION_MNIST_HINT, 10)
  test = _load_idx_split(data_dir, 't10k', _FASHION_MNIST_HINT, 10)
  return _mnist_like_dataset('fashion_mnist', train, test, FASHION_MNIST_MEAN,
                             FASHION_MNIST_STD)


def keras_datasets_dir() -> str:
  """Returns the directory where Keras's data set loaders cache their files.

  Keras 2.14's `get_file` uses `~/.keras/datasets`, or `/tmp/.keras/datasets`
  when `~/.keras` is not writable (the `KERAS_HOME` variable does not move
  this cache).

  Returns:
    The directory path (it may not exist).
  """
  base = os.path.join(os.path.expanduser('~'), '.keras')
  if not os.access(base, os.W_OK):
    base = os.path.join('/tmp', '.keras')
  return os.path.join(base, 'datasets')


def _read_mnist_npz(
    path: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray,
                                                             np.ndarray]]:
  """Reads a Keras-style `mnist.npz` (x_train, y_train, x_test, y_test).

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
    raise _file_error(
        path, f'not a readable .npz file with arrays '
        f'{", ".join(expected_keys)}: {error}') from error
  missing = [key for key in expected_keys if key not in arrays]
  if missing:
    raise _file_error(
        path, f'missing arrays {missing}; expected keys '
        f'{", ".join(expected_keys)}')
  return ((arrays['x_train'], arrays['y_train']), (arrays['x_test'],
                                                   arrays['y_test']))


def load_mnist(data_dir: Optional[str] = None) -> Dataset:
  """Loads MNIST from IDX files, a local `mnist.npz` or the Keras cache.

  With `data_dir`, the four IDX files are read from it exactly as in
  `load_fashion_mnist`; if that directory has no `train-images-idx3-ubyte`
  but has an `mnist.npz`, that file is read instead. Without `data_dir`,
  `mnist.npz` is read from the Keras cache (`keras_datasets_dir()`) when it is
  there; it is read directly because Keras's own loader re-downloads (and,
  offline, deletes) any cached file whose SHA-256 differs from the official
  one. When the cache has no `mnist.npz`, `tf.keras.datasets.mnist.load_data()`
  downloads it.

  Args:
    data_dir: Optional directory with the MNIST IDX files or `mnist.npz`.

  Returns:
    The data set, images (N, 28, 28, 1) normalised with `MNIST_MEAN` and
    `MNIST_STD`.

  Raises:
    DataFileError: If the files are missing (and the download fails) or
      malformed; the message says where to put the data.
  """
  if data_dir is not None:
    has_idx = any(
        os.path.isfile(os.path.join(data_dir, 'train-images-idx3-ubyte' + ext))
        for ext in ('.gz', ''))
    npz_path = os.path.join(data_dir, 'mnist.npz')
    if not has_idx and os.path.isfile(npz_path):
      train, test = _read_mnist_npz(npz_path)
      source = npz_path
    else:
      train = _load_idx_split(data_dir, 'train', _MNIST_IDX_HINT, 10)
      test = _load_idx_split(data_dir, 't10k', _MNIST_IDX_HINT, 10)
      source = data_dir
  else:
    source = os.path.join(keras_datasets_dir(), 'mnist.npz')
    if os.path.isfile(source):
      train, test = _read_mnist_npz(source)
    else:
      try:
        train, test = tf.keras.datasets.mnist.load_data()
      except Exception as error:  # Keras raises bare Exception on URL errors.
        raise _file_error(
            source, f'MNIST not found and downloading it failed ({error}); '
            f'copy mnist.npz (from {_MNIST_URL}) to this path, or pass '
            '--data_dir with the MNIST IDX files') from error
  for (images, labels), split in ((train, 'train'), (test, 'test')):
    _check_split(f'{source} (x_{split})', f'{source} (y_{split})', images,
                 labels, 10, (28, 28))
  return _mnist_like_dataset('mnist', train, test, MNIST_MEAN, MNIST_STD)


def _read_cifar_batch(
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
    raise _file_error(path, f'not a pickled CIFAR batch: {error}') from error
  if not isinstance(batch, dict):
    raise _file_error(
        path, f'expected a pickled dict with data and labels, found '
        f'{type(batch).__name__}')
  batch = {
      key.decode('utf-8') if isinstance(key, bytes) else key: value
      for key, value in batch.items()
  }
  if 'data' not in batch or label_key not in batch:
    raise _file_error(
        path, f"expected keys b'data' and b'{label_key}', found "
        f'{sorted(map(str, batch))}')
  data = np.asarray(batch['data'])
  labels = np.asarray(batch[label_key])
  if data.dtype != np.uint8 or data.ndim != 2 or (data.shape[1] !=
                                                  _CIFAR_IMAGE_BYTES):
    raise _file_error(
        path, f'expected uint8 data of shape (N, {_CIFAR_IMAGE_BYTES}), found '
        f'{data.dtype} {data.shape}')
  # Rows are stored channel-major (1024 red, 1024 green, 1024 blue values).
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.reshape(-1).astype(np.int64)


def _read_cifar10_folder(folder: str) -> tuple[tuple[np.ndarray, np.ndarray],
                                                 tuple[np.ndarray, np.ndarray]]:
  """Reads `data_batch_1`..`data_batch_5` and `test_batch` from `folder`."""
  train_parts = [
      _read_cifar_batch(os.path.join(folder, f'data_batch_{number}'))
      for number in range(1, 6)
  ]
  train = (np.concatenate([images for images, _ in train_parts]),
           np.concatenate([labels for _, labels in train_parts]))
  test = _read_cifar_batch(os.path.join(folder, 'test_batch'))
  return train, test


def load_cifar10(data_dir: Optional[str] = None) -> Dataset:
  """Loads CIFAR-10 from its python-pickle batches or via Keras.

  With `data_dir`, the batches are read from it, or from its subfolder
  `cifar-10-batches-py` if it has no `data_batch_1`. Without `data_dir`, the
  extracted `cifar-10-batches-py` folder in the Keras cache
  (`keras_datasets_dir()`) is read when present (directly, because Keras
  2.14's loader insists on a `cifar-10-batches-py.tar.gz` with the official
  SHA-256 next to it and downloads otherwise); when absent,
  `tf.keras.datasets.cifar10.load_data()` downloads and extracts it.

  Args:
    data_dir: Optional folder with the batches (or its parent).

  Returns:
    The data set, images (N, 32, 32, 3) normalised with `CIFAR10_MEAN` and
    `CIFAR10_STD`.

  Raises:
    DataFileError: If a batch is missing (and the download fails) or
      malformed; the message says where to put the data.
  """
  if data_dir is not None:
    folder = data_dir
    if not os.path.isfile(os.path.join(folder, 'data_batch_1')):
      nested = os.path.join(data_dir, 'cifar-10-batches-py')
      if os.path.isdir(nested):
        folder = nested
    if not os.path.isfile(os.path.join(folder, 'data_batch_1')):
      raise _file_error(
          os.path.join(folder, 'data_batch_1'),
          f'file not found; extract {_CIFAR10_URL} so that this folder holds '
          'data_batch_1..5 and test_batch, or leave --data_dir unset to use '
          'the Keras cache')
    train, test = _read_cifar10_folder(folder)
  else:
    folder = os.path.join(keras_datasets_dir(), 'cifar-10-batches-py')
    if os.path.isdir(folder):
      train, test = _read_cifar10_folder(folder)
    else:
      try:
        (x_train, y_train), (x_test, y_test) = (
            tf.keras.datasets.cifar10.load_data())
      except Exception as error:  # Keras raises bare Exception on URL errors.
        raise _file_error(
            folder, f'CIFAR-10 not found and downloading it failed ({error}); '
            f'extract {_CIFAR10_URL} so that this folder holds '
            'data_batch_1..5 and test_batch, or pass --data_dir') from error
      train = (x_train, y_train.reshape(-1))
      test = (x_test, y_test.reshape(-1))
  for (images, labels), split in ((train, 'train'), (test, 'test')):
    _check_split(f'{folder} ({split} images)', f'{folder} ({split} labels)',
                 images, labels, 10, (32, 32, 3))
  (x_train, y_train), (x_test, y_test) = train, test
  return Dataset(
      name='cifar10',
      x_train=normalize_images(x_train, CIFAR10_MEAN, CIFAR10_STD),
      y_train=y_train.astype(np.int32),
      x_test=normalize_images(x_test, CIFAR10_MEAN, CIFAR10_STD),
      y_test=y_test.astype(np.int32),
      num_classes=10)


def load_cifar100(data_dir: Optional[str] = None) -> Dataset:
  """Loads CIFAR-100 (the 100 fine classes) from its python-pickle files.

  The data set is the extracted `cifar-100-python` folder of
  `cifar-100-python.tar.gz`, as Keras caches it: the pickles `train` (50000
  images) and `test` (10000), each a dict with `b'data'` (uint8, (N, 3072),
  channel-major like CIFAR-10) and `b'fine_labels'` (N integers in 0..99).
  With `data_dir`, the folder itself or the directory that contains it is
  read. Without `data_dir`, the folder in the Keras cache
  (`keras_datasets_dir()`) is read when present (directly, for the reason
  given in `load_cifar10`); when absent,
  `tf.keras.datasets.cifar100.load_data()` downloads and extracts it.

  Args:
    data_dir: Optional `cifar-100-python` folder (or its parent).

  Returns:
    The data set, images (N, 32, 32, 3) normalised with `CIFAR100_MEAN` and
    `CIFAR100_STD`, 100 classes.

  Raises:
    DataFileError: If a file is missing (and the download fails) or
      malformed; the message says where to put the data.
  """
  hint = (f'extract {_CIFAR100_URL} so that this folder holds train and '
          'test')
  if data_dir is not None:
    folder = data_dir
    if not os.path.isfile(os.path.join(folder, 'train')):
      nested = os.path.join(data_dir, 'cifar-100-python')
      if os.path.isdir(nested):
        folder = nested
    if not os.path.isfile(os.path.join(folder, 'train')):
      raise _file_error(
          os.path.join(folder, 'train'),
          f'file not found; {hint}, or leave --data_dir unset to use the '
          'Keras cache')
    train = _read_cifar_batch(os.path.join(folder, 'train'), 'fine_labels')
    test = _read_cifar_batch(os.path.join(folder, 'test'), 'fine_labels')
  else:
    folder = os.path.join(keras_datasets_dir(), 'cifar-100-python')
    if os.path.isdir(folder):
      train = _read_cifar_batch(os.path.join(folder, 'train'), 'fine_labels')
      test = _read_cifar_batch(os.path.join(folder, 'test'), 'fine_labels')
    else:
      try:
        (x_train, y_train), (x_test, y_test) = (
            tf.keras.datasets.cifar100.load_data(label_mode='fine'))
      except Exception as error:  # Keras raises bare Exception on URL errors.
        raise _file_error(
            folder, f'CIFAR-100 not found and downloading it failed '
            f'({error}); {hint}, or pass --data_dir') from error
      train = (x_train, y_train.reshape(-1))
      test = (x_test, y_test.reshape(-1))
  for (images, labels), split in ((train, 'train'), (test, 'test')):
    _check_split(f'{folder} ({split} images)', f'{folder} ({split} labels)',
                 images, labels, 100, (32, 32, 3))
  (x_train, y_train), (x_test, y_test) = train, test
  return Dataset(
      name='cifar100',
      x_train=normalize_images(x_train, CIFAR100_MEAN, CIFAR100_STD),
      y_train=y_train.astype(np.int32),
      x_test=normalize_images(x_test, CIFAR100_MEAN, CIFAR100_STD),
      y_test=y_test.astype(np.int32),
      num_classes=100)


def tff_cache_dir() -> str:
  """Returns TFF's default data set cache directory, `~/.tff`.

  `tff.simulation.datasets` loaders download into it when given no
  `cache_dir`.

  Returns:
    The directory path (it may not exist).
  """
  return os.path.join(os.path.expanduser('~'), '.tff')


# How TFF's EMNIST loader parses each stored tf.train.Example
# (tff.simulation.datasets.emnist._add_proto_parsing).
_EMNIST_FEATURES = {
    'pixels': tf.io.FixedLenFeature(shape=(28, 28), dtype=tf.float32),
    'label': tf.io.FixedLenFeature(shape=(), dtype=tf.int64),
}
_EMNIST_ROWS_PER_CHUNK = 20_000


def _read_emnist_split(
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
  connection = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
  try:
    (count,) = connection.execute(
        'SELECT COUNT(*) FROM examples WHERE split_name = ?',
        (split,)).fetchone()
    if count == 0:
      raise _file_error(
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
        raise _file_error(
            path, f"split '{split}' has an example of client {error} that "
            'the client_metadata table does not list') from error
      try:
        parsed = tf.io.parse_example(
            tf.constant([bytes(proto) for _, proto in rows]), _EMNIST_FEATURES)
      except (tf.errors.InvalidArgumentError, TypeError) as error:
        message = getattr(error, 'message', str(error))
        raise _file_error(
            path, f"split '{split}': examples are not tf.train.Examples with "
            f'float pixels (28, 28) and an int64 label: {message}') from error
      pixels[start:stop] = parsed['pixels'].numpy()
      labels[start:stop] = parsed['label'].numpy()
      start = stop
  except sqlite3.Error as error:
    raise _file_error(path,
                      f'cannot read the SQLite database: {error}') from error
  finally:
    connection.close()
  if labels.min() < 0 or labels.max() >= EMNIST_NUM_CLASSES:
    raise _file_error(
        path, f"split '{split}': labels must lie in [0, {EMNIST_NUM_CLASSES}), "
        f'found values from {labels.min()} to {labels.max()}')
  return pixels, labels, clients


def _emnist_client_ids(path: str,
                       cache_dir: str) -> tuple[list[str], list[str]]:
  """Opens the database with TFF's loader; returns its train and test ids.

  `tff.simulation.datasets.emnist.load_data` checks the tables and columns
  and lists each split's clients from `client_metadata`.

  Raises:
    DataFileError: If TFF cannot open the database.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  try:
    train, test = tff.simulation.datasets.emnist.load_data(
        only_digits=False, cache_dir=cache_dir)
  except Exception as error:  # sqlite3 and TFF's own format errors.
    raise _file_error(
        path, f"not TFF's EMNIST database ({type(error).__name__}: {error}); "
        f'expected {EMNIST_FILE} decompressed from {EMNIST_URL}') from error
  return list(train.client_ids), list(test.client_ids)


def _download_emnist(cache_dir: str, path: str) -> None:
  """Lets TFF download and decompress the database into `cache_dir`.

  Raises:
    DataFileError: If the download fails (a partial file is removed).
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  try:
    tff.simulation.datasets.emnist.load_data(only_digits=False,
                                             cache_dir=cache_dir)
  except Exception as error:  # urllib, lzma and OS errors.
    if os.path.exists(path):
      os.remove(path)  # TFF writes the decompressed file as it downloads.
    raise _file_error(
        path, f'federated EMNIST not found and downloading it failed '
        f'({error}); decompress {EMNIST_URL} (xz -d) to this path, or pass '
        f'--data_dir with a directory holding {EMNIST_FILE}') from error


def load_emnist(data_dir: Optional[str] = None) -> Dataset:
  """Loads federated EMNIST (62 classes) with every example's writer.

  This is TFF's `tff.simulation.datasets.emnist.load_data(only_digits=False,
  cache_dir=...)` data, LEAF's FEMNIST grouped by writer: 3400 writers,
  671,585 training and 77,483 test examples, every writer having at least
  one of each. TFF 0.87 stores it as one SQLite file, `EMNIST_FILE`, in its
  cache directory: a table `examples(split_name, client_id,
  serialized_example_proto)` of `tf.train.Example`s with `pixels` (28 x 28
  floats) and `label` (int64), and a table `client_metadata(client_id,
  split_name, num_examples)`. TFF's loader opens and checks the file and
  lists the writers; the examples are then read in one pass per split.

  Pixels are kept as TFF provides them, in [0, 1] with 1.0 the background
  (the reference code also feeds LEAF's values unnormalised).

  Args:
    data_dir: Directory holding `EMNIST_FILE`. Defaults to TFF's cache
      (`tff_cache_dir()`); only then, if the file is absent, TFF downloads it.

  Returns:
    The data set, images (N, 28, 28, 1), with `natural_clients` set: client
    names are TFF's writer ids, sorted.

  Raises:
    DataFileError: If the file is missing (and, without `data_dir`, the
      download fails) or is not TFF's EMNIST database.
  """
  cache_dir = tff_cache_dir() if data_dir is None else data_dir
  path = os.path.join(cache_dir, EMNIST_FILE)
  if not os.path.isfile(path):
    if data_dir is not None:
      raise _file_error(
          path, f'file not found; decompress {EMNIST_URL} (xz -d) into '
          f'{data_dir}, or leave --data_dir unset to use TFF\'s cache '
          f'{tff_cache_dir()}')
    _download_emnist(cache_dir, path)
  with open(path, 'rb') as file:
    header = file.read(16)
  if header != b'SQLite format 3\x00':
    raise _file_error(
        path, f'not an SQLite database (it starts with {header[:8]!r}); '
        f'expected {EMNIST_FILE} decompressed from {EMNIST_URL}')
  train_ids, test_ids = _emnist_client_ids(path, cache_dir)
  names = tuple(sorted(set(train_ids) | set(test_ids)))
  position_of = {name: position for position, name in enumerate(names)}
  x_train, y_train, train_clients = _read_emnist_split(
      path, EMNIST_TRAIN_SPLIT, position_of)
  x_test, y_test, test_clients = _read_emnist_split(
      path, EMNIST_TEST_SPLIT, position_of)
  return Dataset(
      name='emnist',
      x_train=x_train[..., np.newaxis],
      y_train=y_train.astype(np.int32),
      x_test=x_test[..., np.newaxis],
      y_test=y_test.astype(np.int32),
      num_classes=EMNIST_NUM_CLASSES,
      natural_clients=NaturalClients(names, train_clients, test_clients))


def write_emnist_sqlite(
    path: str,
    train: Mapping[str, tuple[np.ndarray, np.ndarray]],
    test: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
  """Writes examples in the layout of TFF's `emnist_all.sqlite`.

  Handy for small test fixtures; `load_emnist` and TFF's
  `emnist.load_data(only_digits=False, cache_dir=...)` read the result.

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
    for split, clients in ((EMNIST_TRAIN_SPLIT, train),
                           (EMNIST_TEST_SPLIT, test)):
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


_LOADERS: dict[str, Callable[[Optional[str]], Dataset]] = {
    'cifar10': load_cifar10,
    'cifar100': load_cifar100,
    'emnist': load_emnist,
    'fashion_mnist': load_fashion_mnist,
    'mnist': load_mnist,
}


def load_dataset(name: str, data_dir: Optional[str] = None) -> Dataset:
  """Loads a data set by name.

  Args:
    name: One of `DATASET_NAMES`: 'cifar10', 'cifar100', 'emnist',
      'fashion_mnist', 'mnist'.
    data_dir: Optional directory with the data set's files; see the loaders.

  Returns:
    The loaded data set.

  Raises:
    ValueError: If `name` is unknown.
    DataFileError: If the files are missing or malformed.
  """
  if name not in _LOADERS:
    raise ValueError(
        f'unknown dataset {name!r}; expected one of {", ".join(DATASET_NAMES)}')
  return _LOADERS[name](data_dir)


# ---------------------------------------------------------------------------
# Partitioning.
# ---------------------------------------------------------------------------


def _as_labels(labels: np.ndarray) -> np.ndarray:
  """Validates class labels and returns them as an int64 array.

  Raises:
    ValueError: If `labels` is not 1-D, not integer, or has negative values.
  """
  array = np.asarray(labels)
  if array.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {array.shape}')
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {array.dtype}')
  if array.size and array.min() < 0:
    raise ValueError(f'labels must be >= 0, found {array.min()}')
  return array.astype(np.int64)


def _check_num_clients(num_clients: int) -> None:
  """Raises ValueError unless `num_clients` is a positive integer."""
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}')


def _indices_by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
  """Maps every class present in `labels` to its example indices, ascending."""
  return {
      int(label): np.flatnonzero(labels == label)
      for label in np.unique(labels)
  }


def partition_iid(labels: np.ndarray,
                  num_clients: int,
                  rng: np.random.Generator,
                  examples_per_client: Optional[int] = None
                 ) -> list[np.ndarray]:
  """Shuffles the examples and cuts them into equal client slices.

  Args:
    labels: 1-D integer labels of the training set (only its length matters).
    num_clients: Number of clients.
    rng: Source of randomness.
    examples_per_client: Examples per client; the first
      `num_clients * examples_per_client` shuffled examples are used. None
      shares out all examples, client sizes differing by at most one.

  Returns:
    One sorted int64 index array per client; the arrays are disjoint.

  Raises:
    ValueError: If there are too few examples or the arguments are invalid.
  """
  labels = _as_labels(labels)
  _check_num_clients(num_clients)
  num_examples = len(labels)
  if examples_per_client is None:
    if num_examples < num_clients:
      raise ValueError(
          f'cannot split {num_examples} examples among {num_clients} clients '
          'with at least one example each')
    parts = np.array_split(rng.permutation(num_examples), num_clients)
  else:
    if examples_per_client < 1:
      raise ValueError(
          f'examples_per_client must be >= 1, got {examples_per_client}')
    needed = num_clients * examples_per_client
    if needed > num_examples:
      raise ValueError(
          f'need {num_clients} clients x {examples_per_client} examples = '
          f'{needed} examples, but only {num_examples} are available')
    parts = rng.permutation(num_examples)[:needed].reshape(
        num_clients, examples_per_client)
  return [np.sort(part).astype(np.int64) for part in parts]


def _dirichlet_counts(class_sizes: np.ndarray, num_clients: int, beta: float,
                      rng: np.random.Generator) -> Optional[np.ndarray]:
  """Draws how many examples of each class every client gets.

  Each class's examples are cut at the floored cumulative Dirichlet
  proportions, so every example goes to exactly one client.

  Returns:
    int64 array of shape (num_classes, num_clients) whose rows sum to
    `class_sizes`, or None if the draw was not finite.
  """
  proportions = rng.dirichlet(
      np.full(num_clients, beta), size=len(class_sizes))
  if not np.all(np.isfinite(proportions)):
    return None
  cut_points = np.floor(
      np.cumsum(proportions, axis=1) * class_sizes[:, np.newaxis])
  cut_points = np.minimum(cut_points.astype(np.int64),
                          class_sizes[:, np.newaxis])
  cut_points[:, -1] = class_sizes
  return np.diff(cut_points, axis=1, prepend=0)


def partition_dirichlet(labels: np.ndarray,
                        num_clients: int,
                        beta: float,
                        rng: np.random.Generator,
                        min_examples_per_client: int = 1,
                        max_attempts: int = 10_000) -> list[np.ndarray]:
  """Splits every class among the clients in Dirichlet(beta) proportions.

  As in the reference, one proportion vector p_c ~ Dirichlet(beta, ..., beta)
  is drawn per class c, and client k receives a p_c[k] share of class c's
  (here shuffled) examples; every example is assigned. The reference keeps
  clients that end up empty and later skips them; here the whole draw is
  repeated until every client has at least `min_examples_per_client`
  examples, so all `num_clients` clients are usable.

  Args:
    labels: 1-D integer labels of the training set.
    num_clients: Number of clients.
    beta: Dirichlet concentration, > 0. Small values (e.g. 0.1) give each
      client a few dominant classes; large values approach an IID split.
    rng: Source of randomness.
    min_examples_per_client: Fewest examples any client may get.
    max_attempts: How many Dirichlet draws to try before giving up.

  Returns:
    One sorted int64 index array per client; the arrays are disjoint and
    together cover every example.

  Raises:
    ValueError: If the arguments are invalid or no draw within
      `max_attempts` gives every client its minimum.
  """
  labels = _as_labels(labels)
  _check_num_clients(num_clients)
  if not beta > 0:
    raise ValueError(f'beta must be > 0, got {beta}')
  if min_examples_per_client < 0:
    raise ValueError(
        f'min_examples_per_client must be >= 0, got {min_examples_per_client}')
  if len(labels) == 0:
    raise ValueError('labels is empty; there is nothing to partition')
  if num_clients * min_examples_per_client > len(labels):
    raise ValueError(
        f'{num_clients} clients x {min_examples_per_client} examples minimum '
        f'exceeds the {len(labels)} available examples')
  class_indices = _indices_by_class(labels)
  class_sizes = np.array([len(indices) for indices in class_indices.values()],
                         dtype=np.int64)
  for _ in range(max_attempts):
    counts = _dirichlet_counts(class_sizes, num_clients, beta, rng)
    if counts is not None and (counts.sum(axis=0).min() >=
                               min_examples_per_client):
      break
  else:
    raise ValueError(
        f'no Dirichlet(beta={beta}) draw in {max_attempts} attempts gave all '
        f'{num_clients} clients >= {min_examples_per_client} examples; use a '
        'larger beta, fewer clients or a smaller min_examples_per_client')
  client_parts = [[] for _ in range(num_clients)]
  for indices, class_counts in zip(class_indices.values(), counts):
    shuffled = rng.permutation(indices)
    for client_index, part in enumerate(
        np.split(shuffled, np.cumsum(class_counts)[:-1])):
      client_parts[client_index].append(part)
  return [np.sort(np.concatenate(parts)).astype(np.int64)
          for parts in client_parts]


def _can_serve(capacities: np.ndarray, num_clients: int,
               classes_per_client: int) -> bool:
  """Whether `num_clients` clients can each get distinct classes.

  Each client needs `classes_per_client` distinct classes and class c can
  serve `capacities[c]` clients. By the Gale-Ryser theorem (all clients
  asking for the same number of classes) this is possible exactly when
  sum_c min(capacities[c], num_clients) >= num_clients * classes_per_client.
  """
  return (np.minimum(capacities, num_clients).sum() >=
          num_clients * classes_per_client)


def _choose_client_classes(capacities: np.ndarray, classes_per_client: int,
                           clients_after: int,
                           rng: np.random.Generator) -> np.ndarray:
  """Picks distinct classes for one client, keeping the rest servable.

  Classes are drawn with probability proportional to how many more clients
  they can serve, which keeps usage balanced; if a few such draws would leave
  the remaining `clients_after` clients unservable, the classes with most
  capacity left are taken (ties broken at random), which always keeps them
  servable.

  Returns:
    The chosen class positions, ascending.
  """
  for _ in range(16):
    chosen = rng.choice(
        len(capacities),
        size=classes_per_client,
        replace=False,
        p=capacities / capacities.sum())
    remaining = capacities.copy()
    remaining[chosen] -= 1
    if _can_serve(remaining, clients_after, classes_per_client):
      return np.sort(chosen)
  tie_break = rng.permutation(len(capacities))
  by_capacity = tie_break[np.argsort(-capacities[tie_break], kind='stable')]
  return np.sort(by_capacity[:classes_per_client])


def partition_pathological(labels: np.ndarray, num_clients: int,
                           classes_per_client: int, examples_per_class: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
  """Gives every client a few classes with a fixed number of examples each.

  The reference ('lotteryfl') hands out random label-sorted shards; here
  each client gets exactly `classes_per_client` distinct classes and exactly
  `examples_per_class` examples of each, no example going to two clients.

  Args:
    labels: 1-D integer labels of the training set.
    num_clients: Number of clients.
    classes_per_client: Distinct classes per client.
    examples_per_class: Examples of each of its classes a client gets.
    rng: Source of randomness.

  Returns:
    One sorted int64 index array per client, of length
    `classes_per_client * examples_per_class`; the arrays are disjoint.

  Raises:
    ValueError: If the arguments are invalid or there are not enough
      examples to serve every client.
  """
  labels = _as_labels(labels)
  _check_num_clients(num_clients)
  class_indices = _indices_by_class(labels)
  num_classes = len(class_indices)
  if not 1 <= classes_per_client <= num_classes:
    raise ValueError(
        f'classes_per_client must be in [1, {num_classes}] (the number of '
        f'classes present), got {classes_per_client}')
  if examples_per_class < 1:
    raise ValueError(
        f'examples_per_class must be >= 1, got {examples_per_class}')
  capacities = np.array(
      [len(indices) // examples_per_class
       for indices in class_indices.values()],
      dtype=np.int64)
  if not _can_serve(capacities, num_clients, classes_per_client):
    class_sizes = {label: len(indices)
                   for label, indices in class_indices.items()}
    raise ValueError(
        f'not enough examples for {num_clients} clients x '
        f'{classes_per_client} classes x {examples_per_class} examples: the '
        f'class sizes {class_sizes} allow only '
        f'{np.minimum(capacities, num_clients).sum()} of the '
        f'{num_clients * classes_per_client} client-class slots')
  clients_of_class = [[] for _ in range(num_classes)]
  for client_index in range(num_clients):
    chosen = _choose_client_classes(capacities, classes_per_client,
                                    num_clients - client_index - 1, rng)
    capacities[chosen] -= 1
    for class_position in chosen:
      clients_of_class[class_position].append(client_index)
  client_parts = [[] for _ in range(num_clients)]
  for indices, clients in zip(class_indices.values(), clients_of_class):
    shuffled = rng.permutation(indices)
    for slot, client_index in enumerate(clients):
      client_parts[client_index].append(
          shuffled[slot * examples_per_class:(slot + 1) * examples_per_class])
  return [np.sort(np.concatenate(parts)).astype(np.int64)
          for parts in client_parts]


def partition_natural(natural_clients: NaturalClients, num_clients: int,
                      rng: np.random.Generator
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Makes every client one natural client (e.g. one EMNIST writer).

  Only natural clients with at least one training example are eligible.
  When there are more of them than `num_clients`, a uniformly random subset
  is used; the clients keep the order of `natural_clients.names`.

  Args:
    natural_clients: The client of every example.
    num_clients: How many natural clients to use, in [1, eligible].
    rng: Source of randomness (only used to pick a subset).

  Returns:
    `(train_indices, test_indices)`: per client, the sorted int64 indices of
    its own training and its own test examples.

  Raises:
    ValueError: If `num_clients` is < 1 or exceeds the eligible clients.
  """
  _check_num_clients(num_clients)
  num_names = len(natural_clients.names)
  train_clients = np.asarray(natural_clients.train_clients, dtype=np.int64)
  test_clients = np.asarray(natural_clients.test_clients, dtype=np.int64)
  eligible = np.flatnonzero(np.bincount(train_clients, minlength=num_names))
  if num_clients > len(eligible):
    raise ValueError(
        f'{num_clients} clients requested but the data has only '
        f'{len(eligible)} natural clients with training examples')
  chosen = eligible if num_clients == len(eligible) else np.sort(
      rng.choice(eligible, size=num_clients, replace=False))

  def grouped(clients: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(clients, kind='stable')  # Ascending within a client.
    bounds = np.concatenate(
        [[0], np.cumsum(np.bincount(clients, minlength=num_names))])
    return [order[bounds[c]:bounds[c + 1]].astype(np.int64) for c in chosen]

  return grouped(train_clients), grouped(test_clients)


def _allocate_proportionally(total: int,
                             weights: np.ndarray) -> np.ndarray:
  """Splits `total` into integers proportional to `weights`.

  Uses the largest-remainder method in exact integer arithmetic: every part
  gets floor(total * w / sum(w)), then the leftover units go one each to the
  parts with the largest fractional remainders (earlier parts win ties).
  """
  weight_sum = int(weights.sum())
  scaled = total * weights.astype(np.int64)
  parts = scaled // weight_sum
  leftover = total - int(parts.sum())
  order = np.argsort(-(scaled % weight_sum), kind='stable')
  parts[order[:leftover]] += 1
  return parts


def client_test_indices(client_train_labels: np.ndarray,
                        test_labels: np.ndarray, num_examples: int,
                        rng: np.random.Generator) -> np.ndarray:
  """Draws a client's local test split with its training class proportions.

  The `num_examples` test examples are allotted to the classes in proportion
  to the client's training examples of each class (largest-remainder
  rounding, so the total is exact and every class gets its share rounded up
  or down), then drawn without replacement from the global test examples of
  that class. Different clients draw independently, so their test splits may
  overlap, as in the reference's 'lotteryfl' split, where every client holding
  a class gets all of that class's test examples.

  Args:
    client_train_labels: Labels of the client's training examples.
    test_labels: Labels of the global test set.
    num_examples: Size of the client's test split.
    rng: Source of randomness.

  Returns:
    Sorted int64 indices into the test set, `num_examples` of them, no index
    repeated.

  Raises:
    ValueError: If `num_examples` is negative or positive while the client
      has no training examples, or a class does not have enough test
      examples for its share.
  """
  client_train_labels = _as_labels(client_train_labels)
  test_labels = _as_labels(test_labels)
  if num_examples < 0:
    raise ValueError(f'num_examples must be >= 0, got {num_examples}')
  if num_examples == 0:
    return np.zeros(0, dtype=np.int64)
  if len(client_train_labels) == 0:
    raise ValueError(
        'cannot draw test examples with the class proportions of a client '
        'that has no training examples')
  classes, train_counts = np.unique(client_train_labels, return_counts=True)
  test_counts = _allocate_proportionally(num_examples, train_counts)
  parts = []
  for label, count in zip(classes, test_counts):
    candidates = np.flatnonzero(test_labels == label)
    if count > len(candidates):
      raise ValueError(
          f'class {label} needs {count} test examples for this client but the '
          f'test set has only {len(candidates)}')
    parts.append(rng.choice(candidates, size=count, replace=False))
  return np.sort(np.concatenate(parts)).astype(np.int64)


def proportional_test_size(client_train_labels: np.ndarray,
                           test_labels: np.ndarray,
                           total_train_examples: int) -> int:
  """Default size of a client's test split: its share of the test set.

  A client holding a fraction f of all training examples handed out gets
  round(f * len(test_labels)) test examples (at least one), so client test
  splits together are about as large as the test set. This matches the
  reference: its Dirichlet split cuts the test set with the same proportions
  as the training set (a client gets about len(test) / len(train) of its
  training count), and its IID split divides the whole test set evenly. The
  size is capped so that every class's share stays within the test examples
  of that class, as `client_test_indices` requires.

  Args:
    client_train_labels: Labels of the client's training examples.
    test_labels: Labels of the global test set.
    total_train_examples: Training examples handed out to all clients.

  Returns:
    The number of test examples; 0 if the client has no training examples.

  Raises:
    ValueError: If `total_train_examples` is smaller than the client's
      training set.
  """
  client_train_labels = _as_labels(client_train_labels)
  test_labels = _as_labels(test_labels)
  num_train = len(client_train_labels)
  if num_train == 0:
    return 0
  if total_train_examples < num_train:
    raise ValueError(
        f'total_train_examples ({total_train_examples}) is smaller than the '
        f'client training set ({num_train})')
  target = max(1, (num_train * len(test_labels) + total_train_examples // 2) //
               total_train_examples)
  classes, train_counts = np.unique(client_train_labels, return_counts=True)
  available = np.array([np.count_nonzero(test_labels == label)
                        for label in classes])
  # A class's share target * count / num_train must not exceed its supply.
  cap = int(np.min(available * num_train // train_counts))
  return min(target, cap)


# ---------------------------------------------------------------------------
# Federated data.
# ---------------------------------------------------------------------------


class FederatedData:
  """A data set shared out among clients with ids '0' .. 'num_clients-1'.

  Each client has training examples (indices into `dataset.x_train`) and a
  local test split (indices into `dataset.x_test`). The global test set is
  the whole of `dataset.x_test`.
  """

  def __init__(self, dataset: Dataset, train_indices: Sequence[np.ndarray],
               test_indices: Sequence[np.ndarray]):
    """Builds the federated view.

    Args:
      dataset: The centralised data set.
      train_indices: One integer index array into `dataset.x_train` per
        client.
      test_indices: One integer index array into `dataset.x_test` per
        client.

    Raises:
      ValueError: If there are no clients, the two lists differ in length, or
        an index array is not 1-D integer or out of range.
    """
    if len(train_indices) < 1:
      raise ValueError('FederatedData needs at least one client')
    if len(train_indices) != len(test_indices):
      raise ValueError(
          f'{len(train_indices)} train index arrays but {len(test_indices)} '
          'test index arrays; need one of each per client')
    self._dataset = dataset
    self._train_indices = tuple(
        self._checked_indices(indices, len(dataset.y_train), 'train')
        for indices in train_indices)
    self._test_indices = tuple(
        self._checked_indices(indices, len(dataset.y_test), 'test')
        for indices in test_indices)
    self._client_ids = [str(index) for index in range(len(train_indices))]
    self._positions = {
        client_id: position
        for position, client_id in enumerate(self._client_ids)
    }

  @staticmethod
  def _checked_indices(indices: np.ndarray, size: int,
                       split: str) -> np.ndarray:
    """Returns `indices` as a read-only int64 array after range checks."""
    array = np.asarray(indices)
    if array.ndim != 1 or (array.size and
                           not np.issubdtype(array.dtype, np.integer)):
      raise ValueError(
          f'{split} indices must be a 1-D integer array, got {array.dtype} '
          f'{array.shape}')
    if array.size and (array.min() < 0 or array.max() >= size):
      raise ValueError(
          f'{split} indices must lie in [0, {size}), found '
          f'{array.min()}..{array.max()}')
    array = array.astype(np.int64)
    array.setflags(write=False)
    return array

  def _position(self, client_id: str) -> int:
    """Returns the position of `client_id`, raising KeyError if unknown."""
    if client_id not in self._positions:
      raise KeyError(
          f'unknown client id {client_id!r}; ids are the strings '
          f"'0' .. '{len(self._client_ids) - 1}'")
    return self._positions[client_id]

  @property
  def dataset(self) -> Dataset:
    """The centralised data set the indices point into."""
    return self._dataset

  @property
  def client_ids(self) -> list[str]:
    """Client ids '0' .. 'num_clients-1' (a fresh list)."""
    return list(self._client_ids)

  @property
  def num_clients(self) -> int:
    """Number of clients."""
    return len(self._client_ids)

  def train_indices(self, client_id: str) -> np.ndarray:
    """Returns the client's read-only indices into `dataset.x_train`.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      int64 index array.

    Raises:
      KeyError: If the client id is unknown.
    """
    return self._train_indices[self._position(client_id)]

  def test_indices(self, client_id: str) -> np.ndarray:
    """Returns the client's read-only indices into `dataset.x_test`.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      int64 index array.

    Raises:
      KeyError: If the client id is unknown.
    """
    return self._test_indices[self._position(client_id)]

  def train_arrays(self, client_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the client's training images and labels.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      `(x, y)`: float32 images (n, H, W, C) and int32 labels (n,).

    Raises:
      KeyError: If the client id is unknown.
    """
    indices = self.train_indices(client_id)
    return self._dataset.x_train[indices], self._dataset.y_train[indices]

  def test_arrays(self, client_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the client's local test images and labels.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      `(x, y)`: float32 images (n, H, W, C) and int32 labels (n,).

    Raises:
      KeyError: If the client id is unknown.
    """
    indices = self.test_indices(client_id)
    return self._dataset.x_test[indices], self._dataset.y_test[indices]

  def num_train_examples(self, client_id: str) -> int:
    """Returns how many training examples the client has.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      The count.

    Raises:
      KeyError: If the client id is unknown.
    """
    return len(self.train_indices(client_id))

  def num_test_examples(self, client_id: str) -> int:
    """Returns how many local test examples the client has.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      The count.

    Raises:
      KeyError: If the client id is unknown.
    """
    return len(self.test_indices(client_id))

  def to_client_data(self, split: str = 'train') -> Any:
    """Wraps one split as a `tff.simulation.datasets.ClientData`.

    Elements are `OrderedDict(x=float32 image (H, W, C), y=int32 label)`,
    unbatched and in index order. The dataset function accepts a Python
    string or a tf.string tensor (it parses the numeric client id), so it
    also works inside `tf.function`, e.g. in
    `create_tf_dataset_from_all_clients`. Images are captured as eager
    tensors, except when the function is traced into a plain graph (TFF's
    `dataset_computation`), where they must become graph constants: that
    path copies the whole split into the graph, so keep it to small data.

    Args:
      split: 'train' for the clients' training examples, 'test' for their
        local test splits.

    Returns:
      A `tff.simulation.datasets.ClientData` with ids `client_ids`.

    Raises:
      ValueError: If `split` is not 'train' or 'test'.
    """
    if split == 'train':
      images, labels = self._dataset.x_train, self._dataset.y_train
      per_client = self._train_indices
    elif split == 'test':
      images, labels = self._dataset.x_test, self._dataset.y_test
      per_client = self._test_indices
    else:
      raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    eager_images = tf.convert_to_tensor(images, dtype=tf.float32)
    eager_labels = tf.convert_to_tensor(labels, dtype=tf.int32)
    all_indices = np.concatenate(per_client).astype(np.int64)
    offsets = np.cumsum([0] + [len(indices) for indices in per_client])

    def serializable_dataset_fn(client_id: Any) -> tf.data.Dataset:
      if tf.executing_eagerly() or tf.inside_function():
        source_images, source_labels = eager_images, eager_labels
      else:
        # A plain graph (TFF's `dataset_computation`) cannot capture eager
        # tensors, so the arrays become graph constants there.
        source_images = tf.constant(images, dtype=tf.float32)
        source_labels = tf.constant(labels, dtype=tf.int32)
      position = tf.strings.to_number(client_id, out_type=tf.int64)
      start = tf.gather(offsets, position)
      stop = tf.gather(offsets, position + 1)
      indices = tf.slice(all_indices, [start], [stop - start])
      return tf.data.Dataset.from_tensor_slices(
          collections.OrderedDict(
              x=tf.gather(source_images, indices),
              y=tf.gather(source_labels, indices)))

    return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
        self.client_ids, serializable_dataset_fn)


def build_federated_data(dataset: Dataset,
                         distribution: str,
                         num_clients: int,
                         seed: int,
                         *,
                         beta: float = 0.1,
                         classes_per_client: int = 2,
                         examples_per_class: int = 20,
                         examples_per_client: Optional[int] = None,
                         min_examples_per_client: int = 1,
                         test_examples_per_client: Optional[int] = None
                        ) -> FederatedData:
  """Partitions a data set among clients and gives each a local test split.

  Args:
    dataset: The centralised data set.
    distribution: 'iid' (`partition_iid`), 'dirichlet'
      (`partition_dirichlet`), 'pathological' (`partition_pathological`) or
      'natural' (`partition_natural`: each client is one of the data set's
      own clients, whose local test split is its own test examples; only for
      data sets with `natural_clients`).
    num_clients: Number of clients, >= 1 (for 'natural': how many of the
      natural clients to use, a seeded random subset when fewer than all).
    seed: Seed; the same seed gives the same partition and test splits.
    beta: Dirichlet concentration ('dirichlet' only).
    classes_per_client: Classes per client ('pathological' only).
    examples_per_class: Examples per class per client ('pathological' only).
    examples_per_client: Examples per client ('iid' only); None shares out
      the whole training set.
    min_examples_per_client: Minimum client size ('dirichlet' only).
    test_examples_per_client: Size of every client's local test split. None
      gives each client its share of the test set (`proportional_test_size`).
      Not used by 'natural'.

  Returns:
    The federated data.

  Raises:
    ValueError: If `distribution` is unknown, `num_clients` < 1, or the
      partition cannot be made.
  """
  _check_num_clients(num_clients)
  partition_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
  partition_rng = np.random.default_rng(partition_seed)
  if distribution == 'natural':
    if dataset.natural_clients is None:
      raise ValueError(
          f"distribution 'natural' needs a data set whose examples come with "
          f'their clients ({", ".join(NATURAL_DATASET_NAMES)}); '
          f'{dataset.name} has none')
    train_indices, test_indices = partition_natural(
        dataset.natural_clients, num_clients, partition_rng)
    return FederatedData(dataset, train_indices, test_indices)
  if distribution == 'iid':
    train_indices = partition_iid(dataset.y_train, num_clients, partition_rng,
                                  examples_per_client)
  elif distribution == 'dirichlet':
    train_indices = partition_dirichlet(dataset.y_train, num_clients, beta,
                                        partition_rng, min_examples_per_client)
  elif distribution == 'pathological':
    train_indices = partition_pathological(dataset.y_train, num_clients,
                                           classes_per_client,
                                           examples_per_class, partition_rng)
  else:
    raise ValueError(
        f'unknown distribution {distribution!r}; expected one of '
        f'{", ".join(DISTRIBUTIONS)}')
  test_rng = np.random.default_rng(test_seed)
  total_train_examples = sum(len(indices) for indices in train_indices)
  test_indices = []
  for indices in train_indices:
    client_labels = dataset.y_train[indices]
    if test_examples_per_client is None:
      num_test = proportional_test_size(client_labels, dataset.y_test,
                                        total_train_examples)
    else:
      num_test = test_examples_per_client if len(indices) else 0
    test_indices.append(
        client_test_indices(client_labels, dataset.y_test, num_test, test_rng))
  return FederatedData(dataset, train_indices, test_indices)


def make_client_dataset(x: np.ndarray,
                        y: np.ndarray,
                        batch_size: int,
                        shuffle_seed: Optional[int],
                        num_epochs: int = 1) -> tf.data.Dataset:
  """Builds a client's local training dataset of `(x_batch, y_batch)` tuples.

  Examples are shuffled with `shuffle_seed` (the same seed gives the same
  order on every run), batched keeping the last partial batch, and repeated
  `num_epochs` times; each epoch is reshuffled and ends with its own partial
  batch, like one pass of a PyTorch DataLoader per epoch.

  Args:
    x: Images, cast to float32.
    y: Labels, cast to int32.
    batch_size: Batch size, >= 1.
    shuffle_seed: Seed of the shuffle; None keeps the given order.
    num_epochs: Number of passes over the data, >= 1.

  Returns:
    A `tf.data.Dataset` of `(float32 images, int32 labels)` batches.

  Raises:
    ValueError: If `x` and `y` differ in length, or `batch_size` or
      `num_epochs` is < 1.
  """
  if num_epochs < 1:
    raise ValueError(f'num_epochs must be >= 1, got {num_epochs}')
  dataset = _example_dataset(x, y, batch_size)
  if shuffle_seed is not None:
    dataset = dataset.shuffle(
        max(len(x), 1), seed=shuffle_seed, reshuffle_each_iteration=True)
  dataset = dataset.batch(batch_size)
  if num_epochs > 1:
    dataset = dataset.repeat(num_epochs)
  return dataset


def make_eval_dataset(x: np.ndarray, y: np.ndarray,
                      batch_size: int) -> tf.data.Dataset:
  """Builds an evaluation dataset of `(x_batch, y_batch)` tuples, in order.

  Args:
    x: Images, cast to float32.
    y: Labels, cast to int32.
    batch_size: Batch size, >= 1; the last batch may be smaller.

  Returns:
    A `tf.data.Dataset` of `(float32 images, int32 labels)` batches.

  Raises:
    ValueError: If `x` and `y` differ in length or `batch_size` < 1.
  """
  return _example_dataset(x, y, batch_size).batch(batch_size)


def _example_dataset(x: np.ndarray, y: np.ndarray,
                     batch_size: int) -> tf.data.Dataset:
  """Validates the arguments and returns the unbatched `(x, y)` examples."""
  if len(x) != len(y):
    raise ValueError(f'x has {len(x)} examples but y has {len(y)}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  return tf.data.Dataset.from_tensor_slices(
      (np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int32)))
