"""Tests for tff_feddst.aggregation: sums of sparse payloads, by hand."""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst import aggregation
from tff_feddst import encoding

# Three clients, one prunable kernel of 4 positions (2 active each), one bias.
#   client  weight  mask        kernel values      bias
#   A       1       [1,1,0,0]   [1, 2, 0, 0]       1
#   B       3       [0,1,1,0]   [0, 4, 6, 0]       2
#   C       2       [1,0,1,0]   [3, 0, 9, 0]       4
MASKS = [[1., 1., 0., 0.], [0., 1., 1., 0.], [1., 0., 1., 0.]]
KERNELS = [[1., 2., 0., 0.], [0., 4., 6., 0.], [3., 0., 9., 0.]]
BIASES = [[1.], [2.], [4.]]
WEIGHTS = [1., 3., 2.]


def client_payloads():
  return [encoding.encode([np.array(k, np.float32)], [np.array(m, np.float32)],
                          [np.array(b, np.float32)], [2])
          for k, m, b in zip(KERNELS, MASKS, BIASES)]


def payload_type():
  @tff.tensorflow.computation
  def example():
    return client_payloads()[0]
  return example.type_signature.result


class SparseSumFactoryComputationTest(tf.test.TestCase):

  def test_type_signature(self):
    process = aggregation.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    result = process.next.type_signature.result
    self.assertEqual(result.result.placement, tff.SERVER)
    self.assertEqual(result.result.member.weighted_kernel_sums[0].shape, (4,))
    self.assertEqual(process.next.type_signature.parameter[1].member,
                     payload_type())


class SparseSumFactoryExecutionTest(tf.test.TestCase):

  def test_three_clients_by_hand(self):
    process = aggregation.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    output = process.next(process.initialize(), client_payloads(), WEIGHTS)
    aggregate = output.result
    # Position 0: A (1*1) + C (2*3) = 7; 1: A (1*2) + B (3*4) = 14;
    # 2: B (3*6) + C (2*9) = 36; 3: nobody.
    self.assertAllClose(aggregate.weighted_kernel_sums[0], [7., 14., 36., 0.])
    # Example-weighted votes: 1+2, 1+3, 3+2, 0.
    self.assertAllClose(aggregate.weighted_votes[0], [3., 4., 5., 0.])
    self.assertAllClose(aggregate.votes[0], [2., 2., 2., 0.])
    # Bias: 1*1 + 3*2 + 2*4 = 15, over total weight 6.
    self.assertAllClose(aggregate.weighted_dense_sums[0], [15.])
    self.assertAllClose(aggregate.total_weight, 6.)
    self.assertEqual(aggregate.num_clients, 3)
    # Each upload: 2 values x 4 B + 1 mask byte + 1 bias x 4 B + 4 B weight.
    self.assertEqual(output.measurements,
                     collections.OrderedDict(upload_bytes=51, num_clients=3))

  def test_zero_weight_client_does_not_vote(self):
    process = aggregation.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    aggregate = process.next(process.initialize(), client_payloads()[:2],
                             [1., 0.]).result
    self.assertAllClose(aggregate.votes[0], [1., 1., 0., 0.])
    self.assertAllClose(aggregate.weighted_kernel_sums[0], [1., 2., 0., 0.])

  def test_merge_adds_partial_sums(self):
    payloads = client_payloads()
    zero = aggregation._zero_aggregate([(4,)], [(1,)])
    first = aggregation.accumulate_payload(zero, payloads[0], 1., [(4,)])
    second = aggregation.accumulate_payload(zero, payloads[1], 3., [(4,)])
    both = aggregation.accumulate_payload(first, payloads[1], 3., [(4,)])
    merged = aggregation.merge_aggregates(first, second)
    tf.nest.map_structure(self.assertAllClose, merged, both)


RICE = encoding.PayloadEncoding(mask_code='rice')
RICE_CHANGED = encoding.PayloadEncoding(mask_code='rice',
                                        masks_only_when_changed=True)


def coded_payloads(payload_encoding, include_masks=(True, True, True)):
  return [encoding.encode_payload(
      [np.array(k, np.float32)], [np.array(m, np.float32)],
      [np.array(b, np.float32)], [2], payload_encoding, include)
          for k, m, b, include in zip(KERNELS, MASKS, BIASES, include_masks)]


def type_of_first(payloads):
  @tff.tensorflow.computation
  def example():
    return tf.nest.map_structure(tf.constant, payloads[0])
  return example.type_signature.result


class CodedPayloadAggregationTest(tf.test.TestCase):

  def test_rice_payloads_give_the_bitmap_sums(self):
    payloads = coded_payloads(RICE)
    process = aggregation.SparseSumFactory([(4,)], [2], RICE).create(
        type_of_first(payloads), tff.TensorType(np.float32))
    aggregate = process.next(process.initialize(), payloads, WEIGHTS).result
    self.assertAllClose(aggregate.weighted_kernel_sums[0], [7., 14., 36., 0.])
    self.assertAllClose(aggregate.weighted_votes[0], [3., 4., 5., 0.])
    self.assertAllClose(aggregate.votes[0], [2., 2., 2., 0.])
    self.assertAllClose(aggregate.weighted_dense_sums[0], [15.])
    # 4 positions, 2 active: w = 2, k = 0 (p = 1/2). Codes: A 10 0 0 (count
    # 2, gaps 0 0), B 10 1 0 0, C 10 0 1 0: 4, 5, 5 bits, 1 byte each. Each
    # upload: 8 B values + 1 B code + 4 B code length + 4 B bias + 4 B weight.
    self.assertEqual(aggregate.upload_bytes, 3 * 21)

  def test_payloads_without_masks_use_the_global_mask(self):
    # A's mask [1,1,0,0] is the global mask; A leaves it out, B and C send.
    payloads = coded_payloads(RICE_CHANGED, include_masks=(False, True, True))
    self.assertEqual(int(payloads[0].mask_code_bits), 0)
    process = aggregation.SparseSumFactory([(4,)], [2], RICE_CHANGED).create(
        type_of_first(payloads), tff.TensorType(np.float32))
    output = process.next(process.initialize(), payloads, WEIGHTS)
    compact = output.result
    # A's values 1, 2 with weight 1 stay in the compact domain.
    self.assertAllClose(compact.global_mask_value_sums[0], [1., 2.])
    self.assertAllClose(compact.global_mask_weight, 1.)
    self.assertAllClose(compact.global_mask_voters, 1.)
    expanded = aggregation.expand_aggregate(
        compact, [np.array(MASKS[0], np.float32)])
    # The same sums as when every client sends its mask (hand numbers above).
    self.assertAllClose(expanded.weighted_kernel_sums[0], [7., 14., 36., 0.])
    self.assertAllClose(expanded.weighted_votes[0], [3., 4., 5., 0.])
    self.assertAllClose(expanded.votes[0], [2., 2., 2., 0.])
    self.assertAllClose(expanded.weighted_dense_sums[0], [15.])
    self.assertAllClose(expanded.total_weight, 6.)
    self.assertEqual(expanded.num_clients, 3)
    # A: 8 + 0 + 4 + 4 + 4 = 20 B; B and C: 21 B each (see above).
    self.assertEqual(output.measurements,
                     collections.OrderedDict(upload_bytes=62, num_clients=3))

  def test_zero_weight_client_without_mask_does_not_vote(self):
    payloads = coded_payloads(RICE_CHANGED, include_masks=(False, True, True))
    zero = aggregation.zero_compact_aggregate([(4,)], [(1,)], [2])
    aggregate = aggregation.accumulate_payload(zero, payloads[0], 0.,
                                               [(4,)], [2], RICE_CHANGED)
    expanded = aggregation.expand_aggregate(
        aggregate, [np.array(MASKS[0], np.float32)])
    self.assertAllClose(expanded.votes[0], [0., 0., 0., 0.])
    self.assertAllClose(expanded.weighted_kernel_sums[0], [0., 0., 0., 0.])

  def test_coded_payloads_need_num_active(self):
    with self.assertRaisesRegex(ValueError, 'num_active'):
      aggregation.SparseSumFactory([(4,)], payload_encoding=RICE)


if __name__ == '__main__':
  tf.test.main()
