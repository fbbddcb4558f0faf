"""Tests for tff_feddst.process.distributor: the broadcast and its bytes."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.process import distributor
from tff_feddst.process import encoding

NUM_CLIENTS = 3
# Layer 1: a 4x3 kernel holding 5 of its 12 positions, at flat (row-major)
# positions 0, 2, 5, 6, 11. Layer 2: a dense 3x2 kernel (6 of 6, no mask
# bits). Biases: 3 + 2 = 5 float32.
SPARSE_POSITIONS = [0, 2, 5, 6, 11]
NUM_ACTIVE = (5, 6)


def two_layer_net() -> tf.keras.Model:
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(4,)),
      pruning.wrap_layer(tf.keras.layers.Dense(3)),
      pruning.wrap_layer(tf.keras.layers.Dense(2)),
  ])


def global_model(sparse_mask=None):
  """Global `ModelWeights` with distinct values everywhere.

  The first kernel is nonzero at its inactive positions too, and the TF-MOT
  thresholds are nonzero: neither is sent, so clients must see zeros there.
  """
  model = two_layer_net()
  pruning.start_pruning_steps(model)
  layout = models.model_layout(model)
  trainable = [v.numpy() for v in model.trainable_variables]
  non_trainable = [v.numpy() for v in model.non_trainable_variables]
  for index in layout.kernel_indices + layout.dense_trainable_indices:
    size = trainable[index].size
    trainable[index] = np.linspace(
        -1.0, 1.1, size).reshape(trainable[index].shape).astype(np.float32)
  if sparse_mask is None:
    sparse_mask = np.zeros(12, np.float32)
    sparse_mask[SPARSE_POSITIONS] = 1.0
  non_trainable[layout.mask_indices[0]] = sparse_mask.reshape(4, 3)
  non_trainable[layout.mask_indices[1]] = np.ones((3, 2), np.float32)
  for index in layout.bookkeeping_indices:
    if non_trainable[index].dtype == np.float32:
      non_trainable[index] = np.full_like(non_trainable[index], 0.25)
  weights = tff.learning.models.ModelWeights(
      trainable=trainable, non_trainable=non_trainable)
  return weights, layout


def model_weights_type_of(weights) -> tff.Type:
  @tff.tensorflow.computation
  def constant_weights():
    return tff.learning.models.ModelWeights(
        trainable=[tf.constant(v) for v in weights.trainable],
        non_trainable=[tf.constant(v) for v in weights.non_trainable])
  return constant_weights.type_signature.result


def broadcast(weights, layout, download_encoding=None, num_active=NUM_ACTIVE):
  """Runs one `next` of the broadcast to NUM_CLIENTS clients.

  A standalone `next` has no client-placed argument, so a wrapper takes one
  (unused) to set the number of clients.
  """
  weights_type = model_weights_type_of(weights)
  process = distributor.build_sparse_broadcast(
      layout, num_active, weights_type, download_encoding)

  @tff.federated_computation(
      process.initialize.type_signature.result,
      tff.types.FederatedType(weights_type, tff.SERVER),
      tff.types.FederatedType(np.int32, tff.CLIENTS))
  def to_clients(state, server_weights, unused_clients):
    return process.next(state, server_weights)

  return to_clients(process.initialize(), weights,
                    list(range(NUM_CLIENTS)))


class SparseBroadcastComputationTest(tf.test.TestCase):

  def test_type_signature(self):
    weights, layout = global_model()
    weights_type = model_weights_type_of(weights)
    process = distributor.build_sparse_broadcast(layout, NUM_ACTIVE,
                                                 weights_type)
    result_type = process.next.type_signature.result
    self.assertEqual(result_type.result,
                     tff.types.FederatedType(weights_type, tff.CLIENTS))
    self.assertEqual(
        result_type.measurements.member.download_bytes,
        tff.types.TensorType(np.int64))
    self.assertEqual(result_type.measurements.placement, tff.SERVER)

  def test_broadcast_leaving_masks_out_raises(self):
    weights, layout = global_model()
    with self.assertRaisesRegex(ValueError, 'always carries the masks'):
      distributor.build_sparse_broadcast(
          layout, NUM_ACTIVE, model_weights_type_of(weights),
          encoding.PayloadEncoding(masks_only_when_changed=True))


class SparseBroadcastExecutionTest(tf.test.TestCase):

  def assert_clients_receive(self, received_by_client, weights, layout,
                             value_type=np.float32):
    """Every client's decoded model equals the global one, zero off masks."""
    self.assertLen(received_by_client, NUM_CLIENTS)
    for received in received_by_client:
      self.assert_received(received, weights, layout, value_type)

  def assert_received(self, received, weights, layout, value_type):
    for index, mask_index in zip(layout.kernel_indices, layout.mask_indices):
      mask = weights.non_trainable[mask_index]
      expected = (weights.trainable[index].astype(value_type)
                  .astype(np.float32) * mask)
      self.assertAllEqual(received.trainable[index], expected)
      # Masked positions are exactly zero (not merely small).
      self.assertTrue(np.all(received.trainable[index][mask == 0] == 0.0))
      self.assertAllEqual(received.non_trainable[mask_index], mask)
    for index in layout.dense_trainable_indices:
      self.assertAllEqual(received.trainable[index], weights.trainable[index])
    for index in layout.bookkeeping_indices:
      self.assertAllEqual(received.non_trainable[index],
                          np.zeros_like(weights.non_trainable[index]))

  def test_clients_decode_the_global_model_and_bytes_by_hand(self):
    weights, layout = global_model()
    output = broadcast(weights, layout)
    self.assert_clients_receive(output.result, weights, layout)
    # Per client: (5 + 6) values x 4 bytes = 44; the mask bits of layer 1
    # only (layer 2 is dense): ceil(12 / 8) = 2; biases 5 x 4 = 20. 66.
    self.assertEqual(encoding.analytic_num_bytes(
        NUM_ACTIVE, layout.kernel_sizes, 5), 66)
    self.assertEqual(int(output.measurements['download_bytes']),
                     NUM_CLIENTS * 66)

  def test_float16_values(self):
    weights, layout = global_model()
    output = broadcast(weights, layout,
                       encoding.PayloadEncoding(value_dtype='float16'))
    # Clients start from the global values rounded to float16.
    self.assert_clients_receive(output.result, weights, layout,
                                value_type=np.float16)
    kernel = weights.trainable[layout.kernel_indices[0]]
    self.assertFalse(np.array_equal(  # The rounding is visible.
        kernel.astype(np.float16).astype(np.float32), kernel))
    # 11 values x 2 bytes = 22, + 2 mask bytes + 20 bias bytes (float32).
    self.assertEqual(int(output.measurements['download_bytes']),
                     NUM_CLIENTS * 44)

  def test_rice_coded_masks(self):
    weights, layout = global_model()
    output = broadcast(weights, layout,
                       encoding.PayloadEncoding(mask_code='rice'))
    self.assert_clients_receive(output.result, weights, layout)
    # Layer 1, 5 of 12 active: not inverted; count in bit_length(5) = 3
    # bits; Rice parameter k = 0 (p = 5/12: expected bits per gap 2.40 at
    # k = 0, 2.52 at k = 1). Gaps before 0, 2, 5, 6, 11: 0, 1, 2, 0, 4 in
    # unary: 1 + 2 + 3 + 1 + 5 = 12 bits. 15 bits -> 2 bytes, plus 4 bytes
    # for the code length. Values 44 + biases 20: 70 bytes.
    self.assertEqual(int(output.measurements['download_bytes']),
                     NUM_CLIENTS * 70)

  def test_mask_with_fewer_ones_than_capacity_sends_only_its_values(self):
    sparse_mask = np.zeros(12, np.float32)
    sparse_mask[[2, 5, 6, 11]] = 1.0  # 4 ones in a capacity of 5.
    weights, layout = global_model(sparse_mask)
    output = broadcast(weights, layout)
    self.assert_clients_receive(output.result, weights, layout)
    # One value fewer than the full payload: 66 - 4 = 62 bytes.
    self.assertEqual(int(output.measurements['download_bytes']),
                     NUM_CLIENTS * 62)


if __name__ == '__main__':
  tf.test.main()
