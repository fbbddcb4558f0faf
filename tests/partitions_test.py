"""Tests for tff_feddst.data.partitions: client splits and test splits."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tff_feddst.data import partitions
from tests import data_files


def _top_two_share(labels: np.ndarray, indices: np.ndarray) -> float:
  """Fraction of a client's examples that belong to its two largest classes."""
  counts = np.sort(np.bincount(labels[indices], minlength=10))[::-1]
  return counts[:2].sum() / counts.sum()


class PartitionTest(parameterized.TestCase):

  def assertDisjoint(self, parts):
    combined = np.concatenate(parts)
    self.assertLen(np.unique(combined), len(combined))

  def test_iid_splits_all_examples_evenly(self):
    parts = partitions.partition_iid(np.zeros(10, dtype=np.int64), 3,
                                     np.random.default_rng(0))

    self.assertEqual([len(part) for part in parts], [4, 3, 3])
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                  np.arange(10))
    for part in parts:
      self.assertEqual(part.dtype, np.int64)

  def test_iid_with_examples_per_client_gives_exact_disjoint_counts(self):
    parts = partitions.partition_iid(data_files.balanced_labels(), 5,
                                     np.random.default_rng(0),
                                     examples_per_client=7)

    self.assertEqual([len(part) for part in parts], [7] * 5)
    self.assertDisjoint(parts)

  def test_iid_is_balanced_and_dirichlet_with_small_beta_is_skewed(self):
    labels = data_files.balanced_labels()
    iid_parts = partitions.partition_iid(labels, 20, np.random.default_rng(0))
    dirichlet_parts = partitions.partition_dirichlet(labels, 20, 0.1,
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
      partitions.partition_iid(data_files.balanced_labels(), 3,
                               np.random.default_rng(0),
                               examples_per_client=400)

  @parameterized.parameters(1, 5)
  def test_dirichlet_assigns_every_example_once_with_minimum(
      self, min_examples):
    labels = data_files.balanced_labels()

    parts = partitions.partition_dirichlet(labels, 30, 0.1,
                                           np.random.default_rng(3),
                                           min_examples_per_client=min_examples)

    self.assertLen(parts, 30)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                  np.arange(len(labels)))
    self.assertGreaterEqual(min(len(part) for part in parts), min_examples)

  def test_dirichlet_rejects_unreachable_minimum(self):
    with self.assertRaisesRegex(ValueError, 'exceeds the 1000 available'):
      partitions.partition_dirichlet(data_files.balanced_labels(), 30, 0.1,
                                     np.random.default_rng(0),
                                     min_examples_per_client=40)
    with self.assertRaisesRegex(ValueError, 'no Dirichlet.*in 5 attempts'):
      partitions.partition_dirichlet(data_files.balanced_labels(), 30, 0.01,
                                     np.random.default_rng(0),
                                     min_examples_per_client=30, max_attempts=5)

  def test_dirichlet_rejects_nonpositive_beta(self):
    with self.assertRaisesRegex(ValueError, 'beta must be > 0'):
      partitions.partition_dirichlet(data_files.balanced_labels(), 3, 0.0,
                                     np.random.default_rng(0))

  @parameterized.parameters((20, 2, 20), (12, 3, 9), (40, 1, 25))
  def test_pathological_gives_exact_classes_and_counts(
      self, num_clients, classes_per_client, examples_per_class):
    labels = data_files.balanced_labels()

    parts = partitions.partition_pathological(labels, num_clients,
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
      parts = partitions.partition_pathological(labels, 3, 2, 5,
                                                np.random.default_rng(seed))
      np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                    np.arange(30))
      for part in parts:
        self.assertLen(np.unique(labels[part]), 2)

  def test_pathological_not_enough_examples_raises_one_line(self):
    with self.assertRaises(ValueError) as raised:
      partitions.partition_pathological(data_files.balanced_labels(), 30, 2, 40,
                                        np.random.default_rng(0))

    message = str(raised.exception)
    self.assertIn('not enough examples for 30 clients x 2 classes x 40',
                  message)
    self.assertIn('only 20 of the 60 client-class slots', message)
    self.assertNotIn('\n', message)

  def test_pathological_rejects_more_classes_than_exist(self):
    with self.assertRaisesRegex(ValueError, r'classes_per_client must be in '
                                r'\[1, 10\]'):
      partitions.partition_pathological(data_files.balanced_labels(), 2, 11, 1,
                                        np.random.default_rng(0))

  @parameterized.named_parameters(
      ('iid', lambda labels, rng: partitions.partition_iid(labels, 10, rng)),
      ('dirichlet', lambda labels, rng: partitions.partition_dirichlet(
          labels, 10, 0.5, rng)),
      ('pathological', lambda labels, rng: partitions.partition_pathological(
          labels, 10, 2, 20, rng)),
  )
  def test_same_seed_same_partition_different_seed_different(self, partition):
    labels = data_files.balanced_labels()

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
      partitions.partition_iid(data_files.balanced_labels(), 0,
                               np.random.default_rng(0))


class ClientTestSplitTest(absltest.TestCase):

  def test_test_split_follows_train_class_proportions(self):
    test_labels = data_files.balanced_labels(examples_per_class=20)
    train_labels = np.array([0] * 30 + [3] * 10)

    indices = partitions.client_test_indices(train_labels, test_labels, 8,
                                             np.random.default_rng(0))

    # 8 split 3:1 is 6 of class 0 and 2 of class 3.
    self.assertLen(np.unique(indices), 8)
    np.testing.assert_array_equal(
        np.bincount(test_labels[indices], minlength=10),
        [6, 0, 0, 2, 0, 0, 0, 0, 0, 0])

  def test_largest_remainder_rounding(self):
    test_labels = data_files.balanced_labels(examples_per_class=20)
    train_labels = np.array([0, 1, 1])

    indices = partitions.client_test_indices(train_labels, test_labels, 4,
                                             np.random.default_rng(0))

    # Quotas 4/3 and 8/3: floors 1 and 2, the spare unit goes to class 1
    # (remainder 2/3 beats 1/3).
    np.testing.assert_array_equal(
        np.bincount(test_labels[indices], minlength=2)[:2], [1, 3])

  def test_too_few_test_examples_of_a_class_raises(self):
    test_labels = np.array([0, 0, 1])

    with self.assertRaisesRegex(ValueError, 'class 1 needs 2 test examples'):
      partitions.client_test_indices(np.array([0, 1]), test_labels, 4,
                                     np.random.default_rng(0))

  def test_proportional_size_is_share_of_test_set_capped_by_supply(self):
    test_labels = data_files.balanced_labels(examples_per_class=10)
    # 10 of 40 training examples: a quarter of 100 test examples is 25, but
    # 5 of each of 2 classes at 25 would need 12.5 per class > 10; the cap
    # is 10 * 10 / 5 = 20.
    self.assertEqual(
        partitions.proportional_test_size(
            np.array([0] * 5 + [1] * 5), test_labels, 40), 20)
    # 10 of 80: 12.5 rounds to 13; class 0 with 8/10 of the client allows at
    # most 10 * 10 // 8 = 12.
    self.assertEqual(
        partitions.proportional_test_size(
            np.array([0] * 8 + [1] * 2), test_labels, 80), 12)
    # 2 of 600: a third of an example rounds to 0, raised to the minimum 1.
    self.assertEqual(
        partitions.proportional_test_size(
            np.array([4, 4]), test_labels, 600), 1)
    # 3 of 600: exactly half an example rounds up to 1.
    self.assertEqual(
        partitions.proportional_test_size(
            np.array([4, 4, 4]), test_labels, 600), 1)
    # 9 of 600: 1.5 rounds up to 2.
    self.assertEqual(
        partitions.proportional_test_size(
            np.array([4] * 9), test_labels, 600), 2)


if __name__ == '__main__':
  absltest.main()
