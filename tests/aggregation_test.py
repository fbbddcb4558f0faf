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


if __name__ == '__main__':
  tf.test.main()
