"""Tests for tff_feddst.data.pipelines: client and evaluation datasets."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from tff_feddst.data import pipelines


class ClientDatasetTest(tf.test.TestCase):

  def _examples(self):
    x = np.arange(10, dtype=np.float64).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int64)
    return x, y

  def _labels_by_batch(self, dataset):
    return [batch_y.numpy().tolist() for _, batch_y in dataset]

  def test_batches_keep_last_partial_batch_with_expected_types(self):
    x, y = self._examples()

    dataset = pipelines.make_client_dataset(x, y, batch_size=4, shuffle_seed=3)

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

    first = self._labels_by_batch(pipelines.make_client_dataset(x, y, 4, 3))
    again = self._labels_by_batch(pipelines.make_client_dataset(x, y, 4, 3))
    other = self._labels_by_batch(pipelines.make_client_dataset(x, y, 4, 4))
    unshuffled = self._labels_by_batch(
        pipelines.make_client_dataset(x, y, 4, None))

    self.assertEqual(first, again)
    self.assertNotEqual(first, other)
    self.assertEqual(unshuffled, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])

  def test_epochs_each_cover_all_examples(self):
    x, y = self._examples()

    batches = self._labels_by_batch(
        pipelines.make_client_dataset(x, y, 4, shuffle_seed=1, num_epochs=2))

    self.assertEqual([len(batch) for batch in batches], [4, 4, 2, 4, 4, 2])
    self.assertCountEqual(sum(batches[:3], []), range(10))
    self.assertCountEqual(sum(batches[3:], []), range(10))

  def test_eval_dataset_keeps_order(self):
    x, y = self._examples()

    batches = self._labels_by_batch(pipelines.make_eval_dataset(x, y, 3))

    self.assertEqual(batches, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]])

  def test_bad_arguments_raise(self):
    x, y = self._examples()

    with self.assertRaisesRegex(ValueError, 'x has 10 examples but y has 9'):
      pipelines.make_client_dataset(x, y[:9], 4, 0)
    with self.assertRaisesRegex(ValueError, 'batch_size must be >= 1'):
      pipelines.make_eval_dataset(x, y, 0)
    with self.assertRaisesRegex(ValueError, 'num_epochs must be >= 1'):
      pipelines.make_client_dataset(x, y, 4, 0, num_epochs=0)


if __name__ == '__main__':
  absltest.main()
