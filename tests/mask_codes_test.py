"""Tests for tff_feddst.process.mask_codes: bit packing and the Rice code."""

import math

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_feddst.process import mask_codes
from tests import mask_code_reference


class BitPackingTest(tf.test.TestCase):

  def test_pack_bits_by_hand(self):
    # 1,0,1,1,0,0,0,0 -> 0b10110000 = 176; then 1 + seven padding zeros = 128.
    packed = mask_codes.pack_bits(tf.constant([1, 0, 1, 1, 0, 0, 0, 0, 1.0]))
    self.assertAllEqual(packed, [176, 128])
    self.assertEqual(packed.dtype, tf.uint8)

  def test_unpack_inverts_pack(self):
    bits = (np.random.default_rng(0).random(1001) < 0.3).astype(np.float32)
    packed = mask_codes.pack_bits(tf.constant(bits))
    self.assertEqual(packed.shape, (126,))  # ceil(1001 / 8).
    self.assertAllEqual(mask_codes.unpack_bits(packed, 1001), bits)


class RiceCodeTest(parameterized.TestCase, tf.test.TestCase):

  def test_hand_example(self):
    # 16 positions, ones at 2, 3, 9 (3 active: not inverted), k = 1.
    # Count 3 in w = 2 bits: 11. Gaps 2, 0, 5 -> quotients 1, 0, 2 in
    # unary: 10 0 110; remainders 0, 0, 1 in 1 bit each: 0 0 1.
    layer = mask_codes.rice_layer(16, 3, k=1)
    self.assertEqual((layer.count_bits, layer.invert), (2, False))
    mask = np.zeros(16, np.float32)
    mask[[2, 3, 9]] = 1.0
    bits, length = mask_codes.rice_encode_layer(tf.constant(mask), layer)
    self.assertEqual(int(length), 11)
    self.assertAllEqual(bits[:11], [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1])
    self.assertAllEqual(bits[11:], np.zeros(layer.capacity_bits - 11))
    decoded, decoded_length = mask_codes.rice_decode_layer(bits, layer)
    self.assertAllEqual(decoded, mask)
    self.assertEqual(int(decoded_length), 11)

  def test_hand_example_dense_layer_codes_its_zeros(self):
    # 8 positions, 6 active: the zeros (at 1 and 6) are coded. Up to 8 of
    # them: w = 4. p = 2/8 picks k = 1 (expected bits 4, 3.29, 3.46 for
    # k = 0, 1, 2). Count 0010; gaps 1, 4 -> quotients 0, 2: 0 110;
    # remainders 1, 0.
    layer = mask_codes.rice_layer(8, 6)
    self.assertEqual((layer.invert, layer.count_bits, layer.k), (True, 4, 1))
    mask = np.array([1, 0, 1, 1, 1, 1, 0, 1], np.float32)
    bits, length = mask_codes.rice_encode_layer(tf.constant(mask), layer)
    self.assertEqual(int(length), 10)
    self.assertAllEqual(bits[:10], [0, 0, 1, 0, 0, 1, 1, 0, 1, 0])
    self.assertAllEqual(mask_codes.rice_decode_layer(bits, layer)[0], mask)

  def test_hand_example_fully_dense_layer_costs_only_its_count(self):
    layer = mask_codes.rice_layer(5, 5)
    bits, length = mask_codes.rice_encode_layer(tf.ones([5]), layer)
    self.assertEqual(int(length), layer.count_bits)  # Count 0 of zeros.
    self.assertAllEqual(mask_codes.rice_decode_layer(bits, layer)[0],
                        np.ones(5))

  def test_rice_parameter(self):
    # Density 0.2: k = 2 (3.69 bits a gap, against 3.78 at k=1, 4.20 at k=3).
    self.assertEqual(mask_codes.rice_parameter(256000, 51245), 2)
    self.assertEqual(mask_codes.rice_parameter(1000, 500), 0)
    self.assertEqual(mask_codes.rice_parameter(1000, 0), 0)
    self.assertEqual(mask_codes.rice_parameter(2**20, 16), 15)

  @parameterized.named_parameters(
      ('sparse', 5000, 396, 396), ('mnist_dense_layer', 256000, 51245, 51245),
      ('dense_layer', 250, 208, 208), ('full', 500, 500, 500),
      ('empty', 64, 0, 0), ('fewer_ones_than_capacity', 300, 40, 25),
      ('inverted_fewer_ones', 300, 200, 120), ('one_position', 1, 1, 1))
  def test_round_trip_and_reference_bits(self, size, num_active, ones):
    layer = mask_codes.rice_layer(size, num_active)
    mask = mask_code_reference.random_mask(
        np.random.default_rng(size + ones), size, ones)
    bits, length = mask_codes.rice_encode_layer(tf.constant(mask), layer)
    expected = mask_code_reference.reference_rice_bits(mask, layer)
    self.assertEqual(int(length), len(expected))
    self.assertAllEqual(bits[:len(expected)], expected)
    self.assertLessEqual(len(expected), layer.capacity_bits)
    decoded, decoded_length = mask_codes.rice_decode_layer(bits, layer)
    self.assertAllEqual(decoded, mask)
    self.assertEqual(int(decoded_length), len(expected))

  def test_longest_code_fits_the_capacity(self):
    # Every coded position at the end gives the largest quotients.
    for size, num_active in ((100, 10), (100, 80), (37, 37), (64, 1)):
      layer = mask_codes.rice_layer(size, num_active)
      mask = np.zeros(size, np.float32)
      if layer.invert:
        mask[:] = 1.0
        mask[size - layer.max_count:] = 0.0
      else:
        mask[size - num_active:] = 1.0
      bits, length = mask_codes.rice_encode_layer(tf.constant(mask), layer)
      self.assertLessEqual(int(length), layer.capacity_bits)
      self.assertAllEqual(mask_codes.rice_decode_layer(bits, layer)[0], mask)

  def test_layers_are_concatenated_without_padding(self):
    rng = np.random.default_rng(7)
    shapes, num_active = [(5, 5, 1, 10), (40, 30), (7,)], [200, 240, 7]
    masks = [mask_code_reference.random_mask(rng, math.prod(s), n).reshape(s)
             for s, n in zip(shapes, num_active)]
    # The last layer is dense: kept in the code only with dense masks.
    code, num_bits = mask_codes.encode_masks(masks, num_active, 'rice',
                                             omit_dense_masks=False)
    expected = []
    for mask, n in zip(masks, num_active):
      expected += mask_code_reference.reference_rice_bits(
          mask.reshape(-1), mask_codes.rice_layer(mask.size, n))
    self.assertEqual(int(num_bits), len(expected))
    omitted_bits = len(mask_code_reference.reference_rice_bits(
        masks[2].reshape(-1), mask_codes.rice_layer(7, 7)))
    self.assertEqual(
        int(mask_codes.encode_masks(masks, num_active, 'rice')[1]),
        len(expected) - omitted_bits)
    capacity = mask_codes.mask_code_capacity_bits(
        [m.size for m in masks], num_active, 'rice', omit_dense_masks=False)
    self.assertEqual(code.shape, (mask_codes.num_packed_bytes(capacity),))
    unpacked = mask_codes.unpack_bits(code, capacity)
    self.assertAllEqual(unpacked[:len(expected)], expected)
    self.assertAllEqual(unpacked[len(expected):],
                        np.zeros(capacity - len(expected)))
    for got, mask in zip(
        mask_codes.decode_masks(code, shapes, num_active, 'rice',
                                omit_dense_masks=False), masks):
      self.assertAllEqual(got, mask)


if __name__ == '__main__':
  tf.test.main()
