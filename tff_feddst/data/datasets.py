"""The five image data sets: where their files are, and how they are loaded.

Each loader turns the raw files of Fashion-MNIST, MNIST, CIFAR-10,
CIFAR-100 or federated EMNIST (read by `file_formats`) into channels-last
images that read as float32, normalised per channel, in a `Dataset` (kept
as uint8 pixels and normalised per read where the files hold pixels, see
`normalized_images`); `load_dataset` picks the loader by name. Federated
EMNIST also says which writer (natural client) each example comes from
(`NaturalClients`).

Every problem with a data file is reported as a `file_formats.DataFileError`
whose message is a single line that starts with the offending path and, for
a missing file, says how to get it.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from tff_feddst.data import file_formats
from tff_feddst.data import normalized_images


def _keras_datasets():
  """`tf.keras.datasets`, imported only to download a missing data set
  (loading TensorFlow takes seconds; reading files does not need it)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.keras.datasets

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
# The values the reference code (its datasets.py) uses for CIFAR-10.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# The reference normalises CIFAR-100 with the CIFAR-10 values too.
CIFAR100_MEAN = CIFAR10_MEAN
CIFAR100_STD = CIFAR10_STD

DATASET_NAMES = ('cifar10', 'cifar100', 'emnist', 'fashion_mnist', 'mnist')
# Data sets whose examples come with their clients (`Dataset.natural_clients`).
NATURAL_DATASET_NAMES = ('emnist',)

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
    x_train: Images, shape (N, H, W, C), read as float32 normalised per
      channel: `normalized_images.NormalizedImages` (uint8 pixels,
      normalised per read) for the data sets stored as pixels, a float32
      array for EMNIST (TFF's pixel values, see `load_emnist`) and for
      arrays given directly.
    y_train: int32 labels in [0, num_classes), shape (N,).
    x_test: Test images, held and normalised like `x_train`.
    y_test: int32 test labels.
    num_classes: Number of classes.
    natural_clients: Which client each example belongs to, for data sets
      that come federated (EMNIST); None for the others.
  """
  name: str
  x_train: normalized_images.ImageArray
  y_train: np.ndarray
  x_test: normalized_images.ImageArray
  y_test: np.ndarray
  num_classes: int
  natural_clients: Optional[NaturalClients] = None


def normalize_images(images: np.ndarray, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
  """Scales uint8 pixels to [0, 1], then applies `(x - mean) / std`.

  The eager form of what `NormalizedImages` does per read (see
  `normalized_images.normalize_pixels`).

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
  return normalized_images.normalize_pixels(images, mean, std)


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
    raise file_formats.file_error(
        images_source, f'expected uint8 images of shape ({expected_shape}), '
        f'found {images.dtype} {images.shape}')
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise file_formats.file_error(
        labels_source, f'expected a 1-D integer label array, found '
        f'{labels.dtype} {labels.shape}')
  if len(labels) != len(images):
    raise file_formats.file_error(
        labels_source, f'{len(labels)} labels but {images_source} holds '
        f'{len(images)} images; the counts must agree')
  if len(labels) == 0:
    raise file_formats.file_error(
        labels_source, 'expected at least one example, found none')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise file_formats.file_error(
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
  raise file_formats.file_error(f'{base}[.gz]', f'file not found; {hint}')


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
  images = file_formats.read_idx(images_path)
  labels = file_formats.read_idx(labels_path)
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
      x_train=normalized_images.NormalizedImages(
          x_train[..., np.newaxis], mean, std),
      y_train=y_train.astype(np.int32),
      x_test=normalized_images.NormalizedImages(
          x_test[..., np.newaxis], mean, std),
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
      train, test = file_formats.read_mnist_npz(npz_path)
      source = npz_path
    else:
      train = _load_idx_split(data_dir, 'train', _MNIST_IDX_HINT, 10)
      test = _load_idx_split(data_dir, 't10k', _MNIST_IDX_HINT, 10)
      source = data_dir
  else:
    source = os.path.join(keras_datasets_dir(), 'mnist.npz')
    if os.path.isfile(source):
      train, test = file_formats.read_mnist_npz(source)
    else:
      try:
        train, test = _keras_datasets().mnist.load_data()
      except Exception as error:  # Keras raises bare Exception on URL errors.
        raise file_formats.file_error(
            source, f'MNIST not found and downloading it failed ({error}); '
            f'copy mnist.npz (from {_MNIST_URL}) to this path, or pass '
            '--data_dir with the MNIST IDX files') from error
  for (images, labels), split in ((train, 'train'), (test, 'test')):
    _check_split(f'{source} (x_{split})', f'{source} (y_{split})', images,
                 labels, 10, (28, 28))
  return _mnist_like_dataset('mnist', train, test, MNIST_MEAN, MNIST_STD)


def _read_cifar10_folder(folder: str) -> tuple[tuple[np.ndarray, np.ndarray],
                                                 tuple[np.ndarray, np.ndarray]]:
  """Reads `data_batch_1`..`data_batch_5` and `test_batch` from `folder`."""
  train_parts = [
      file_formats.read_cifar_batch(
          os.path.join(folder, f'data_batch_{number}'))
      for number in range(1, 6)
  ]
  train = (np.concatenate([images for images, _ in train_parts]),
           np.concatenate([labels for _, labels in train_parts]))
  test = file_formats.read_cifar_batch(os.path.join(folder, 'test_batch'))
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
      raise file_formats.file_error(
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
            _keras_datasets().cifar10.load_data())
      except Exception as error:  # Keras raises bare Exception on URL errors.
        raise file_formats.file_error(
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
      x_train=normalized_images.NormalizedImages(
          x_train, CIFAR10_MEAN, CIFAR10_STD),
      y_train=y_train.astype(np.int32),
      x_test=normalized_images.NormalizedImages(
          x_test, CIFAR10_MEAN, CIFAR10_STD),
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
      raise file_formats.file_error(
          os.path.join(folder, 'train'),
          f'file not found; {hint}, or leave --data_dir unset to use the '
          'Keras cache')
    train = file_formats.read_cifar_batch(
        os.path.join(folder, 'train'), 'fine_labels')
    test = file_formats.read_cifar_batch(
        os.path.join(folder, 'test'), 'fine_labels')
  else:
    folder = os.path.join(keras_datasets_dir(), 'cifar-100-python')
    if os.path.isdir(folder):
      train = file_formats.read_cifar_batch(
          os.path.join(folder, 'train'), 'fine_labels')
      test = file_formats.read_cifar_batch(
          os.path.join(folder, 'test'), 'fine_labels')
    else:
      try:
        (x_train, y_train), (x_test, y_test) = (
            _keras_datasets().cifar100.load_data(label_mode='fine'))
      except Exception as error:  # Keras raises bare Exception on URL errors.
        raise file_formats.file_error(
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
      x_train=normalized_images.NormalizedImages(
          x_train, CIFAR100_MEAN, CIFAR100_STD),
      y_train=y_train.astype(np.int32),
      x_test=normalized_images.NormalizedImages(
          x_test, CIFAR100_MEAN, CIFAR100_STD),
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
    raise file_formats.file_error(
        path, f'federated EMNIST not found and downloading it failed '
        f'({error}); decompress {file_formats.EMNIST_URL} (xz -d) to this '
        'path, or pass --data_dir with a directory holding '
        f'{file_formats.EMNIST_FILE}') from error


def load_emnist(data_dir: Optional[str] = None) -> Dataset:
  """Loads federated EMNIST (62 classes) with every example's writer.

  This is TFF's `tff.simulation.datasets.emnist.load_data(only_digits=False,
  cache_dir=...)` data, LEAF's FEMNIST grouped by writer: 3400 writers,
  671,585 training and 77,483 test examples, every writer having at least
  one of each. TFF 0.87 stores it as one SQLite file,
  `file_formats.EMNIST_FILE`, in its cache directory: a table
  `examples(split_name, client_id, serialized_example_proto)` of
  `tf.train.Example`s with `pixels` (28 x 28 floats) and `label` (int64),
  and a table `client_metadata(client_id, split_name, num_examples)`. TFF's
  loader opens and checks the file and lists the writers; the examples are
  then read in one pass per split.

  Pixels are kept as TFF provides them, in [0, 1] with 1.0 the background
  (the reference code also feeds LEAF's values unnormalised).

  Args:
    data_dir: Directory holding `file_formats.EMNIST_FILE`. Defaults to
      TFF's cache (`tff_cache_dir()`); only then, if the file is absent, TFF
      downloads it.

  Returns:
    The data set, images (N, 28, 28, 1), with `natural_clients` set: client
    names are TFF's writer ids, sorted.

  Raises:
    DataFileError: If the file is missing (and, without `data_dir`, the
      download fails) or is not TFF's EMNIST database.
  """
  cache_dir = tff_cache_dir() if data_dir is None else data_dir
  path = os.path.join(cache_dir, file_formats.EMNIST_FILE)
  if not os.path.isfile(path):
    if data_dir is not None:
      raise file_formats.file_error(
          path, f'file not found; decompress {file_formats.EMNIST_URL} '
          f'(xz -d) into {data_dir}, or leave --data_dir unset to use '
          f"TFF's cache {tff_cache_dir()}")
    _download_emnist(cache_dir, path)
  with open(path, 'rb') as file:
    header = file.read(16)
  if header != b'SQLite format 3\x00':
    raise file_formats.file_error(
        path, f'not an SQLite database (it starts with {header[:8]!r}); '
        f'expected {file_formats.EMNIST_FILE} decompressed from '
        f'{file_formats.EMNIST_URL}')
  train_ids, test_ids = file_formats.read_emnist_client_ids(path, cache_dir)
  names = tuple(sorted(set(train_ids) | set(test_ids)))
  position_of = {name: position for position, name in enumerate(names)}
  x_train, y_train, train_clients = file_formats.read_emnist_split(
      path, file_formats.EMNIST_TRAIN_SPLIT, position_of)
  x_test, y_test, test_clients = file_formats.read_emnist_split(
      path, file_formats.EMNIST_TEST_SPLIT, position_of)
  return Dataset(
      name='emnist',
      x_train=x_train[..., np.newaxis],
      y_train=y_train.astype(np.int32),
      x_test=x_test[..., np.newaxis],
      y_test=y_test.astype(np.int32),
      num_classes=file_formats.EMNIST_NUM_CLASSES,
      natural_clients=NaturalClients(names, train_clients, test_clients))


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
