"""Binds every upload to the model it answers (stale uploads are rejected).

A client computes a digest of the model it received (the decoded broadcast:
kernels, masks, dense parameters) and sends it with its upload, as a
`BoundUpload`. The aggregator, which keeps the model it broadcast in its
state (`aggregator_feedback`), computes the same digest once per round and
rejects an upload whose digest differs ('stale' in
`payload_validation.REJECTION_KINDS`): an upload trained from another
round's model, e.g. a late answer or one replayed from an earlier round.
Replays within a round are caught by the fingerprints of
`robust_aggregation`; this closes the gap across rounds.

The digest is a 31-bit hash (FarmHash fingerprint of the tensors' bytes),
4 bytes on the wire, counted in `upload_bytes`. It is not a secret: every
client of the round knows the broadcast model, so a hostile client can
always send the current digest; what it buys is that an upload cannot
outlive the round it was made for.
"""

from typing import Any, NamedTuple, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models

DIGEST_BYTES = 4  # The int32 digest sent with each upload.
NUM_DIGEST_VALUES = 2**31 - 1  # Digests lie in [0, 2**31 - 1).


class BoundUpload(NamedTuple):
  """A client's upload and the digest of the model it trained from.

  Attributes:
    upload: The method's upload (a payload, or an extension's upload).
    model_digest: int32 scalar, `model_digest` of the received model.
  """
  upload: Any
  model_digest: Any


def digest_bytes(robust: Any) -> int:
  """Bytes a client's upload carries for its digest under `robust` (a
  `robust_aggregation.RobustAggregation` or None): 4 when the server
  rejects stale uploads, else 0."""
  return DIGEST_BYTES if robust is not None and robust.reject_stale else 0


def model_digest(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
                 dense: Sequence[tf.Tensor]) -> tf.Tensor:
  """int32 digest of a model: its kernels, masks and dense parameters.

  Every tensor is taken as float32 with -0.0 read as 0.0, so the server's
  reference (`robust_aggregation.Reference`) and the client's decoded
  `ModelWeights` of the same broadcast give the same digest.

  Args:
    kernels: The prunable kernels (zero off their masks).
    masks: Their 0/1 masks.
    dense: The dense parameters, in payload order.

  Returns:
    An int32 scalar in [0, NUM_DIGEST_VALUES).
  """
  serialized = []
  for tensor in (*kernels, *masks, *dense):
    tensor = tf.cast(tensor, tf.float32)
    tensor = tf.where(tf.equal(tensor, 0.0), tf.zeros_like(tensor), tensor)
    serialized.append(tf.io.serialize_tensor(tensor))
  joined = tf.strings.reduce_join(tf.stack(serialized))
  return tf.cast(tf.strings.to_hash_bucket_fast(joined, NUM_DIGEST_VALUES),
                 tf.int32)


def weights_digest(weights: tff.learning.models.ModelWeights,
                   layout: models.ModelLayout) -> tf.Tensor:
  """`model_digest` of `ModelWeights` (TF-MOT's bookkeeping left out).

  Args:
    weights: A model's weights, e.g. the ones a client received.
    layout: The model's `ModelLayout`.

  Returns:
    The int32 digest.
  """
  trainable, non_trainable = weights.trainable, weights.non_trainable
  return model_digest(
      [trainable[i] for i in layout.kernel_indices],
      [non_trainable[i] for i in layout.mask_indices],
      [trainable[i] for i in layout.dense_trainable_indices] +
      [non_trainable[i] for i in layout.dense_non_trainable_indices])


def reference_digest(reference: Any) -> tf.Tensor:
  """`model_digest` of a `robust_aggregation.Reference` (the broadcast)."""
  return model_digest(reference.kernels, reference.masks, reference.dense)


def bind_uploads(work: tff.learning.templates.ClientWorkProcess,
                 layout: models.ModelLayout
                 ) -> tff.learning.templates.ClientWorkProcess:
  """`work` whose clients send `BoundUpload`s.

  Each client's `ClientResult.update` becomes `BoundUpload(update, digest
  of the weights it received)`; state, weights and measurements are
  unchanged.

  Args:
    work: A method's `ClientWorkProcess`.
    layout: The model's `ModelLayout`.

  Returns:
    The `ClientWorkProcess` with bound uploads.
  """
  state_type, weights_type, data_type = work.next.type_signature.parameter
  result_type = work.next.type_signature.result.result.member

  @tff.tensorflow.computation(weights_type.member, result_type)
  def bind(weights, result):
    return tff.learning.templates.ClientResult(
        update=BoundUpload(upload=result.update,
                           model_digest=weights_digest(weights, layout)),
        update_weight=result.update_weight)

  @tff.federated_computation(state_type, weights_type, data_type)
  def next_fn(state, weights, client_data):
    output = work.next(state, weights, client_data)
    return tff.templates.MeasuredProcessOutput(
        state=output.state,
        result=tff.federated_map(bind, (weights, output.result)),
        measurements=output.measurements)

  return tff.learning.templates.ClientWorkProcess(work.initialize, next_fn)

