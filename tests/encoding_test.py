"""Tests for tff_feddst.process.encoding: payload round trip, bytes."""

import math

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_feddst.networks import models
from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.sparse import sparsity_distribution
from tests import mask_code_reference


class EncodingTest(tf.test.TestCase):

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
    # By hand at 32 bits: ERK leaves the last layer (500 positions) dense,
    # so 4 * sum(nnz) + ceil((261750 - 500) / 8) + 4 * 90.
    self.assertEqual(num_active[-1], 500)
    self.assertEqual(
        encoding.analytic_num_bytes(num_active, layout.kernel_sizes, 90),
        4 * sum(num_active) + 32657 + 360)

  def test_fp16_halves_value_bytes(self):
    kernel = np.ones((4, 4), np.float32)
    mask = np.ones((4, 4), np.float32)
    full = encoding.encode([kernel], [mask], [], [16])
    half = encoding.encode([kernel], [mask], [], [16], value_dtype=tf.float16)
    # 16 values: 64 vs 32 bytes; a dense layer sends no mask bytes.
    self.assertEqual(int(encoding.payload_num_bytes(full)), 64)
    self.assertEqual(int(encoding.payload_num_bytes(half)), 32)
    with_masks = encoding.encode([kernel], [mask], [], [16],
                                 omit_dense_masks=False)
    self.assertEqual(int(encoding.payload_num_bytes(with_masks)), 66)

  def test_dense_layer_sends_its_kernel_without_mask(self):
    kernel = np.array([[1., 0.], [3., 4.]], np.float32)
    sparse_kernel = np.array([[0., 2., 0.]], np.float32)
    sparse_mask = np.array([[0., 1., 1.]], np.float32)
    payload = encoding.encode([kernel, sparse_kernel],
                              [np.ones((2, 2), np.float32), sparse_mask],
                              [], [4, 2])
    # Only the sparse layer's 3 bits: 011 -> 0b01100000.
    self.assertAllEqual(payload.packed_masks, [0b01100000])
    self.assertAllEqual(payload.values[0], [1., 0., 3., 4.])
    kernels, masks, _ = encoding.decode(payload, [(2, 2), (1, 3)])
    self.assertAllEqual(kernels[0], kernel)
    self.assertAllEqual(masks[0], np.ones((2, 2)))
    self.assertAllEqual(kernels[1], sparse_kernel)
    self.assertAllEqual(masks[1], sparse_mask)
    # 6 values x 4 B + 1 mask byte.
    self.assertEqual(int(encoding.payload_num_bytes(payload)), 25)
    self.assertEqual(encoding.analytic_num_bytes([4, 2], [4, 3], 0), 25)

  def test_dense_layer_with_a_zero_in_its_mask_fails(self):
    kernel = np.ones((2, 2), np.float32)
    mask = np.array([[1., 1.], [1., 0.]], np.float32)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                'dense_masks'):
      encoding.encode([kernel], [mask], [], [4])
    # Sent with its mask, it round-trips.
    payload = encoding.encode([kernel], [mask], [], [4],
                              omit_dense_masks=False)
    _, masks, _ = encoding.decode(payload, [(2, 2)], omit_dense_masks=False)
    self.assertAllEqual(masks[0], mask)

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


class PayloadEncodingTest(parameterized.TestCase, tf.test.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(3)
    # The last layer is dense (80 of 80 active): it carries no mask.
    self.shapes = [(5, 5, 1, 10), (60, 20), (20, 4)]
    self.num_active = [208, 240, 80]
    self.masks = [
        mask_code_reference.random_mask(rng, math.prod(s), n).reshape(s)
        for s, n in zip(self.shapes, self.num_active)]
    self.kernels = [rng.normal(size=s).astype(np.float32) * m
                    for s, m in zip(self.shapes, self.masks)]
    self.dense = [rng.normal(size=(10,)).astype(np.float32)]

  @parameterized.parameters(
      'float32+bitmap', 'float16+bitmap', 'float32+rice', 'float16+rice',
      'float32+bitmap+changed_masks_only', 'float16+rice+changed_masks_only',
      'float32+bitmap+dense_masks', 'float16+rice+dense_masks')
  def test_round_trip_and_bytes(self, name):
    payload_encoding = encoding.PayloadEncoding.parse(name)
    self.assertEqual(payload_encoding.name, name)
    payload = encoding.encode_payload(self.kernels, self.masks, self.dense,
                                      self.num_active, payload_encoding)
    kernels, masks, dense = encoding.decode_payload(
        payload, self.shapes, self.num_active, payload_encoding,
        global_masks=[np.zeros(s, np.float32) for s in self.shapes])
    value_type = np.float16 if payload_encoding.value_bits == 16 else (
        np.float32)
    for got, kernel, got_mask, mask in zip(kernels, self.kernels, masks,
                                           self.masks):
      self.assertAllEqual(got, kernel.astype(value_type).astype(np.float32))
      self.assertAllEqual(got_mask, mask)
    self.assertAllEqual(dense[0], self.dense[0])
    # Bytes: values + dense, plus the masks as the encoding says.
    value_bytes = sum(self.num_active) * payload_encoding.value_bits // 8
    coded = [(m, n) for m, n in zip(self.masks, self.num_active)
             if n < m.size or not payload_encoding.omit_dense_masks]
    self.assertLen(coded, 2 if payload_encoding.omit_dense_masks else 3)
    if payload_encoding.mask_code == 'bitmap':
      mask_bits = sum(m.size for m, _ in coded)
    else:
      mask_bits = sum(len(mask_code_reference.reference_rice_bits(
          m.reshape(-1), mask_codes.rice_layer(m.size, n))) for m, n in coded)
    mask_bytes = mask_codes.num_packed_bytes(mask_bits)
    if not payload_encoding.is_bitmap_payload:
      mask_bytes += encoding.MASK_CODE_LENGTH_BYTES
      self.assertEqual(int(payload.mask_code_bits), mask_bits)
    self.assertEqual(int(encoding.payload_num_bytes(payload)),
                     value_bytes + 40 + mask_bytes)
    # Counting the decoded masks' ones gives the same (full masks).
    self.assertEqual(int(encoding.payload_num_bytes(payload, masks)),
                     value_bytes + 40 + mask_bytes)
    if payload_encoding.is_bitmap_payload:
      self.assertEqual(
          encoding.analytic_num_bytes(
              self.num_active, [m.size for m in self.masks], 10,
              payload_encoding.value_bits, payload_encoding.omit_dense_masks),
          value_bytes + 40 + mask_bytes)

  @parameterized.parameters('float32+bitmap', 'float16+bitmap',
                            'float32+rice', 'float16+rice+changed_masks_only')
  def test_fewer_ones_than_capacity_send_no_padding(self, name):
    payload_encoding = encoding.PayloadEncoding.parse(name)
    rng = np.random.default_rng(9)
    # Masks hold 100 and 50 of the capacities 208 and 240; the dense layer
    # stays full.
    ones = [100, 50, 80]
    masks = [mask_code_reference.random_mask(rng, math.prod(s), n).reshape(s)
             for s, n in zip(self.shapes, ones)]
    kernels = [k * m for k, m in zip(self.kernels, masks)]
    payload = encoding.encode_payload(kernels, masks, self.dense,
                                      self.num_active, payload_encoding)
    self.assertEqual([int(v.shape[0]) for v in payload.values],
                     self.num_active)
    got_kernels, got_masks, _ = encoding.decode_payload(
        payload, self.shapes, self.num_active, payload_encoding,
        global_masks=masks)
    for got, kernel, got_mask, mask in zip(got_kernels, kernels, got_masks,
                                           masks):
      self.assertAllClose(got, kernel, rtol=1e-3)
      self.assertAllEqual(got_mask, mask)
    measured = int(encoding.payload_num_bytes(payload, got_masks))
    value_bytes = 230 * payload_encoding.value_bits // 8
    if payload_encoding.is_bitmap_payload:
      analytic = encoding.analytic_num_bytes(
          self.num_active, [m.size for m in masks], 10,
          payload_encoding.value_bits, mask_num_ones=ones)
      # 230 values + ceil(1450 / 8) mask bytes + 10 dense.
      self.assertEqual(analytic, value_bytes + 182 + 40)
    else:
      analytic = value_bytes + 40 + encoding.MASK_CODE_LENGTH_BYTES + (
          mask_codes.num_packed_bytes(sum(
              len(mask_code_reference.reference_rice_bits(
                  m.reshape(-1), mask_codes.rice_layer(m.size, n)))
              for m, n in zip(masks[:2], self.num_active))))
    self.assertEqual(measured, analytic)
    # Without the masks, every value tensor counts at its capacity.
    self.assertEqual(int(encoding.payload_num_bytes(payload)),
                     analytic + (528 - 230) * payload_encoding.value_bits // 8)

  def test_masks_left_out_count_the_global_masks_ones(self):
    payload_encoding = encoding.PayloadEncoding.parse(
        'float16+rice+changed_masks_only')
    rng = np.random.default_rng(10)
    masks = [mask_code_reference.random_mask(rng, math.prod(s), n).reshape(s)
             for s, n in zip(self.shapes, [100, 50, 80])]
    payload = encoding.encode_payload(
        [k * m for k, m in zip(self.kernels, masks)], masks, self.dense,
        self.num_active, payload_encoding, include_masks=False)
    # 230 float16 values + 4 B length field + 40 B dense.
    self.assertEqual(int(encoding.payload_num_bytes(payload, masks)),
                     460 + 4 + 40)

  @parameterized.parameters('float32+bitmap', 'float16+bitmap',
                            'float32+rice', 'float16+rice+changed_masks_only')
  def test_dense_fedavg_payload_is_values_and_dense_only(self, name):
    payload_encoding = encoding.PayloadEncoding.parse(name)
    masks = [np.ones(s, np.float32) for s in self.shapes]
    sizes = [math.prod(s) for s in self.shapes]
    payload = encoding.encode_payload(self.kernels, masks, self.dense, sizes,
                                      payload_encoding)
    expected = sum(sizes) * payload_encoding.value_bits // 8 + 40
    self.assertEqual(int(encoding.payload_num_bytes(payload)), expected)
    self.assertEqual(encoding.max_payload_num_bytes(sizes, sizes, 10,
                                                    payload_encoding),
                     expected)
    kernels, got_masks, _ = encoding.decode_payload(
        payload, self.shapes, sizes, payload_encoding, global_masks=masks)
    for got, kernel, got_mask in zip(kernels, self.kernels, got_masks):
      self.assertAllClose(got, kernel, rtol=1e-3)
      self.assertAllEqual(got_mask, np.ones_like(kernel))

  def test_max_payload_num_bytes(self):
    sizes = [math.prod(s) for s in self.shapes]
    for name in ('float32+bitmap', 'float16+rice',
                 'float32+bitmap+changed_masks_only', 'float32+rice+dense_masks'):
      payload_encoding = encoding.PayloadEncoding.parse(name)
      payload = encoding.encode_payload(self.kernels, self.masks, self.dense,
                                        self.num_active, payload_encoding)
      bound = encoding.max_payload_num_bytes(sizes, self.num_active, 10,
                                             payload_encoding)
      self.assertLessEqual(int(encoding.payload_num_bytes(payload)), bound)
      if not payload_encoding.is_bitmap_payload:
        self.assertEqual(bound, int(encoding.payload_num_bytes(
            payload._replace(mask_code_bits=8 * payload.mask_code.shape[0]))))
    self.assertEqual(
        encoding.max_payload_num_bytes(sizes, self.num_active, 10,
                                       encoding.PayloadEncoding()),
        encoding.analytic_num_bytes(self.num_active, sizes, 10))

  def test_masks_left_out_cost_nothing_and_decode_to_the_global_masks(self):
    payload_encoding = encoding.PayloadEncoding.parse(
        'float32+rice+changed_masks_only')
    payload = encoding.encode_payload(self.kernels, self.masks, self.dense,
                                      self.num_active, payload_encoding,
                                      include_masks=tf.constant(False))
    self.assertEqual(int(payload.mask_code_bits), 0)
    self.assertAllEqual(payload.mask_code, np.zeros_like(payload.mask_code))
    # 528 values x 4 B + 10 dense x 4 B + 4 B length, no mask byte.
    self.assertEqual(int(encoding.payload_num_bytes(payload)),
                     528 * 4 + 40 + 4)
    kernels, masks, _ = encoding.decode_payload(
        payload, self.shapes, self.num_active, payload_encoding,
        global_masks=self.masks)
    for got, kernel, got_mask, mask in zip(kernels, self.kernels, masks,
                                           self.masks):
      self.assertAllEqual(got, kernel)
      self.assertAllEqual(got_mask, mask)

  def test_masks_left_out_need_global_masks(self):
    payload_encoding = encoding.PayloadEncoding(masks_only_when_changed=True)
    payload = encoding.encode_payload(self.kernels, self.masks, self.dense,
                                      self.num_active, payload_encoding)
    with self.assertRaisesRegex(ValueError, 'global_masks'):
      encoding.decode_payload(payload, self.shapes, self.num_active,
                              payload_encoding)

  def test_default_encoding_is_the_sparse_payload(self):
    payload = encoding.encode_payload(self.kernels, self.masks, self.dense,
                                      self.num_active,
                                      encoding.PayloadEncoding())
    self.assertIsInstance(payload, encoding.SparsePayload)
    expected = encoding.encode(self.kernels, self.masks, self.dense,
                               self.num_active)
    tf.nest.map_structure(self.assertAllEqual, payload, expected)

  def test_parse_rejects_unknown_and_repeated_tokens(self):
    self.assertEqual(encoding.PayloadEncoding.parse('rice'),
                     encoding.PayloadEncoding(mask_code='rice'))
    with self.assertRaisesRegex(ValueError, 'unknown encoding token'):
      encoding.PayloadEncoding.parse('float32+gzip')
    with self.assertRaisesRegex(ValueError, 'twice'):
      encoding.PayloadEncoding.parse('float32+float16')
    with self.assertRaisesRegex(ValueError, 'mask_code'):
      encoding.PayloadEncoding(mask_code='golomb')


class InformationBoundTest(tf.test.TestCase):

  def test_by_hand(self):
    # 2 of 4 positions: C(4, 2) = 6, log2 6 = 2.585; plus 2 x 32 value bits.
    self.assertAlmostEqual(
        encoding.information_bound_bits([4], [2], 32), 64 + math.log2(6))
    # Per layer: C(4,2) * C(3,3) = 6 combinations; globally the dense layer
    # is known too: C(4, 2) = 6. Two sparse layers pool: C(7, 3) = 35.
    self.assertAlmostEqual(
        encoding.information_bound_bits([4, 3], [2, 3], 16, per_layer=True),
        5 * 16 + math.log2(6))
    self.assertAlmostEqual(
        encoding.information_bound_bits([4, 3], [2, 3], 16),
        5 * 16 + math.log2(6))
    self.assertAlmostEqual(
        encoding.information_bound_bits([4, 3], [2, 1], 0),
        math.log2(35))

  def test_rice_code_is_close_to_the_bound_on_the_mnist_net(self):
    layout = models.model_layout(models.mnist_net(seed=0))
    num_active = sparsity_distribution.compute_layer_num_active(
        layout.kernel_shapes, 0.8, 'erk')
    rng = np.random.default_rng(4)
    masks = [mask_code_reference.random_mask(rng, math.prod(s), n).reshape(s)
             for s, n in zip(layout.kernel_shapes, num_active)]
    _, rice_bits = mask_codes.encode_masks(masks, num_active, 'rice')
    bound = encoding.information_bound_bits(
        layout.kernel_sizes, num_active, 0, per_layer=True)
    # Random masks: within 3 % of the per-layer bound, 26 % below the bitmap.
    self.assertBetween(int(rice_bits) / bound, 1.0, 1.03)
    self.assertLess(int(rice_bits), 0.75 * sum(layout.kernel_sizes))


if __name__ == '__main__':
  tf.test.main()
