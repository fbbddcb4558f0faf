"""Tests for tff_feddst.process.finalizer: the FinalizerProcess, by hand."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import finalizer
from tff_feddst.process import server_step

# One prunable kernel of 4 positions (2 active) and one bias; in
# ModelWeights: trainable [kernel, bias], non_trainable [mask].
LAYOUT = models.ModelLayout(
    kernel_indices=(0,), mask_indices=(0,), dense_trainable_indices=(1,),
    dense_non_trainable_indices=(), bookkeeping_indices=(),
    kernel_shapes=((4,),), layer_bias_sizes=(1,))


def global_weights(kernel=(1., 2., 0., 0.), mask=(1., 1., 0., 0.), bias=(0.,)):
  return tff.learning.models.ModelWeights(
      trainable=[np.array(kernel, np.float32), np.array(bias, np.float32)],
      non_trainable=[np.array(mask, np.float32)])


def hand_aggregate(total_weight=6.0):
  # The three clients of aggregation_test: sums 7, 14, 36, 0 over weighted
  # votes 3, 4, 5, 0; bias sum 15 over weight 6.
  return aggregation.SparseAggregate(
      weighted_kernel_sums=(np.array([7., 14., 36., 0.], np.float32),),
      weighted_votes=(np.array([3., 4., 5., 0.], np.float32),),
      votes=(np.array([2., 2., 2., 0.], np.float32),),
      weighted_dense_sums=(np.array([15.], np.float32),),
      total_weight=np.float32(total_weight), num_clients=np.int32(3),
      upload_bytes=np.int64(51))


def new_position_aggregate():
  # Global mask [1, 1, 0, 0]. Means 7/3 = 2.33, 14/4 = 3.5, 36/5 = 7.2,
  # 20/4 = 5.0; holders 2, 1, 1, 2 (p1 inside, p2 outside: one holder).
  return hand_aggregate()._replace(
      weighted_kernel_sums=(np.array([7., 14., 36., 20.], np.float32),),
      weighted_votes=(np.array([3., 4., 5., 4.], np.float32),),
      votes=(np.array([2., 1., 1., 2.], np.float32),))


def type_of(make_value):
  return tff.tensorflow.computation(
      lambda: tf.nest.map_structure(tf.constant, make_value())
  ).type_signature.result


def build(server_learning_rate=1.0, server_momentum=0.0, num_active=(2,),
          **kwargs):
  weights_type = type_of(global_weights)
  aggregate_type = type_of(hand_aggregate)
  return finalizer.build_finalizer(
      LAYOUT, num_active, weights_type, aggregate_type,
      server_learning_rate=server_learning_rate,
      server_momentum=server_momentum, **kwargs)


class FinalizerExecutionTest(tf.test.TestCase):

  def test_mean_over_holders_then_reprune_by_hand(self):
    process = build()
    output = process.next(process.initialize(), global_weights(),
                          hand_aggregate())
    # Means: 7/3 = 2.33, 14/4 = 3.5, 36/5 = 7.2, 0. Keep the 2 largest.
    self.assertAllClose(output.result.trainable[0], [0., 3.5, 7.2, 0.])
    self.assertAllEqual(output.result.non_trainable[0], [0., 1., 1., 0.])
    self.assertAllClose(output.result.trainable[1], [2.5])  # 15 / 6.
    # Position 0 left the mask and position 2 joined it.
    self.assertEqual(output.measurements['mask_changed_positions'], 2)
    self.assertAllClose(output.measurements['sparsity'], 0.5)
    self.assertEqual(output.measurements['layer_num_active'], (2,))
    # Held outside the mask: p2 only (p3 has no votes); it entered at 7.2,
    # and p0 left with its old weight 1 (server_step.mask_movement).
    self.assertEqual(output.measurements['mask_new_positions_offered'], 1)
    self.assertEqual(output.measurements['mask_new_positions_entered'], 1)
    self.assertAllClose(output.measurements['mask_entered_weight_mass'], 7.2)
    self.assertAllClose(output.measurements['mask_left_weight_mass'], 1.0)

  def test_round_without_clients_changes_nothing(self):
    process = build(server_momentum=0.5)
    state = process.initialize()
    output = process.next(state, global_weights(), hand_aggregate(0.0))
    self.assertAllEqual(output.result.trainable[0], [1., 2., 0., 0.])
    self.assertAllEqual(output.result.non_trainable[0], [1., 1., 0., 0.])
    self.assertEqual(output.measurements['mask_changed_positions'], 0)

  def test_bad_server_settings_raise(self):
    with self.assertRaisesRegex(ValueError, 'server_momentum'):
      build(server_momentum=1.0)
    with self.assertRaisesRegex(ValueError, 'server_learning_rate'):
      build(server_learning_rate=0.0)


class NewPositionVotesTest(tf.test.TestCase):
  """min_new_position_votes: positions outside the global mask need holders."""

  def test_process_applies_the_rule(self):
    process = build(min_new_position_votes=2)
    output = process.next(process.initialize(), global_weights(),
                          new_position_aggregate())
    self.assertAllClose(output.result.trainable[0], [0., 3.5, 0., 5.])
    self.assertEqual(output.measurements['mask_changed_positions'], 2)

  def test_bad_threshold_raises(self):
    with self.assertRaisesRegex(ValueError, 'min_new_position_votes'):
      build(min_new_position_votes=0)


class FinitenessGuardTest(tf.test.TestCase):
  """A new model that is not all finite is refused; the old one stays."""

  def update(self, aggregate, weights=None, **kwargs):
    update = finalizer.server_update_fn(LAYOUT, kwargs.pop('num_active', (2,)),
                                        **kwargs)
    state = finalizer.FinalizerState(
        buffers=(tf.constant([0.5, -0.25, 0., 0.]), tf.constant([0.125])),
        round_num=tf.constant(4, tf.int32))
    weights = weights or global_weights()
    return update(state, tff.learning.models.ModelWeights(
        trainable=[tf.constant(t) for t in weights.trainable],
        non_trainable=[tf.constant(t) for t in weights.non_trainable]),
                  aggregate)

  def assert_kept(self, new_state, new_weights, measurements):
    self.assertEqual(int(measurements['server_update_failed']), 1)
    self.assertEqual(int(measurements['mask_changed_positions']), 0)
    # Against the kept model: nothing entered or left.
    self.assertEqual(int(measurements['mask_new_positions_entered']), 0)
    self.assertEqual(float(measurements['mask_entered_weight_mass']), 0.0)
    self.assertEqual(float(measurements['mask_left_weight_mass']), 0.0)
    self.assertEqual(int(new_state.round_num), 5)  # Still counted.
    self.assertAllEqual(new_state.buffers[0], [0.5, -0.25, 0., 0.])
    self.assertAllEqual(new_state.buffers[1], [0.125])
    self.assertAllEqual(new_weights.trainable[0], [1., 2., 0., 0.])
    self.assertAllEqual(new_weights.trainable[1], [0.])
    self.assertAllEqual(new_weights.non_trainable[0], [1., 1., 0., 0.])

  def test_infinite_kernel_mean_keeps_the_old_model(self):
    # p1's mean is inf (an overflowing sum): the new kernel would hold inf.
    aggregate = hand_aggregate()._replace(weighted_kernel_sums=(
        np.array([7., np.inf, 36., 0.], np.float32),))
    self.assert_kept(*self.update(aggregate, server_momentum=0.5))

  def test_nan_bias_keeps_the_old_model(self):
    aggregate = hand_aggregate()._replace(
        weighted_dense_sums=(np.array([np.nan], np.float32),))
    self.assert_kept(*self.update(aggregate, server_momentum=0.5))

  def test_overflowing_momentum_buffer_keeps_the_old_model(self):
    # Means are finite (3e38 / 1), but 3e38 - (-3e38) overflows the buffer.
    aggregate = hand_aggregate()._replace(
        weighted_kernel_sums=(np.array([3e38, 3e38, 0., 0.], np.float32),),
        weighted_votes=(np.array([1., 1., 0., 0.], np.float32),))
    weights = global_weights(kernel=(-3e38, 2., 0., 0.))
    new_state, new_weights, measurements = self.update(aggregate, weights)
    self.assertEqual(int(measurements['server_update_failed']), 1)
    self.assertAllEqual(new_weights.trainable[0],
                        np.array([-3e38, 2., 0., 0.], np.float32))
    self.assertAllEqual(new_state.buffers[0], [0.5, -0.25, 0., 0.])

  def test_finite_round_is_not_failed(self):
    new_state, new_weights, measurements = self.update(
        hand_aggregate(), server_momentum=0.5)
    self.assertEqual(int(measurements['server_update_failed']), 0)
    # As apply_aggregate computes it, bit for bit.
    buffers, weights, _ = server_step.apply_aggregate(
        [tf.constant([0.5, -0.25, 0., 0.]), tf.constant([0.125])],
        global_weights(), hand_aggregate(), LAYOUT, (2,), 1.0, 0.5)
    self.assertAllEqual(new_weights.trainable[0], weights.trainable[0])
    self.assertAllEqual(new_weights.trainable[1], weights.trainable[1])
    self.assertAllEqual(new_state.buffers[0], buffers[0])

  def test_growing_sparsity_reprunes_the_kept_model(self):
    # Round 5 of a table whose last row keeps 2: the kept model is re-pruned
    # to it as a round without clients would be (largest |w|: -2 and 3).
    aggregate = hand_aggregate()._replace(
        weighted_dense_sums=(np.array([np.inf], np.float32),))
    new_state, new_weights, measurements = self.update(
        aggregate, global_weights(kernel=(1., -2., 3., 0.),
                                  mask=(1., 1., 1., 0.)),
        num_active=(3,), num_active_by_round=np.array([[3], [2]], np.int32))
    self.assertEqual(int(measurements['server_update_failed']), 1)
    self.assertAllEqual(new_weights.trainable[0], [0., -2., 3., 0.])
    self.assertAllEqual(new_weights.non_trainable[0], [0., 1., 1., 0.])
    self.assertAllEqual(new_state.buffers[0], [0., -0.25, 0., 0.])
    self.assertEqual(int(measurements['mask_changed_positions']), 1)

  def test_process_reports_the_failed_round(self):
    process = build(server_momentum=0.5)
    aggregate = hand_aggregate()._replace(
        weighted_dense_sums=(np.array([np.inf], np.float32),))
    output = process.next(process.initialize(), global_weights(), aggregate)
    self.assertEqual(output.measurements['server_update_failed'], 1)
    self.assertAllEqual(output.result.trainable[0], [1., 2., 0., 0.])
    self.assertAllEqual(output.result.trainable[1], [0.])
    self.assertEqual(int(output.state.round_num), 1)
    output = process.next(output.state, global_weights(), hand_aggregate())
    self.assertEqual(output.measurements['server_update_failed'], 0)


class RememberOldTest(tf.test.TestCase):
  """--remember_old: missing clients count as sending the old weight."""

  def test_process_with_remember_old(self):
    process = build(remember_old=True)
    output = process.next(process.initialize(),
                          global_weights(kernel=(5., 2., 0., 0.)),
                          hand_aggregate())
    self.assertAllClose(output.result.trainable[0], [22. / 6., 0., 7.2, 0.])


class GrowingSparsityTest(tf.test.TestCase):
  """A per-round table of counts: round t keeps row min(t, last)."""

  def test_counts_follow_the_table_and_the_state_counts_rounds(self):
    # Capacity 3; rows: initial 3, round 1: 2, round 2 and later: 1.
    process = build(num_active=(3,), num_active_by_round=np.array(
        [[3], [2], [1]], np.int32))
    state = process.initialize()
    self.assertEqual(int(state.round_num), 0)
    weights = global_weights(kernel=(1., 2., 3., 0.), mask=(1., 1., 1., 0.))
    # Each round the means are 2.33, 3.5, 7.2, 0 (the same sums).
    expected = [(1, [0., 3.5, 7.2, 0.]), (2, [0., 0., 7.2, 0.]),
                (3, [0., 0., 7.2, 0.])]
    for round_num, kernel in expected:
      output = process.next(state, weights, hand_aggregate())
      state, weights = output.state, output.result
      self.assertEqual(int(state.round_num), round_num)
      self.assertAllClose(weights.trainable[0], kernel)
      self.assertEqual(output.measurements['layer_num_active'],
                       (int(np.count_nonzero(kernel)),))
      self.assertAllClose(output.measurements['sparsity'],
                          1 - np.count_nonzero(kernel) / 4)

  def test_round_without_clients_still_prunes_to_the_round_count(self):
    process = build(server_momentum=0.5, num_active=(3,),
                    num_active_by_round=np.array([[3], [2]], np.int32))
    output = process.next(
        process.initialize(),
        global_weights(kernel=(1., -2., 3., 0.), mask=(1., 1., 1., 0.)),
        hand_aggregate(0.0))
    # No clients: keep the 2 largest |w| of the current mask: -2 and 3.
    self.assertAllClose(output.result.trainable[0], [0., -2., 3., 0.])
    self.assertAllEqual(output.result.non_trainable[0], [0., 1., 1., 0.])
    self.assertEqual(output.measurements['mask_changed_positions'], 1)
    self.assertEqual(int(output.state.round_num), 1)

  def test_bad_tables_raise(self):
    with self.assertRaisesRegex(ValueError, 'num_active_by_round'):
      build(num_active_by_round=np.array([[2, 1]], np.int32))  # 2 layers.
    with self.assertRaisesRegex(ValueError, 'capacity'):
      build(num_active=(2,), num_active_by_round=np.array([[3], [2]]))


class ReferenceServerRuleTest(tf.test.TestCase):
  """server_rule and min_votes_unit are checked (the rule: server_step_test)."""

  def test_unknown_rule_or_unit_raises(self):
    with self.assertRaisesRegex(ValueError, 'server_rule'):
      build(server_rule='authors')
    with self.assertRaisesRegex(ValueError, 'min_votes_unit'):
      build(min_votes_unit='examples')


if __name__ == '__main__':
  tf.test.main()
