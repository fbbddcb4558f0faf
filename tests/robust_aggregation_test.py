"""Tests for tff_feddst.process.robust_aggregation, by hand-checked numbers."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import model_setup
from tff_feddst.process import aggregation
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation as robust_lib
from tff_feddst.process import robust_means
from tff_feddst.process import sum_factory
from tff_feddst.running import settings as settings_lib

# One prunable kernel of 4 positions (2 active), one bias. The broadcast:
#   kernel [1, 0, 0, 2], mask [1, 0, 0, 1], bias 0.5.
REFERENCE_KERNEL = [1., 0., 0., 2.]
REFERENCE_MASK = [1., 0., 0., 1.]
REFERENCE_BIAS = [0.5]
KERNEL_SHAPES = [[4]]
DENSE_SHAPES = [[1]]
NUM_ACTIVE = [2]


def reference() -> robust_lib.Reference:
  return robust_lib.Reference(
      kernels=(tf.constant(REFERENCE_KERNEL),),
      masks=(tf.constant(REFERENCE_MASK),),
      dense=(tf.constant(REFERENCE_BIAS),))


def payload(kernel, mask, bias):
  return encoding.encode([np.array(kernel, np.float32)],
                         [np.array(mask, np.float32)],
                         [np.array(bias, np.float32)], NUM_ACTIVE)


# A client that kept position 0 (1 -> 4) and regrew position 1 (value 3),
# dropping position 3; bias unchanged. Its delta on its support is
# [4 - 1, 3 - 0] = [3, 3] and 0 on the bias: norm sqrt(18).
CLIENT = ([4., 3., 0., 0.], [1., 1., 0., 0.], [0.5])
CLIENT_NORM = math.sqrt(18.0)


def accumulate(client_payload, weight, robust, bound=None):
  round_bound = (None if bound is None else
                 robust_lib.RoundBound(reference(), tf.constant(bound)))
  return aggregation.accumulate_payload(
      aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES),
      client_payload, tf.constant(weight), KERNEL_SHAPES, NUM_ACTIVE,
      checks=payload_validation.PayloadChecks(), robust=robust,
      round_bound=round_bound)


def rejected(aggregate, kind):
  return int(aggregate.rejected[
      payload_validation.REJECTION_KINDS.index(kind)])


class HistogramTest(tf.test.TestCase):

  def test_bins_have_power_of_two_edges(self):
    # 1 = 2**0 is the upper edge of bin (0 + 40) * 8 = 320.
    self.assertEqual(int(robust_lib.norm_bin(1.0)), 320)
    self.assertEqual(float(robust_lib.bin_upper_edge(320)), 1.0)
    # Just above 1 falls into the next bin, whose edge is 2**(1/8).
    self.assertEqual(int(robust_lib.norm_bin(1.01)), 321)
    self.assertAllClose(robust_lib.bin_upper_edge(321), 2 ** 0.125)
    self.assertEqual(int(robust_lib.norm_bin(0.0)), 0)
    self.assertEqual(int(robust_lib.norm_bin(math.inf)),
                     robust_lib.NUM_NORM_BINS - 1)

  def test_bound_is_the_multiplied_quantile_bin_edge(self):
    counts = tf.zeros([robust_lib.NUM_NORM_BINS], tf.int32)
    for norm in (1.0, 2.0, 4.0, 100.0):
      counts += robust_lib.norm_histogram(norm, True)
    counts += robust_lib.norm_histogram(1e6, False)  # Not counted.
    # Median of 4 norms: the 2nd smallest (ceil(0.5 * 4)), 2.0; times 2.
    self.assertEqual(float(robust_lib.bound_from_histogram(counts, 0.5, 2.0)),
                     4.0)
    # 0.75: the 3rd, 4.0.
    self.assertEqual(float(robust_lib.bound_from_histogram(counts, 0.75,
                                                           1.0)), 4.0)
    # A single hostile norm (100) cannot be the median of 4.
    empty = tf.zeros([robust_lib.NUM_NORM_BINS], tf.int32)
    self.assertEqual(float(robust_lib.bound_from_histogram(empty, 0.5, 2.0)),
                     math.inf)


class ClippingTest(tf.test.TestCase):

  def test_delta_norm_on_the_client_support(self):
    check = payload(*CLIENT)
    ref_values = robust_lib.reference_values(
        reference(), [tf.constant(CLIENT[1])], NUM_ACTIVE)
    # The reference's values at the client's ones: 1 (kept), 0 (regrown).
    self.assertAllEqual(ref_values[0], [1., 0.])
    self.assertAllClose(robust_lib.delta_norm(check.values, check.dense,
                                              ref_values, reference()),
                        CLIENT_NORM)

  def test_delta_beyond_the_bound_is_scaled_to_it(self):
    robust = robust_lib.RobustAggregation()
    aggregate = accumulate(payload(*CLIENT), 2.0, robust, bound=3.0)
    factor = 3.0 / CLIENT_NORM
    # reference + factor * delta on the support, times weight 2.
    self.assertAllClose(aggregate.weighted_kernel_sums[0],
                        [2 * (1 + 3 * factor), 2 * (3 * factor), 0., 0.])
    self.assertAllClose(aggregate.weighted_dense_sums[0], [2 * 0.5])
    self.assertAllEqual(aggregate.votes[0], [1., 1., 0., 0.])
    self.assertEqual(int(aggregate.clipped_clients), 1)
    self.assertEqual(int(aggregate.num_clients), 1)

  def test_delta_within_the_bound_is_summed_bit_for_bit(self):
    robust = robust_lib.RobustAggregation()
    clipped = accumulate(payload(*CLIENT), 2.0, robust, bound=5.0)
    plain = accumulate(payload(*CLIENT), 2.0, None)
    tf.nest.map_structure(self.assertAllEqual, clipped, plain)
    self.assertEqual(int(clipped.clipped_clients), 0)

  def test_delta_far_beyond_the_bound_is_left_out(self):
    robust = robust_lib.RobustAggregation(clip_zeroing_multiple=1.2)
    # 1.2 * 3 = 3.6 < sqrt(18) = 4.24: rejected, only bytes counted.
    aggregate = accumulate(payload(*CLIENT), 2.0, robust, bound=3.0)
    self.assertEqual(rejected(aggregate, 'update_norm'), 1)
    self.assertEqual(int(aggregate.num_clients), 0)
    self.assertAllEqual(aggregate.weighted_kernel_sums[0], [0.] * 4)
    self.assertGreater(int(aggregate.upload_bytes), 0)

  def test_takeover_upload_off_the_mask_is_left_out(self):
    # Both ones off the global mask, values 5: delta = [5, 5], norm 7.07.
    robust = robust_lib.RobustAggregation()
    hostile = payload([0., 5., 5., 0.], [0., 1., 1., 0.], [0.5])
    aggregate = accumulate(hostile, 0.001, robust, bound=0.5)
    self.assertEqual(rejected(aggregate, 'update_norm'), 1)

  def test_upload_without_masks_is_clipped_against_the_global_mask(self):
    coded = encoding.PayloadEncoding.parse('float32+rice+changed_masks_only')
    robust = robust_lib.RobustAggregation()
    # Values at the global mask's ones [1, 2] -> [4, 6]: delta [3, 4], 5.
    no_masks = encoding.encode_payload(
        [np.array([4., 0., 0., 6.], np.float32)],
        [np.array(REFERENCE_MASK, np.float32)],
        [np.array(REFERENCE_BIAS, np.float32)], NUM_ACTIVE, coded, False)
    self.assertEqual(int(no_masks.mask_code_bits), 0)
    aggregate = aggregation.accumulate_payload(
        aggregation.zero_sums(KERNEL_SHAPES, DENSE_SHAPES, coded, NUM_ACTIVE),
        no_masks, tf.constant(1.0), KERNEL_SHAPES, NUM_ACTIVE, coded,
        payload_validation.PayloadChecks(), robust=robust,
        round_bound=robust_lib.RoundBound(reference(), tf.constant(2.5)))
    # Factor 0.5: [1 + 1.5, 2 + 2].
    self.assertAllClose(aggregate.global_mask_value_sums[0], [2.5, 4.0])
    self.assertEqual(int(aggregate.with_masks.clipped_clients), 1)


class ReplayTest(tf.test.TestCase):

  def test_every_copy_of_a_repeated_upload_is_rejected(self):
    robust = robust_lib.RobustAggregation(clip_updates=False)
    factory = sum_factory.SparseSumFactory(KERNEL_SHAPES, NUM_ACTIVE,
                                           robust=robust)
    honest = payload([2., 0., 0., 2.], REFERENCE_MASK, [0.5])
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), honest))
    process = factory.create(value_type, tff.TensorType(np.float32))
    # One honest upload, and another sent 3 times (weights differ: the
    # weight is not part of the fingerprint).
    uploads = [honest] + [payload(*CLIENT)] * 3
    output = process.next(process.initialize(), uploads,
                          [1.0, 1.0, 2.0, 3.0])
    self.assertEqual(output.measurements['rejected_replay'], 3)
    self.assertEqual(output.measurements['num_clients'], 1)
    self.assertAllClose(output.result.weighted_kernel_sums[0],
                        [2., 0., 0., 2.])
    # The same uploads without the check: all four are summed.
    unchecked = sum_factory.SparseSumFactory(
        KERNEL_SHAPES, NUM_ACTIVE, robust=robust_lib.RobustAggregation(
            clip_updates=False, reject_replays=False)).create(
                value_type, tff.TensorType(np.float32))
    output = unchecked.next(unchecked.initialize(), uploads,
                            [1.0, 1.0, 2.0, 3.0])
    self.assertEqual(output.measurements['num_clients'], 4)

  def test_fingerprints_tell_uploads_apart(self):
    first = robust_lib.upload_fingerprint(payload(*CLIENT))
    again = robust_lib.upload_fingerprint(payload(*CLIENT))
    other = robust_lib.upload_fingerprint(
        payload([4., 3.0001, 0., 0.], CLIENT[1], CLIENT[2]))
    self.assertAllEqual(first, again)
    self.assertNotAllEqual(first, other)
    counts = (robust_lib.fingerprint_counts(first, True) +
              robust_lib.fingerprint_counts(other, True))
    self.assertFalse(bool(robust_lib.is_replayed(first, counts)))
    counts += robust_lib.fingerprint_counts(again, True)
    self.assertTrue(bool(robust_lib.is_replayed(first, counts)))


class WeightTest(tf.test.TestCase):

  def test_stated_weight_is_capped(self):
    robust = robust_lib.RobustAggregation(clip_updates=False,
                                          max_client_weight=600.0)
    aggregate = accumulate(payload(*CLIENT), 1e9, robust)
    self.assertAllClose(aggregate.total_weight, 600.0)
    self.assertAllClose(aggregate.weighted_kernel_sums[0],
                        [2400., 1800., 0., 0.])
    self.assertEqual(int(aggregate.capped_weights), 1)
    honest = accumulate(payload(*CLIENT), 300.0, robust)
    self.assertAllClose(honest.total_weight, 300.0)
    self.assertEqual(int(honest.capped_weights), 0)

  def test_inflated_weight_of_3e38_cannot_reach_inf(self):
    robust = robust_lib.RobustAggregation(clip_updates=False,
                                          max_client_weight=600.0)
    aggregate = accumulate(payload(*CLIENT), 3e38, robust)
    self.assertAllClose(aggregate.weighted_dense_sums[0], [300.])

  def test_uniform_weighting_weighs_every_client_one(self):
    robust = robust_lib.RobustAggregation(clip_updates=False,
                                          client_weighting='uniform')
    aggregate = accumulate(payload(*CLIENT), 123.0, robust)
    self.assertAllClose(aggregate.total_weight, 1.0)
    self.assertEqual(int(aggregate.capped_weights), 0)

  def test_minibatches_x2_weighs_twice_the_batches_of_the_capped_count(self):
    # 70 examples in batches of 32: ceil(70 / 32) = 3 batches, weight 6.
    # Stated 1e9 is first capped at 600: ceil(600 / 32) = 19, weight 38.
    robust = robust_lib.RobustAggregation(
        clip_updates=False, client_weighting='minibatches_x2',
        client_batch_size=32, max_client_weight=600.0)
    aggregate = accumulate(payload(*CLIENT), 70.0, robust)
    self.assertAllClose(aggregate.total_weight, 6.0)
    self.assertEqual(int(aggregate.capped_weights), 0)
    capped = accumulate(payload(*CLIENT), 1e9, robust)
    self.assertAllClose(capped.total_weight, 38.0)
    self.assertEqual(int(capped.capped_weights), 1)
    with self.assertRaisesRegex(ValueError, 'client_batch_size'):
      robust_lib.RobustAggregation(client_weighting='minibatches_x2')

  def test_invalid_weight_is_still_rejected(self):
    robust = robust_lib.RobustAggregation(client_weighting='uniform')
    for weight in (0.0, -1.0, math.nan, math.inf):
      aggregate = accumulate(payload(*CLIENT), weight, robust, bound=10.0)
      self.assertEqual(rejected(aggregate, 'weight'), 1, weight)


class RoundWeightCapTest(tf.test.TestCase):

  def test_weights_are_capped_at_a_multiple_of_the_round_median(self):
    robust = robust_lib.RobustAggregation(clip_updates=False,
                                          max_weight_multiple=2.0)
    factory = sum_factory.SparseSumFactory(KERNEL_SHAPES, NUM_ACTIVE,
                                           robust=robust)
    uploads = [payload([2., 0., 0., 2.], REFERENCE_MASK, [0.5]),
               payload([1., 0., 0., 3.], REFERENCE_MASK, [0.5]),
               payload([3., 0., 0., 2.], REFERENCE_MASK, [0.5]),
               payload(*CLIENT)]
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), uploads[0]))
    process = factory.create(value_type, tff.TensorType(np.float32))
    output = process.next(process.initialize(), uploads,
                          [100.0, 200.0, 300.0, 1e9])
    # The median of the 4 counts is the 2nd, 200, in the bin whose upper
    # edge is 2**(62/8) (8 * log2(200) = 61.2); the cap is twice that.
    cap = 2 * 2 ** (62 / 8)
    self.assertAllClose(output.measurements['round_weight_cap'], cap)
    self.assertEqual(output.measurements['capped_weights'], 1)
    self.assertAllClose(output.result.total_weight, 600.0 + cap)

  def test_uniform_weighting_has_no_round_cap(self):
    robust = robust_lib.RobustAggregation(client_weighting='uniform')
    self.assertFalse(robust.caps_weights_by_round)


class FromSettingsTest(tf.test.TestCase):
  """`model_setup.build_robust_aggregation`: the run's settings, its data."""

  class Partition:
    client_ids = ['0', '1', '2']

    def num_train_examples(self, client_id):
      return {'0': 120, '1': 600, '2': 45}[client_id]

  def build(self, **values):
    settings = settings_lib.ExperimentSettings.from_flat(**values)
    return model_setup.build_robust_aggregation(settings, self.Partition())

  def test_defaults_cap_at_the_largest_local_data_set(self):
    robust = self.build()
    self.assertEqual(robust.max_client_weight, 600.0)
    self.assertTrue(robust.clip_updates)
    self.assertTrue(robust.reject_replays)
    self.assertEqual(robust.max_weight_multiple, 2.0)
    self.assertIsNone(self.build(max_client_weight=0.0).max_client_weight)
    self.assertIsNone(self.build(
        max_client_weight_multiple=0.0).max_weight_multiple)

  def test_the_state_is_the_same_with_and_without_the_first_pass(self):
    # So a run started with workers resumes without them and back.
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), payload(*CLIENT)))
    state_types = []
    for first_pass in (True, False):
      process = sum_factory.SparseSumFactory(
          KERNEL_SHAPES, NUM_ACTIVE, robust=robust_lib.RobustAggregation(
              first_pass=first_pass)).create(value_type,
                                             tff.TensorType(np.float32))
      state_types.append(process.initialize.type_signature.result)
      output = process.next(process.initialize(), [payload(*CLIENT)], [1.0])
      self.assertEqual(output.measurements['num_clients'], 1)
    self.assertEqual(state_types[0], state_types[1])

  def test_workers_turn_the_first_pass_off(self):
    # TFF's multi-worker (mergeable) form cannot run an aggregate that
    # depends on another, so the screening pass is off, with a warning.
    for execution in (dict(num_local_workers=2),
                      dict(workers='127.0.0.1:8000')):
      robust = self.build(**execution)
      self.assertFalse(robust.screens_uploads)
      with self.assertLogs(level='WARNING'):
        model_setup.warn_if_screening_is_off(
            settings_lib.ExperimentSettings.from_flat(**execution))
      self.assertEqual(robust.max_client_weight, 600.0)


class ConfigTest(tf.test.TestCase):

  def test_bad_values_are_one_line_errors(self):
    for kwargs, name in (
        (dict(clip_norm_quantile=0.0), 'clip_norm_quantile'),
        (dict(clip_norm_quantile=1.0), 'clip_norm_quantile'),
        (dict(clip_norm_multiplier=0.5), 'clip_norm_multiplier'),
        (dict(clip_zeroing_multiple=math.inf), 'clip_zeroing_multiple'),
        (dict(max_client_weight=-1.0), 'max_client_weight'),
        (dict(max_client_weight=math.nan), 'max_client_weight'),
        (dict(max_weight_multiple=0.5), 'max_weight_multiple'),
        (dict(client_weighting='median'), 'client_weighting')):
      with self.assertRaisesRegex(ValueError, f'^{name} ') as raised:
        robust_lib.RobustAggregation(**kwargs)
      self.assertNotIn('\n', str(raised.exception))


def four_client_round(robust: robust_lib.RobustAggregation):
  """A factory's process, its state holding `reference()`, and 4 uploads.

  The uploads' delta norms are 1, 1, 2 and the CLIENT's sqrt(18).
  """
  factory = sum_factory.SparseSumFactory(KERNEL_SHAPES, NUM_ACTIVE,
                                         robust=robust)
  value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
      lambda t: tf.TensorSpec(t.shape, t.dtype), payload(*CLIENT)))
  process = factory.create(value_type, tff.TensorType(np.float32))
  state = process.initialize()._replace(
      reference=tf.nest.map_structure(lambda t: t.numpy(), reference()))
  uploads = [payload([2., 0., 0., 2.], REFERENCE_MASK, [0.5]),
             payload([1., 0., 0., 3.], REFERENCE_MASK, [0.5]),
             payload([3., 0., 0., 2.], REFERENCE_MASK, [0.5]),
             payload(*CLIENT)]
  return process, state, uploads


class FactoryTest(tf.test.TestCase):
  """The TFF aggregator: a bound from the round (two passes) or from the
  round before (one pass, as with workers), then clipped sums."""

  def test_round_bound_comes_from_the_round_and_clips_the_outlier(self):
    process, state, uploads = four_client_round(
        robust_lib.RobustAggregation(clip_norm_multiplier=1.0))
    # The median of the 4 norms is the 2nd smallest, 1, so the last two
    # are clipped to norm 1.
    output = process.next(state, uploads, [1.0, 1.0, 1.0, 1.0])
    self.assertEqual(output.measurements['update_norm_bound'], 1.0)
    self.assertEqual(output.measurements['clipped_clients'], 2)
    self.assertEqual(output.measurements['num_clients'], 4)
    # Position 0: 2 + 1 + (1 + 2 * 1/2) + (1 + 3 / sqrt(18)).
    self.assertAllClose(output.result.weighted_kernel_sums[0][0],
                        2 + 1 + 2 + 1 + 3 / math.sqrt(18))
    self.assertEqual(output.state.counter, 1)

  def test_without_a_first_pass_bounds_come_from_the_last_round(self):
    # Round 1 has no bound; its norms give round 2 the bound 1 (their
    # median, x1), which clips round 2's two outliers as a first pass
    # would.
    robust = robust_lib.RobustAggregation(clip_norm_multiplier=1.0,
                                          first_pass=False)
    self.assertTrue(robust.carries_bounds)
    process, state, uploads = four_client_round(robust)
    first = process.next(state, uploads, [1.0, 1.0, 1.0, 1.0])
    self.assertEqual(first.measurements['update_norm_bound'], math.inf)
    self.assertEqual(first.measurements['clipped_clients'], 0)
    self.assertAllClose(first.result.weighted_kernel_sums[0][0], 2 + 1 + 3 + 4)
    self.assertEqual(first.state.carried.bound, 1.0)
    self.assertEqual(first.state.counter, 1)
    second = process.next(first.state, uploads, [1.0, 1.0, 1.0, 1.0])
    self.assertEqual(second.measurements['update_norm_bound'], 1.0)
    self.assertEqual(second.measurements['clipped_clients'], 2)
    self.assertAllClose(second.result.weighted_kernel_sums[0][0],
                        2 + 1 + 2 + 1 + 3 / math.sqrt(18))

  def test_one_pass_with_a_median_takes_the_two_pass_values(self):
    # Round 2 of the one-pass form clips with the same bound as a first
    # pass, so the per-position medians are the same bits.
    values = []
    for first_pass in (True, False):
      process, state, uploads = four_client_round(
          robust_lib.RobustAggregation(
              clip_norm_multiplier=1.0, first_pass=first_pass,
              robust_mean=robust_means.RobustMean('median',
                                                  clients_per_round=4)))
      state = process.next(state, uploads, [1.0] * 4).state
      values.append(process.next(state, uploads, [1.0] * 4).result)
    tf.nest.map_structure(self.assertAllEqual, values[0].robust_values,
                          values[1].robust_values)


if __name__ == '__main__':
  tf.test.main()
