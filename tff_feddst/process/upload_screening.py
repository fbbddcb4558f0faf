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

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.process import aggregation
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import update_direction
from tff_feddst.sparse import exact_sum


class UploadScreen(NamedTuple):
  """What the first pass of a screening aggregator learns of one upload.

  Attributes:
    accepted: bool, the upload passes every payload check.
    norm: float32 L2 norm of its delta from the reference (0 when rejected
      or without a reference).
    fingerprint: int32 [2] replay buckets (`robust_aggregation`).
    unit_delta: With the direction check, its delta scaled to unit norm
      (`update_direction.Direction`, zero when rejected); else ().
  """
  accepted: tf.Tensor
  norm: tf.Tensor
  fingerprint: tf.Tensor
  unit_delta: Any = ()


def screen_upload(payload: encoding.Payload, weight: tf.Tensor,
                  kernel_shapes: Sequence[Sequence[int]],
                  dense_shapes: Sequence[Sequence[int]],
                  num_active: Sequence[int],
                  payload_encoding: encoding.PayloadEncoding,
                  checks: payload_validation.PayloadChecks,
                  reference: Optional[robust_aggregation.Reference],
                  targets: Optional[tf.Tensor] = None,
                  extension: Optional[aggregation.UploadExtension] = None,
                  round_digest: Optional[tf.Tensor] = None,
                  with_direction: bool = False) -> UploadScreen:
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
    with_direction: Also return the unit delta (needs `reference`).

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
  if with_direction and reference is None:
    raise ValueError('with_direction needs the reference.')
  not_counted = UploadScreen(
      tf.constant(False), tf.constant(0.0, tf.float32),
      tf.zeros([2], tf.int32),
      update_direction.zero_direction(kernel_shapes, dense_shapes)
      if with_direction else ())

  def measure(checked: aggregation.CheckedUpload):
    def counted():
      norm, unit_delta = tf.constant(0.0, tf.float32), ()
      if reference is not None:
        received = payload_of(checked.upload)
        delta = aggregation.client_delta(received, checked.content,
                                         reference, num_active)
        norm = delta.norm
        if with_direction:
          unit_delta = update_direction.unit_delta(
              received.values, received.dense, delta.ref_values,
              reference.dense, delta.masks)
      return UploadScreen(
          tf.constant(True), norm,
          robust_aggregation.upload_fingerprint(checked.upload), unit_delta)
    return tf.cond(tf.equal(checked.content.rejection,
                            payload_validation.ACCEPTED),
                   counted, lambda: not_counted)

  return aggregation.check_then(upload, spec, weight, kernel_shapes,
                                num_active, payload_encoding, checks,
                                targets, extension, measure,
                                lambda: not_counted, binding_checks)


def zero_counts(direction_shapes: Optional[tuple] = None):
  """The first pass's counts of no upload: delta norms, replay
  fingerprints, stated weights (norms and weights in the same bins); with
  `direction_shapes` (`(kernel_shapes, dense_shapes)`) also the exact sum
  of unit deltas (`update_direction`)."""
  counts = (tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32),
            robust_aggregation.zero_fingerprint_counts(),
            tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32))
  if direction_shapes is None:
    return counts
  return counts + (update_direction.zero_exact_direction(*direction_shapes),)


def add_screen(counts, screen: UploadScreen, weight: tf.Tensor):
  """The first pass's counts plus one screened upload (its stated weight)."""
  norms, replay_counts, weights = counts[:3]
  added = (norms + robust_aggregation.norm_histogram(screen.norm,
                                                     screen.accepted),
           replay_counts + robust_aggregation.fingerprint_counts(
               screen.fingerprint, screen.accepted),
           weights + robust_aggregation.norm_histogram(
               tf.cast(weight, tf.float32), screen.accepted))
  if len(counts) == 3:
    return added
  # A rejected upload's unit delta is zero (`screen_upload`).
  return added + (exact_sum.add(counts[3],
                                exact_sum.to_exact(screen.unit_delta)),)


def direction_sum_of(counts, kernel_shapes: Sequence[Sequence[int]],
                     dense_shapes: Sequence[Sequence[int]]
                     ) -> update_direction.Direction:
  """The float32 sum of the round's unit deltas, from counts that hold it."""
  return exact_sum.from_exact(
      update_direction.zero_direction(kernel_shapes, dense_shapes),
      counts[3])


def screening_findings(counts, robust: robust_aggregation.RobustAggregation):
  """`(clip bound, replay counts, weight cap)` from the first pass's counts.

  The bound and the cap are +inf when the setting is off.
  """
  norms, replay_counts, weights = counts[:3]
  bound = weight_cap = tf.constant(np.inf, tf.float32)
  if robust.clip_updates:
    bound = robust_aggregation.bound_from_histogram(
        norms, robust.clip_norm_quantile, robust.clip_norm_multiplier)
  if robust.caps_weights_by_round:
    weight_cap = robust_aggregation.weight_cap_from_histogram(
        weights, robust.max_weight_multiple)
  return bound, replay_counts, weight_cap
