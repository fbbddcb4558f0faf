"""Tests for tff_feddst.data.federated: FederatedData and its builder."""

import collections

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tests import data_files


def _small_dataset(train_per_class: int = 30,
                   test_per_class: int = 10) -> datasets.Dataset:
  """A 10-class Dataset of 2 x 2 x 1 images; image i holds the value i."""
  y_train = data_files.balanced_labels(train_per_class).astype(np.int32)
  y_test = data_files.balanced_labels(test_per_class).astype(np.int32)
  x_train = np.broadcast_to(
      np.arange(len(y_train), dtype=np.float32)[:, None, None, None],
      (len(y_train), 2, 2, 1)).copy()
  x_test = np.broadcast_to(
      np.arange(len(y_test), dtype=np.float32)[:, None, None, None],
      (len(y_test), 2, 2, 1)).copy()
  return datasets.Dataset('small', x_train, y_train, x_test, y_test, 10)


class NaturalPartitionTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    directory = data_files.make_temp_dir(self)
    data_files.write_small_emnist(directory)
    self.dataset = datasets.load_emnist(directory)

  def test_clients_are_writers_with_their_own_test_examples(self):
    federated_data = federated.build_federated_data(self.dataset, 'natural',
                                                    3, seed=0)

    # f0003_00 has no training example, so it is no client; its test
    # example stays in the global test set.
    self.assertEqual(federated_data.client_ids, ['0', '1', '2'])
    np.testing.assert_array_equal(federated_data.train_indices('0'), [3, 4])
    np.testing.assert_array_equal(federated_data.train_indices('1'), [5])
    np.testing.assert_array_equal(federated_data.train_indices('2'), [0, 1, 2])
    np.testing.assert_array_equal(federated_data.test_indices('0'), [1, 2])
    np.testing.assert_array_equal(federated_data.test_indices('1'), [3])
    np.testing.assert_array_equal(federated_data.test_indices('2'), [0])
    x, y = federated_data.train_arrays('2')
    np.testing.assert_array_equal(y, [0, 61, 35])
    self.assertEqual(x.shape, (3, 28, 28, 1))
    self.assertLen(federated_data.dataset.y_test, 5)

  def test_fewer_clients_take_a_seeded_subset_of_writers(self):
    first = federated.build_federated_data(self.dataset, 'natural', 2, seed=4)
    again = federated.build_federated_data(self.dataset, 'natural', 2, seed=4)

    self.assertEqual(first.num_clients, 2)
    writers = [tuple(first.train_indices(c)) for c in first.client_ids]
    self.assertEqual(writers,
                     [tuple(again.train_indices(c)) for c in again.client_ids])
    all_writers = {(3, 4), (5,), (0, 1, 2)}
    self.assertTrue(set(writers) <= all_writers)
    seen = set()
    for seed in range(20):
      subset = federated.build_federated_data(self.dataset, 'natural', 2, seed)
      seen.update(tuple(subset.train_indices(c)) for c in subset.client_ids)
    self.assertEqual(seen, all_writers)

  def test_more_clients_than_writers_raises(self):
    with self.assertRaisesRegex(
        ValueError, '4 clients requested but the data has only 3 natural '
        'clients with training examples'):
      federated.build_federated_data(self.dataset, 'natural', 4, seed=0)

  def test_data_set_without_natural_clients_raises(self):
    with self.assertRaisesRegex(ValueError, "'natural' needs a data set"):
      federated.build_federated_data(_small_dataset(), 'natural', 2, seed=0)


class FederatedDataTest(parameterized.TestCase, tf.test.TestCase):

  @parameterized.parameters('iid', 'dirichlet', 'pathological')
  def test_client_test_splits_follow_client_class_proportions(
      self, distribution):
    dataset = _small_dataset()

    federated_data = federated.build_federated_data(
        dataset, distribution, 6, seed=0, beta=0.3, examples_per_class=10)

    for client_id in federated_data.client_ids:
      _, train_labels = federated_data.train_arrays(client_id)
      _, test_labels = federated_data.test_arrays(client_id)
      self.assertGreater(len(test_labels), 0)
      train_counts = np.bincount(train_labels, minlength=10)
      test_counts = np.bincount(test_labels, minlength=10)
      # Largest-remainder allocation: each class within one of its share.
      shares = len(test_labels) * train_counts / len(train_labels)
      self.assertTrue(np.all(np.abs(test_counts - shares) < 1),
                      msg=f'{test_counts} vs {shares}')

  def test_iid_test_splits_share_out_the_test_set(self):
    dataset = _small_dataset(train_per_class=30, test_per_class=10)

    federated_data = federated.build_federated_data(dataset, 'iid', 5, seed=0)

    # 300 training examples, 60 each; 100 test examples, 20 each.
    self.assertEqual(
        [federated_data.num_train_examples(c)
         for c in federated_data.client_ids],
        [60] * 5)
    self.assertEqual(
        [federated_data.num_test_examples(c)
         for c in federated_data.client_ids],
        [20] * 5)

  def test_fixed_test_split_size(self):
    federated_data = federated.build_federated_data(
        _small_dataset(), 'pathological', 4, seed=1, classes_per_client=2,
        examples_per_class=5, test_examples_per_client=6)

    for client_id in federated_data.client_ids:
      _, test_labels = federated_data.test_arrays(client_id)
      np.testing.assert_array_equal(
          np.sort(np.bincount(test_labels, minlength=10))[-2:], [3, 3])

  def test_arrays_are_rows_of_the_dataset(self):
    dataset = _small_dataset()

    federated_data = federated.build_federated_data(dataset, 'dirichlet', 4,
                                                    seed=0)

    self.assertEqual(federated_data.client_ids, ['0', '1', '2', '3'])
    self.assertEqual(federated_data.num_clients, 4)
    x_train, y_train = federated_data.train_arrays('2')
    indices = federated_data.train_indices('2')
    # Image i holds the value i, so the images name their own rows.
    np.testing.assert_array_equal(x_train[:, 0, 0, 0], indices)
    np.testing.assert_array_equal(y_train, dataset.y_train[indices])
    self.assertEqual(federated_data.num_train_examples('2'), len(indices))
    x_test, _ = federated_data.test_arrays('2')
    np.testing.assert_array_equal(x_test[:, 0, 0, 0],
                                  federated_data.test_indices('2'))

  def test_constructor_rejects_bad_index_lists(self):
    dataset = _small_dataset()
    valid = [np.array([0, 1])]

    with self.assertRaisesRegex(ValueError, 'needs at least one client'):
      federated.FederatedData(dataset, [], [])
    with self.assertRaisesRegex(ValueError, '1 train index arrays but 2 test'):
      federated.FederatedData(dataset, valid, valid * 2)
    with self.assertRaisesRegex(ValueError,
                                r'train indices must lie in \[0, 300\)'):
      federated.FederatedData(dataset, [np.array([0, 300])], valid)

  def test_unknown_client_id_raises_key_error(self):
    federated_data = federated.build_federated_data(_small_dataset(), 'iid',
                                                    3, seed=0)

    with self.assertRaisesRegex(KeyError, "unknown client id '3'"):
      federated_data.train_arrays('3')

  @parameterized.parameters('iid', 'dirichlet', 'pathological')
  def test_same_seed_same_data_different_seed_different(self, distribution):
    dataset = _small_dataset()

    def build(seed):
      return federated.build_federated_data(dataset, distribution, 5, seed,
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
      federated.build_federated_data(dataset, 'lotteryfl', 3, seed=0)
    with self.assertRaisesRegex(ValueError, 'num_clients must be >= 1'):
      federated.build_federated_data(dataset, 'iid', 0, seed=0)

  def test_to_client_data_has_ids_element_spec_and_client_examples(self):
    federated_data = federated.build_federated_data(_small_dataset(),
                                                    'dirichlet', 4, seed=0)

    client_data = federated_data.to_client_data()

    self.assertEqual(client_data.client_ids, ['0', '1', '2', '3'])
    self.assertEqual(
        client_data.element_type_structure,
        collections.OrderedDict(
            x=tf.TensorSpec((2, 2, 1), tf.float32),
            y=tf.TensorSpec((), tf.int32)))
    for client_id in client_data.client_ids:
      elements = list(client_data.create_tf_dataset_for_client(client_id))
      _, expected_labels = federated_data.train_arrays(client_id)
      np.testing.assert_array_equal([e['y'].numpy() for e in elements],
                                    expected_labels)
    all_clients = client_data.create_tf_dataset_from_all_clients(seed=0)
    self.assertEqual(sum(1 for _ in all_clients), 300)
    from_computation = client_data.dataset_computation('1')
    np.testing.assert_array_equal(
        [e['x'].numpy()[0, 0, 0] for e in from_computation],
        federated_data.train_indices('1'))

  def test_to_client_data_test_split_and_bad_split(self):
    federated_data = federated.build_federated_data(_small_dataset(), 'iid',
                                                    2, seed=0)

    client_data = federated_data.to_client_data('test')

    elements = list(client_data.create_tf_dataset_for_client('1'))
    np.testing.assert_array_equal([e['x'].numpy()[0, 0, 0] for e in elements],
                                  federated_data.test_indices('1'))
    with self.assertRaisesRegex(ValueError, "split must be 'train' or 'test'"):
      federated_data.to_client_data('validation')


if __name__ == '__main__':
  absltest.main()
