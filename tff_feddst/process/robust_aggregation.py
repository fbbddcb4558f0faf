"""Bounds on what one client can do to a round: clipped updates, capped weights.

Payload validation (`payload_validation`) refuses malformed uploads, but a
well-formed hostile upload can still steer the server: each position is
averaged only over the clients that hold it, so a lone holder's value is
taken as it is, and an example count is a weight the client states. Here
the server bounds the client's UPDATE, not its model, and the weight it
claims:

Update. The server knows the model it broadcast (the `Reference`: the
global model as the clients decoded it). A client's update is its delta on
its own support: for every position p of its mask, `w_c[p] - w_ref[p]`
(a position it regrew has `w_ref[p] = 0`, so there the delta is the value),
and `d_c - d_ref` for the dense parameters. Its L2 norm is `||delta_c||`.

Adaptive bound. Each round, the aggregator first runs a pass over the
round's uploads that only validates them and counts the delta norms of the
accepted ones in a histogram of `NUM_NORM_BINS` geometric bins (8 per
octave, from 2**-40 to 2**40); the bound of the round is

  bound = clip_norm_multiplier * (the clip_norm_quantile quantile of the
          round's norms, read as the upper edge of its bin),

so it follows the honest clients' scale from the first round on (the bin
edge overstates the quantile by at most 2**(1/8), 9 %). The second pass sums
the uploads with every delta scaled by `min(1, bound / ||delta_c||)`
(uploads within the bound are summed unchanged, bit for bit) and leaves out
(`rejected_update_norm`) every upload whose norm exceeds
`clip_zeroing_multiple * bound`: far beyond what honest clients send.

Why not TFF's pieces. `tff.aggregators.clipping_factory` /
`zeroing_factory` with a `PrivateQuantileEstimationProcess`
(`tff.learning.robust_aggregator`) clip the whole client value at CLIENTS
and move the estimate by a factor exp(+-learning_rate) per round. They do
not fit here: (1) the value that must be bounded is a delta the client does
not send (it sends sparse weights and masks; the delta exists only after
the server decodes the masks and lines the values up with the broadcast
model), and a malformed upload has no norm at all, so norms must be taken
inside the validating aggregator, for accepted uploads only; (2) the
geometric estimator starts from a guess and needs many rounds to reach the
honest scale, clipping all or nothing meanwhile, where a histogram of the
round's own norms gives the quantile at once; (3) integer bin counts keep
the aggregate exact (`exact_sum`): the same bits for any client order.
With a median (quantile 0.5) the bound cannot be moved by fewer than half
of the round's clients.

Replays. The same pass counts a fingerprint of every accepted upload (two
independent hashes of its bytes, weight left out, into `NUM_REPLAY_BUCKETS`
buckets each); the second pass rejects ('replay') every upload whose
fingerprint was counted more than once in both: the same upload sent twice
in a round is dropped, all its copies. Two honest uploads share both
buckets with probability about (K**2 / 2**17)**2 for K clients in a round
(6e-7 for 10). An upload from an earlier round cannot be told from a fresh
one by its content; binding uploads to a round needs a tag the client
echoes, which the payload format does not carry yet.

Weights. The server caps the example count a client states at
`max_client_weight` (in simulation the default is the largest local data
set of the partition, which no honest client exceeds), or weighs every
accepted client 1 ('uniform'), or weighs it 2 x its number of minibatches,
2 * ceil(capped count / client_batch_size) ('minibatches_x2': the
authors' `train_size`, which sums len() over the batches of a loader, each
an (x, y) pair). The count must still be a finite number > 0 (else the
upload is rejected as 'weight').
"""

import dataclasses
import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence

import tensorflow as tf

from tff_feddst.process import encoding
from tff_feddst.process import robust_means

CLIENT_WEIGHTINGS = ('num_examples', 'uniform', 'minibatches_x2')
NORM_BINS_PER_OCTAVE = 8
NORM_LOWEST_OCTAVE = -40  # The first bin holds every norm <= 2**-40.
NUM_NORM_BINS = 80 * NORM_BINS_PER_OCTAVE  # Up to 2**40; larger ones: last bin.


@dataclasses.dataclass(frozen=True)
class RobustAggregation:
  """How the server bounds each client's influence on a round.

  Attributes:
    clip_updates: Clip each client's delta to the round's adaptive bound and
      leave out uploads far beyond it.
    clip_norm_quantile: Quantile of the round's delta norms, in (0, 1).
    clip_norm_multiplier: The bound is this (>= 1) times that quantile.
    clip_zeroing_multiple: Uploads whose delta norm exceeds this (>= 1)
      times the bound are left out.
    max_client_weight: Cap on a client's example count (> 0); None: no cap.
    client_weighting: 'num_examples' (the capped count), 'uniform' (1) or
      'minibatches_x2' (2 x the minibatches of the capped count).
    client_batch_size: The clients' minibatch size (> 0), for
      'minibatches_x2'.
    reject_replays: Reject every copy of an upload sent more than once in
      a round.
    max_weight_multiple: Cap each stated example count also at this (>= 1)
      times the median of the round's accepted counts; None: no such cap.
    first_pass: False: the aggregator runs no first pass (TFF's
      multi-worker form cannot run an aggregate that feeds another): each
      round clips and caps with the bound and the median cap found in the
      previous round's uploads (carried in its state; none in round 1),
      and replays within a round are not checked. The state has the same
      structure either way, so a checkpoint fits a run with or without
      workers.
    reject_stale: Uploads are `upload_binding.BoundUpload`s; one whose
      model digest is not the round's broadcast model's is rejected
      ('stale'). The aggregator's state then holds the reference (also
      without `clip_updates`); needs no first pass. The client work must
      bind its uploads (`upload_binding.bind_uploads`).
    robust_mean: Take each position's coordinate-wise trimmed mean or
      median over its holders (`robust_means.RobustMean`) instead of the
      weighted mean; None: the weighted mean.
    min_update_cosine: Reject ('direction') an upload whose delta has a
      cosine below this, in [-1, 1), with the sum of the round's other
      unit deltas on its support (`update_direction`); None: no check.
      Needs `clip_updates` and the first pass (`checks_direction`).
    server_root_step: With the direction check, compare each delta with the
      server's own step on its root set (`server_root_step.ServerRootStep`)
      instead of with the round's other deltas; None: the others.
  """
  clip_updates: bool = True
  clip_norm_quantile: float = 0.5
  clip_norm_multiplier: float = 2.0
  clip_zeroing_multiple: float = 10.0
  max_client_weight: Optional[float] = None
  client_weighting: str = 'num_examples'
  reject_replays: bool = True
  max_weight_multiple: Optional[float] = 2.0
  first_pass: bool = True
  reject_stale: bool = False
  robust_mean: Optional[robust_means.RobustMean] = None
  min_update_cosine: Optional[float] = None
  client_batch_size: int = 0
  server_root_step: Optional[Any] = None

  def __post_init__(self):
    def finite(value) -> bool:
      return (isinstance(value, numbers.Real) and
              not isinstance(value, bool) and math.isfinite(value))

    if not (finite(self.clip_norm_quantile) and
            0 < self.clip_norm_quantile < 1):
      raise ValueError('clip_norm_quantile must be in (0, 1), got '
                       f'{self.clip_norm_quantile!r}.')
    for name in ('clip_norm_multiplier', 'clip_zeroing_multiple'):
      value = getattr(self, name)
      if not (finite(value) and value >= 1):
        raise ValueError(f'{name} must be a finite number >= 1, got '
                         f'{value!r}.')
    if self.max_client_weight is not None and not (
        finite(self.max_client_weight) and self.max_client_weight > 0):
      raise ValueError('max_client_weight must be a finite number > 0 or '
                       f'None, got {self.max_client_weight!r}.')
    if self.max_weight_multiple is not None and not (
        finite(self.max_weight_multiple) and self.max_weight_multiple >= 1):
      raise ValueError('max_weight_multiple must be a finite number >= 1 or '
                       f'None, got {self.max_weight_multiple!r}.')
    if not (self.robust_mean is None or
            isinstance(self.robust_mean, robust_means.RobustMean)):
      raise ValueError('robust_mean must be a robust_means.RobustMean or '
                       f'None, got {self.robust_mean!r}.')
    if self.min_update_cosine is not None and not (
        finite(self.min_update_cosine) and -1 <= self.min_update_cosine < 1):
      raise ValueError('min_update_cosine must be a number in [-1, 1) or '
                       f'None, got {self.min_update_cosine!r}.')
    if self.server_root_step is not None and self.min_update_cosine is None:
      raise ValueError('server_root_step is the direction check\'s '
                       'reference: it needs min_update_cosine.')
    if self.client_weighting not in CLIENT_WEIGHTINGS:
      raise ValueError(f'client_weighting must be one of {CLIENT_WEIGHTINGS}'
                       f', got {self.client_weighting!r}.')
    if (self.client_weighting == 'minibatches_x2' and
        not self.client_batch_size >= 1):
      raise ValueError('client_weighting minibatches_x2 needs a '
                       'client_batch_size >= 1, got '
                       f'{self.client_batch_size!r}.')

  @property
  def screens_uploads(self) -> bool:
    """Whether the aggregator needs its first pass over the uploads."""
    return self.first_pass and (self.clip_updates or self.reject_replays or
                                self.caps_weights_by_round)

  @property
  def checks_direction(self) -> bool:
    """Whether uploads against the round's others are rejected: needs the
    deltas (`clip_updates`) and the first pass (their unit sum)."""
    return (self.min_update_cosine is not None and self.clip_updates and
            self.first_pass)

  @property
  def sums_unit_deltas(self) -> bool:
    """Whether the first pass sums the uploads' unit deltas: the direction
    check's reference when the server takes no root step of its own."""
    return self.checks_direction and self.server_root_step is None

  @property
  def carries_bounds(self) -> bool:
    """Whether, without a first pass, bounds come from the last round."""
    return not self.first_pass and (self.clip_updates or
                                    self.caps_weights_by_round)

  @property
  def holds_reference(self) -> bool:
    """Whether the aggregator's state holds the broadcast model."""
    return self.clip_updates or self.reject_stale

  @property
  def caps_weights_by_round(self) -> bool:
    return (self.max_weight_multiple is not None and
            self.client_weighting != 'uniform')


class Reference(NamedTuple):
  """The model a round's clients started from, as the server knows it.

  Attributes:
    kernels: float32 kernels (zero off `masks`), one per prunable layer.
    masks: float32 0/1 global masks.
    dense: float32 dense parameters, in payload order.
  """
  kernels: tuple
  masks: tuple
  dense: tuple


class RoundBound(NamedTuple):
  """What the summing pass of a round learnt from the first pass.

  Attributes:
    reference: The round's `Reference` (None: no clipping).
    bound: float32 scalar, the round's clip bound (+inf: nothing clipped).
    replay_counts: int32 [2, NUM_REPLAY_BUCKETS] fingerprint counts of the
      round's accepted uploads (None: replays are not checked).
    weight_cap: float32 scalar, the round's cap on stated example counts
      (`max_weight_multiple` x their median; None: no round cap).
    direction_sum: float32 `update_direction.Direction`, the sum of the
      round's accepted unit deltas (None: no direction check).
  """
  reference: Optional[Reference]
  bound: tf.Tensor
  replay_counts: Optional[tf.Tensor] = None
  weight_cap: Optional[tf.Tensor] = None
  direction_sum: Optional[Any] = None


def zero_reference(kernel_shapes: Sequence[Sequence[int]],
                   dense_shapes: Sequence[Sequence[int]]) -> Reference:
  """A `Reference` of zeros (its type; the process fills in the model)."""
  kernels = tuple(tf.zeros(shape, tf.float32) for shape in kernel_shapes)
  return Reference(kernels=kernels, masks=kernels, dense=tuple(
      tf.zeros(shape, tf.float32) for shape in dense_shapes))


def reference_of_payload(payload: encoding.Payload,
                         kernel_shapes: Sequence[Sequence[int]],
                         num_active: Sequence[int],
                         payload_encoding: encoding.PayloadEncoding
                         ) -> Reference:
  """The `Reference` of a broadcast payload: what every client decodes.

  Args:
    payload: The server's broadcast payload.
    kernel_shapes: Shape of each prunable kernel.
    num_active: Active weights per kernel.
    payload_encoding: The download encoding.

  Returns:
    The decoded model as a `Reference` (float32).
  """
  kernels, masks, dense = encoding.decode_payload(
      payload, kernel_shapes, num_active, payload_encoding)
  return Reference(
      kernels=tuple(tf.cast(k, tf.float32) for k in kernels),
      masks=tuple(tf.cast(m, tf.float32) for m in masks),
      dense=tuple(tf.cast(d, tf.float32) for d in dense))


def reference_values(reference: Reference, masks: Sequence[tf.Tensor],
                     num_active: Sequence[int]) -> tuple:
  """The reference's values at a client's mask ones, lined up with its upload.

  Args:
    reference: The round's broadcast model.
    masks: The client's decoded 0/1 masks (the reference's own masks for an
      upload that left its masks out).
    num_active: The payload's capacity per kernel.

  Returns:
    Per kernel, float32 values in row-major order, zero padded to
    `num_active` (so a regrown position's reference value is 0).
  """
  return encoding.active_values(reference.kernels, masks, num_active)


def delta_norm(values: Sequence[tf.Tensor], dense: Sequence[tf.Tensor],
               ref_values: Sequence[tf.Tensor], reference: Reference
               ) -> tf.Tensor:
  """L2 norm of a client's delta from the reference on its support.

  Args:
    values: The client's uploaded values (padding zero).
    dense: Its dense parameters.
    ref_values: `reference_values` for its masks.
    reference: The round's broadcast model (for the dense parameters).

  Returns:
    float32 scalar (squares summed in float64, so they cannot overflow).
  """
  squares = [tf.constant(0.0, tf.float64)]
  for layer_values, layer_ref in zip(values, ref_values):
    delta = tf.cast(layer_values, tf.float64) - tf.cast(layer_ref, tf.float64)
    squares.append(tf.reduce_sum(tf.square(delta)))
  for value, ref_value in zip(dense, reference.dense):
    delta = tf.cast(value, tf.float64) - tf.cast(ref_value, tf.float64)
    squares.append(tf.reduce_sum(tf.square(delta)))
  return tf.cast(tf.sqrt(tf.add_n(squares)), tf.float32)


def clip_values(values: Sequence[tf.Tensor], dense: Sequence[tf.Tensor],
                ref_values: Sequence[tf.Tensor], reference: Reference,
                factor: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
  """`reference + factor * delta` on the client's support.

  Args:
    values: The client's uploaded values (padding zero).
    dense: Its dense parameters.
    ref_values: `reference_values` for its masks.
    reference: The round's broadcast model.
    factor: float32 scalar in (0, 1].

  Returns:
    `(values, dense)` in float32 (padding still zero).
  """
  keep = 1.0 - factor
  clipped_values = [factor * tf.cast(v, tf.float32) + keep * ref
                    for v, ref in zip(values, ref_values)]
  clipped_dense = [factor * tf.cast(d, tf.float32) + keep * ref
                   for d, ref in zip(dense, reference.dense)]
  return clipped_values, clipped_dense


def norm_bin(norm: tf.Tensor) -> tf.Tensor:
  """int32 index of the histogram bin holding `norm` (>= 0).

  Bin b holds the norms in (2**((b - 1) / 8 + L), 2**(b / 8 + L)] with
  L = `NORM_LOWEST_OCTAVE`; bin 0 everything up to 2**L and the last bin
  everything above its lower edge (including +inf).
  """
  norm = tf.cast(norm, tf.float64)
  tiny = 2.0 ** NORM_LOWEST_OCTAVE
  position = tf.math.ceil(
      (tf.math.log(tf.maximum(norm, tiny)) / math.log(2.0) -
       NORM_LOWEST_OCTAVE) * NORM_BINS_PER_OCTAVE - 1e-9)
  return tf.cast(tf.clip_by_value(position, 0, NUM_NORM_BINS - 1), tf.int32)


def bin_upper_edge(bin_index: tf.Tensor) -> tf.Tensor:
  """float32 upper edge of histogram bin `bin_index`."""
  exponent = (tf.cast(bin_index, tf.float64) / NORM_BINS_PER_OCTAVE +
              NORM_LOWEST_OCTAVE)
  return tf.cast(tf.pow(tf.constant(2.0, tf.float64), exponent), tf.float32)


def norm_histogram(norm: tf.Tensor, counted: tf.Tensor) -> tf.Tensor:
  """int32 [NUM_NORM_BINS]: one count in `norm`'s bin if `counted`."""
  return tf.one_hot(norm_bin(norm), NUM_NORM_BINS, dtype=tf.int32) * tf.cast(
      counted, tf.int32)


def bound_from_histogram(histogram: tf.Tensor, quantile: float,
                         multiplier: float) -> tf.Tensor:
  """The round's clip bound from the histogram of its delta norms.

  Args:
    histogram: int32 [NUM_NORM_BINS] counts.
    quantile: In (0, 1): the smallest bin whose cumulative count reaches
      ceil(quantile * total) holds the quantile.
    multiplier: The bound is this times that bin's upper edge.

  Returns:
    float32 scalar; +inf for an empty histogram (nothing to clip against).
  """
  counts = tf.cast(histogram, tf.int64)
  total = tf.reduce_sum(counts)
  needed = tf.cast(tf.math.ceil(quantile * tf.cast(total, tf.float64)),
                   tf.int64)
  needed = tf.maximum(needed, 1)
  reached = tf.cumsum(counts) >= needed
  quantile_bin = tf.argmax(tf.cast(reached, tf.int32), output_type=tf.int32)
  bound = multiplier * bin_upper_edge(quantile_bin)
  return tf.where(total > 0, bound, tf.constant(math.inf, tf.float32))


def clip_factor(norm: tf.Tensor, bound: tf.Tensor) -> tf.Tensor:
  """float32 `min(1, bound / norm)` (1 for a zero norm)."""
  return tf.where(norm > bound, bound / tf.maximum(norm, 1e-30),
                  tf.constant(1.0, tf.float32))


def effective_weight(weight: tf.Tensor, config: RobustAggregation,
                     round_cap: Optional[tf.Tensor] = None) -> tf.Tensor:
  """The weight the server uses for a valid stated example count.

  Args:
    weight: The stated count (finite, > 0: checked before).
    config: The robust aggregation settings.
    round_cap: The round's cap from the median of its counts, if any.

  Returns:
    float32: 1 under uniform weighting, else the count capped at
    `max_client_weight` and `round_cap` (for 'minibatches_x2': 2 x
    ceil(that / client_batch_size)).
  """
  if config.client_weighting == 'uniform':
    return tf.ones_like(tf.cast(weight, tf.float32))
  count = capped_count(weight, config, round_cap)
  if config.client_weighting == 'minibatches_x2':
    return 2.0 * tf.math.ceil(count / float(config.client_batch_size))
  return count


def capped_count(weight: tf.Tensor, config: RobustAggregation,
                 round_cap: Optional[tf.Tensor] = None) -> tf.Tensor:
  """float32: the stated count capped at `max_client_weight`, `round_cap`."""
  weight = tf.cast(weight, tf.float32)
  if config.max_client_weight is not None:
    weight = tf.minimum(weight, tf.constant(config.max_client_weight,
                                            tf.float32))
  if round_cap is not None:
    weight = tf.minimum(weight, round_cap)
  return weight


def weight_was_capped(weight: tf.Tensor, config: RobustAggregation,
                      round_cap: Optional[tf.Tensor] = None) -> tf.Tensor:
  """int32 1 if a cap lowered the stated count, else 0 (0 if uniform)."""
  if config.client_weighting == 'uniform':
    return tf.constant(0, tf.int32)
  return tf.cast(capped_count(weight, config, round_cap) <
                 tf.cast(weight, tf.float32), tf.int32)


def weight_cap_from_histogram(histogram: tf.Tensor, multiple: float
                              ) -> tf.Tensor:
  """The round's weight cap: `multiple` x the median stated count's bin edge.

  Uses the norm histogram's bins (`norm_bin`); +inf for an empty round.
  """
  return bound_from_histogram(histogram, 0.5, multiple)


NUM_REPLAY_BUCKETS = 2 ** 16
_REPLAY_HASH_KEY = (0x6665646473742d72, 0x65706c6179)  # Any fixed key.


def upload_fingerprint(upload) -> tf.Tensor:
  """int32 [2]: the upload's bucket under two independent hashes.

  Args:
    upload: A checked upload (its tensors with static shapes); the weight
      is not part of it.
  """
  serialized = [tf.io.serialize_tensor(t) for t in tf.nest.flatten(upload)]
  joined = tf.strings.reduce_join(tf.stack(serialized))
  first = tf.strings.to_hash_bucket_fast(joined, NUM_REPLAY_BUCKETS)
  second = tf.strings.to_hash_bucket_strong(joined, NUM_REPLAY_BUCKETS,
                                            list(_REPLAY_HASH_KEY))
  return tf.cast(tf.stack([first, second]), tf.int32)


def fingerprint_counts(fingerprint: tf.Tensor, counted: tf.Tensor
                       ) -> tf.Tensor:
  """int32 [2, NUM_REPLAY_BUCKETS]: one count per hash if `counted`."""
  return tf.one_hot(fingerprint, NUM_REPLAY_BUCKETS,
                    dtype=tf.int32) * tf.cast(counted, tf.int32)


def zero_fingerprint_counts() -> tf.Tensor:
  return tf.zeros([2, NUM_REPLAY_BUCKETS], tf.int32)


def is_replayed(fingerprint: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
  """bool: both of the fingerprint's buckets were counted more than once."""
  first = counts[0, fingerprint[0]]
  second = counts[1, fingerprint[1]]
  return tf.logical_and(first > 1, second > 1)
