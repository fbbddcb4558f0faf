"""The first pass of a screening aggregator: what it learns of each upload.

Before a round's uploads are summed, a screening `sum_factory.SparseSumFactory`
(robust aggregation, `robust_aggregation`) runs one `federated_aggregate` that
validates each upload with the same checks as the summing pass
(`aggregation.check_then`) and counts, for every accepted one, its delta
norm and stated weight in integer histograms and its replay fingerprint;
`screening_findings` turns the counts into the round's clip bound, replay
counts and weight cap. Without a first pass (TFF's multi-worker form) the
same counts are kept beside the sums and their findings serve the next
round.
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.process import aggregation
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation


class UploadScreen(NamedTuple):
  """What the first pass of a screening aggregator learns of one upload.

  Attributes:
    accepted: bool, the upload passes every payload check.
    norm: float32 L2 norm of its delta from the reference (0 when rejected
      or without a reference).
    fingerprint: int32 [2] replay buckets (`robust_aggregation`).
  """
  accepted: tf.Tensor
  norm: tf.Tensor
  fingerprint: tf.Tensor


def screen_upload(payload: encoding.Payload, weight: tf.Tensor,
                  kernel_shapes: Sequence[Sequence[int]],
                  dense_shapes: Sequence[Sequence[int]],
                  num_active: Sequence[int],
                  payload_encoding: encoding.PayloadEncoding,
                  checks: payload_validation.PayloadChecks,
                  reference: Optional[robust_aggregation.Reference],
                  targets: Optional[tf.Tensor] = None,
                  extension: Optional[aggregation.UploadExtension] = None,
                  round_digest: Optional[tf.Tensor] = None
                  ) -> UploadScreen:
  """Validates an upload, measures its delta and fingerprints it.

  The first pass of a `sum_factory.SparseSumFactory` with `robust` (the
  clip bound and the replay counts come from it).

  Args:
    payload: The client's upload (dimensions may be unknown statically).
    weight: Its stated example count.
    kernel_shapes: Shape of each prunable kernel.
    dense_shapes: Shape of each dense parameter tensor, in payload order.
    num_active: Values per kernel.
    payload_encoding: The upload encoding.
    checks: The payload checks (as for `aggregation.accumulate_payload`).
    reference: The round's broadcast model; None: no norm is taken.
    targets: See `aggregation.accumulate_payload`.
    extension: See `aggregation.accumulate_payload`.
    round_digest: See `aggregation.accumulate_payload`.

  Returns:
    The `UploadScreen`.
  """
  payload_encoding = payload_encoding or encoding.PayloadEncoding()
  weight = tf.cast(weight, tf.float32)
  payload, binding_checks = aggregation.unbind_upload(payload, round_digest)
  payload_of = extension.payload_of if extension else (lambda u: u)
  upload = tf.nest.map_structure(tf.convert_to_tensor, payload)
  spec = aggregation.upload_spec(dense_shapes, kernel_shapes, num_active,
                                 payload_encoding, extension)
  not_counted = UploadScreen(tf.constant(False), tf.constant(0.0, tf.float32),
                             tf.zeros([2], tf.int32))

  def measure(checked: aggregation.CheckedUpload):
    def counted():
      norm = tf.constant(0.0, tf.float32)
      if reference is not None:
        norm = aggregation.client_delta(payload_of(checked.upload),
                                        checked.content, reference,
                                        num_active).norm
      return UploadScreen(
          tf.constant(True), norm,
          robust_aggregation.upload_fingerprint(checked.upload))
    return tf.cond(tf.equal(checked.content.rejection,
                            payload_validation.ACCEPTED),
                   counted, lambda: not_counted)

  return aggregation.check_then(upload, spec, weight, kernel_shapes,
                                num_active, payload_encoding, checks,
                                targets, extension, measure,
                                lambda: not_counted, binding_checks)


def zero_counts():
  """The first pass's counts of no upload: delta norms, replay
  fingerprints, stated weights (norms and weights in the same bins)."""
  return (tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32),
          robust_aggregation.zero_fingerprint_counts(),
          tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32))


def add_screen(counts, screen: UploadScreen, weight: tf.Tensor):
  """The first pass's counts plus one screened upload (its stated weight)."""
  norms, replay_counts, weights = counts
  return (norms + robust_aggregation.norm_histogram(screen.norm,
                                                    screen.accepted),
          replay_counts + robust_aggregation.fingerprint_counts(
              screen.fingerprint, screen.accepted),
          weights + robust_aggregation.norm_histogram(
              tf.cast(weight, tf.float32), screen.accepted))


def screening_findings(counts, robust: robust_aggregation.RobustAggregation):
  """`(clip bound, replay counts, weight cap)` from the first pass's counts.

  The bound and the cap are +inf when the setting is off.
  """
  norms, replay_counts, weights = counts
  bound = weight_cap = tf.constant(np.inf, tf.float32)
  if robust.clip_updates:
    bound = robust_aggregation.bound_from_histogram(
        norms, robust.clip_norm_quantile, robust.clip_norm_multiplier)
  if robust.caps_weights_by_round:
    weight_cap = robust_aggregation.weight_cap_from_histogram(
        weights, robust.max_weight_multiple)
  return bound, replay_counts, weight_cap
