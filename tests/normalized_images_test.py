"""Tests for tff_feddst.data.normalized_images: reads equal eager normalising."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.data import normalized_images

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def _pixels(num_examples: int = 7) -> np.ndarray:
  """Every uint8 value appears: (7, 6, 7, 3) covers 0..255 with wrap."""
  values = np.arange(num_examples * 6 * 7 * 3, dtype=np.int64) % 256
  return values.astype(np.uint8).reshape(num_examples, 6, 7, 3)


def _bits(array: np.ndarray) -> np.ndarray:
  return np.asarray(array, np.float32).view(np.uint32)


class NormalizedImagesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.pixels = _pixels()
    self.eager = normalized_images.normalize_pixels(self.pixels, MEAN, STD)
    self.images = normalized_images.NormalizedImages(self.pixels, MEAN, STD)

  def test_values_worked_out_by_hand(self):
    # Pixel (0, 0, 0, c) holds c: (c / 255 - mean_c) / std_c.
    for channel in range(3):
      expected = (np.float32(channel) / np.float32(255) -
                  np.float32(MEAN[channel])) / np.float32(STD[channel])
      self.assertEqual(self.images[0, 0, 0, channel], expected)
    self.assertAlmostEqual(float(self.images[0, 0, 0, 2]),
                           (2 / 255 - 0.4465) / 0.2010, places=5)

  def test_every_read_has_the_eager_arrays_bits(self):
    keys = [
        0, -1, 3,
        slice(None), slice(2, 5), slice(None, None, -2),
        np.array([4, 0, 4, 6]), [1, 2],
        np.array([True, False, True, False, False, True, True]),
        (2, 1), (np.array([5, 1]), slice(None), 3), (slice(1, 3), 0, 0, 1),
        (Ellipsis, 1), (6, 5, 6, 2),
    ]
    for key in keys:
      with self.subTest(key=repr(key)):
        read = self.images[key]
        expected = self.eager[key]
        self.assertEqual(np.shape(read), np.shape(expected))
        np.testing.assert_array_equal(_bits(read), _bits(expected))
    np.testing.assert_array_equal(_bits(np.asarray(self.images)),
                                  _bits(self.eager))

  def test_holds_only_the_pixels(self):
    self.assertEqual(self.images.shape, (7, 6, 7, 3))
    self.assertEqual(self.images.dtype, np.float32)
    self.assertLen(self.images, 7)
    self.assertEqual(self.images.nbytes, self.pixels.nbytes)
    self.assertIs(self.images.pixels, self.pixels)
    self.assertEqual(self.eager.nbytes, 4 * self.images.nbytes)

  def test_as_float32_array(self):
    self.assertIs(normalized_images.as_float32_array(self.eager), self.eager)
    converted = normalized_images.as_float32_array(self.images)
    self.assertEqual(converted.dtype, np.float32)
    np.testing.assert_array_equal(_bits(converted), _bits(self.eager))

  def test_refuses_what_it_cannot_normalise(self):
    with self.assertRaisesRegex(ValueError, 'expected uint8 images'):
      normalized_images.NormalizedImages(self.eager, MEAN, STD)
    with self.assertRaisesRegex(ValueError, 'need 3 mean and std values'):
      normalized_images.NormalizedImages(self.pixels, (0.5,), (0.5,))

  def test_federated_data_reads_the_eager_bits(self):
    labels = np.arange(7, dtype=np.int32) % 10
    lazy = datasets.Dataset('small', self.images, labels, self.images, labels,
                            10)
    eager = datasets.Dataset('small', self.eager, labels, self.eager, labels,
                             10)
    indices = [np.array([6, 0, 3]), np.array([1, 2, 4, 5])]
    lazy_data = federated.FederatedData(lazy, indices, indices)
    eager_data = federated.FederatedData(eager, indices, indices)
    for client_id in lazy_data.client_ids:
      lazy_x, lazy_y = lazy_data.train_arrays(client_id)
      eager_x, eager_y = eager_data.train_arrays(client_id)
      np.testing.assert_array_equal(_bits(lazy_x), _bits(eager_x))
      np.testing.assert_array_equal(lazy_y, eager_y)
      client_dataset = lazy_data.to_client_data(
          'test').create_tf_dataset_for_client(client_id)
      images = np.stack([element['x'].numpy() for element in client_dataset])
      np.testing.assert_array_equal(_bits(images),
                                    _bits(eager_data.test_arrays(client_id)[0]))


if __name__ == '__main__':
  tf.test.main()
