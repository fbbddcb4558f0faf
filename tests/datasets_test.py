"""Tests for tff_feddst.data.datasets: the five data sets' loaders."""

import os
import pickle
import sqlite3
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.data import datasets
from tff_feddst.data import file_formats
from tests import data_files


def _write_idx_split(directory: str, prefix: str, images: np.ndarray,
                     labels: np.ndarray, suffix: str = '.gz') -> None:
  """Writes one split in the MNIST IDX file layout."""
  data_files.write_idx(
      os.path.join(directory, f'{prefix}-images-idx3-ubyte{suffix}'), images)
  data_files.write_idx(
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



class FashionMnistTest(absltest.TestCase):

  def test_real_files_load_with_expected_shapes_and_statistics(self):
    dataset = datasets.load_fashion_mnist()

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
    self.assertAlmostEqual(float(np.asarray(dataset.x_train).mean()), 0.0, delta=1e-3)
    self.assertAlmostEqual(float(np.asarray(dataset.x_train).std()), 1.0, delta=1e-3)

  def test_loads_mixed_gz_and_raw_files_and_normalises(self):
    directory = data_files.make_temp_dir(self)
    train_images, train_labels = _mnist_like_arrays(12, first_pixel=0)
    test_images, test_labels = _mnist_like_arrays(5, first_pixel=50)
    _write_idx_split(directory, 'train', train_images, train_labels, '.gz')
    _write_idx_split(directory, 't10k', test_images, test_labels, '')

    dataset = datasets.load_dataset('fashion_mnist', directory)

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
    directory = data_files.make_temp_dir(self)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_fashion_mnist(directory)

    message = str(raised.exception)
    self.assertIn(os.path.join(directory, 'train-images-idx3-ubyte'), message)
    self.assertIn('apt-get install dataset-fashion-mnist', message)
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)

  def test_image_and_label_count_mismatch_raises(self):
    directory = data_files.make_temp_dir(self)
    images, labels = _mnist_like_arrays(5, first_pixel=0)
    _write_idx_split(directory, 'train', images, labels[:4])
    _write_idx_split(directory, 't10k', images, labels)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_fashion_mnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(directory, 'train-labels-idx1-ubyte.gz'))
    self.assertIn('4 labels but', message)
    self.assertIn('holds 5 images', message)

  def test_label_out_of_range_raises(self):
    directory = data_files.make_temp_dir(self)
    images, labels = _mnist_like_arrays(5, first_pixel=0)
    labels[2] = 10
    _write_idx_split(directory, 'train', images, labels)
    _write_idx_split(directory, 't10k', images, labels)

    with self.assertRaisesRegex(file_formats.DataFileError,
                                r'labels must lie in \[0, 10\).* 0 to 10'):
      datasets.load_fashion_mnist(directory)


class KerasCacheLoaderTest(absltest.TestCase):
  """Loaders that use the Keras cache, with HOME moved to a temp dir."""

  def setUp(self):
    super().setUp()
    self.home = data_files.make_temp_dir(self)
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
    self.assertEqual(datasets.keras_datasets_dir(), self.cache_dir)

  def test_mnist_reads_npz_from_keras_cache(self):
    self._forbid_download(tf.keras.datasets.mnist)
    train_images, train_labels = _mnist_like_arrays(20, first_pixel=10)
    test_images, test_labels = _mnist_like_arrays(4, first_pixel=0)
    np.savez(
        os.path.join(self.cache_dir, 'mnist.npz'),
        x_train=train_images, y_train=train_labels, x_test=test_images,
        y_test=test_labels)

    dataset = datasets.load_dataset('mnist')

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

    with self.assertRaisesRegex(file_formats.DataFileError,
                                f"^{path}: missing arrays \\['y_test'\\]"):
      datasets.load_mnist()

  def test_mnist_offline_without_cache_says_where_to_put_file(self):
    self._simulate_offline_download(tf.keras.datasets.mnist)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_mnist()

    message = str(raised.exception)
    self.assertStartsWith(message, os.path.join(self.cache_dir, 'mnist.npz'))
    self.assertIn('copy mnist.npz', message)
    self.assertNotIn('\n', message)

  def test_mnist_reads_idx_files_from_data_dir(self):
    self._forbid_download(tf.keras.datasets.mnist)
    directory = data_files.make_temp_dir(self)
    images, labels = _mnist_like_arrays(6, first_pixel=0)
    _write_idx_split(directory, 'train', images, labels)
    _write_idx_split(directory, 't10k', images[:2], labels[:2])

    dataset = datasets.load_mnist(directory)

    self.assertEqual(dataset.x_train.shape, (6, 28, 28, 1))
    np.testing.assert_array_equal(dataset.y_test, [0, 1])
    self.assertAlmostEqual(
        float(dataset.x_train[0, 27, 27, 0]), (1 - 0.1307) / 0.3081, places=5)

  def test_cifar10_reads_batches_from_keras_cache(self):
    self._forbid_download(tf.keras.datasets.cifar10)
    _write_cifar_folder(os.path.join(self.cache_dir, 'cifar-10-batches-py'))

    dataset = datasets.load_dataset('cifar10')

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
    parent = data_files.make_temp_dir(self)
    folder = os.path.join(parent, 'cifar-10-batches-py')
    _write_cifar_folder(folder)

    for data_dir in (parent, folder):
      dataset = datasets.load_cifar10(data_dir)
      self.assertEqual(dataset.x_train.shape, (10, 32, 32, 3))
      np.testing.assert_array_equal(dataset.y_test, [9, 0, 3])

  def test_cifar10_corrupt_batch_raises_naming_it(self):
    self._forbid_download(tf.keras.datasets.cifar10)
    folder = os.path.join(self.cache_dir, 'cifar-10-batches-py')
    _write_cifar_folder(folder)
    bad_batch = data_files.write_bytes(
        os.path.join(folder, 'data_batch_3'), b'not a pickle at all')

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_cifar10()

    message = str(raised.exception)
    self.assertStartsWith(message, bad_batch + ': not a pickled CIFAR batch')
    self.assertNotIn('\n', message)

  def test_cifar10_offline_without_cache_says_where_to_put_files(self):
    self._simulate_offline_download(tf.keras.datasets.cifar10)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_cifar10()

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(self.cache_dir, 'cifar-10-batches-py'))
    self.assertIn('cifar-10-python.tar.gz', message)
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)

  def test_cifar10_missing_data_dir_batches_raise(self):
    directory = data_files.make_temp_dir(self)

    with self.assertRaisesRegex(file_formats.DataFileError,
                                f'^{directory}/data_batch_1: file not found'):
      datasets.load_cifar10(directory)

  def test_cifar100_reads_folder_from_keras_cache(self):
    self._forbid_download(tf.keras.datasets.cifar100)
    _write_cifar100_folder(os.path.join(self.cache_dir, 'cifar-100-python'))

    dataset = datasets.load_dataset('cifar100')

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
    parent = data_files.make_temp_dir(self)
    folder = os.path.join(parent, 'cifar-100-python')
    _write_cifar100_folder(folder)

    for data_dir in (parent, folder):
      dataset = datasets.load_cifar100(data_dir)
      np.testing.assert_array_equal(dataset.y_train, [0, 99, 5, 42])

  def test_cifar100_wrong_format_raises_one_line_naming_file(self):
    self._forbid_download(tf.keras.datasets.cifar100)
    folder = data_files.make_temp_dir(self)
    _write_cifar100_folder(folder)
    # A CIFAR-10 batch (b'labels', no b'fine_labels') where `test` belongs.
    with open(os.path.join(folder, 'test'), 'wb') as file:
      pickle.dump(_cifar_batch([1, 2], red=0), file)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_cifar100(folder)

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(folder, 'test') + ": expected keys b'data' and "
        "b'fine_labels'")
    self.assertNotIn('\n', message)

  def test_cifar100_label_out_of_range_raises(self):
    folder = data_files.make_temp_dir(self)
    _write_cifar100_folder(folder)
    batch = _cifar_batch([3, 100], red=0)
    batch[b'fine_labels'] = batch.pop(b'labels')
    with open(os.path.join(folder, 'test'), 'wb') as file:
      pickle.dump(batch, file)

    with self.assertRaisesRegex(file_formats.DataFileError,
                                r'labels must lie in \[0, 100\)'):
      datasets.load_cifar100(folder)

  def test_cifar100_offline_without_cache_says_where_to_put_files(self):
    self._simulate_offline_download(tf.keras.datasets.cifar100)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_cifar100()

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(self.cache_dir, 'cifar-100-python'))
    self.assertIn('cifar-100-python.tar.gz', message)
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)

  def test_cifar100_missing_data_dir_files_raise(self):
    directory = data_files.make_temp_dir(self)

    with self.assertRaisesRegex(
        file_formats.DataFileError,
        f'^{directory}/train: file not found; extract '
        '.*cifar-100-python.tar.gz'):
      datasets.load_cifar100(directory)

  def test_unknown_dataset_name_lists_accepted_names(self):
    with self.assertRaisesRegex(
        ValueError, "unknown dataset 'svhn'; expected one of cifar10, "
        'cifar100, emnist, fashion_mnist, mnist'):
      datasets.load_dataset('svhn')


class EmnistTest(absltest.TestCase):
  """Federated EMNIST from small databases in TFF's own file layout."""

  def setUp(self):
    super().setUp()
    self.home = data_files.make_temp_dir(self)
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
    directory = data_files.make_temp_dir(self)
    data_files.write_small_emnist(directory)

    dataset = datasets.load_dataset('emnist', directory)

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
    directory = data_files.make_temp_dir(self)
    data_files.write_small_emnist(directory)
    dataset = datasets.load_emnist(directory)

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
    data_files.write_small_emnist(cache)

    self.assertEqual(datasets.tff_cache_dir(), cache)
    self.assertEqual(datasets.load_emnist().x_train.shape, (6, 28, 28, 1))

  def test_missing_file_says_where_to_put_it(self):
    self._forbid_download()
    directory = data_files.make_temp_dir(self)

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(
        message, os.path.join(directory, 'emnist_all.sqlite') +
        ': file not found; decompress')
    self.assertIn(file_formats.EMNIST_URL, message)
    self.assertNotIn('\n', message)

  def test_offline_without_cache_says_where_to_put_it_and_cleans_up(self):
    cache_file = os.path.join(self.home, '.tff', 'emnist_all.sqlite')

    def fail_midway(only_digits, cache_dir):
      del only_digits  # Unused.
      os.makedirs(cache_dir, exist_ok=True)
      data_files.write_bytes(os.path.join(cache_dir, 'emnist_all.sqlite'),
                             b'partial')
      raise OSError('<urlopen error [Errno -3] Temporary failure in name '
                    'resolution>')

    with mock.patch.object(tff.simulation.datasets.emnist, 'load_data',
                           side_effect=fail_midway):
      with self.assertRaises(file_formats.DataFileError) as raised:
        datasets.load_emnist()

    message = str(raised.exception)
    self.assertStartsWith(message, cache_file + ': federated EMNIST not found')
    self.assertIn('--data_dir', message)
    self.assertNotIn('\n', message)
    self.assertFalse(os.path.exists(cache_file))

  def test_file_that_is_not_sqlite_raises_one_line(self):
    directory = data_files.make_temp_dir(self)
    path = data_files.write_bytes(
        os.path.join(directory, 'emnist_all.sqlite'),
        b'<html>\n<body>Not Found</body>\n</html>\n')

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(message, path + ': not an SQLite database')
    self.assertNotIn('\n', message)

  def test_database_without_tff_tables_raises_one_line(self):
    directory = data_files.make_temp_dir(self)
    path = os.path.join(directory, 'emnist_all.sqlite')
    connection = sqlite3.connect(path)
    connection.execute('CREATE TABLE examples (split_name TEXT, x BLOB)')
    connection.commit()
    connection.close()

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(message, path + ": not TFF's EMNIST database")
    self.assertNotIn('\n', message)

  def test_examples_that_are_not_emnist_protos_raise_one_line(self):
    directory = data_files.make_temp_dir(self)
    path = data_files.write_small_emnist(directory)
    connection = sqlite3.connect(path)
    connection.execute(
        "UPDATE examples SET serialized_example_proto = ? WHERE split_name "
        "= 'all_test'", (b'\x0a\x05 junk',))
    connection.commit()
    connection.close()

    with self.assertRaises(file_formats.DataFileError) as raised:
      datasets.load_emnist(directory)

    message = str(raised.exception)
    self.assertStartsWith(
        message, path + ": split 'all_test': examples are not "
        'tf.train.Examples')
    self.assertNotIn('\n', message)

  def test_label_out_of_range_raises(self):
    directory = data_files.make_temp_dir(self)
    data_files.write_emnist_sqlite(
        os.path.join(directory, 'emnist_all.sqlite'),
        train={'w': (data_files.emnist_pixels(2, 0.0), [3, 62])},
        test={'w': (data_files.emnist_pixels(1, 0.0), [3])})

    with self.assertRaisesRegex(
        file_formats.DataFileError,
        r"split 'all_train': labels must lie in \[0, 62\), found values "
        'from 3 to 62'):
      datasets.load_emnist(directory)


if __name__ == '__main__':
  absltest.main()
