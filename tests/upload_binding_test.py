"""Tests for tff_feddst.process.upload_binding: uploads bound to their round."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import aggregator_feedback
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation as robust_lib
from tff_feddst.process import sum_factory
from tff_feddst.process import upload_binding

# One prunable kernel of 4 positions (2 active), one bias.
KERNEL_SHAPES = [[4]]
DENSE_SHAPES = [[1]]
NUM_ACTIVE = [2]
REFERENCE = robust_lib.Reference(kernels=(tf.constant([1., 0., 0., 2.]),),
                                 masks=(tf.constant([1., 0., 0., 1.]),),
                                 dense=(tf.constant([0.5]),))
NEXT_REFERENCE = robust_lib.Reference(
    kernels=(tf.constant([1.5, 0., 0., 2.]),), masks=REFERENCE.masks,
    dense=REFERENCE.dense)


def payload(kernel):
  return encoding.encode([np.array(kernel, np.float32)],
                         [np.array([1., 0., 0., 1.], np.float32)],
                         [np.array([0.5], np.float32)], NUM_ACTIVE)


def bound(kernel, reference):
  return upload_binding.BoundUpload(
      upload=payload(kernel),
      model_digest=upload_binding.reference_digest(reference))


def rejected(aggregate, kind):
  return int(aggregate.rejected[
      payload_validation.REJECTION_KINDS.index(kind)])


class DigestTest(tf.test.TestCase):

  def test_digest_depends_on_every_bit_but_the_sign_of_zero(self):
    digest = upload_binding.reference_digest(REFERENCE)
    self.assertEqual(digest.dtype, tf.int32)
    self.assertBetween(int(digest), 0, upload_binding.NUM_DIGEST_VALUES - 1)
    self.assertEqual(int(digest),
                     int(upload_binding.reference_digest(REFERENCE)))
    # -0.0 where the reference holds 0.0: the same model.
    signed_zero = REFERENCE._replace(
        kernels=(tf.constant([1., -0., 0., 2.]),))
    self.assertEqual(int(upload_binding.reference_digest(signed_zero)),
                     int(digest))
    # One ulp in one value, a mask bit, the bias: other digests.
    one_ulp = REFERENCE._replace(kernels=(tf.constant(
        [np.nextafter(np.float32(1), np.float32(2)), 0., 0., 2.]),))
    other_mask = REFERENCE._replace(masks=(tf.constant([1., 1., 0., 1.]),))
    other_bias = REFERENCE._replace(dense=(tf.constant([0.25]),))
    for other in (one_ulp, other_mask, other_bias, NEXT_REFERENCE):
      self.assertNotEqual(int(upload_binding.reference_digest(other)),
                          int(digest))

  def test_client_and_server_agree_on_the_broadcast(self):
    # What a client decodes from the broadcast and the server's reference
    # of the same model give the same digest, for float32 and float16
    # downloads (float16 rounds the values on both sides alike).
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
    layout, num_active = initial.layout, initial.num_active
    weights = tff.learning.models.ModelWeights(
        trainable=[tf.constant(v) for v in initial.weights.trainable],
        non_trainable=[tf.constant(v) for v in initial.weights.non_trainable])
    weights_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), weights))
    digests = []
    for download in (encoding.PayloadEncoding(),
                     encoding.PayloadEncoding(value_dtype='float16')):
      server = upload_binding.reference_digest(
          aggregator_feedback.reference_of_weights(weights, layout,
                                                   num_active, download))
      broadcast = encoding.encode_payload(
          [weights.trainable[i] for i in layout.kernel_indices],
          [weights.non_trainable[i] for i in layout.mask_indices],
          [weights.trainable[i] for i in layout.dense_trainable_indices] +
          [weights.non_trainable[i]
           for i in layout.dense_non_trainable_indices],
          num_active, payload_encoding=download)
      received = distributor.decode_model_weights(
          broadcast, layout, weights_type, num_active, download)
      client = upload_binding.weights_digest(received, layout)
      self.assertEqual(int(client), int(server))
      digests.append(int(client))
    # float16 rounding changed the model, so the digest too.
    self.assertNotEqual(digests[0], digests[1])


class StaleRejectionTest(tf.test.TestCase):

  def accumulate(self, upload, round_digest):
    return aggregation.accumulate_payload(
        aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES), upload,
        tf.constant(2.0), KERNEL_SHAPES, NUM_ACTIVE,
        checks=payload_validation.PayloadChecks(), round_digest=round_digest)

  def test_current_upload_is_summed_and_its_digest_counted(self):
    round_digest = upload_binding.reference_digest(REFERENCE)
    aggregate = self.accumulate(bound([3., 0., 0., 1.], REFERENCE),
                                round_digest)
    self.assertEqual(int(aggregate.num_clients), 1)
    self.assertAllEqual(aggregate.weighted_kernel_sums[0], [6., 0., 0., 2.])
    unbound = aggregation.accumulate_payload(
        aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES),
        payload([3., 0., 0., 1.]), tf.constant(2.0), KERNEL_SHAPES,
        NUM_ACTIVE, checks=payload_validation.PayloadChecks())
    self.assertEqual(int(aggregate.upload_bytes),
                     int(unbound.upload_bytes) + upload_binding.DIGEST_BYTES)

  def test_upload_for_another_model_is_rejected_as_stale(self):
    # Made from last round's model, received in this round's.
    aggregate = self.accumulate(
        bound([3., 0., 0., 1.], REFERENCE),
        upload_binding.reference_digest(NEXT_REFERENCE))
    self.assertEqual(int(aggregate.num_clients), 0)
    self.assertEqual(rejected(aggregate, 'stale'), 1)
    self.assertAllEqual(aggregate.weighted_kernel_sums[0], [0., 0., 0., 0.])
    # Its bytes crossed the wire: payload, weight and digest.
    self.assertEqual(
        int(aggregate.upload_bytes),
        int(aggregation.received_num_bytes(payload([3., 0., 0., 1.]))) +
        upload_binding.DIGEST_BYTES)

  def test_a_bound_upload_needs_checks(self):
    with self.assertRaisesRegex(ValueError, 'always checked'):
      aggregation.accumulate_payload(
          aggregation.zero_aggregate(KERNEL_SHAPES, DENSE_SHAPES),
          bound([3., 0., 0., 1.], REFERENCE), tf.constant(1.0),
          KERNEL_SHAPES, NUM_ACTIVE,
          round_digest=upload_binding.reference_digest(REFERENCE))


class FactoryTest(tf.test.TestCase):
  """The TFF aggregator compares each digest with its reference's."""

  def test_stale_uploads_are_counted_and_left_out(self):
    robust = robust_lib.RobustAggregation(
        clip_updates=False, reject_replays=False, max_weight_multiple=None,
        reject_stale=True)
    factory = sum_factory.SparseSumFactory(KERNEL_SHAPES, NUM_ACTIVE,
                                           robust=robust)
    self.assertTrue(factory.holds_reference)
    self.assertFalse(factory.clips_updates)
    current = bound([3., 0., 0., 1.], REFERENCE)
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), current))
    process = factory.create(value_type, tff.TensorType(np.float32))
    state = process.initialize()
    state = state._replace(
        reference=tf.nest.map_structure(lambda t: t.numpy(), REFERENCE))
    uploads = [current, bound([1., 0., 0., 3.], REFERENCE),
               bound([5., 0., 0., 5.], NEXT_REFERENCE)]
    output = process.next(state, uploads, [1.0, 1.0, 1.0])
    self.assertEqual(output.measurements['rejected_stale'], 1)
    self.assertEqual(output.measurements['num_clients'], 2)
    self.assertAllEqual(output.result.weighted_kernel_sums[0],
                        [4., 0., 0., 4.])
    # Once the state holds the next model, the same uploads are stale.
    state = state._replace(reference=tf.nest.map_structure(
        lambda t: t.numpy(), NEXT_REFERENCE))
    output = process.next(state, uploads, [1.0, 1.0, 1.0])
    self.assertEqual(output.measurements['rejected_stale'], 2)
    self.assertAllEqual(output.result.weighted_kernel_sums[0],
                        [5., 0., 0., 5.])

  def test_screening_pass_leaves_stale_uploads_out_too(self):
    # With clipping on, a stale upload must not enter the norm histogram:
    # the bound is the median of the two current uploads only.
    robust = robust_lib.RobustAggregation(clip_norm_multiplier=1.0,
                                          reject_stale=True)
    factory = sum_factory.SparseSumFactory(KERNEL_SHAPES, NUM_ACTIVE,
                                           robust=robust)
    current = bound([2., 0., 0., 2.], REFERENCE)  # Delta norm 1.
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), current))
    process = factory.create(value_type, tff.TensorType(np.float32))
    state = process.initialize()._replace(
        reference=tf.nest.map_structure(lambda t: t.numpy(), REFERENCE))
    stale = [bound([1., 0., 0., 2.0 + 100.0 * k], NEXT_REFERENCE)
             for k in (1, 2, 3)]
    output = process.next(state, [current, bound([1., 0., 0., 3.], REFERENCE)]
                          + stale, [1.0] * 5)
    self.assertEqual(output.measurements['rejected_stale'], 3)
    self.assertEqual(output.measurements['update_norm_bound'], 1.0)
    self.assertEqual(output.measurements['clipped_clients'], 0)


if __name__ == '__main__':
  tf.test.main()
