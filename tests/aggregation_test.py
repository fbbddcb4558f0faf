"""Tests for tff_feddst.process.aggregation: sums of sparse payloads, by hand."""

import collections

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.process import aggregation
from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.process import payload_validation
from tff_feddst.process import sum_factory

# Three clients, one prunable kernel of 4 positions (2 active each), one bias.
#   client  weight  mask        kernel values      bias
#   A       1       [1,1,0,0]   [1, 2, 0, 0]       1
#   B       3       [0,1,1,0]   [0, 4, 6, 0]       2
#   C       2       [1,0,1,0]   [3, 0, 9, 0]       4
MASKS = [[1., 1., 0., 0.], [0., 1., 1., 0.], [1., 0., 1., 0.]]
KERNELS = [[1., 2., 0., 0.], [0., 4., 6., 0.], [3., 0., 9., 0.]]
BIASES = [[1.], [2.], [4.]]
WEIGHTS = [1., 3., 2.]


def kind_counts(**counts) -> list[int]:
  """The `rejected` vector with the given counts per kind."""
  return [counts.get(kind, 0) for kind in payload_validation.REJECTION_KINDS]


def measurements(upload_bytes, num_clients, **rejected):
  """The aggregator's measurements with the given rejections per kind."""
  counts = kind_counts(**rejected)
  result = collections.OrderedDict(upload_bytes=upload_bytes,
                                   num_clients=num_clients,
                                   rejected_clients=sum(counts))
  for kind, count in zip(payload_validation.REJECTION_KINDS, counts):
    result[f'rejected_{kind}'] = count
  result['clipped_clients'] = 0
  result['capped_weights'] = 0
  return result


def client_payloads():
  return [encoding.encode([np.array(k, np.float32)], [np.array(m, np.float32)],
                          [np.array(b, np.float32)], [2])
          for k, m, b in zip(KERNELS, MASKS, BIASES)]


def payload_type():
  @tff.tensorflow.computation
  def example():
    return client_payloads()[0]
  return example.type_signature.result


def assert_three_client_sums(test: tf.test.TestCase, aggregate) -> None:
  """The aggregate of `client_payloads()` with `WEIGHTS`, worked out by hand."""
  # Position 0: A (1*1) + C (2*3) = 7; 1: A (1*2) + B (3*4) = 14;
  # 2: B (3*6) + C (2*9) = 36; 3: nobody.
  test.assertAllClose(aggregate.weighted_kernel_sums[0], [7., 14., 36., 0.])
  # Example-weighted votes: 1+2, 1+3, 3+2, 0.
  test.assertAllClose(aggregate.weighted_votes[0], [3., 4., 5., 0.])
  test.assertAllClose(aggregate.votes[0], [2., 2., 2., 0.])
  # Bias: 1*1 + 3*2 + 2*4 = 15, over total weight 6.
  test.assertAllClose(aggregate.weighted_dense_sums[0], [15.])
  test.assertAllClose(aggregate.total_weight, 6.)
  test.assertEqual(aggregate.num_clients, 3)


class SparseSumFactoryComputationTest(tf.test.TestCase):

  def test_type_signature(self):
    process = sum_factory.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    result = process.next.type_signature.result
    self.assertEqual(result.result.placement, tff.SERVER)
    self.assertEqual(result.result.member.weighted_kernel_sums[0].shape, (4,))
    # The declared client value has unknown lengths; the real payload type
    # is assignable to it (and is what compose_learning_process checks).
    declared = process.next.type_signature.parameter[1].member
    self.assertTrue(declared.is_assignable_from(payload_type()))
    self.assertFalse(payload_type().is_assignable_from(declared))
    self.assertEqual(declared.values[0].shape, (None,))
    self.assertEqual(process.initialize.type_signature.result.member,
                     tff.TensorType(np.int32))

  def test_value_type_of_another_payload_raises(self):
    with self.assertRaisesRegex(ValueError, 'is not the payload'):
      sum_factory.SparseSumFactory([(16,)], [2]).create(
          payload_type(), tff.TensorType(np.float32))


class SparseSumFactoryExecutionTest(tf.test.TestCase):

  def test_three_clients_by_hand(self):
    process = sum_factory.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    output = process.next(process.initialize(), client_payloads(), WEIGHTS)
    assert_three_client_sums(self, output.result)
    # Each upload: 2 values x 4 B + 1 mask byte + 1 bias x 4 B + 4 B weight.
    self.assertEqual(output.measurements, measurements(51, 3))

  def test_zero_weight_client_is_rejected_and_does_not_vote(self):
    process = sum_factory.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    output = process.next(process.initialize(), client_payloads()[:2],
                          [1., 0.])
    self.assertAllClose(output.result.votes[0], [1., 1., 0., 0.])
    self.assertAllClose(output.result.weighted_kernel_sums[0],
                        [1., 2., 0., 0.])
    self.assertEqual(output.measurements, measurements(34, 1, weight=1))

  def test_partial_exact_sums_merge_to_the_sequential_sum(self):
    payloads = client_payloads()
    zero = aggregation.exact_sum.to_exact(
        aggregation.zero_aggregate([(4,)], [(1,)]))
    add = lambda total, index: aggregation.add_exactly(
        total, payloads[index], WEIGHTS[index], [(4,)], [(1,)], [2],
        encoding.PayloadEncoding())
    sequential = add(add(add(zero, 0), 1), 2)
    merged = aggregation.exact_sum.add(add(zero, 2), add(add(zero, 1), 0))
    tf.nest.map_structure(self.assertAllEqual, merged, sequential)
    assert_three_client_sums(self, aggregation.exact_sum.from_exact(
        aggregation.zero_aggregate([(4,)], [(1,)]), merged))

  def test_sums_do_not_depend_on_client_order(self):
    # Position 0 gets 1e8 - 1e8 + 1 (by weight 1 each): float32 keeps the 1
    # or loses it depending on the order; the aggregator always keeps it.
    values = [[1e8, 1.], [-1e8, 2.], [1., 3.]]
    masks = [[1., 1., 0., 0.]] * 3
    payloads = [encoding.encode([np.array(v + [0., 0.], np.float32)],
                                [np.array(m, np.float32)],
                                [np.array([v[0]], np.float32)], [2])
                for v, m in zip(values, masks)]
    process = sum_factory.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    results = []
    for order in ([0, 1, 2], [0, 2, 1], [2, 1, 0]):
      output = process.next(process.initialize(),
                            [payloads[i] for i in order], [1., 1., 1.])
      results.append(output.result)
    for result in results:
      self.assertAllEqual(result.weighted_kernel_sums[0], [1., 6., 0., 0.])
      self.assertAllEqual(result.weighted_dense_sums[0], [1.])


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
    process = sum_factory.SparseSumFactory([(4,)], [2], RICE).create(
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
    process = sum_factory.SparseSumFactory([(4,)], [2], RICE_CHANGED).create(
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
    self.assertEqual(output.measurements, measurements(62, 3))

  def test_zero_weight_client_without_mask_does_not_vote(self):
    payloads = coded_payloads(RICE_CHANGED, include_masks=(False, True, True))
    zero = aggregation.zero_compact_aggregate([(4,)], [(1,)], [2])
    aggregate = aggregation.accumulate_payload(
        zero, payloads[0], 0., [(4,)], [2], RICE_CHANGED,
        payload_validation.PayloadChecks())
    self.assertAllEqual(aggregate.with_masks.rejected,
                        kind_counts(weight=1))
    self.assertEqual(int(aggregate.with_masks.num_clients), 0)
    expanded = aggregation.expand_aggregate(
        aggregate, [np.array(MASKS[0], np.float32)])
    self.assertAllClose(expanded.votes[0], [0., 0., 0., 0.])
    self.assertAllClose(expanded.weighted_kernel_sums[0], [0., 0., 0., 0.])

  def test_coded_payloads_need_num_active(self):
    with self.assertRaisesRegex(ValueError, 'num_active'):
      sum_factory.SparseSumFactory([(4,)], payload_encoding=RICE)



# Hostile uploads: each is dropped and counted, and the honest clients A, B
# and C of the hand example above are aggregated exactly as without it.
def hostile(values=None, bits=None, packed_masks=None, dense=None):
  """Client B's payload with parts replaced (B: mask [0,1,1,0], values 4, 6,
  bias 2)."""
  honest = client_payloads()[1]
  if bits is not None:
    packed_masks = mask_codes.pack_bits(np.array(bits, np.float32)).numpy()
  return encoding.SparsePayload(
      values=(np.array(values, np.float32),) if values is not None
      else honest.values,
      packed_masks=packed_masks if packed_masks is not None
      else honest.packed_masks,
      dense=(np.array(dense, np.float32),) if dense is not None
      else honest.dense)


def aggregate_with(payload, weight, checks=None):
  """Aggregates A, the given payload, B and C (weights 1, weight, 3, 2)."""
  process = sum_factory.SparseSumFactory(
      [(4,)], payload_checks=checks).create(payload_type(),
                                            tff.TensorType(np.float32))
  honest = client_payloads()
  return process.next(process.initialize(),
                      [honest[0], payload, honest[1], honest[2]],
                      [WEIGHTS[0], weight, WEIGHTS[1], WEIGHTS[2]])


class HostilePayloadTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      # Honest uploads are 17 B each (51 B together); the hostile one's bytes
      # count as received: 3 values x 4 + 1 + 4 + 4 = 21 B, and so on.
      ('values_too_long', dict(values=[4., 6., 0.]), 3., 'shape', 21),
      ('values_too_short', dict(values=[4.]), 3., 'shape', 13),
      ('mask_buffer_too_long', dict(packed_masks=np.array([96, 0], np.uint8)),
       3., 'shape', 18),
      ('dense_too_long', dict(dense=[2., 2.]), 3., 'shape', 21),
      ('nan_value', dict(values=[np.nan, 6.]), 3., 'nonfinite', 17),
      ('inf_value', dict(values=[4., np.inf]), 3., 'nonfinite', 17),
      ('inf_dense', dict(dense=[-np.inf]), 3., 'nonfinite', 17),
      ('nnz_too_high', dict(bits=[1., 1., 1., 0.]), 3., 'mask_count', 17),
      ('nnz_too_low', dict(bits=[0., 1., 0., 0.], values=[4., 0.]), 3.,
       'mask_count', 17),
      ('weight_zero', {}, 0., 'weight', 17),
      ('weight_negative', {}, -3., 'weight', 17),
      ('weight_nan', {}, np.nan, 'weight', 17),
      ('weight_inf', {}, np.inf, 'weight', 17),
  )
  def test_hostile_client_is_rejected(self, parts, weight, kind, num_bytes):
    output = aggregate_with(hostile(**parts), weight)
    assert_three_client_sums(self, output.result)
    self.assertEqual(output.measurements,
                     measurements(51 + num_bytes, 3, **{kind: 1}))

  def test_norm_above_bound_is_rejected(self):
    # Honest norms: A sqrt(1+4+1) = 2.4, B sqrt(16+36+4) = 7.5,
    # C sqrt(9+81+16) = 10.3; B doubled: sqrt(64+144+16) = 15.0 > 11.
    checks = payload_validation.PayloadChecks(max_norm=11.0)
    output = aggregate_with(hostile(values=[8., 12.], dense=[4.]), 3.,
                            checks)
    assert_three_client_sums(self, output.result)
    self.assertEqual(output.measurements, measurements(68, 3, norm=1))
    # Squares that overflow float32 give an infinite norm: rejected too.
    output = aggregate_with(hostile(values=[1e30, 1e30]), 3., checks)
    self.assertEqual(output.measurements['rejected_norm'], 1)

  def test_without_a_bound_the_large_client_is_aggregated(self):
    output = aggregate_with(hostile(values=[8., 12.], dense=[4.]), 3.)
    self.assertEqual(output.measurements, measurements(68, 4))
    # Position 1: 14 + 3 * 8; position 2: 36 + 3 * 12.
    self.assertAllClose(output.result.weighted_kernel_sums[0],
                        [7., 38., 72., 0.])

  def test_sparser_mask_is_accepted_under_at_most(self):
    # Mask [0,1,0,0] with value 4 and zero padding, weight 3.
    checks = payload_validation.PayloadChecks(num_active_rule='at_most')
    output = aggregate_with(hostile(bits=[0., 1., 0., 0.], values=[4., 0.]),
                            3., checks)
    # Its padding value is not sent: 1 x 4 + 1 + 4 + 4 = 13 B.
    self.assertEqual(output.measurements, measurements(64, 4))
    self.assertAllClose(output.result.weighted_kernel_sums[0],
                        [7., 26., 36., 0.])
    self.assertAllClose(output.result.votes[0], [2., 3., 2., 0.])

  def test_nonzero_padding_is_rejected_under_at_most(self):
    checks = payload_validation.PayloadChecks(num_active_rule='at_most')
    output = aggregate_with(hostile(bits=[0., 1., 0., 0.], values=[4., 6.]),
                            3., checks)
    assert_three_client_sums(self, output.result)
    self.assertEqual(output.measurements['rejected_mask_count'], 1)

  def test_all_rejected_round_aggregates_nothing(self):
    process = sum_factory.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    output = process.next(process.initialize(),
                          [hostile(values=[np.nan, 0.]), hostile()],
                          [1., -1.])
    aggregate = output.result
    # total_weight 0: the finalizer keeps the global model unchanged
    # (finalizer_test.test_round_without_clients_changes_nothing).
    self.assertAllEqual(aggregate.total_weight, 0.)
    self.assertAllEqual(aggregate.weighted_kernel_sums[0], [0., 0., 0., 0.])
    self.assertAllEqual(aggregate.votes[0], [0., 0., 0., 0.])
    self.assertEqual(output.measurements,
                     measurements(34, 0, nonfinite=1, weight=1))

  def test_float64_payload_is_refused_by_the_type_system(self):
    process = sum_factory.SparseSumFactory([(4,)]).create(
        payload_type(), tff.TensorType(np.float32))
    honest = client_payloads()[0]
    as_float64 = honest._replace(
        values=(np.asarray(honest.values[0], np.float64),))
    with self.assertRaises(TypeError):
      process.next(process.initialize(), [as_float64], [1.])


class RoundTargetsTest(tf.test.TestCase):

  def test_state_counts_rounds_and_selects_the_target_row(self):
    # Row 0 (round 1): 2 ones; row 1 (round 2 and later): 1 one.
    checks = payload_validation.PayloadChecks(num_active_by_round=[[2], [1]])
    process = sum_factory.SparseSumFactory(
        [(4,)], payload_checks=checks).create(payload_type(),
                                              tff.TensorType(np.float32))
    two_ones = client_payloads()[1]
    one_one = hostile(bits=[0., 1., 0., 0.], values=[4., 0.])
    state = process.initialize()
    self.assertEqual(state, 0)
    accepted = []
    for _ in range(3):
      output = process.next(state, [two_ones, one_one], [3., 3.])
      state = output.state
      accepted.append((int(output.measurements['num_clients']),
                       int(output.measurements['rejected_mask_count']),
                       float(output.result.weighted_kernel_sums[0][2])))
    self.assertEqual(state, 3)
    # Round 1 keeps the two-ones client (position 2: 3 * 6 = 18); rounds 2
    # and 3 (the last row repeats) keep the one-one client only.
    self.assertEqual(accepted, [(1, 1, 18.), (1, 1, 0.), (1, 1, 0.)])

  def test_table_exceeding_the_capacity_raises(self):
    checks = payload_validation.PayloadChecks(num_active_by_round=[[3]])
    with self.assertRaisesRegex(ValueError, 'capacity'):
      sum_factory.SparseSumFactory([(4,)], payload_checks=checks).create(
          payload_type(), tff.TensorType(np.float32))


class HostileCodedPayloadTest(tf.test.TestCase):

  def test_rice_code_longer_than_sent_is_rejected(self):
    payloads = coded_payloads(RICE)
    process = sum_factory.SparseSumFactory([(4,)], [2], RICE).create(
        type_of_first(payloads), tff.TensorType(np.float32))
    # B's code is 5 bits; claiming 6, or far beyond the buffer, is invalid.
    for claimed_bits in (6, 1 << 30, -5):
      bad = payloads[1]._replace(mask_code_bits=np.int32(claimed_bits))
      output = process.next(process.initialize(),
                            [payloads[0], bad, payloads[1], payloads[2]],
                            [1., 3., 3., 2.])
      self.assertAllClose(output.result.weighted_kernel_sums[0],
                          [7., 14., 36., 0.])
      self.assertEqual(int(output.measurements['rejected_mask_code']), 1)
      self.assertEqual(int(output.result.num_clients), 3)

  def test_payload_without_masks_checks_padding_and_values(self):
    payloads = coded_payloads(RICE_CHANGED, include_masks=(False, True, True))
    process = sum_factory.SparseSumFactory([(4,)], [2], RICE_CHANGED).create(
        type_of_first(payloads), tff.TensorType(np.float32))
    nan_without_mask = payloads[0]._replace(
        values=(np.array([np.nan, 2.], np.float32),))
    output = process.next(process.initialize(),
                          [nan_without_mask] + payloads, [1.] + WEIGHTS)
    expanded = aggregation.expand_aggregate(
        output.result, [np.array(MASKS[0], np.float32)])
    self.assertAllClose(expanded.weighted_kernel_sums[0], [7., 14., 36., 0.])
    self.assertEqual(int(output.measurements['rejected_nonfinite']), 1)
    self.assertEqual(int(output.measurements['num_clients']), 3)


if __name__ == '__main__':
  tf.test.main()
