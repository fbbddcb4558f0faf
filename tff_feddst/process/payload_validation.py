"""Validation of client payloads before the server aggregates them.

A client is not trusted: its upload may be malformed (a buggy or hostile
device, a corrupted transfer) or simply diverged (NaN weights after a bad
local step). The aggregator (`aggregation.accumulate_payload`) runs the
checks below on every payload as it arrives and drops an invalid one: it
contributes nothing (no sums, no votes, no weight, not counted in
`num_clients`) and is counted in the aggregate's `rejected` vector under the
first kind that failed, in this order (`REJECTION_KINDS`):

  shape       a tensor's shape (or, for uploads checked with
              `check_upload_arrays`, its dtype or the structure) differs
              from the expected payload: e.g. `values[l]` not of length
              num_active[l], a mask buffer of the wrong size;
  weight      the example count (the aggregation weight) is not a finite
              number > 0 (zero, negative, NaN or Inf);
  nonfinite   some uploaded value or dense parameter is NaN or +-Inf;
  mask_code   the mask code cannot be decoded safely (`CodedPayload`s):
              `mask_code_bits` is not the bitmap's length, or a Rice code
              claims more positions than the layer can hold, runs past its
              capacity or past `mask_code_bits`, or places a position
              outside the layer;
  mask_count  a layer's decoded mask does not have the layer's target number
              of ones (rule 'exact': nnz == target; rule 'at_most':
              nnz <= target), or values beyond the mask's ones (the zero
              padding of a sparser mask) are non-zero;
  norm        with a bound B (`PayloadChecks.max_norm` > 0): the L2 norm of
              everything uploaded (active values, as float32, and the dense
              parameters) exceeds B;
  update_norm with robust aggregation (`robust_aggregation`), checked by
              the aggregator after all of the above: the norm of the
              client's delta from the broadcast model is far beyond the
              round's clip bound;
  replay      with robust aggregation: the same upload (its bytes, weight
              aside) arrived more than once in the round (every copy).
  stale       with bound uploads (`upload_binding`): the upload's model
              digest is not the digest of the model the round broadcast
              (it answers another round);
  direction   with robust aggregation and `min_update_cosine`
              (`update_direction`): the client's delta points against the
              round's other clients' (cosine below the threshold).

Shapes. Inside TFF a payload's type is static, so `sum_factory.SparseSumFactory.create`
declares its client value with every dimension unknown (`relaxed_type`): a
client result of type float32[52349] is assignable to float32[?], and a
payload of another length reaches the aggregator instead of failing the
whole round. `shapes_match` compares each tensor's run-time shape with the
expected one and the payload is only touched (decoded, summed) in the branch
where it matched (`tf.cond`). dtypes are fixed by TFF's type system (a
float64 payload is refused when the computation is called); uploads that
come from outside TFF (e.g. a TFLite device's `get_weights` outputs, read by
`ondevice.device_payload.check_device_upload`) are checked per tensor for
structure, dtype and shape by `check_upload_arrays` before anything is
converted.

Targets. The mask rule compares each layer's nnz with a per-layer target,
`num_active[l]` by default (static: the payload's capacity). A per-round
table (`PayloadChecks.num_active_by_round`, row r for the (r+1)-th round,
the last row after the table ends) lets the target follow a sparsity
schedule; the aggregator's state then counts rounds. Rule 'at_most' is for
settings in which honest clients may upload sparser masks than the target
(`readjust_rule='reference'`, or `min_votes` > 1, where the server may keep
fewer weights than the target); `default_checks` picks it then. A
`CodedPayload` without masks (the client kept the global mask) cannot be
counted: its nnz is taken to be the round's target (the server's own mask),
and only its padding values are checked.

The norm bound bounds the client's MODEL, not its update, and needs no
model: it is a check on the upload alone. (Updates are bounded by the
robust aggregation, which keeps the broadcast model: `robust_aggregation`,
clipping to an adaptive bound, on by default.) A sensible
bound is a few times the norm of an honest model (the global model's norm
grows slowly during training): e.g. the MNIST net at S = 0.8 (ERK) starts
at a norm of 3.2 (`model_norm` of the initial model); a bound of 50 stops
scaled or exploded uploads, with room for the growth of honest models (check
`model_norm` of a trained global model before tightening it). 0 (the
default) means no bound.

The checks cost a few reductions over the payload (isfinite, the mask
counts, a sum of squares when bounded); masks are decoded once and the
decoded masks are what the aggregator sums.
"""

import dataclasses
import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.process import encoding
from tff_feddst.process import mask_codes

REJECTION_KINDS = ('shape', 'weight', 'nonfinite', 'mask_code', 'mask_count',
                   'norm', 'update_norm', 'replay', 'stale', 'direction')
NUM_ACTIVE_RULES = ('exact', 'at_most')
ACCEPTED = 0  # Rejection code of a valid payload; kind i has code i + 1.


def rejection_code(kind: str) -> int:
  """The int code of rejection `kind` (1-based index in `REJECTION_KINDS`)."""
  return REJECTION_KINDS.index(kind) + 1


@dataclasses.dataclass(frozen=True)
class PayloadChecks:
  """What the server requires of a client payload.

  Attributes:
    num_active_rule: 'exact' (each layer's mask has exactly its target
      number of ones) or 'at_most' (at most that many).
    max_norm: Bound on the L2 norm of the uploaded values and dense
      parameters; None or 0 for no bound.
    num_active_by_round: Optional per-round targets: a sequence over rounds
      of per-layer target counts; row r is used in the (r+1)-th round (the
      aggregator's state r), the last row in every later round. None: the
      targets are the payload's capacities `num_active`.
  """
  num_active_rule: str = 'exact'
  max_norm: Optional[float] = None
  num_active_by_round: Optional[Sequence[Sequence[int]]] = None

  def __post_init__(self):
    if self.num_active_rule not in NUM_ACTIVE_RULES:
      raise ValueError(f'num_active_rule must be one of {NUM_ACTIVE_RULES}, '
                       f'got {self.num_active_rule!r}.')
    if self.max_norm is not None and not (
        isinstance(self.max_norm, numbers.Real) and
        math.isfinite(self.max_norm) and self.max_norm >= 0):
      raise ValueError(f'max_norm must be a finite number >= 0 or None, got '
                       f'{self.max_norm!r}.')
    if self.num_active_by_round is not None:
      table = tuple(tuple(int(n) for n in row)
                    for row in self.num_active_by_round)
      if not table or len({len(row) for row in table}) != 1 or any(
          n < 0 for row in table for n in row):
        raise ValueError('num_active_by_round must be a non-empty sequence '
                         'of equally long rows of counts >= 0.')
      object.__setattr__(self, 'num_active_by_round', table)

  @property
  def norm_bound(self) -> Optional[float]:
    """The norm bound as a float, or None when there is none."""
    return float(self.max_norm) if self.max_norm else None

  @property
  def has_round_targets(self) -> bool:
    return self.num_active_by_round is not None

  def targets_table(self, num_active: Sequence[int]) -> np.ndarray:
    """The per-round targets as an int32 [rounds, layers] array.

    Args:
      num_active: The payload's capacity per layer (its value lengths).

    Returns:
      `num_active_by_round`, or the single row `num_active`.

    Raises:
      ValueError: If a row has the wrong length or exceeds a capacity.
    """
    if self.num_active_by_round is None:
      return np.asarray([list(num_active)], np.int32).reshape(
          1, len(num_active))
    table = np.asarray(self.num_active_by_round, np.int32)
    if table.shape[1] != len(num_active) or np.any(
        table > np.asarray(num_active)[np.newaxis, :]):
      raise ValueError(f'num_active_by_round rows must have {len(num_active)} '
                       f'counts, each at most the capacity {tuple(num_active)}.')
    return table


def default_checks(readjust_rule: str = 'feddst', min_votes: int = 0,
                   max_norm: float = 0.0,
                   num_active_by_round: Optional[Sequence[Sequence[int]]] = None,
                   server_rule: str = 'feddst',
                   min_votes_unit: str = 'clients'
                   ) -> PayloadChecks:
  """The checks that fit a configuration.

  Args:
    readjust_rule: The clients' readjust rule ('feddst' keeps every layer's
      nnz; 'reference' may leave a client sparser).
    min_votes: The server's vote threshold (> 1 may leave the global mask,
      hence the next uploads, sparser than the target).
    max_norm: Norm bound (0: none).
    num_active_by_round: Optional per-round targets (see `PayloadChecks`).
    server_rule: The server's mask rule ('reference' may leave the global
      mask sparser than the target).
    min_votes_unit: 'clients' (`min_votes` > 1 thins) or 'weight'
      (`min_votes` > 0 thins).

  Returns:
    `PayloadChecks` with rule 'at_most' when honest clients may upload fewer
    active weights than the target, else 'exact'.
  """
  vote_threshold = 0 if min_votes_unit == 'weight' else 1
  sparser = (readjust_rule == 'reference' or server_rule == 'reference' or
             min_votes > vote_threshold)
  return PayloadChecks(num_active_rule='at_most' if sparser else 'exact',
                       max_norm=max_norm or None,
                       num_active_by_round=num_active_by_round)


# ---------------------------------------------------------------------------
# Expected payloads: specs and TFF types.


def payload_spec(kernel_shapes: Sequence[Sequence[int]],
                 num_active: Sequence[int],
                 dense_shapes: Sequence[Sequence[int]],
                 payload_encoding: Optional[encoding.PayloadEncoding] = None
                 ) -> encoding.Payload:
  """The expected payload as a structure of `tf.TensorSpec`s.

  Args:
    kernel_shapes: Shape of each prunable kernel.
    num_active: Values per kernel (the payload's capacity).
    dense_shapes: Shape of each dense parameter tensor.
    payload_encoding: The upload encoding (None: the default).

  Returns:
    A `SparsePayload` or `CodedPayload` whose leaves are `tf.TensorSpec`s.
  """
  payload_encoding = payload_encoding or encoding.PayloadEncoding()
  value_dtype = tf.as_dtype(payload_encoding.value_dtype)
  sizes = [int(math.prod(shape)) for shape in kernel_shapes]
  omit_dense_masks = payload_encoding.omit_dense_masks
  values = tuple(tf.TensorSpec([int(n)], value_dtype) for n in num_active)
  dense = tuple(tf.TensorSpec([int(d) for d in shape], tf.float32)
                for shape in dense_shapes)
  if payload_encoding.is_bitmap_payload:
    return encoding.SparsePayload(
        values=values,
        packed_masks=tf.TensorSpec([mask_codes.num_packed_bytes(
            mask_codes.num_mask_bits(sizes, num_active, omit_dense_masks))],
                                   tf.uint8),
        dense=dense)
  capacity = mask_codes.mask_code_capacity_bits(
      sizes, num_active, payload_encoding.mask_code, omit_dense_masks)
  return encoding.CodedPayload(
      values=values,
      mask_code=tf.TensorSpec([mask_codes.num_packed_bytes(capacity)],
                              tf.uint8),
      mask_code_bits=tf.TensorSpec([], tf.int32),
      dense=dense)


def relaxed_type(spec: Any) -> tff.Type:
  """The TFF type of `spec` with every dimension unknown (ranks kept).

  A client value of the exact type is assignable to it, and so is one with
  other dimensions, which the aggregator then rejects at run time.
  """
  return tff.types.tensorflow_to_type(tf.nest.map_structure(
      lambda s: tf.TensorSpec([None] * s.shape.rank, s.dtype), spec))


# ---------------------------------------------------------------------------
# Pure-TF checks (graph-safe on any input of the right ranks and dtypes).


def shapes_match(payload: Any, spec: Any) -> tf.Tensor:
  """Whether every tensor of `payload` has its spec's shape (bool scalar).

  Args:
    payload: The payload (tensors of the spec's ranks and dtypes; dimensions
      may be unknown statically).
    spec: From `payload_spec`.

  Returns:
    A bool scalar tensor; False statically for a wrong rank or dtype.
  """
  tensors = [tf.convert_to_tensor(t) for t in tf.nest.flatten(payload)]
  specs = tf.nest.flatten(spec)
  if len(tensors) != len(specs):
    return tf.constant(False)
  matches = []
  for tensor, expected in zip(tensors, specs):
    if (tensor.dtype != expected.dtype or
        tensor.shape.rank != expected.shape.rank):
      return tf.constant(False)
    if tensor.shape.is_fully_defined():
      matches.append(tf.constant(tensor.shape == expected.shape))
    else:
      matches.append(tf.reduce_all(tf.equal(
          tf.shape(tensor), tf.constant(expected.shape.as_list(), tf.int32))))
  return tf.reduce_all(tf.stack(matches)) if matches else tf.constant(True)


def with_static_shapes(payload: Any, spec: Any) -> Any:
  """`payload` with each tensor's static shape taken from `spec`.

  Call only where `shapes_match` holds. The tensors are sliced to the
  spec's shape rather than reshaped or `tf.ensure_shape`d: inside a
  `tf.cond` branch, TF 2.14's graph optimizations take a reshape or
  ensure_shape of a captured tensor as a fact about that tensor and fold the
  branch's shape predicate to True (measured: a [1] tensor then passes a
  check for [2]); a slice leaves the captured tensor's shape alone.
  """
  def static(tensor, expected):
    rank = expected.shape.rank
    if not rank:
      return tensor
    return tf.slice(tensor, [0] * rank, expected.shape.as_list())

  return tf.nest.map_structure(static, payload, spec)


def weight_is_valid(weight: tf.Tensor) -> tf.Tensor:
  """Whether an example count is a finite number > 0 (bool scalar)."""
  weight = tf.cast(weight, tf.float32)
  return tf.logical_and(tf.math.is_finite(weight), weight > 0)


def all_finite(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  """Whether no element of `tensors` is NaN or +-Inf (bool scalar)."""
  flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
           if tf.as_dtype(t.dtype).is_floating]
  return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def payload_norm(payload: encoding.Payload) -> tf.Tensor:
  """L2 norm of a payload's values (as float32) and dense parameters.

  Padding values (zero in a valid payload) are included. Overflowing
  float32 gives Inf, which exceeds any bound.
  """
  squares = [tf.reduce_sum(tf.square(tf.cast(t, tf.float32)))
             for t in list(payload.values) + list(payload.dense)]
  return tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0)


def model_norm(kernels: Sequence[Any], dense: Sequence[Any]) -> float:
  """The `payload_norm` of a sparse model, for choosing a norm bound.

  Args:
    kernels: Masked kernels (zeros off the mask add nothing).
    dense: Dense parameters.

  Returns:
    The L2 norm over all of them, as a float.
  """
  return float(math.sqrt(sum(float(np.sum(np.square(
      np.asarray(t, np.float64)))) for t in list(kernels) + list(dense))))


def mask_counts(masks: Sequence[tf.Tensor]) -> tf.Tensor:
  """int32 [layers]: the number of ones of each 0/1 mask."""
  return tf.stack([tf.cast(tf.reduce_sum(tf.cast(m, tf.float32)), tf.int32)
                   for m in masks])


def counts_follow_rule(counts: tf.Tensor, targets: tf.Tensor,
                       num_active_rule: str) -> tf.Tensor:
  """Whether per-layer nnz `counts` meet `targets` under the rule."""
  targets = tf.cast(targets, tf.int32)
  if num_active_rule == 'exact':
    return tf.reduce_all(tf.equal(counts, targets))
  return tf.reduce_all(counts <= targets)


def padding_is_zero(values: Sequence[tf.Tensor], counts: tf.Tensor
                    ) -> tf.Tensor:
  """Whether each `values[l]` is zero after its first `counts[l]` entries."""
  flags = [tf.reduce_all(tf.equal(layer_values[counts[l]:], 0))
           for l, layer_values in enumerate(values)]
  return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _rice_layer_is_valid(bits: tf.Tensor, layer: mask_codes.RiceLayer
                         ) -> tuple[tf.Tensor, tf.Tensor]:
  """Checks one layer's Rice code without any out-of-range indexing.

  Mirrors `mask_codes.rice_decode_layer`, with clipped indices and int64
  position arithmetic, so that garbage cannot crash it.

  Args:
    bits: int32 0/1 tensor of exactly `layer.capacity_bits` bits.
    layer: The layer's `RiceLayer`.

  Returns:
    `(is_valid, length)`: whether `rice_decode_layer` decodes these bits
    into positions inside the layer, and the code length in bits (int32).
  """
  w, k, capacity = layer.count_bits, layer.k, layer.capacity_bits
  powers = tf.bitwise.left_shift(1, tf.range(w - 1, -1, -1, dtype=tf.int32))
  count = tf.reduce_sum(bits[:w] * powers)
  zeros = tf.cast(tf.where(tf.equal(bits[w:], 0))[:, 0], tf.int32)
  num_zeros = tf.size(zeros, out_type=tf.int32)
  used = tf.minimum(tf.minimum(count, num_zeros), layer.max_count)
  zeros = zeros[:used]
  quotients = zeros - tf.concat([[-1], zeros[:-1]], axis=0) - 1
  unary_length = tf.reduce_sum(quotients + 1)
  length = w + unary_length + used * k
  gaps = tf.bitwise.left_shift(tf.cast(quotients, tf.int64),
                               tf.constant(k, tf.int64))
  if k:
    indices = (w + unary_length + tf.range(used)[:, tf.newaxis] * k +
               tf.range(k)[tf.newaxis, :])
    indices = tf.clip_by_value(indices, 0, capacity - 1)
    remainder_powers = tf.bitwise.left_shift(
        1, tf.range(k - 1, -1, -1, dtype=tf.int32))
    gaps += tf.cast(tf.reduce_sum(tf.gather(bits, indices) * remainder_powers,
                                  axis=-1), tf.int64)
  positions = tf.cumsum(gaps + 1) - 1
  inside = tf.reduce_all(positions < layer.size)
  is_valid = tf.reduce_all(tf.stack([
      count <= layer.max_count, count <= num_zeros, length <= capacity,
      inside]))
  return is_valid, length


def rice_code_is_valid(mask_code: tf.Tensor, mask_code_bits: tf.Tensor,
                       kernel_sizes: Sequence[int],
                       num_active: Sequence[int],
                       omit_dense_masks: bool = True) -> tf.Tensor:
  """Whether a Rice mask code decodes safely and has exactly the sent length.

  Args:
    mask_code: uint8 buffer of the expected (static) length.
    mask_code_bits: The bits the client says it used.
    kernel_sizes: Positions per kernel.
    num_active: Values per kernel (fixes the Rice parameters).
    omit_dense_masks: Whether dense layers are left out of the code.

  Returns:
    bool scalar: every coded layer's code is valid (see
    `_rice_layer_is_valid`) and their total length equals `mask_code_bits`.
  """
  carried = mask_codes.carries_mask(kernel_sizes, num_active, omit_dense_masks)
  layers = [mask_codes.rice_layer(int(n), int(a))
            for n, a, has_mask in zip(kernel_sizes, num_active, carried)
            if has_mask]
  capacity = sum(layer.capacity_bits for layer in layers)
  longest = max([layer.capacity_bits for layer in layers], default=0)
  bits = tf.cast(mask_codes.unpack_bits(mask_code, capacity), tf.int32)
  bits = tf.pad(bits, [[0, longest]])
  offset = tf.constant(0, tf.int32)
  flags = []
  for layer in layers:
    start = tf.minimum(offset, capacity)
    layer_ok, length = _rice_layer_is_valid(
        tf.slice(bits, [start], [layer.capacity_bits]), layer)
    flags.append(layer_ok)
    offset += tf.minimum(length, layer.capacity_bits)
  flags.append(tf.equal(offset, tf.cast(mask_code_bits, tf.int32)))
  return tf.reduce_all(tf.stack(flags))


def mask_code_is_valid(payload: encoding.CodedPayload,
                       kernel_sizes: Sequence[int], num_active: Sequence[int],
                       payload_encoding: encoding.PayloadEncoding
                       ) -> tf.Tensor:
  """Whether a `CodedPayload` carrying masks has a decodable mask code."""
  omit_dense_masks = payload_encoding.omit_dense_masks
  if payload_encoding.mask_code == 'bitmap':
    return tf.equal(payload.mask_code_bits, mask_codes.num_mask_bits(
        kernel_sizes, num_active, omit_dense_masks))
  # Dense layers (capacity == size) are not in the code when omitted.
  return rice_code_is_valid(payload.mask_code, payload.mask_code_bits,
                            kernel_sizes, num_active, omit_dense_masks)


def first_failure(passed: Sequence[tuple[str, tf.Tensor]]) -> tf.Tensor:
  """The rejection code of the first failed check, `ACCEPTED` if none.

  Args:
    passed: `(kind, bool scalar)` pairs, kinds from `REJECTION_KINDS`.

  Returns:
    int32 scalar: the smallest code among failed kinds, or 0.
  """
  never = len(REJECTION_KINDS) + 1
  codes = [tf.where(ok, never, rejection_code(kind)) for kind, ok in passed]
  smallest = tf.reduce_min(tf.stack(codes)) if codes else tf.constant(never)
  return tf.where(tf.equal(smallest, never), ACCEPTED, smallest)


class ContentCheck(NamedTuple):
  """What `check_content` found.

  Attributes:
    rejection: int32 scalar, `ACCEPTED` or the code of the first failed kind.
    masks: The decoded float32 masks (zeros when they could not be decoded
      safely or were not sent), for the aggregator to reuse.
    has_masks: bool scalar: the payload carried masks (always True except
      for `CodedPayload`s with `mask_code_bits` 0 under
      `masks_only_when_changed`).
  """
  rejection: tf.Tensor
  masks: list
  has_masks: tf.Tensor


def check_content(payload: encoding.Payload, weight: tf.Tensor,
                  kernel_shapes: Sequence[Sequence[int]],
                  num_active: Sequence[int],
                  payload_encoding: encoding.PayloadEncoding,
                  checks: PayloadChecks,
                  targets: Optional[tf.Tensor] = None,
                  extra_checks: Sequence[tuple[str, tf.Tensor]] = ()
                  ) -> ContentCheck:
  """Runs every check but the shape check on a payload of the right shapes.

  Args:
    payload: A payload whose tensors have the expected static shapes
      (`with_static_shapes`).
    weight: Its example count.
    kernel_shapes: Shape of each prunable kernel.
    num_active: Values per kernel (the payload's capacity).
    payload_encoding: The upload encoding.
    checks: The `PayloadChecks`.
    targets: int32 [layers] target nnz of this round (None: `num_active`).
    extra_checks: `(kind, passed)` pairs on what the upload carries beside
      the payload (`aggregation.UploadExtension.checks`); a failure counts
      under its kind, in `REJECTION_KINDS` order with the payload's own.

  Returns:
    The `ContentCheck`.
  """
  if targets is None:
    targets = tf.constant(list(num_active), tf.int32)
  targets = tf.cast(targets, tf.int32)
  sizes = [int(math.prod(shape)) for shape in kernel_shapes]

  def decode():
    return mask_codes.decode_masks(
        payload.mask_code, kernel_shapes, num_active,
        payload_encoding.mask_code, payload_encoding.omit_dense_masks)

  def no_masks():
    return [tf.zeros(shape, tf.float32) for shape in kernel_shapes]

  if payload_encoding.is_bitmap_payload:
    code_ok = tf.constant(True)
    has_masks = tf.constant(True)
    masks = mask_codes.decode_masks(payload.packed_masks, kernel_shapes,
                                    num_active, 'bitmap',
                                    payload_encoding.omit_dense_masks)
    counts = mask_counts(masks)
  else:
    if payload_encoding.masks_only_when_changed:
      has_masks = payload.mask_code_bits > 0
      code_ok = tf.logical_or(
          tf.equal(payload.mask_code_bits, 0),
          mask_code_is_valid(payload, sizes, num_active, payload_encoding))
    else:
      has_masks = tf.constant(True)
      code_ok = mask_code_is_valid(payload, sizes, num_active,
                                   payload_encoding)
    masks = tf.cond(tf.logical_and(has_masks, code_ok), decode, no_masks)
    counts = tf.where(has_masks, mask_counts(masks), targets)
  count_ok = tf.logical_and(
      counts_follow_rule(counts, targets, checks.num_active_rule),
      padding_is_zero(payload.values, counts))
  passed = [('weight', weight_is_valid(weight)),
            ('nonfinite', all_finite(list(payload.values) +
                                     list(payload.dense))),
            ('mask_code', code_ok),
            ('mask_count', count_ok)]
  if checks.norm_bound is not None:
    passed.append(('norm', payload_norm(payload) <= checks.norm_bound))
  passed += list(extra_checks)
  return ContentCheck(rejection=first_failure(passed), masks=list(masks),
                      has_masks=has_masks)


# ---------------------------------------------------------------------------
# Uploads from outside TFF (numpy arrays, e.g. TFLite outputs).


class UploadCheck(NamedTuple):
  """The verdict on an upload from outside TFF.

  Attributes:
    rejection: None when accepted, else a kind from `REJECTION_KINDS`.
    reason: '' when accepted, else a one-line explanation.
    payload: The payload as numpy arrays of the expected dtypes (None when
      rejected for its structure, shape or dtype).
    weight: The example count as np.float32 (None when not a number).
  """
  rejection: Optional[str]
  reason: str
  payload: Optional[encoding.Payload]
  weight: Optional[np.float32]


def _leaf_names(spec: Any) -> list[str]:
  names = []
  for field in spec._fields:
    part = getattr(spec, field)
    if isinstance(part, tuple) and not isinstance(part, tf.TensorSpec):
      names += [f'{field}[{i}]' for i in range(len(part))]
    else:
      names.append(field)
  return names


def check_upload_arrays(payload: encoding.Payload, weight: Any,
                        spec: encoding.Payload) -> UploadCheck:
  """Checks an upload's structure, dtypes and shapes, and its weight's type.

  Nothing is cast: a float64 array where float32 is expected is rejected,
  not converted.

  Args:
    payload: A `SparsePayload`/`CodedPayload` of numpy arrays (or tensors),
      e.g. a TFLite device's `get_weights` outputs as
      `device_payload.check_device_upload` reads them (float16 values sent
      as int16 bit patterns are viewed as float16 first).
    weight: The example count the client reported.
    spec: The expected payload (`payload_spec`).

  Returns:
    An `UploadCheck`: rejection 'shape' for a wrong structure, dtype or
    shape, 'weight' for a weight that is not a finite number > 0; else
    accepted, with `payload` as numpy arrays ready for
    `aggregation.accumulate_payload` (which checks the content).
  """
  weight_value = None
  if (isinstance(weight, (numbers.Real, np.number, np.ndarray)) and
      not isinstance(weight, (bool, np.bool_)) and np.ndim(weight) == 0):
    with np.errstate(over='ignore', invalid='ignore'):
      weight_value = np.float32(weight)
  if not isinstance(payload, type(spec)):
    return UploadCheck('shape', f'expected a {type(spec).__name__}, got '
                       f'{type(payload).__name__}', None, weight_value)
  for field in spec._fields:
    expected, got = getattr(spec, field), getattr(payload, field)
    if isinstance(expected, tuple) and (not isinstance(got, (tuple, list)) or
                                        len(got) != len(expected)):
      count = len(got) if isinstance(got, (tuple, list)) else 'not a sequence'
      return UploadCheck('shape', f'{field}: expected {len(expected)} '
                         f'tensors, got {count}', None, weight_value)
  arrays = []
  for name, tensor, expected in zip(_leaf_names(spec),
                                    tf.nest.flatten(payload),
                                    tf.nest.flatten(spec)):
    array = tensor.numpy() if isinstance(tensor, tf.Tensor) else tensor
    if not isinstance(array, (np.ndarray, np.generic)):
      return UploadCheck('shape', f'{name}: expected a numpy array, got '
                         f'{type(array).__name__}', None, weight_value)
    array = np.asarray(array)
    if array.dtype != expected.dtype.as_numpy_dtype:
      return UploadCheck('shape', f'{name}: expected dtype '
                         f'{expected.dtype.name}, got {array.dtype}', None,
                         weight_value)
    if tuple(array.shape) != tuple(expected.shape.as_list()):
      return UploadCheck('shape', f'{name}: expected shape '
                         f'{tuple(expected.shape.as_list())}, got '
                         f'{tuple(array.shape)}', None, weight_value)
    arrays.append(array)
  converted = tf.nest.pack_sequence_as(spec, arrays)
  if weight_value is None or not (np.isfinite(weight_value) and
                                  weight_value > 0):
    return UploadCheck('weight', f'the example count must be a finite number '
                       f'> 0, got {weight!r}', converted, weight_value)
  return UploadCheck(None, '', converted, weight_value)


def validate_upload(payload: encoding.Payload, weight: Any,
                    kernel_shapes: Sequence[Sequence[int]],
                    num_active: Sequence[int],
                    dense_shapes: Sequence[Sequence[int]],
                    payload_encoding: Optional[encoding.PayloadEncoding] = None,
                    checks: Optional[PayloadChecks] = None,
                    round_index: int = 0) -> UploadCheck:
  """Every check on one upload from outside TFF, with a reason.

  `check_upload_arrays` first, then `check_content` run eagerly: the verdict
  `aggregation.accumulate_payload` would reach on this upload.

  Args:
    payload: The upload (numpy arrays).
    weight: Its example count.
    kernel_shapes: Shape of each prunable kernel.
    num_active: Values per kernel.
    dense_shapes: Shape of each dense parameter tensor.
    payload_encoding: The upload encoding (None: the default).
    checks: The checks (None: `PayloadChecks()`).
    round_index: 0-based round, selects the row of a per-round target table.

  Returns:
    An `UploadCheck`.
  """
  payload_encoding = payload_encoding or encoding.PayloadEncoding()
  checks = checks or PayloadChecks()
  spec = payload_spec(kernel_shapes, num_active, dense_shapes,
                      payload_encoding)
  verdict = check_upload_arrays(payload, weight, spec)
  if verdict.rejection is not None:
    return verdict
  table = checks.targets_table(num_active)
  targets = table[min(round_index, len(table) - 1)]
  content = check_content(
      tf.nest.map_structure(tf.convert_to_tensor, verdict.payload),
      tf.constant(verdict.weight), kernel_shapes, num_active,
      payload_encoding, checks, tf.constant(targets, tf.int32))
  code = int(content.rejection)
  if code == ACCEPTED:
    return verdict
  kind = REJECTION_KINDS[code - 1]
  return verdict._replace(rejection=kind, reason=_CONTENT_REASONS[kind])


_CONTENT_REASONS = {
    'nonfinite': 'a value or dense parameter is NaN or Inf',
    'mask_code': 'the mask code cannot be decoded',
    'mask_count': 'a layer\'s mask does not have its target number of ones '
                  '(or its padding values are not zero)',
    'norm': 'the L2 norm of the upload exceeds the bound',
}
