"""Tests for tff_feddst.sparse.exact_sum: sums independent of order and grouping."""

import collections
import itertools

import numpy as np
import tensorflow as tf

from tff_feddst.sparse import exact_sum


def _float32_sum(values):
  total = np.float32(0)
  for value in values:
    total = np.float32(total + np.float32(value))
  return total


def _exact_total(values, grouping=None):
  """Sums `values` exactly, optionally in groups (as workers would)."""
  groups = grouping or [list(range(len(values)))]
  partials = []
  for group in groups:
    total = exact_sum.encode(tf.constant(0.0))
    for index in group:
      total = exact_sum.add(total, exact_sum.encode(
          tf.constant(values[index], tf.float32)))
    partials.append(total)
  result = partials[0]
  for partial in partials[1:]:
    result = exact_sum.add(result, partial)
  return exact_sum.decode(result).numpy()


class EncodeDecodeTest(tf.test.TestCase):

  def test_float32_values_round_trip_exactly(self):
    # Every float32 with |x| >= 2**-17 lies on the 2**-40 grid.
    values = np.array([0.0, 1.0, -1.0, 0.1, -0.1, 3.5, -2.75, 1e-5, 12345.678,
                       -7.0e9, 2.0 ** -17, 2.0 ** 45], np.float32)
    decoded = exact_sum.decode(exact_sum.encode(tf.constant(values))).numpy()
    np.testing.assert_array_equal(decoded, values)

  def test_negative_value_has_floor_and_positive_fraction(self):
    # -2.75 = -3 + 0.25, and 0.25 = 2**38 units of 2**-40.
    fixed = exact_sum.encode(tf.constant(-2.75))
    self.assertEqual(int(fixed.whole), -3)
    self.assertEqual(int(fixed.fraction), 2 ** 38)

  def test_tiny_values_round_to_the_grid(self):
    # 2**-42 is a quarter of a grid step: rounds to 0; 3 * 2**-41 rounds to
    # 2 * 2**-41 (half to even) = one step.
    fixed = exact_sum.encode(tf.constant([2.0 ** -42, 3 * 2.0 ** -41]))
    self.assertAllEqual(fixed.fraction.numpy(), [0, 2])

  def test_huge_values_are_clipped(self):
    fixed = exact_sum.encode(tf.constant([3e38, -np.inf], tf.float32))
    self.assertAllEqual(fixed.whole.numpy(),
                        [2 ** 46, -(2 ** 46)])


class OrderIndependenceTest(tf.test.TestCase):

  def test_float32_order_matters_and_exact_sum_does_not(self):
    # In float32, 1e8 + 1 == 1e8: the 1 is lost or kept by the order.
    values = [1e8, 1.0, -1e8]
    self.assertEqual(_float32_sum(values), 0.0)
    self.assertEqual(_float32_sum([1e8, -1e8, 1.0]), 1.0)
    for order in itertools.permutations(range(3)):
      self.assertEqual(_exact_total([values[i] for i in order]), 1.0)

  def test_every_order_and_grouping_gives_the_same_bits(self):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(8) *
              10.0 ** rng.integers(-6, 6, size=8)).astype(np.float32)
    expected = _exact_total(values)
    float32_results = set()
    for seed in range(20):
      order = np.random.default_rng(seed).permutation(8)
      shuffled = values[order]
      float32_results.add(float(_float32_sum(shuffled)))
      for grouping in ([[0, 1, 2, 3], [4, 5, 6, 7]],
                       [[0], [1, 2, 3, 4, 5], [6, 7]]):
        self.assertEqual(_exact_total(shuffled, grouping).tobytes(),
                         expected.tobytes())
    # The same values summed in float32 do depend on the order.
    self.assertGreater(len(float32_results), 1)

  def test_sum_is_accurate(self):
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(50) * 100).astype(np.float32)
    exact = np.sum(values.astype(np.float64))
    self.assertAllClose(_exact_total(values), exact, rtol=0, atol=1e-5)


class StructureTest(tf.test.TestCase):

  def test_to_exact_and_back_keeps_structure_and_integer_leaves(self):
    Pair = collections.namedtuple('Pair', ['values', 'count'])
    template = Pair(values=(tf.zeros([2]), tf.zeros([])),
                    count=tf.constant(0, tf.int64))
    first = Pair(values=(tf.constant([1.5, -2.0]), tf.constant(0.25)),
                 count=tf.constant(3, tf.int64))
    second = Pair(values=(tf.constant([0.5, 4.0]), tf.constant(-1.0)),
                  count=tf.constant(4, tf.int64))
    total = exact_sum.add(exact_sum.to_exact(first),
                          exact_sum.to_exact(second))
    result = exact_sum.from_exact(template, total)
    self.assertIsInstance(result, Pair)
    self.assertAllEqual(result.values[0], [2.0, 2.0])
    self.assertAllEqual(result.values[1], -0.75)
    self.assertEqual(result.count.dtype, tf.int64)
    self.assertEqual(int(result.count), 7)


class MeanTermsTest(tf.test.TestCase):

  def test_weighted_mean_by_hand(self):
    # Values 1, 2, 3 with weights 3, 2, 1: (3 + 4 + 3) / 6 = 10 / 6.
    terms = exact_sum.zero_mean_terms()
    for value, weight in ((1.0, 3.0), (2.0, 2.0), (3.0, 1.0)):
      terms = exact_sum.add(terms, exact_sum.mean_terms(value, weight))
    self.assertAllClose(exact_sum.mean_of(terms), 10.0 / 6.0)

  def test_nonfinite_value_makes_the_mean_nan(self):
    terms = exact_sum.add(exact_sum.mean_terms(1.0, 2.0),
                          exact_sum.mean_terms(float('nan'), 1.0))
    self.assertTrue(np.isnan(exact_sum.mean_of(terms).numpy()))

  def test_no_weight_gives_nan(self):
    self.assertTrue(np.isnan(
        exact_sum.mean_of(exact_sum.zero_mean_terms()).numpy()))


if __name__ == '__main__':
  tf.test.main()
