"""Tests for tff_feddst.encoding: bit packing, payload round trip, bytes."""

import numpy as np
import tensorflow as tf

from tff_feddst import encoding
from tff_feddst import models
from tff_feddst import sparsity_distribution


class EncodingTest(tf.test.TestCase):

  def test_pack_bits_by_hand(self):
    # 1,0,1,1,0,0,0,0 -> 0b10110000 = 176; then 1 + seven padding zeros = 128.
    packed = encoding.pack_bits(tf.constant([1, 0, 1, 1, 0, 0, 0, 0, 1.0]))
    self.assertAllEqual(packed, [176, 128])
    self.assertEqual(packed.dtype, tf.uint8)

  def test_unpack_inverts_pack(self):
    bits = (np.random.default_rng(0).random(1001) < 0.3).astype(np.float32)
    packed = encoding.pack_bits(tf.constant(bits))
    self.assertEqual(packed.shape, (126,))  # ceil(1001 / 8).
    self.assertAllEqual(encoding.unpack_bits(packed, 1001), bits)

  def test_encode_decode_round_trip(self):
    rng = np.random.default_rng(1)
    kernels = [rng.normal(size=(3, 4)).astype(np.float32),
               rng.normal(size=(2, 2, 1, 3)).astype(np.float32)]
    masks = [(rng.random(k.shape) < 0.5).astype(np.float32) for k in kernels]
    bias = rng.normal(size=(3,)).astype(np.float32)
    num_active = [int(m.sum()) for m in masks]
    payload = encoding.encode(kernels, masks, [bias], num_active)
    self.assertEqual([v.shape[0] for v in payload.values], num_active)
    decoded_kernels, decoded_masks, dense = encoding.decode(
        payload, [k.shape for k in kernels])
    for kernel, mask, got_kernel, got_mask in zip(
        kernels, masks, decoded_kernels, decoded_masks):
      self.assertAllEqual(got_kernel, kernel * mask)
      self.assertAllEqual(got_mask, mask)
    self.assertAllEqual(dense[0], bias)

  def test_values_are_in_row_major_order_of_active_positions(self):
    kernel = np.array([[1., 2.], [3., 4.]], np.float32)
    mask = np.array([[0., 1.], [1., 0.]], np.float32)
    payload = encoding.encode([kernel], [mask], [], [2])
    self.assertAllEqual(payload.values[0], [2.0, 3.0])
    self.assertAllEqual(payload.packed_masks, [0b01100000])

  def test_measured_bytes_equal_analytic_for_mnist_net(self):
    layout = models.model_layout(models.mnist_net(seed=0))
    num_active = sparsity_distribution.compute_layer_num_active(
        layout.kernel_shapes, 0.8, 'erk')
    rng = np.random.default_rng(2)
    kernels, masks = [], []
    for shape, count in zip(layout.kernel_shapes, num_active):
      flat = np.zeros(int(np.prod(shape)), np.float32)
      flat[rng.choice(flat.size, count, replace=False)] = 1.0
      masks.append(flat.reshape(shape))
      kernels.append(rng.normal(size=shape).astype(np.float32))
    biases = [np.zeros(n, np.float32) for n in layout.layer_bias_sizes]
    for value_dtype, value_bits in ((tf.float32, 32), (tf.float16, 16)):
      payload = encoding.encode(kernels, masks, biases, num_active,
                                value_dtype=value_dtype)
      analytic = encoding.analytic_num_bytes(
          num_active, layout.kernel_sizes, sum(layout.layer_bias_sizes),
          value_bits=value_bits)
      self.assertEqual(int(encoding.payload_num_bytes(payload)), analytic)
    # By hand at 32 bits: 4 * sum(nnz) + ceil(261750 / 8) + 4 * 90.
    self.assertEqual(
        encoding.analytic_num_bytes(num_active, layout.kernel_sizes, 90),
        4 * sum(num_active) + 32719 + 360)

  def test_fp16_halves_value_bytes(self):
    kernel = np.ones((4, 4), np.float32)
    mask = np.ones((4, 4), np.float32)
    full = encoding.encode([kernel], [mask], [], [16])
    half = encoding.encode([kernel], [mask], [], [16], value_dtype=tf.float16)
    # 16 values: 64 vs 32 bytes, plus 2 mask bytes each.
    self.assertEqual(int(encoding.payload_num_bytes(full)), 66)
    self.assertEqual(int(encoding.payload_num_bytes(half)), 34)

  def test_fewer_active_positions_are_padded_and_decoded(self):
    kernel = np.array([[5., 6.], [7., 8.]], np.float32)
    mask = np.array([[1., 0.], [0., 0.]], np.float32)
    payload = encoding.encode([kernel], [mask], [], [3])
    self.assertAllEqual(payload.values[0], [5.0, 0.0, 0.0])
    decoded, decoded_mask, _ = encoding.decode(payload, [(2, 2)])
    self.assertAllEqual(decoded[0], [[5., 0.], [0., 0.]])
    self.assertAllEqual(decoded_mask[0], mask)

  def test_more_active_positions_than_capacity_fails(self):
    kernel = np.ones((2, 2), np.float32)
    with self.assertRaises((tf.errors.InvalidArgumentError, ValueError)):
      encoding.encode([kernel], [np.ones((2, 2), np.float32)], [], [3])


if __name__ == '__main__':
  tf.test.main()
