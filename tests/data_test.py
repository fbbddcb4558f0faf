"""Tests for tff_feddst.data.data: file readers, loaders, partitions, datasets."""

import collections
import gzip
import os
import pickle
import shutil
import sqlite3
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.data import data

_REAL_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def _make_temp_dir(test_case: absltest.TestCase) -> str:
  """Creates a temporary directory removed when the test ends."""
  path = tempfile.mkdtemp()
  test_case.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _write_bytes(path: str, payload: bytes) -> str:
  """Writes raw bytes to `path` and returns the path."""
  with open(path, 'wb') as file:
    file.write(payload)
  return path


def _write_idx_split(directory: str, prefix: str, images: np.ndarray,
                     labels: np.ndarray, suffix: str = '.gz') -> None:
  """Writes one split in the MNIST IDX file layout."""
  data.write_idx(
      os.path.join(directory, f'{prefix}-images-idx3-ubyte{suffix}'), images)
  data.write_idx(
      os.path.join(directory, f'{prefix}-labels-idx1-ubyte{suffix}'), labels)


def _mnist_like_arrays(num_examples: int,
                       first_pixel: int) -> tuple[np.ndarray, np.ndarray]:
  """Images whose pixel (0, 0) counts up from `first_pixel`; labels i % 10."""
  images = np.zeros((num_examples, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = first_pixel + np.arange(num_examples)
  images[:, 27, 27] = 255
  labels = (np.arange(num_examples) % 10).astype(np.uint8)
  return images, labels


def _cifar_batch(labels: list[int], red: int) -> dict[bytes, object]:
  """A pickled-batch dict whose image i has red plane value `red + i`.

  Green is 100 everywhere and blue 200, except that blue at (row 1, column
  2) is 7, which locates the channel-major to channels-last transpose.
  """
  rows = []
  for offset in range(len(labels)):
    red_plane = np.full(1024, red + offset, dtype=np.uint8)
    green_plane = np.full(1024, 100, dtype=np.uint8)
    blue_plane = np.full(1024, 200, dtype=np.uint8)
    blue_plane[1 * 32 + 2] = 7
    rows.append(np.concatenate([red_plane, green_plane, blue_plane]))
  return {b'batch_label': b'test', b'labels': list(labels),
          b'data': np.stack(rows)}


def _write_cifar_folder(folder: str) -> None:
  """Writes 5 training batches of 2 images and a test batch of 3."""
  os.makedirs(folder, exist_ok=True)
  for number in range(1, 6):
    batch = _cifar_batch([number, number + 1], red=10 * number)
    with open(os.path.join(folder, f'data_batch_{number}'), 'wb') as file:
      pickle.dump(batch, file)
  with open(os.path.join(folder, 'test_batch'), 'wb') as file:
    pickle.dump(_cifar_batch([9, 0, 3], red=90), file)


def _write_cifar100_folder(folder: str) -> None:
  """Writes `train` (4 images) and `test` (2) in the cifar-100-python layout.

  Training image i has red value 10 + i; labels use the whole 0..99 range.
  """
  os.makedirs(folder, exist_ok=True)
  for name, labels, red in (('train', [0, 99, 5, 42], 10), ('test', [7, 63],
                                                            90)):
    batch = _cifar_batch(labels, red=red)
    del batch[b'labels']
    batch[b'fine_labels'] = labels
    batch[b'coarse_labels'] = [label // 5 for label in labels]
    with open(os.path.join(folder, name), 'wb') as file:
      pickle.dump(batch, file)


def _emnist_pixels(num_examples: int, first_value: float) -> np.ndarray:
  """(n, 28, 28) floats; example i is `first_value + i / 100` everywhere,
  except pixel (3, 4), which is 0.5 (it locates the row-major layout)."""
  pixels = np.broadcast_to(
      (first_value + np.arange(num_examples) / 100).astype(np.float32)[
          :, None, None], (num_examples, 28, 28)).copy()
  pixels[:, 3, 4] = 0.5
  return pixels


def _write_small_emnist(directory: str) -> str:
  """Writes TFF's EMNIST layout: 3 writers with train, 4 with test data.

  Writer 'f0002_10' has 3 training examples (labels 0, 61, 35), 'f0000_14'
  has 2 (labels 10, 10) and 'f0001_41' has 1 (label 36). Test examples:
  'f0002_10' 1, 'f0000_14' 2, 'f0001_41' 1, and 'f0003_00' (no training
  data) 1.

  Returns:
    The database path.
  """
  path = os.path.join(directory, data.EMNIST_FILE)
  data.write_emnist_sqlite(
      path,
      train={'f0002_10': (_emnist_pixels(3, 0.1), [0, 61, 35]),
             'f0000_14': (_emnist_pixels(2, 0.2), [10, 10]),
             'f0001_41': (_emnist_pixels(1, 0.3), [36])},
      test={'f0002_10': (_emnist_pixels(1, 0.6), [1]),
            'f0000_14': (_emnist_pixels(2, 0.7), [11, 12]),
            'f0001_41': (_emnist_pixels(1, 0.8), [37]),
            'f0003_00': (_emnist_pixels(1, 0.9), [2])})
  return path


def _balanced_labels(examples_per_class: int = 100,
                     num_classes: int = 10) -> np.ndarray:
  """Shuffled labels with `examples_per_class` examples of every class."""
  labels = np.repeat(np.arange(num_classes), examples_per_class)
  return np.random.default_rng(1).permutation(labels)


def _small_dataset(train_per_class: int = 30,
                   test_per_class: int = 10) -> data.Dataset:
  """A 10-class Dataset of 2 x 2 x 1 images; image i holds the value i."""
  y_train = _balanced_labels(train_per_class).astype(np.int32)
  y_test = _balanced_labels(test_per_class).astype(np.int32)
  x_train = np.broadcast_to(
      np.arange(len(y_train), dtype=np.float32)[:, None, None, None],
      (len(y_train), 2, 2, 1)).copy()
  x_test = np.broadcast_to(
      np.arange(len(y_test), dtype=np.float32)[:, None, None, None],
      (len(y_test), 2, 2, 1)).copy()
  return data.Dataset('small', x_train, y_train, x_test, y_test, 10)


def _top_two_share(labels: np.ndarray, indices: np.ndarray) -> float:
  """Fraction of a client's examples that belong to its two largest classes."""
  counts = np.sort(np.bincount(labels[indices], minlength=10))[::-1]
  return counts[:2].sum() / counts.sum()


class IdxTest(parameterized.TestCase):

  @parameterized.product(
      dtype=[np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64],
      suffix=['', '.gz'])
  def test_round_trip_keeps_values_shape_and_dtype(self, dtype, suffix):
    values = np.array([0, 1, -2, 100, -128, 127], dtype=np.float64)
    if dtype == np.uint8:
      values = np.abs(values)
    array = np.tile(values, 4).reshape(2, 3, 4).astype(dtype)
    path = os.path.join(_make_temp_dir(self), 'array.idx' + suffix)

    data.write_idx(path, array)
    result = data.read_idx(path)

    self.assertEqual(result.dtype, np.dtype(dtype))
    self.assertEqual(result.shape, (2, 3, 4))
    np.testing.assert_array_equal(result, array)
    with open(path, 'rb') as file:
      self.assertEqual(file.read(2) == b'\x1f\x8b', suffix == '.gz')

  def test_reads_hand_built_uint8_file(self):
    # Magic 00 00 08 02 (uint8, 2 dims), dims 2 and 3, then 1..6.
    payload = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    path = _write_bytes(os.path.join(_make_temp_dir(self), 'hand'), payload)

    np.testing.assert_array_equal(
        data.read_idx(path), [[1, 2, 3], [4, 5, 6]])

  def test_reads_big_endian_int16(self):
    # 0x0100 = 256 and 0xFFFE = -2 in big-endian two's complement.
    payload = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x00, 0xFF, 0xFE])
    path = _write_bytes(os.path.join(_make_temp_dir(self), 'hand'), payload)

    result = data.read_idx(path)

    np.testing.assert_array_equal(result, [256, -2])
    self.assertEqual(result.dtype, np.dtype(np.int16))

  def test_detects_gzip_by_magic_bytes_not_name(self):
    directory = _make_temp_dir(self)
    array = np.arange(6, dtype=np.uint8)
    gz_path = os.path.join(directory, 'compressed.gz')
    data.write_idx(gz_path, array)
    unsuffixed = os.path.join(directory, 'compressed_without_suffix')
    os.rename(gz_path, unsuffixed)
    raw_named_gz = os.path.join(directory, 'raw.gz')
    with gzip.open(unsuffixed, 'rb') as file:
      _write_bytes(raw_named_gz, file.read())

    np.testing.assert_array_equal(data.read_idx(unsuffixed), array)
    np.testing.assert_array_equal(data.read_idx(raw_named_gz), array)

  @parameterized.named_parameters(
      ('bad_magic', bytes([1, 0, 0x08, 1, 0, 0, 0, 1, 5]), False,
       'expected first two bytes 00 00, found 01 00'),
      ('unknown_dtype', bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]), False,
       'unknown IDX data type code 0x0A'),
      ('zero_dims', bytes([0, 0, 0x08, 0]), False, 'declares 0 dimensions'),
      ('short_header', bytes([0, 0, 0x08, 2, 0, 0, 0, 1]), False,
       'truncated IDX header'),
      ('truncated_data', bytes([0, 0, 0x08, 1, 0, 0, 0, 6, 1, 2, 3, 4, 5]),
       False, 'truncated IDX file: header says 6 data bytes, found 5'),
      ('truncated_int32_data', bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1]),
       False, 'header says 8 data bytes, found 4'),
      ('trailing_bytes', bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 1, 2, 3]), False,
       'trailing bytes after IDX data: header says 2 data bytes, found 3'),
      ('truncated_data_in_gzip',
       bytes([0, 0, 0x08, 1, 0, 0, 0, 6, 1, 2, 3, 4, 5]), True,
       'header says 6 data bytes, found 5'),
  )
  def test_malformed_file_raises_one_line_error_naming_path(
      self, payload, compress, expected_text):
    if compress:
      payload = gzip.compress(payload)
    path = _write_bytes(os.path.join(_make_temp_dir(self), 'bad-idx'), payload)

    with self.assertRaises(data.DataFileError) as raised:
      data.read_idx(path)

    message = str(raised.exception)
    self.assertStartsWith(message, path + ': ')
    self.assertIn(expected_text, message)
    self.assertNotIn('\n', message)

  def test_corrupt_gzip_raises_one_line_error_naming_path(self):
    valid = gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 1, 2, 3]))
    directory = _make_temp_dir(self)
    cut_short = _write_bytes(os.path.join(directory, 'cut.gz'), valid[:-6])
    garbled = _write_bytes(
        os.path.join(directory, 'garbled.gz'),
        valid[:10] + bytes(b ^ 0xFF for b in valid[10:]))

    for path in (cut_short, garbled):
      with self.assertRaises(data.DataFileError) as raised:
        data.read_idx(path)
      message = str(raised.exception)
      self.assertStartsWith(message, path + ': corrupt gzip data')
      self.assertNotIn('\n', message)

  def test_missing_file_raises_data_file_error(self):
    path = os.path.join(_make_temp_dir(self), 'absent-idx3-ubyte')

    with self.assertRaisesRegex(data.DataFileError, 'absent-idx3-ubyte: file'):
      data.read_idx(path)

  def test_write_rejects_dtype_without_idx_code(self):
    path = os.path.join(_make_temp_dir(self), 'int64.idx')

    with self.assertRaisesRegex(ValueError, 'int64 has no IDX type code'):
      data.write_idx(path, np.arange(3, dtype=np.int64))


class FashionMnistTest(absltest.TestCase):

  def test_real_files_load_with_expected_shapes_and_statistics(self):
    dataset = data.load_fashion_mnist()

    self.assertEqual(dataset.name, 'fashion_mnist')
    self.assertEqual(dataset.num_classes, 10)
    self.assertEqual(dataset.x_train.shape, (60000, 28, 28, 1))
    self.assertEqual(dataset.x_test.shape, (10000, 28, 28, 1))
    self.assertEqual(dataset.x_train.dtype, np.float32)
    self.assertEqual(dataset.y_train.dtype, np.int32)
    # Fashion-MNIST has 6000 training and 1000 test images per class.
    np.testing.assert_array_equal(np.bincount(dataset.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.y_test), [1000] * 10)
    # The constants were computed from these training pixels.
    self.assertAlmostEqual(float(dataset.x_train.mean()), 0.0, delta=1e-3)
    self.assertAlmostEqual(float(dataset.x_train.std()), 1.0, delta=1e-3)

  def test_loads_mixed_gz_and_raw_files_and_normalises(self):
    directory = _make_temp_dir(self)
    train_images, train_labels = _mnist_like_arrays(12, first_pixel=0)
    test_images, test_labels = _mnist_like_arrays(5, first_pixel=50)
    _write_idx_split(directory, 'train', train_images, train_labels, '.gz')
    _write_idx_split(directory, 't10k', test_images, test_labels, '')

    dataset = data.load_dataset('fashion_mnist', directory)

    self.assertEqual(dataset.x_train.shape, (12, 28, 28, 1))
    self.assertEqual(dataset.x_test.shape, (5, 28, 28, 1))
    np.testing.assert_array_equal(dataset.y_test, [0, 1, 2, 3, 4])
    # Pixel value 3 in training image 3: (3 / 255 - 0.2860) / 0.3530.
    self.assertAlmostEqual(
        float(dataset.x_train[3, 0, 0, 0]), (3 / 255 - 0.2860) / 0.3530,
        places=5)
    self.assertAlmostEqual(
        float(dataset.x_test[0, 27, 27, 0]), (1 - 0.2860) / 0.3530, places=5)

  def test_missing_files_error_says_how_to_get_them(self):
    directory = _make_temp_dir(self)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_fashion_mnist(directory)

    message = str(raised.exception)
    self.assertIn(os.path.join(directory, 'train-images-idx3-ubyte'), message)
    self.assertIn('apt-get install dataset-fashion-mnist', message)
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)

  def test_image_and_label_count_mismatch_raises(self):
    directory = _make_temp_dir(self)
    images, labels = _mnist_like_arrays(5, first_pixel=0)
    _write_idx_split(directory, 'train', images, labels[:4])
    _write_idx_split(directory, 't10k', images, labels)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_fashion_mnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(directory, 'train-labels-idx1-ubyte.gz'))
    self.assertIn('4 labels but', message)
    self.assertIn('holds 5 images', message)

  def test_label_out_of_range_raises(self):
    directory = _make_temp_dir(self)
    images, labels = _mnist_like_arrays(5, first_pixel=0)
    labels[2] = 10
    _write_idx_split(directory, 'train', images, labels)
    _write_idx_split(directory, 't10k', images, labels)

    with self.assertRaisesRegex(data.DataFileError,
                                r'labels must lie in \[0, 10\).* 0 to 10'):
      data.load_fashion_mnist(directory)


class KerasCacheLoaderTest(absltest.TestCase):
  """Loaders that use the Keras cache, with HOME moved to a temp dir."""

  def setUp(self):
    super().setUp()
    self.home = _make_temp_dir(self)
    self.cache_dir = os.path.join(self.home, '.keras', 'datasets')
    os.makedirs(self.cache_dir)
    home_patch = mock.patch.dict(os.environ, {'HOME': self.home})
    home_patch.start()
    self.addCleanup(home_patch.stop)

  def _forbid_download(self, loader_module):
    """Makes the Keras loader fail the test if it is ever called."""
    patch = mock.patch.object(
        loader_module,
        'load_data',
        side_effect=AssertionError('the Keras download path was used'))
    patch.start()
    self.addCleanup(patch.stop)

  def _simulate_offline_download(self, loader_module):
    """Makes the Keras loader fail like `get_file` does without network."""
    patch = mock.patch.object(
        loader_module,
        'load_data',
        side_effect=Exception(
            'URL fetch failure on https://example.invalid/file: None -- '
            '[Errno -3] Temporary failure in name resolution'))
    patch.start()
    self.addCleanup(patch.stop)

  def test_keras_datasets_dir_follows_home(self):
    self.assertEqual(data.keras_datasets_dir(), self.cache_dir)

  def test_mnist_reads_npz_from_keras_cache(self):
    self._forbid_download(tf.keras.datasets.mnist)
    train_images, train_labels = _mnist_like_arrays(20, first_pixel=10)
    test_images, test_labels = _mnist_like_arrays(4, first_pixel=0)
    np.savez(
        os.path.join(self.cache_dir, 'mnist.npz'),
        x_train=train_images, y_train=train_labels, x_test=test_images,
        y_test=test_labels)

    dataset = data.load_dataset('mnist')

    self.assertEqual(dataset.name, 'mnist')
    self.assertEqual(dataset.x_train.shape, (20, 28, 28, 1))
    self.assertEqual(dataset.x_test.shape, (4, 28, 28, 1))
    np.testing.assert_array_equal(dataset.y_train, np.arange(20) % 10)
    self.assertEqual(dataset.y_train.dtype, np.int32)
    # Training image 2 has pixel value 12: (12 / 255 - 0.1307) / 0.3081.
    self.assertAlmostEqual(
        float(dataset.x_train[2, 0, 0, 0]), (12 / 255 - 0.1307) / 0.3081,
        places=5)
    self.assertAlmostEqual(
        float(dataset.x_test[0, 1, 1, 0]), -0.1307 / 0.3081, places=5)

  def test_mnist_npz_missing_array_raises(self):
    self._forbid_download(tf.keras.datasets.mnist)
    path = os.path.join(self.cache_dir, 'mnist.npz')
    images, labels = _mnist_like_arrays(3, first_pixel=0)
    np.savez(path, x_train=images, y_train=labels, x_test=images)

    with self.assertRaisesRegex(data.DataFileError,
                                f"^{path}: missing arrays \\['y_test'\\]"):
      data.load_mnist()

  def test_mnist_offline_without_cache_says_where_to_put_file(self):
    self._simulate_offline_download(tf.keras.datasets.mnist)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_mnist()

    message = str(raised.exception)
    self.assertStartsWith(message, os.path.join(self.cache_dir, 'mnist.npz'))
    self.assertIn('copy mnist.npz', message)
    self.assertNotIn('\n', message)

  def test_mnist_reads_idx_files_from_data_dir(self):
    self._forbid_download(tf.keras.datasets.mnist)
    directory = _make_temp_dir(self)
    images, labels = _mnist_like_arrays(6, first_pixel=0)
    _write_idx_split(directory, 'train', images, labels)
    _write_idx_split(directory, 't10k', images[:2], labels[:2])

    dataset = data.load_mnist(directory)

    self.assertEqual(dataset.x_train.shape, (6, 28, 28, 1))
    np.testing.assert_array_equal(dataset.y_test, [0, 1])
    self.assertAlmostEqual(
        float(dataset.x_train[0, 27, 27, 0]), (1 - 0.1307) / 0.3081, places=5)

  def test_cifar10_reads_batches_from_keras_cache(self):
    self._forbid_download(tf.keras.datasets.cifar10)
    _write_cifar_folder(os.path.join(self.cache_dir, 'cifar-10-batches-py'))

    dataset = data.load_dataset('cifar10')

    self.assertEqual(dataset.name, 'cifar10')
    self.assertEqual(dataset.num_classes, 10)
    self.assertEqual(dataset.x_train.shape, (10, 32, 32, 3))
    self.assertEqual(dataset.x_test.shape, (3, 32, 32, 3))
    np.testing.assert_array_equal(dataset.y_train,
                                  [1, 2, 2, 3, 3, 4, 4, 5, 5, 6])
    np.testing.assert_array_equal(dataset.y_test, [9, 0, 3])
    # Training image 3 is the second of batch 2: red value 21.
    expected_pixel = [(21 / 255 - 0.4914) / 0.2023,
                      (100 / 255 - 0.4822) / 0.1994,
                      (200 / 255 - 0.4465) / 0.2010]
    np.testing.assert_allclose(dataset.x_train[3, 0, 0], expected_pixel,
                               rtol=1e-5)
    # Blue is 7 only at row 1, column 2.
    self.assertAlmostEqual(
        float(dataset.x_train[3, 1, 2, 2]), (7 / 255 - 0.4465) / 0.2010,
        places=5)
    self.assertAlmostEqual(
        float(dataset.x_train[3, 2, 1, 2]), (200 / 255 - 0.4465) / 0.2010,
        places=5)

  def test_cifar10_reads_data_dir_or_its_batches_subfolder(self):
    self._forbid_download(tf.keras.datasets.cifar10)
    parent = _make_temp_dir(self)
    folder = os.path.join(parent, 'cifar-10-batches-py')
    _write_cifar_folder(folder)

    for data_dir in (parent, folder):
      dataset = data.load_cifar10(data_dir)
      self.assertEqual(dataset.x_train.shape, (10, 32, 32, 3))
      np.testing.assert_array_equal(dataset.y_test, [9, 0, 3])

  def test_cifar10_corrupt_batch_raises_naming_it(self):
    self._forbid_download(tf.keras.datasets.cifar10)
    folder = os.path.join(self.cache_dir, 'cifar-10-batches-py')
    _write_cifar_folder(folder)
    bad_batch = _write_bytes(
        os.path.join(folder, 'data_batch_3'), b'not a pickle at all')

    with self.assertRaises(data.DataFileError) as raised:
      data.load_cifar10()

    message = str(raised.exception)
    self.assertStartsWith(message, bad_batch + ': not a pickled CIFAR batch')
    self.assertNotIn('\n', message)

  def test_cifar10_offline_without_cache_says_where_to_put_files(self):
    self._simulate_offline_download(tf.keras.datasets.cifar10)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_cifar10()

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(self.cache_dir, 'cifar-10-batches-py'))
    self.assertIn('cifar-10-python.tar.gz', message)
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)

  def test_cifar10_missing_data_dir_batches_raise(self):
    directory = _make_temp_dir(self)

    with self.assertRaisesRegex(data.DataFileError,
                                f'^{directory}/data_batch_1: file not found'):
      data.load_cifar10(directory)

  def test_cifar100_reads_folder_from_keras_cache(self):
    self._forbid_download(tf.keras.datasets.cifar100)
    _write_cifar100_folder(os.path.join(self.cache_dir, 'cifar-100-python'))

    dataset = data.load_dataset('cifar100')

    self.assertEqual(dataset.name, 'cifar100')
    self.assertEqual(dataset.num_classes, 100)
    self.assertEqual(dataset.x_train.shape, (4, 32, 32, 3))
    self.assertEqual(dataset.x_test.shape, (2, 32, 32, 3))
    np.testing.assert_array_equal(dataset.y_train, [0, 99, 5, 42])
    np.testing.assert_array_equal(dataset.y_test, [7, 63])
    self.assertEqual(dataset.y_train.dtype, np.int32)
    # Training image 2: red 12; normalised with the CIFAR-10 constants, as
    # the reference does.
    np.testing.assert_allclose(
        dataset.x_train[2, 0, 0],
        [(12 / 255 - 0.4914) / 0.2023, (100 / 255 - 0.4822) / 0.1994,
         (200 / 255 - 0.4465) / 0.2010], rtol=1e-5)
    self.assertAlmostEqual(
        float(dataset.x_test[1, 1, 2, 2]), (7 / 255 - 0.4465) / 0.2010,
        places=5)

  def test_cifar100_reads_data_dir_or_its_subfolder(self):
    self._forbid_download(tf.keras.datasets.cifar100)
    parent = _make_temp_dir(self)
    folder = os.path.join(parent, 'cifar-100-python')
    _write_cifar100_folder(folder)

    for data_dir in (parent, folder):
      dataset = data.load_cifar100(data_dir)
      np.testing.assert_array_equal(dataset.y_train, [0, 99, 5, 42])

  def test_cifar100_wrong_format_raises_one_line_naming_file(self):
    self._forbid_download(tf.keras.datasets.cifar100)
    folder = _make_temp_dir(self)
    _write_cifar100_folder(folder)
    # A CIFAR-10 batch (b'labels', no b'fine_labels') where `test` belongs.
    with open(os.path.join(folder, 'test'), 'wb') as file:
      pickle.dump(_cifar_batch([1, 2], red=0), file)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_cifar100(folder)

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(folder, 'test') + ": expected keys b'data' and "
        "b'fine_labels'")
    self.assertNotIn('\n', message)

  def test_cifar100_label_out_of_range_raises(self):
    folder = _make_temp_dir(self)
    _write_cifar100_folder(folder)
    batch = _cifar_batch([3, 100], red=0)
    batch[b'fine_labels'] = batch.pop(b'labels')
    with open(os.path.join(folder, 'test'), 'wb') as file:
      pickle.dump(batch, file)

    with self.assertRaisesRegex(data.DataFileError,
                                r'labels must lie in \[0, 100\)'):
      data.load_cifar100(folder)

  def test_cifar100_offline_without_cache_says_where_to_put_files(self):
    self._simulate_offline_download(tf.keras.datasets.cifar100)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_cifar100()

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(self.cache_dir, 'cifar-100-python'))
    self.assertIn('cifar-100-python.tar.gz', message)
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)

  def test_cifar100_missing_data_dir_files_raise(self):
    directory = _make_temp_dir(self)

    with self.assertRaisesRegex(
        data.DataFileError, f'^{directory}/train: file not found; extract '
        '.*cifar-100-python.tar.gz'):
      data.load_cifar100(directory)

  def test_unknown_dataset_name_lists_accepted_names(self):
    with self.assertRaisesRegex(
        ValueError, "unknown dataset 'svhn'; expected one of cifar10, "
        'cifar100, emnist, fashion_mnist, mnist'):
      data.load_dataset('svhn')


class EmnistTest(absltest.TestCase):
  """Federated EMNIST from small databases in TFF's own file layout."""

  def setUp(self):
    super().setUp()
    self.home = _make_temp_dir(self)
    home_patch = mock.patch.dict(os.environ, {'HOME': self.home})
    home_patch.start()
    self.addCleanup(home_patch.stop)

  def _forbid_download(self):
    patch = mock.patch.object(
        tff.simulation.datasets.emnist, 'load_data',
        side_effect=AssertionError('the TFF download path was used'))
    patch.start()
    self.addCleanup(patch.stop)

  def test_reads_writers_examples_and_labels(self):
    directory = _make_temp_dir(self)
    _write_small_emnist(directory)

    dataset = data.load_dataset('emnist', directory)

    self.assertEqual(dataset.name, 'emnist')
    self.assertEqual(dataset.num_classes, 62)
    self.assertEqual(dataset.x_train.shape, (6, 28, 28, 1))
    self.assertEqual(dataset.x_test.shape, (5, 28, 28, 1))
    self.assertEqual(dataset.x_train.dtype, np.float32)
    self.assertEqual(dataset.y_train.dtype, np.int32)
    natural = dataset.natural_clients
    self.assertEqual(natural.names,
                     ('f0000_14', 'f0001_41', 'f0002_10', 'f0003_00'))
    # Examples in table order: writer f0002_10 (position 2) first.
    np.testing.assert_array_equal(natural.train_clients, [2, 2, 2, 0, 0, 1])
    np.testing.assert_array_equal(dataset.y_train, [0, 61, 35, 10, 10, 36])
    np.testing.assert_array_equal(natural.test_clients, [2, 0, 0, 1, 3])
    np.testing.assert_array_equal(dataset.y_test, [1, 11, 12, 37, 2])
    # Pixels are TFF's values, unnormalised: example 1 of f0002_10 is 0.11,
    # and row 3, column 4 is 0.5.
    self.assertAlmostEqual(float(dataset.x_train[1, 0, 0, 0]), 0.11, places=6)
    self.assertEqual(float(dataset.x_train[1, 3, 4, 0]), 0.5)
    self.assertAlmostEqual(float(dataset.x_train[1, 4, 3, 0]), 0.11, places=6)

  def test_matches_what_tff_load_data_reads(self):
    directory = _make_temp_dir(self)
    _write_small_emnist(directory)
    dataset = data.load_emnist(directory)

    train, test = tff.simulation.datasets.emnist.load_data(
        only_digits=False, cache_dir=directory)

    self.assertEqual(train.client_ids, ['f0000_14', 'f0001_41', 'f0002_10'])
    self.assertLen(test.client_ids, 4)
    elements = list(train.create_tf_dataset_for_client('f0000_14'))
    self.assertLen(elements, 2)
    own = np.flatnonzero(dataset.natural_clients.train_clients == 0)
    for element, index in zip(elements, own):
      np.testing.assert_array_equal(element['pixels'].numpy(),
                                    dataset.x_train[index, :, :, 0])
      self.assertEqual(int(element['label']), dataset.y_train[index])

  def test_reads_tff_cache_without_data_dir(self):
    cache = os.path.join(self.home, '.tff')
    os.makedirs(cache)
    _write_small_emnist(cache)

    self.assertEqual(data.tff_cache_dir(), cache)
    self.assertEqual(data.load_emnist().x_train.shape, (6, 28, 28, 1))

  def test_missing_file_says_where_to_put_it(self):
    self._forbid_download()
    directory = _make_temp_dir(self)

    with self.assertRaises(data.DataFileError) as raised:
      data.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(directory, 'emnist_all.sqlite') +
        ': file not found; decompress')
    self.assertIn(data.EMNIST_URL, message)
    self.assertNotIn('\n', message)

  def test_offline_without_cache_says_where_to_put_it_and_cleans_up(self):
    cache_file = os.path.join(self.home, '.tff', 'emnist_all.sqlite')

    def fail_midway(only_digits, cache_dir):
      del only_digits  # Unused.
      os.makedirs(cache_dir, exist_ok=True)
      _write_bytes(os.path.join(cache_dir, 'emnist_all.sqlite'), b'partial')
      raise OSError('<urlopen error [Errno -3] Temporary failure in name '
                    'resolution>')

    with mock.patch.object(tff.simulation.datasets.emnist, 'load_data',
                           side_effect=fail_midway):
      with self.assertRaises(data.DataFileError) as raised:
        data.load_emnist()

    message = str(raised.exception)
    self.assertStartsWith(message, cache_file + ': federated EMNIST not found')
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)
    self.assertFalse(os.path.exists(cache_file))

  def test_file_that_is_not_sqlite_raises_one_line(self):
    directory = _make_temp_dir(self)
    path = _write_bytes(os.path.join(directory, 'emnist_all.sqlite'),
                        b'<html>\n<body>Not Found</body>\n</html>\n')

    with self.assertRaises(data.DataFileError) as raised:
      data.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(message, path + ': not an SQLite database')
    self.assertNotIn('\n', message)

  def test_database_without_tff_tables_raises_one_line(self):
    directory = _make_temp_dir(self)
    path = os.path.join(directory, 'emnist_all.sqlite')
    connection = sqlite3.connect(path)
    connection.execute('CREATE TABLE examples (split_name TEXT, x BLOB)')
    connection.commit()
    connection.close()

    with self.assertRaises(data.DataFileError) as raised:
      data.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(message, path + ": not TFF's EMNIST database")
    self.assertNotIn('\n', message)

  def test_examples_that_are_not_emnist_protos_raise_one_line(self):
    directory = _make_temp_dir(self)
    path = _write_small_emnist(directory)
    connection = sqlite3.connect(path)
    connection.execute(
        "UPDATE examples SET serialized_example_proto = ? WHERE split_name "
        "= 'all_test'", (b'\x0a\x05 junk',))
    connection.commit()
    connection.close()

    with self.assertRaises(data.DataFileError) as raised:
      data.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(
        message, path + ": split 'all_test': examples are not "
        'tf.train.Examples')
    self.assertNotIn('\n', message)

  def test_label_out_of_range_raises(self):
    directory = _make_temp_dir(self)
    data.write_emnist_sqlite(
        os.path.join(directory, 'emnist_all.sqlite'),
        train={'w': (_emnist_pixels(2, 0.0), [3, 62])},
        test={'w': (_emnist_pixels(1, 0.0), [3])})

    with self.assertRaisesRegex(
        data.DataFileError,
        r"split 'all_train': labels must lie in \[0, 62\), found values "
        'from 3 to 62'):
      data.load_emnist(directory)


class NaturalPartitionTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    directory = _make_temp_dir(self)
    _write_small_emnist(directory)
    self.dataset = data.load_emnist(directory)

  def test_clients_are_writers_with_their_own_test_examples(self):
    federated = data.build_federated_data(self.dataset, 'natural', 3, seed=0)

    # f0003_00 has no training example, so it is no client; its test
    # example stays in the global test set.
    self.assertEqual(federated.client_ids, ['0', '1', '2'])
    np.testing.assert_array_equal(federated.train_indices('0'), [3, 4])
    np.testing.assert_array_equal(federated.train_indices('1'), [5])
    np.testing.assert_array_equal(federated.train_indices('2'), [0, 1, 2])
    np.testing.assert_array_equal(federated.test_indices('0'), [1, 2])
    np.testing.assert_array_equal(federated.test_indices('1'), [3])
    np.testing.assert_array_equal(federated.test_indices('2'), [0])
    x, y = federated.train_arrays('2')
    np.testing.assert_array_equal(y, [0, 61, 35])
    self.assertEqual(x.shape, (3, 28, 28, 1))
    self.assertLen(federated.dataset.y_test, 5)

  def test_fewer_clients_take_a_seeded_subset_of_writers(self):
    first = data.build_federated_data(self.dataset, 'natural', 2, seed=4)
    again = data.build_federated_data(self.dataset, 'natural', 2, seed=4)

    self.assertEqual(first.num_clients, 2)
    writers = [tuple(first.train_indices(c)) for c in first.client_ids]
    self.assertEqual(writers,
                     [tuple(again.train_indices(c)) for c in again.client_ids])
    all_writers = {(3, 4), (5,), (0, 1, 2)}
    self.assertTrue(set(writers) <= all_writers)
    seen = set()
    for seed in range(20):
      subset = data.build_federated_data(self.dataset, 'natural', 2, seed)
      seen.update(tuple(subset.train_indices(c)) for c in subset.client_ids)
    self.assertEqual(seen, all_writers)

  def test_more_clients_than_writers_raises(self):
    with self.assertRaisesRegex(
        ValueError, '4 clients requested but the data has only 3 natural '
        'clients with training examples'):
      data.build_federated_data(self.dataset, 'natural', 4, seed=0)

  def test_data_set_without_natural_clients_raises(self):
    with self.assertRaisesRegex(ValueError, "'natural' needs a data set"):
      data.build_federated_data(_small_dataset(), 'natural', 2, seed=0)


class PartitionTest(parameterized.TestCase):

  def assertDisjoint(self, parts):
    combined = np.concatenate(parts)
    self.assertLen(np.unique(combined), len(combined))

  def test_iid_splits_all_examples_evenly(self):
    parts = data.partition_iid(np.zeros(10, dtype=np.int64), 3,
                               np.random.default_rng(0))

    self.assertEqual([len(part) for part in parts], [4, 3, 3])
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                  np.arange(10))
    for part in parts:
      self.assertEqual(part.dtype, np.int64)

  def test_iid_with_examples_per_client_gives_exact_disjoint_counts(self):
    parts = data.partition_iid(_balanced_labels(), 5, np.random.default_rng(0),
                               examples_per_client=7)

    self.assertEqual([len(part) for part in parts], [7] * 5)
    self.assertDisjoint(parts)

  def test_iid_is_balanced_and_dirichlet_with_small_beta_is_skewed(self):
    labels = _balanced_labels()
    iid_parts = data.partition_iid(labels, 20, np.random.default_rng(0))
    dirichlet_parts = data.partition_dirichlet(labels, 20, 0.1,
                                               np.random.default_rng(0))

    iid_shares = [_top_two_share(labels, part) for part in iid_parts]
    dirichlet_shares = [_top_two_share(labels, part)
                        for part in dirichlet_parts]
    # With 10 balanced classes the two largest hold about 20% of an IID
    # client's examples; Dirichlet(0.1) clients are dominated by them.
    self.assertLess(max(iid_shares), 0.5)
    self.assertGreater(np.median(dirichlet_shares), 0.7)

  def test_iid_rejects_more_examples_than_available(self):
    with self.assertRaisesRegex(ValueError,
                                '3 clients x 400 examples = 1200 examples'):
      data.partition_iid(_balanced_labels(), 3, np.random.default_rng(0),
                         examples_per_client=400)

  @parameterized.parameters(1, 5)
  def test_dirichlet_assigns_every_example_once_with_minimum(
      self, min_examples):
    labels = _balanced_labels()

    parts = data.partition_dirichlet(labels, 30, 0.1,
                                     np.random.default_rng(3),
                                     min_examples_per_client=min_examples)

    self.assertLen(parts, 30)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                  np.arange(len(labels)))
    self.assertGreaterEqual(min(len(part) for part in parts), min_examples)

  def test_dirichlet_rejects_unreachable_minimum(self):
    with self.assertRaisesRegex(ValueError, 'exceeds the 1000 available'):
      data.partition_dirichlet(_balanced_labels(), 30, 0.1,
                               np.random.default_rng(0),
                               min_examples_per_client=40)
    with self.assertRaisesRegex(ValueError, 'no Dirichlet.*in 5 attempts'):
      data.partition_dirichlet(_balanced_labels(), 30, 0.01,
                               np.random.default_rng(0),
                               min_examples_per_client=30, max_attempts=5)

  def test_dirichlet_rejects_nonpositive_beta(self):
    with self.assertRaisesRegex(ValueError, 'beta must be > 0'):
      data.partition_dirichlet(_balanced_labels(), 3, 0.0,
                               np.random.default_rng(0))

  @parameterized.parameters((20, 2, 20), (12, 3, 9), (40, 1, 25))
  def test_pathological_gives_exact_classes_and_counts(
      self, num_clients, classes_per_client, examples_per_class):
    labels = _balanced_labels()

    parts = data.partition_pathological(labels, num_clients,
                                        classes_per_client,
                                        examples_per_class,
                                        np.random.default_rng(0))

    self.assertLen(parts, num_clients)
    self.assertDisjoint(parts)
    for part in parts:
      classes, counts = np.unique(labels[part], return_counts=True)
      self.assertLen(classes, classes_per_client)
      np.testing.assert_array_equal(counts,
                                    [examples_per_class] * classes_per_client)

  def test_pathological_exactly_enough_examples_uses_all(self):
    # 3 classes x 10 examples, 5 per class: each class serves exactly two of
    # the three clients, so every example must be used.
    labels = np.repeat(np.arange(3), 10)

    for seed in range(50):
      parts = data.partition_pathological(labels, 3, 2, 5,
                                          np.random.default_rng(seed))
      np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                    np.arange(30))
      for part in parts:
        self.assertLen(np.unique(labels[part]), 2)

  def test_pathological_not_enough_examples_raises_one_line(self):
    with self.assertRaises(ValueError) as raised:
      data.partition_pathological(_balanced_labels(), 30, 2, 40,
                                  np.random.default_rng(0))

    message = str(raised.exception)
    self.assertIn('not enough examples for 30 clients x 2 classes x 40',
                  message)
    self.assertIn('only 20 of the 60 client-class slots', message)
    self.assertNotIn('\n', message)

  def test_pathological_rejects_more_classes_than_exist(self):
    with self.assertRaisesRegex(ValueError, r'classes_per_client must be in '
                                r'\[1, 10\]'):
      data.partition_pathological(_balanced_labels(), 2, 11, 1,
                                  np.random.default_rng(0))

  @parameterized.named_parameters(
      ('iid', lambda labels, rng: data.partition_iid(labels, 10, rng)),
      ('dirichlet',
       lambda labels, rng: data.partition_dirichlet(labels, 10, 0.5, rng)),
      ('pathological',
       lambda labels, rng: data.partition_pathological(labels, 10, 2, 20, rng)),
  )
  def test_same_seed_same_partition_different_seed_different(self, partition):
    labels = _balanced_labels()

    first = partition(labels, np.random.default_rng(7))
    again = partition(labels, np.random.default_rng(7))
    other = partition(labels, np.random.default_rng(8))

    for part, repeat in zip(first, again):
      np.testing.assert_array_equal(part, repeat)
    self.assertFalse(all(
        np.array_equal(part, different) for part, different in zip(first,
                                                                   other)))

  def test_rejects_zero_clients(self):
    with self.assertRaisesRegex(ValueError, 'num_clients must be >= 1, got 0'):
      data.partition_iid(_balanced_labels(), 0, np.random.default_rng(0))


class ClientTestSplitTest(absltest.TestCase):

  def test_test_split_follows_train_class_proportions(self):
    test_labels = _balanced_labels(examples_per_class=20)
    train_labels = np.array([0] * 30 + [3] * 10)

    indices = data.client_test_indices(train_labels, test_labels, 8,
                                       np.random.default_rng(0))

    # 8 split 3:1 is 6 of class 0 and 2 of class 3.
    self.assertLen(np.unique(indices), 8)
    np.testing.assert_array_equal(
        np.bincount(test_labels[indices], minlength=10),
        [6, 0, 0, 2, 0, 0, 0, 0, 0, 0])

  def test_largest_remainder_rounding(self):
    test_labels = _balanced_labels(examples_per_class=20)
    train_labels = np.array([0, 1, 1])

    indices = data.client_test_indices(train_labels, test_labels, 4,
                                       np.random.default_rng(0))

    # Quotas 4/3 and 8/3: floors 1 and 2, the spare unit goes to class 1
    # (remainder 2/3 beats 1/3).
    np.testing.assert_array_equal(
        np.bincount(test_labels[indices], minlength=2)[:2], [1, 3])

  def test_too_few_test_examples_of_a_class_raises(self):
    test_labels = np.array([0, 0, 1])

    with self.assertRaisesRegex(ValueError, 'class 1 needs 2 test examples'):
      data.client_test_indices(np.array([0, 1]), test_labels, 4,
                               np.random.default_rng(0))

  def test_proportional_size_is_share_of_test_set_capped_by_supply(self):
    test_labels = _balanced_labels(examples_per_class=10)
    # 10 of 40 training examples: a quarter of 100 test examples is 25, but
    # 5 of each of 2 classes at 25 would need 12.5 per class > 10; the cap
    # is 10 * 10 / 5 = 20.
    self.assertEqual(
        data.proportional_test_size(
            np.array([0] * 5 + [1] * 5), test_labels, 40), 20)
    # 10 of 80: 12.5 rounds to 13; class 0 with 8/10 of the client allows at
    # most 10 * 10 // 8 = 12.
    self.assertEqual(
        data.proportional_test_size(
            np.array([0] * 8 + [1] * 2), test_labels, 80), 12)
    # 2 of 600: a third of an example rounds to 0, raised to the minimum 1.
    self.assertEqual(
        data.proportional_test_size(np.array([4, 4]), test_labels, 600), 1)
    # 3 of 600: exactly half an example rounds up to 1.
    self.assertEqual(
        data.proportional_test_size(np.array([4, 4, 4]), test_labels, 600), 1)
    # 9 of 600: 1.5 rounds up to 2.
    self.assertEqual(
        data.proportional_test_size(np.array([4] * 9), test_labels, 600), 2)


class FederatedDataTest(parameterized.TestCase, tf.test.TestCase):

  @parameterized.parameters('iid', 'dirichlet', 'pathological')
  def test_client_test_splits_follow_client_class_proportions(
      self, distribution):
    dataset = _small_dataset()

    federated = data.build_federated_data(dataset, distribution, 6, seed=0,
                                          beta=0.3, examples_per_class=10)

    for client_id in federated.client_ids:
      _, train_labels = federated.train_arrays(client_id)
      _, test_labels = federated.test_arrays(client_id)
      self.assertGreater(len(test_labels), 0)
      train_counts = np.bincount(train_labels, minlength=10)
      test_counts = np.bincount(test_labels, minlength=10)
      # Largest-remainder allocation: each class within one of its share.
      shares = len(test_labels) * train_counts / len(train_labels)
      self.assertTrue(np.all(np.abs(test_counts - shares) < 1),
                      msg=f'{test_counts} vs {shares}')

  def test_iid_test_splits_share_out_the_test_set(self):
    dataset = _small_dataset(train_per_class=30, test_per_class=10)

    federated = data.build_federated_data(dataset, 'iid', 5, seed=0)

    # 300 training examples, 60 each; 100 test examples, 20 each.
    self.assertEqual(
        [federated.num_train_examples(c) for c in federated.client_ids],
        [60] * 5)
    self.assertEqual(
        [federated.num_test_examples(c) for c in federated.client_ids],
        [20] * 5)

  def test_fixed_test_split_size(self):
    federated = data.build_federated_data(
        _small_dataset(), 'pathological', 4, seed=1, classes_per_client=2,
        examples_per_class=5, test_examples_per_client=6)

    for client_id in federated.client_ids:
      _, test_labels = federated.test_arrays(client_id)
      np.testing.assert_array_equal(
          np.sort(np.bincount(test_labels, minlength=10))[-2:], [3, 3])

  def test_arrays_are_rows_of_the_dataset(self):
    dataset = _small_dataset()

    federated = data.build_federated_data(dataset, 'dirichlet', 4, seed=0)

    self.assertEqual(federated.client_ids, ['0', '1', '2', '3'])
    self.assertEqual(federated.num_clients, 4)
    x_train, y_train = federated.train_arrays('2')
    indices = federated.train_indices('2')
    # Image i holds the value i, so the images name their own rows.
    np.testing.assert_array_equal(x_train[:, 0, 0, 0], indices)
    np.testing.assert_array_equal(y_train, dataset.y_train[indices])
    self.assertEqual(federated.num_train_examples('2'), len(indices))
    x_test, _ = federated.test_arrays('2')
    np.testing.assert_array_equal(x_test[:, 0, 0, 0],
                                  federated.test_indices('2'))

  def test_constructor_rejects_bad_index_lists(self):
    dataset = _small_dataset()
    valid = [np.array([0, 1])]

    with self.assertRaisesRegex(ValueError, 'needs at least one client'):
      data.FederatedData(dataset, [], [])
    with self.assertRaisesRegex(ValueError, '1 train index arrays but 2 test'):
      data.FederatedData(dataset, valid, valid * 2)
    with self.assertRaisesRegex(ValueError,
                                r'train indices must lie in \[0, 300\)'):
      data.FederatedData(dataset, [np.array([0, 300])], valid)

  def test_unknown_client_id_raises_key_error(self):
    federated = data.build_federated_data(_small_dataset(), 'iid', 3, seed=0)

    with self.assertRaisesRegex(KeyError, "unknown client id '3'"):
      federated.train_arrays('3')

  @parameterized.parameters('iid', 'dirichlet', 'pathological')
  def test_same_seed_same_data_different_seed_different(self, distribution):
    dataset = _small_dataset()

    def build(seed):
      return data.build_federated_data(dataset, distribution, 5, seed,
                                       examples_per_class=10)

    first, again, other = build(11), build(11), build(12)
    for client_id in first.client_ids:
      np.testing.assert_array_equal(first.train_indices(client_id),
                                    again.train_indices(client_id))
      np.testing.assert_array_equal(first.test_indices(client_id),
                                    again.test_indices(client_id))
    self.assertFalse(all(
        np.array_equal(first.train_indices(c), other.train_indices(c))
        for c in first.client_ids))

  def test_builder_rejects_bad_distribution_and_client_count(self):
    dataset = _small_dataset()

    with self.assertRaisesRegex(
        ValueError, "unknown distribution 'lotteryfl'; expected one of "
        'dirichlet, iid, natural, pathological'):
      data.build_federated_data(dataset, 'lotteryfl', 3, seed=0)
    with self.assertRaisesRegex(ValueError, 'num_clients must be >= 1'):
      data.build_federated_data(dataset, 'iid', 0, seed=0)

  def test_to_client_data_has_ids_element_spec_and_client_examples(self):
    federated = data.build_federated_data(_small_dataset(), 'dirichlet', 4,
                                          seed=0)

    client_data = federated.to_client_data()

    self.assertEqual(client_data.client_ids, ['0', '1', '2', '3'])
    self.assertEqual(
        client_data.element_type_structure,
        collections.OrderedDict(
            x=tf.TensorSpec((2, 2, 1), tf.float32),
            y=tf.TensorSpec((), tf.int32)))
    for client_id in client_data.client_ids:
      elements = list(client_data.create_tf_dataset_for_client(client_id))
      _, expected_labels = federated.train_arrays(client_id)
      np.testing.assert_array_equal([e['y'].numpy() for e in elements],
                                    expected_labels)
    all_clients = client_data.create_tf_dataset_from_all_clients(seed=0)
    self.assertEqual(sum(1 for _ in all_clients), 300)
    from_computation = client_data.dataset_computation('1')
    np.testing.assert_array_equal(
        [e['x'].numpy()[0, 0, 0] for e in from_computation],
        federated.train_indices('1'))

  def test_to_client_data_test_split_and_bad_split(self):
    federated = data.build_federated_data(_small_dataset(), 'iid', 2, seed=0)

    client_data = federated.to_client_data('test')

    elements = list(client_data.create_tf_dataset_for_client('1'))
    np.testing.assert_array_equal([e['x'].numpy()[0, 0, 0] for e in elements],
                                  federated.test_indices('1'))
    with self.assertRaisesRegex(ValueError, "split must be 'train' or 'test'"):
      federated.to_client_data('validation')


class ClientDatasetTest(tf.test.TestCase):

  def _examples(self):
    x = np.arange(10, dtype=np.float64).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int64)
    return x, y

  def _labels_by_batch(self, dataset):
    return [batch_y.numpy().tolist() for _, batch_y in dataset]

  def test_batches_keep_last_partial_batch_with_expected_types(self):
    x, y = self._examples()

    dataset = data.make_client_dataset(x, y, batch_size=4, shuffle_seed=3)

    batches = list(dataset)
    self.assertEqual([len(batch_y) for _, batch_y in batches], [4, 4, 2])
    self.assertEqual(batches[0][0].dtype, tf.float32)
    self.assertEqual(batches[0][1].dtype, tf.int32)
    labels = np.concatenate([batch_y.numpy() for _, batch_y in batches])
    self.assertCountEqual(labels, range(10))
    # Images still match their labels after shuffling.
    np.testing.assert_array_equal(
        np.concatenate([batch_x.numpy() for batch_x, _ in batches]).ravel(),
        labels)

  def test_shuffle_is_deterministic_per_seed(self):
    x, y = self._examples()

    first = self._labels_by_batch(data.make_client_dataset(x, y, 4, 3))
    again = self._labels_by_batch(data.make_client_dataset(x, y, 4, 3))
    other = self._labels_by_batch(data.make_client_dataset(x, y, 4, 4))
    unshuffled = self._labels_by_batch(data.make_client_dataset(x, y, 4, None))

    self.assertEqual(first, again)
    self.assertNotEqual(first, other)
    self.assertEqual(unshuffled, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])

  def test_epochs_each_cover_all_examples(self):
    x, y = self._examples()

    batches = self._labels_by_batch(
        data.make_client_dataset(x, y, 4, shuffle_seed=1, num_epochs=2))

    self.assertEqual([len(batch) for batch in batches], [4, 4, 2, 4, 4, 2])
    self.assertCountEqual(sum(batches[:3], []), range(10))
    self.assertCountEqual(sum(batches[3:], []), range(10))

  def test_eval_dataset_keeps_order(self):
    x, y = self._examples()

    batches = self._labels_by_batch(data.make_eval_dataset(x, y, 3))

    self.assertEqual(batches, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]])

  def test_bad_arguments_raise(self):
    x, y = self._examples()

    with self.assertRaisesRegex(ValueError, 'x has 10 examples but y has 9'):
      data.make_client_dataset(x, y[:9], 4, 0)
    with self.assertRaisesRegex(ValueError, 'batch_size must be >= 1'):
      data.make_eval_dataset(x, y, 0)
    with self.assertRaisesRegex(ValueError, 'num_epochs must be >= 1'):
      data.make_client_dataset(x, y, 4, 0, num_epochs=0)


if __name__ == '__main__':
  absltest.main()
