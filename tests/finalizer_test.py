"""Tests for tff_feddst.finalizer: averaging, momentum, re-prune, by hand."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst import aggregation
from tff_feddst import finalizer
from tff_feddst import models

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


def type_of(make_value):
  return tff.tensorflow.computation(
      lambda: tf.nest.map_structure(tf.constant, make_value())
  ).type_signature.result


def build(server_learning_rate=1.0, server_momentum=0.0):
  weights_type = type_of(global_weights)
  aggregate_type = type_of(hand_aggregate)
  return finalizer.build_finalizer(
      LAYOUT, (2,), weights_type, aggregate_type,
      server_learning_rate=server_learning_rate,
      server_momentum=server_momentum)


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

  def test_round_without_clients_changes_nothing(self):
    process = build(server_momentum=0.5)
    state = process.initialize()
    output = process.next(state, global_weights(), hand_aggregate(0.0))
    self.assertAllEqual(output.result.trainable[0], [1., 2., 0., 0.])
    self.assertAllEqual(output.result.non_trainable[0], [1., 1., 0., 0.])
    self.assertEqual(output.measurements['mask_changed_positions'], 0)

  def test_server_momentum_by_hand(self):
    # Current kernel [1,2,0,0], buffer [1,1,0,0], bias 0 (buffer 0).
    # delta = target - w = [2.33-1, 3.5-2, 7.2, 0]; beta 0.5, lr 0.5:
    # buffer' = 0.5*[1,1,0,0] + delta = [1.833, 2.0, 7.2, 0]
    # w' = w + 0.5*buffer' = [1.917, 3.0, 3.6, 0]; keep 2 largest: 3.0, 3.6.
    buffers = [np.array([1., 1., 0., 0.], np.float32),
               np.zeros([1], np.float32)]
    new_buffers, new_weights, changed = finalizer.apply_aggregate(
        buffers, global_weights(), hand_aggregate(), LAYOUT, (2,),
        server_learning_rate=0.5, server_momentum=0.5)
    self.assertAllClose(new_weights.trainable[0], [0., 3.0, 3.6, 0.])
    self.assertAllClose(new_buffers[0], [0., 2.0, 7.2, 0.])  # Masked.
    self.assertAllClose(new_weights.trainable[1], [1.25])  # 0 + 0.5 * 2.5.
    self.assertEqual(int(changed), 2)

  def test_min_votes_excludes_rarely_held_positions(self):
    # Votes 3, 1, 2, 0; means 2.33, 3.5, 7.2, 0. Any holder: keep 7.2 and
    # 3.5. With min_votes 2, position 1 (one holder) is not eligible: keep
    # 7.2 and 2.33.
    aggregate = hand_aggregate()._replace(
        votes=(np.array([3., 1., 2., 0.], np.float32),))
    for min_votes, expected_mask in ((0, [0., 1., 1., 0.]),
                                     (2, [1., 0., 1., 0.])):
      _, weights, _ = finalizer.apply_aggregate(
          [np.zeros(4, np.float32), np.zeros(1, np.float32)],
          global_weights(), aggregate, LAYOUT, (2,), 1.0, 0.0,
          min_votes=min_votes)
      self.assertAllEqual(weights.non_trainable[0], expected_mask)

  def test_bad_server_settings_raise(self):
    with self.assertRaisesRegex(ValueError, 'server_momentum'):
      build(server_momentum=1.0)
    with self.assertRaisesRegex(ValueError, 'server_learning_rate'):
      build(server_learning_rate=0.0)


if __name__ == '__main__':
  tf.test.main()
