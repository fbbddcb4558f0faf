"""Tests for tff_feddst.process.robust_means, by hand-checked numbers."""

import random

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.process import aggregation
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import robust_means
from tff_feddst.process import sum_factory

# Five clients, one tensor of 6 positions; HOLDS says who holds what.
#            p0     p1    p2     p3   p4    p5
VALUES = [[1.0, 10.0, 0.0, 0.0, 1.0, 0.0],
          [2.0, 20.0, 1.0, 0.0, 3.0, 0.0],
          [3.0, 0.0, 2.0, 4.0, 8.0, 0.0],
          [100.0, 0.0, 9.0, 0.0, 20.0, 0.0],
          [-50.0, 0.0, 100.0, 0.0, 0.0, 0.0]]
HOLDS = [[1, 1, 1, 0, 1, 0],
         [1, 1, 1, 0, 1, 0],
         [1, 0, 1, 1, 1, 0],
         [1, 0, 1, 0, 1, 0],
         [1, 0, 1, 0, 0, 0]]
# Holders: p0 {-50, 1, 2, 3, 100} (5), p1 {10, 20} (2),
# p2 {0, 1, 2, 9, 100} (5; a holder's 0 counts), p3 {4} (1),
# p4 {1, 3, 8, 20} (4, even), p5 nobody.


def client(values, holds):
  return robust_means.ClientValues(
      values=(tf.constant(values, tf.float32),),
      holds=(tf.constant(holds, tf.float32),))


def terms_of(clients, capacity):
  terms = robust_means.zero_terms([[6]], capacity)
  for values, holds in clients:
    terms = robust_means.add_client(terms, client(values, holds))
  return terms


def robust_value(config, clients=None):
  terms = terms_of(clients or list(zip(VALUES, HOLDS)), config.capacity)
  result = robust_means.robust_values(terms, config, num_kernels=1)
  return result.kernels[0].numpy().tolist(), int(result.over_capacity)


class RobustMeanTest(tf.test.TestCase):

  def test_median_by_hand(self):
    # C = 5: L = 3 keeps every rank of up to 6 holders.
    # p0: -50 1 [2] 3 100; p1: (10 + 20) / 2; p2: 0 1 [2] 9 100;
    # p4: 1 [3 8] 20 -> 5.5 (even count); p5: nobody -> 0.
    config = robust_means.RobustMean('median', clients_per_round=5)
    self.assertEqual(config.capacity, 3)
    self.assertEqual(robust_value(config),
                     ([2.0, 15.0, 2.0, 4.0, 5.5, 0.0], 0))

  def test_trimmed_mean_by_hand(self):
    # t = floor(0.2 k): 1 for 5 holders, 0 for 1, 2 or 4.
    # p0: (1 + 2 + 3) / 3; p2: (1 + 2 + 9) / 3; p4: 32 / 4, untrimmed.
    config = robust_means.RobustMean('trimmed_mean', 0.2, 5)
    self.assertEqual(config.capacity, 1)
    self.assertEqual(robust_value(config),
                     ([2.0, 15.0, 4.0, 4.0, 8.0, 0.0], 0))
    # 0.25: t = 1 for 4 holders too: p4 (3 + 8) / 2.
    config = robust_means.RobustMean('trimmed_mean', 0.25, 5)
    self.assertEqual(robust_value(config)[0][4], 5.5)
    # 0: the unweighted mean, p0 56 / 5, p2 112 / 5.
    values, _ = robust_value(robust_means.RobustMean('trimmed_mean', 0.0, 5))
    self.assertAllClose(values, [11.2, 15.0, 22.4, 4.0, 8.0, 0.0])

  def test_beyond_capacity_falls_back_to_trimming_l(self):
    # Median sized for 2 clients: L = 1 is exact up to 2 holders. p0, p2
    # (5 holders) and p4 (4) get the trimmed mean with t = 1: p2 is then
    # (1 + 2 + 9) / 3 = 4, not the median 2; p4 (3 + 8) / 2.
    config = robust_means.RobustMean('median', clients_per_round=2)
    self.assertEqual(config.capacity, 1)
    self.assertEqual(robust_value(config),
                     ([2.0, 15.0, 4.0, 4.0, 5.5, 0.0], 3))
    # Trimmed 0.4 sized for 2 clients: L = max(1, floor(0.8)) = 1. Five
    # holders want t = 2 (p0, p2: trimmed with 1, counted); four want 1.
    config = robust_means.RobustMean('trimmed_mean', 0.4, 2)
    self.assertEqual(robust_value(config),
                     ([2.0, 15.0, 4.0, 4.0, 5.5, 0.0], 2))
    # Sized for 5 clients (L = 2), p2 is trimmed by 2: just 2.
    config = robust_means.RobustMean('trimmed_mean', 0.4, 5)
    self.assertEqual(robust_value(config),
                     ([2.0, 15.0, 2.0, 4.0, 5.5, 0.0], 0))

  def test_any_order_and_any_split_give_the_same_bits(self):
    rng = random.Random(3)
    # Ties and both signs of zero among 9 clients.
    clients = [([rng.choice([-0.0, 0.0, 1.5, -2.25, 3.0, 7.0])
                 for _ in range(6)],
                [rng.choice([0, 1, 1]) for _ in range(6)]) for _ in range(9)]
    for kind in ('median', 'trimmed_mean'):
      config = robust_means.RobustMean(kind, 0.25, 9)
      whole = terms_of(clients, config.capacity)
      expected = robust_means.robust_values(whole, config, 1)
      for _ in range(3):
        shuffled = rng.sample(clients, len(clients))
        cut = rng.randrange(1, len(clients))
        merged = robust_means.merge_terms(
            terms_of(shuffled[:cut], config.capacity),
            terms_of(shuffled[cut:], config.capacity))
        tf.nest.map_structure(
            lambda a, b: self.assertEqual(a.numpy().tobytes(),
                                          b.numpy().tobytes()),
            (whole, expected),
            (merged, robust_means.robust_values(merged, config, 1)))

  def test_bad_settings_are_one_line_errors(self):
    for kwargs, name in ((dict(kind='mean'), 'kind'),
                         (dict(trim_fraction=0.5), 'trim_fraction'),
                         (dict(trim_fraction=-0.1), 'trim_fraction'),
                         (dict(clients_per_round=0), 'clients_per_round')):
      with self.assertRaisesRegex(ValueError, f'^{name} ') as raised:
        robust_means.RobustMean(**kwargs)
      self.assertNotIn('\n', str(raised.exception))


# The aggregator: one kernel of 4 positions (2 active), one bias.
KERNEL_SHAPES = [[4]]
DENSE_SHAPES = [[1]]
NUM_ACTIVE = [2]


def payload(kernel, mask, bias):
  return encoding.encode([np.array(kernel, np.float32)],
                         [np.array(mask, np.float32)],
                         [np.array(bias, np.float32)], NUM_ACTIVE)


def robust(kind='median', clients_per_round=3, trim_fraction=0.2, **kwargs):
  # No first pass: the values are summed as sent.
  settings = dict(clip_updates=False, reject_replays=False,
                  max_weight_multiple=None)
  settings.update(kwargs)
  return robust_aggregation.RobustAggregation(
      robust_mean=robust_means.RobustMean(
          kind, trim_fraction, clients_per_round), **settings)


class AggregatorTest(tf.test.TestCase):

  def test_factory_reports_the_median_per_position(self):
    # p0 {1, 3, 100} -> 3 (the weighted mean would be 401 / 102);
    # p1 {2}; p2 {5, 7} -> 6; p3 nobody; bias {0.5, 1, -4} -> 0.5.
    uploads = [payload([1., 2., 0., 0.], [1., 1., 0., 0.], [0.5]),
               payload([3., 0., 5., 0.], [1., 0., 1., 0.], [1.0]),
               payload([100., 0., 7., 0.], [1., 0., 1., 0.], [-4.0])]
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), uploads[0]))
    process = sum_factory.SparseSumFactory(
        KERNEL_SHAPES, NUM_ACTIVE, robust=robust()).create(
            value_type, tff.TensorType(np.float32))
    output = process.next(process.initialize(), uploads, [1.0, 100.0, 1.0])
    values = output.result.robust_values
    self.assertAllEqual(values.kernels[0], [3., 2., 6., 0.])
    self.assertAllEqual(values.dense[0], [0.5])
    self.assertEqual(output.measurements['robust_mean_over_capacity'], 0)
    self.assertEqual(output.measurements['num_clients'], 3)
    # The weighted sums are there as before.
    self.assertAllClose(output.result.weighted_kernel_sums[0],
                        [401., 2., 507., 0.])

  def test_worker_split_merges_to_the_same_bits(self):
    # What TFF's mergeable form does with 2 workers: two partial exact
    # aggregates merged (`merge_exact_sums`), against one worker.
    config = robust('trimmed_mean', clients_per_round=4, trim_fraction=0.34)
    float_zero = aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES)
    uploads = [payload([1.5, 2., 0., 0.], [1., 1., 0., 0.], [0.5]),
               payload([3., 0., -5., 0.], [1., 0., 1., 0.], [1.0]),
               payload([-0.0, 0., 7., 0.], [1., 0., 1., 0.], [-4.0]),
               payload([0., 0., 7.25, 1.], [0., 0., 1., 1.], [2.0])]

    def exact_of(group):
      exact = sum_factory.zero_exact_sums(float_zero, KERNEL_SHAPES,
                                          DENSE_SHAPES, config)
      for upload in group:
        exact = aggregation.add_exactly(
            exact, upload, 1.0, KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE,
            encoding.PayloadEncoding(), payload_validation.PayloadChecks(),
            robust=config)
      return exact

    one = sum_factory.report_exact_sums(float_zero, exact_of(uploads),
                                        config, 1)
    two = sum_factory.report_exact_sums(
        float_zero, sum_factory.merge_exact_sums(
            exact_of(uploads[2:]), exact_of(uploads[:2])), config, 1)
    tf.nest.map_structure(
        lambda a, b: self.assertEqual(np.asarray(a).tobytes(),
                                      np.asarray(b).tobytes()), one, two)
    # L = floor(0.34 * 4) = 1; t = 1 for 3 or 4 holders: p0 {0, [1.5], 3},
    # p2 {-5, [7], 7.25}, bias {-4, [0.5, 1], 2}; p1, p3 one holder each.
    self.assertAllEqual(one.robust_values.kernels[0], [1.5, 2., 7., 1.])
    self.assertAllEqual(one.robust_values.dense[0], [0.75])

  def test_rejected_upload_holds_nothing(self):
    zero = sum_factory.zero_exact_sums(
        aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES),
        KERNEL_SHAPES, DENSE_SHAPES, robust())
    exact = zero
    for kernel, bias in (([1., 2., 0., 0.], 0.5), ([np.nan, 4., 0., 0.], 1.)):
      exact = aggregation.add_exactly(
          exact, payload(kernel, [1., 1., 0., 0.], [bias]), 1.0,
          KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE,
          encoding.PayloadEncoding(), payload_validation.PayloadChecks(),
          robust=robust())
    result = sum_factory.report_exact_sums(
        aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES), exact,
        robust(), 1)
    self.assertEqual(int(tf.reduce_sum(result.rejected)), 1)
    self.assertAllEqual(result.robust_values.kernels[0], [1., 2., 0., 0.])
    self.assertAllEqual(result.robust_values.dense[0], [0.5])

  def test_values_are_taken_after_clipping(self):
    # Broadcast kernel [1, 0, 0, 2] (mask [1, 0, 0, 1]), bias 0.5. The
    # client's delta on its mask [1, 1, 0, 0] is [4 - 1, 3 - 0], norm
    # sqrt(18); a bound of sqrt(2) scales it by 1/3: values [2, 1].
    reference = robust_aggregation.Reference(
        kernels=(tf.constant([1., 0., 0., 2.]),),
        masks=(tf.constant([1., 0., 0., 1.]),),
        dense=(tf.constant([0.5]),))
    config = robust(clients_per_round=1)
    float_zero = aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES)
    exact = aggregation.add_exactly(
        sum_factory.zero_exact_sums(float_zero, KERNEL_SHAPES, DENSE_SHAPES,
                                    config),
        payload([4., 3., 0., 0.], [1., 1., 0., 0.], [0.5]), 1.0,
        KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE, encoding.PayloadEncoding(),
        payload_validation.PayloadChecks(), robust=config,
        round_bound=robust_aggregation.RoundBound(
            reference, tf.constant(np.sqrt(2.0), tf.float32)))
    result = sum_factory.report_exact_sums(float_zero, exact, config, 1)
    self.assertEqual(int(result.clipped_clients), 1)
    self.assertAllClose(result.robust_values.kernels[0], [2., 1., 0., 0.])
    self.assertAllClose(result.robust_values.dense[0], [0.5])

  def test_client_without_masks_holds_the_global_masks(self):
    coded = encoding.PayloadEncoding.parse('float32+rice+changed_masks_only')
    global_mask = np.array([1., 0., 0., 1.], np.float32)
    without = encoding.encode_payload(
        [np.array([4., 0., 0., 6.], np.float32)], [global_mask],
        [np.array([0.5], np.float32)], NUM_ACTIVE, coded, False)
    with_masks = encoding.encode_payload(
        [np.array([2., 3., 0., 0.], np.float32)],
        [np.array([1., 1., 0., 0.], np.float32)],
        [np.array([1.5], np.float32)], NUM_ACTIVE, coded, True)
    config = robust(clients_per_round=2)
    float_zero = aggregation.zero_sums(KERNEL_SHAPES, DENSE_SHAPES, coded,
                                       NUM_ACTIVE)
    exact = sum_factory.zero_exact_sums(float_zero, KERNEL_SHAPES,
                                        DENSE_SHAPES, config)
    for upload in (without, with_masks):
      exact = aggregation.add_exactly(
          exact, upload, 1.0, KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE, coded,
          payload_validation.PayloadChecks(), robust=config,
          global_masks=[tf.constant(global_mask)])
    result = sum_factory.report_exact_sums(float_zero, exact, config, 1)
    # p0 {4, 2} -> 3, p1 {3}, p3 {6}; bias (0.5 + 1.5) / 2.
    self.assertAllEqual(result.with_masks.robust_values.kernels[0],
                        [3., 3., 0., 6.])
    self.assertAllEqual(result.with_masks.robust_values.dense[0], [1.0])
    with self.assertRaisesRegex(ValueError, 'global masks'):
      aggregation.add_exactly(
          exact, without, 1.0, KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE,
          coded, payload_validation.PayloadChecks(), robust=config)
    with self.assertRaisesRegex(ValueError, 'clip_updates'):
      sum_factory.SparseSumFactory(KERNEL_SHAPES, NUM_ACTIVE, coded,
                                   robust=config)


if __name__ == '__main__':
  tf.test.main()
