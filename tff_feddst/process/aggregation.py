"""Server-side aggregation of sparse client payloads (FedDST step 5, sums).

Each client c uploads a `SparsePayload` (active values + packed masks + dense
parameters) with weight n_c (its example count). The aggregator decodes each
payload as it accumulates it and keeps, per prunable position,

  weighted_kernel_sums = sum_c n_c * m_c * w_c
  weighted_votes       = sum_c n_c * m_c
  votes                = sum_c m_c          (over clients with n_c > 0)

and per dense parameter sum_c n_c * v_c, plus sum_c n_c and the number of
clients. The finalizer divides (each position averaged only over the clients
whose mask holds it) and decides the next mask; the aggregator only sums, so
partial aggregates from several workers merge by addition. The running sums
are kept in `exact_sum` form (integers on a fixed-point grid), so the result
has the same bits for any client order and any split over workers.

With an encoding that leaves unchanged masks out (`encoding.PayloadEncoding`
with `masks_only_when_changed`), a client without masks holds the global
masks, which the aggregator does not see; its values are summed in the
compact domain (`CompactAggregate`) and `expand_aggregate`, given the global
masks, turns the result into the same `SparseAggregate`.

Upload bytes are counted from the received encoded tensors (payload plus the
4-byte float32 weight; `encoding.payload_num_bytes`), for rejected clients
too: their bytes crossed the wire.

Every payload is validated before it is added (`payload_validation`: shapes,
weight, finite values, mask code, per-layer nnz, optional norm bound). An
invalid payload adds nothing but its bytes and one count in `rejected`
(per kind of `payload_validation.REJECTION_KINDS`). The TFF factory of these
sums (`sum_factory.SparseSumFactory`) declares its client value with unknown
dimensions, so a payload of a wrong length reaches
the checks instead of failing the round's type check, and its state is the
round counter (int32), which selects the row of a per-round target table
(`payload_validation.PayloadChecks.num_active_by_round`), or, with
`initial_targets`, the targets themselves (int32 [layers]), which the
process owning the aggregator replaces between rounds.

A method that uploads more than the sparse payload (PruneFL's importance)
plugs in an `UploadExtension`: its extra tensors are shape-checked with the
payload, checked for content (`UploadExtension.checks`) with the same
rejection kinds, summed beside the sparse sums (an `ExtendedAggregate`) and
charged in `upload_bytes`.
"""

import collections
from typing import Any, NamedTuple, Optional, Sequence

import tensorflow as tf

from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import robust_means
from tff_feddst.process import update_direction
from tff_feddst.process import upload_binding
from tff_feddst.sparse import exact_sum

WEIGHT_BYTES = 4  # The float32 example count sent with each payload.


class SparseAggregate(NamedTuple):
  """Sums over clients that the finalizer turns into the next global model.

  `num_clients` counts the accepted clients; `rejected` (int32, one count
  per kind of `payload_validation.REJECTION_KINDS`) the rejected ones, and
  `upload_bytes` the bytes of both. `clipped_clients` counts the accepted
  clients whose update the server clipped, `capped_weights` those whose
  example count it capped (`robust_aggregation`). `robust_values` is
  empty, or with a robust mean (`robust_means`) the `RobustValues` the
  finalizer takes instead of the weighted means.
  """
  weighted_kernel_sums: tuple
  weighted_votes: tuple
  votes: tuple
  weighted_dense_sums: tuple
  total_weight: tf.Tensor
  num_clients: tf.Tensor
  upload_bytes: tf.Tensor
  rejected: Any = ()
  clipped_clients: Any = ()
  capped_weights: Any = ()
  robust_values: Any = ()


def zero_aggregate(kernel_shapes: Sequence[Sequence[int]],
                   dense_shapes: Sequence[Sequence[int]]) -> SparseAggregate:
  """Returns the `SparseAggregate` of no clients (all sums 0).

  Args:
    kernel_shapes: Shape of each prunable kernel.
    dense_shapes: Shape of each dense parameter tensor, in payload order.

  Returns:
    The zero aggregate.
  """
  kernel_zeros = tuple(tf.zeros(shape, tf.float32) for shape in kernel_shapes)
  return SparseAggregate(
      weighted_kernel_sums=kernel_zeros,
      weighted_votes=kernel_zeros,
      votes=kernel_zeros,
      weighted_dense_sums=tuple(
          tf.zeros(shape, tf.float32) for shape in dense_shapes),
      total_weight=tf.constant(0.0, tf.float32),
      num_clients=tf.constant(0, tf.int32),
      upload_bytes=tf.constant(0, tf.int64),
      rejected=tf.zeros([len(payload_validation.REJECTION_KINDS)], tf.int32),
      clipped_clients=tf.constant(0, tf.int32),
      capped_weights=tf.constant(0, tf.int32))


_zero_aggregate = zero_aggregate  # The earlier private name, still used.


class ExtendedAggregate(NamedTuple):
  """Sums of uploads that carry more than a payload (`UploadExtension`).

  Attributes:
    sums: The `SparseAggregate` of the payloads (`upload_bytes` includes the
      extra tensors).
    extra: The extension's own sums (`UploadExtension.zero`'s structure).
  """
  sums: SparseAggregate
  extra: Any


class UploadExtension:
  """What a method uploads beside its payload, and how the server sums it.

  The client value is a structure holding the payload (`payload_of`) and
  extra tensors. Subclasses define the five methods below; each receives
  the upload with the static shapes of `spec` (it passed the shape check).
  """

  def payload_of(self, upload: Any) -> encoding.Payload:
    """The sparse payload inside `upload` (also used on TFF types)."""
    return upload.payload

  def spec(self, payload_spec: encoding.Payload) -> Any:
    """The expected upload as `tf.TensorSpec`s, given the payload's."""
    raise NotImplementedError

  def zero(self) -> Any:
    """The extension's sums of no clients (float32 or integer tensors)."""
    raise NotImplementedError

  def checks(self, upload: Any) -> list[tuple[str, tf.Tensor]]:
    """`(kind, passed)` pairs (kinds from `REJECTION_KINDS`) on the extras."""
    raise NotImplementedError

  def add(self, extra_sums: Any, upload: Any, weight: tf.Tensor) -> Any:
    """`extra_sums` plus an accepted client's terms (weight: float32)."""
    raise NotImplementedError

  def num_bytes(self, upload: Any) -> tf.Tensor:
    """int64 bytes of the extras as received (also for rejected uploads,
    so it must not trust their content)."""
    raise NotImplementedError


class CompactAggregate(NamedTuple):
  """Sums over clients when uploads may leave their masks out.

  A client that sent no masks holds exactly the global masks, so its values
  line up with the global masks' active positions (row-major) and are summed
  there, in the compact domain; `expand_aggregate` scatters them with the
  global masks (which the server holds) into a `SparseAggregate`.

  Attributes:
    with_masks: `SparseAggregate` of every client for the dense sums, total
      weight, client count and upload bytes, and of the clients that sent
      masks for the kernel sums and votes.
    global_mask_value_sums: Per kernel, sum_c n_c * values_c over the
      clients that sent no masks ([num_active[l]] float32).
    global_mask_weight: sum of their n_c.
    global_mask_voters: Their number with n_c > 0 (float32).
  """
  with_masks: SparseAggregate
  global_mask_value_sums: tuple
  global_mask_weight: tf.Tensor
  global_mask_voters: tf.Tensor


def zero_compact_aggregate(kernel_shapes: Sequence[Sequence[int]],
                           dense_shapes: Sequence[Sequence[int]],
                           num_active: Sequence[int]) -> CompactAggregate:
  """Returns the `CompactAggregate` of no clients."""
  return CompactAggregate(
      with_masks=zero_aggregate(kernel_shapes, dense_shapes),
      global_mask_value_sums=tuple(
          tf.zeros([int(n)], tf.float32) for n in num_active),
      global_mask_weight=tf.constant(0.0, tf.float32),
      global_mask_voters=tf.constant(0.0, tf.float32))


def _add_positional(aggregate: SparseAggregate, kernels, masks,
                    weight: tf.Tensor) -> SparseAggregate:
  """Adds decoded kernels (zero off their masks) and masks to the sums."""
  has_weight = tf.cast(weight > 0, tf.float32)
  return aggregate._replace(
      # Decoded kernels are zero off their masks: no multiply by the mask.
      weighted_kernel_sums=tuple(
          total + weight * kernel
          for total, kernel in zip(aggregate.weighted_kernel_sums, kernels)),
      weighted_votes=tuple(
          total + weight * mask
          for total, mask in zip(aggregate.weighted_votes, masks)),
      votes=tuple(total + has_weight * mask
                  for total, mask in zip(aggregate.votes, masks)))


def _add_totals(aggregate: SparseAggregate, dense, weight: tf.Tensor,
                num_bytes: tf.Tensor) -> SparseAggregate:
  """Adds a client's dense parameters, weight, count and bytes."""
  return aggregate._replace(
      weighted_dense_sums=tuple(
          total + weight * tf.cast(value, tf.float32)
          for total, value in zip(aggregate.weighted_dense_sums, dense)),
      total_weight=aggregate.total_weight + weight,
      num_clients=aggregate.num_clients + 1,
      upload_bytes=aggregate.upload_bytes + num_bytes)


def _totals_of(aggregate) -> SparseAggregate:
  """The `SparseAggregate` holding the totals of either aggregate type."""
  if isinstance(aggregate, robust_means.WithClientValues):
    return _totals_of(aggregate.sums)
  if isinstance(aggregate, CompactAggregate):
    return aggregate.with_masks
  if isinstance(aggregate, ExtendedAggregate):
    return aggregate.sums
  return aggregate


def _with_totals(aggregate, totals: SparseAggregate):
  if isinstance(aggregate, robust_means.WithClientValues):
    return aggregate._replace(sums=_with_totals(aggregate.sums, totals))
  if isinstance(aggregate, CompactAggregate):
    return aggregate._replace(with_masks=totals)
  if isinstance(aggregate, ExtendedAggregate):
    return aggregate._replace(sums=totals)
  return totals


def received_num_bytes(payload: encoding.Payload) -> tf.Tensor:
  """Bytes of an upload as received, weight included (int64 scalar).

  Used for rejected uploads, whose masks cannot be trusted: every tensor
  counts at its actual (run-time) size, values with their padding, and a
  `CodedPayload`'s mask code as ceil(mask_code_bits / 8) bytes with the
  claimed bits clipped to its buffer (so a hostile length can neither
  inflate nor negate the count), plus the 4 bytes of `mask_code_bits` when
  the buffer is not empty (as `encoding.payload_num_bytes` counts them).
  """
  total = tf.constant(WEIGHT_BYTES, tf.int64)
  rest = payload
  if isinstance(payload, encoding.CodedPayload):
    buffer_bits = 8 * tf.size(payload.mask_code, out_type=tf.int64)
    used_bits = tf.clip_by_value(
        tf.cast(payload.mask_code_bits, tf.int64), 0, buffer_bits)
    total += (used_bits + 7) // 8 + tf.where(
        buffer_bits > 0, tf.constant(encoding.MASK_CODE_LENGTH_BYTES,
                                     tf.int64), 0)
    rest = payload._replace(mask_code=(), mask_code_bits=())
  for tensor in tf.nest.flatten(rest):
    tensor = tf.convert_to_tensor(tensor)
    total += tf.size(tensor, out_type=tf.int64) * tensor.dtype.size
  return total


def _add_valid(aggregate, payload: encoding.Payload, weight: tf.Tensor,
               kernel_shapes: Sequence[Sequence[int]],
               num_active: Sequence[int],
               payload_encoding: encoding.PayloadEncoding,
               masks: Optional[Sequence[tf.Tensor]] = None,
               has_masks: Optional[tf.Tensor] = None,
               received: Optional[encoding.Payload] = None):
  """Adds an accepted payload; `masks` are its decoded masks if at hand.

  `received` is the payload as it arrived when `payload` is the server's
  clipped version of it (its bytes are what is counted).
  """
  received = payload if received is None else received
  num_bytes = encoding.payload_num_bytes(received) + WEIGHT_BYTES
  if payload_encoding.masks_only_when_changed:
    if has_masks is None:
      has_masks = payload.mask_code_bits > 0

    def with_masks():
      decoded = masks
      if decoded is None:
        decoded = mask_codes.decode_masks(
            payload.mask_code, kernel_shapes, num_active,
            payload_encoding.mask_code, payload_encoding.omit_dense_masks)
      kernels = encoding.scatter_values(payload.values, decoded)
      return (_add_positional(aggregate.with_masks, kernels, decoded, weight),
              aggregate.global_mask_value_sums,
              aggregate.global_mask_weight, aggregate.global_mask_voters)

    def without_masks():
      return (aggregate.with_masks,
              tuple(total + weight * tf.cast(values, tf.float32)
                    for total, values in zip(
                        aggregate.global_mask_value_sums, payload.values)),
              aggregate.global_mask_weight + weight,
              aggregate.global_mask_voters + tf.cast(weight > 0, tf.float32))

    positional, value_sums, global_weight, voters = tf.cond(
        has_masks, with_masks, without_masks)
    return CompactAggregate(
        with_masks=_add_totals(positional, payload.dense, weight, num_bytes),
        global_mask_value_sums=value_sums,
        global_mask_weight=global_weight,
        global_mask_voters=voters)
  if masks is None:
    kernels, masks, dense = encoding.decode_payload(
        payload, kernel_shapes, num_active, payload_encoding)
  else:
    kernels, dense = encoding.scatter_values(payload.values, masks), list(
        payload.dense)
  # Values are charged for the masks' ones, not the padding to capacity.
  num_bytes = encoding.payload_num_bytes(received, masks) + WEIGHT_BYTES
  return _add_totals(_add_positional(aggregate, kernels, masks, weight),
                     dense, weight, num_bytes)


def _add_rejection(aggregate, rejection: tf.Tensor, num_bytes: tf.Tensor):
  """Counts a rejected client (kind code `rejection`) and its bytes."""
  totals = _totals_of(aggregate)
  totals = totals._replace(
      upload_bytes=totals.upload_bytes + num_bytes,
      rejected=totals.rejected + tf.one_hot(
          rejection - 1, len(payload_validation.REJECTION_KINDS),
          dtype=tf.int32))
  return _with_totals(aggregate, totals)


def _value_lengths(values) -> tuple[int, ...]:
  lengths = []
  for layer_values in values:
    length = tf.convert_to_tensor(layer_values).shape[0]
    if length is None:
      raise ValueError('num_active is needed to validate payloads whose '
                       'value lengths are not static.')
    lengths.append(int(length))
  return tuple(lengths)


class CheckedUpload(NamedTuple):
  """An upload past the shape check: static shapes and content checks."""
  upload: Any
  content: payload_validation.ContentCheck


def upload_spec(aggregate_dense_shapes, kernel_shapes, num_active,
                payload_encoding, extension):
  """The expected upload as `tf.TensorSpec`s (with an extension's extras)."""
  spec = payload_validation.payload_spec(kernel_shapes, num_active,
                                         aggregate_dense_shapes,
                                         payload_encoding)
  return extension.spec(spec) if extension else spec


def check_then(upload, spec, weight, kernel_shapes, num_active,
               payload_encoding, checks, targets, extension, on_checked,
               on_shape_error, binding_checks=()):
  """Runs the shape check, then the content checks, then `on_checked`."""
  payload_of = extension.payload_of if extension else (lambda u: u)

  def checked():
    static = payload_validation.with_static_shapes(upload, spec)
    content = payload_validation.check_content(
        payload_of(static), weight, kernel_shapes, num_active,
        payload_encoding, checks, targets,
        (list(extension.checks(static)) if extension else []) +
        list(binding_checks))
    return on_checked(CheckedUpload(static, content))

  return tf.cond(payload_validation.shapes_match(upload, spec), checked,
                 on_shape_error)


def unbind_upload(upload, round_digest: Optional[tf.Tensor]):
  """`(upload inside, [('stale', passed)])` of a `BoundUpload`.

  Without a `round_digest` the upload is not bound: `(upload, [])`.
  """
  if round_digest is None:
    return upload, []
  digest = tf.convert_to_tensor(upload.model_digest)
  return upload.upload, [('stale', tf.equal(digest, round_digest))]


class ClientDelta(NamedTuple):
  """A checked upload's delta from the round's reference (robust pass):
  its norm, the reference's values at its mask ones, and its masks."""
  norm: tf.Tensor
  ref_values: tuple
  masks: tuple = ()


def client_delta(payload: encoding.Payload,
                 content: payload_validation.ContentCheck,
                 reference: robust_aggregation.Reference,
                 num_active: Sequence[int]) -> ClientDelta:
  """The delta norm of an accepted payload (masks from its content check).

  An upload without masks holds the reference's (global) masks.
  """
  masks = [tf.where(content.has_masks, tf.cast(mask, tf.float32), ref_mask)
           for mask, ref_mask in zip(content.masks, reference.masks)]
  ref_values = robust_aggregation.reference_values(reference, masks,
                                                   num_active)
  norm = robust_aggregation.delta_norm(payload.values, payload.dense,
                                       ref_values, reference)
  return ClientDelta(norm, tuple(ref_values), tuple(masks))


def accumulate_payload(aggregate, payload: encoding.Payload,
                       weight: tf.Tensor,
                       kernel_shapes: Sequence[Sequence[int]],
                       num_active: Sequence[int] = (),
                       payload_encoding: Optional[
                           encoding.PayloadEncoding] = None,
                       checks: Optional[
                           payload_validation.PayloadChecks] = None,
                       targets: Optional[tf.Tensor] = None,
                       extension: Optional[UploadExtension] = None,
                       robust: Optional[
                           robust_aggregation.RobustAggregation] = None,
                       round_bound: Optional[
                           robust_aggregation.RoundBound] = None,
                       round_digest: Optional[tf.Tensor] = None,
                       global_masks: Optional[Sequence[tf.Tensor]] = None):
  """Validates one client's payload, then decodes it into the running sums.

  Args:
    aggregate: The sums so far: an `ExtendedAggregate` with `extension`, a
      `CompactAggregate` when the encoding may leave masks out, else a
      `SparseAggregate`; or such sums of no client in a
      `robust_means.WithClientValues`, which then also returns the
      client's values if it is accepted (`add_exactly`).
    payload: The client's `SparsePayload` or `CodedPayload` (with
      `extension`: its whole upload); with `checks`, its dimensions may be
      unknown statically (checked at run time).
    weight: Its float32 example count.
    kernel_shapes: Shape of each prunable kernel.
    num_active: Values per kernel (needed for `CodedPayload`s, and for
      validating payloads of unknown static lengths).
    payload_encoding: The upload encoding; None is the default
      `PayloadEncoding()` (`SparsePayload`s).
    checks: The `payload_validation.PayloadChecks` to apply; None adds the
      payload unchecked (only for payloads known to be valid; not with an
      extension, nor with `robust`).
    targets: int32 [layers], this round's target nnz per layer (None:
      `num_active`).
    extension: What the upload carries beside the payload (None: nothing).
    robust: How the server bounds a client (`robust_aggregation`): the
      weight it uses (capped or uniform). None: the stated weight.
    round_bound: What the first pass found (`robust_aggregation.RoundBound`):
      with a reference, the payload's delta is clipped to the round's bound
      and a payload beyond `robust.clip_zeroing_multiple` times it is
      rejected ('update_norm'); with replay counts, a payload counted more
      than once is rejected ('replay'); with a direction sum, a payload
      whose delta has a cosine below `robust.min_update_cosine` with the
      round's other deltas is rejected ('direction', `update_direction`).
      None: none of these.
    round_digest: int32 digest of the round's broadcast model
      (`upload_binding`): `payload` is then a `BoundUpload`, rejected as
      'stale' when its digest differs, and its digest's bytes are counted.
      None: the upload is not bound.
    global_masks: The round's global masks, which a client that sent no
      masks holds (needed for its `robust_means.ClientValues`).

  Returns:
    The updated aggregate, of the type of `aggregate`: the payload's sums
    added if it passed every check, else only its bytes and a rejection.

  Raises:
    ValueError: For an extension, `robust` or `round_digest` without
      checks, or a `round_bound` without `robust`.
  """
  payload_encoding = payload_encoding or encoding.PayloadEncoding()
  weight = tf.cast(weight, tf.float32)
  if checks is None:
    if (extension is not None or robust is not None or
        round_digest is not None):
      raise ValueError('uploads with an extension, robust aggregation or a '
                       'round digest are always checked.')
    return _add_valid(aggregate, payload, weight, kernel_shapes, num_active,
                      payload_encoding)
  if round_bound is not None and robust is None:
    raise ValueError('round_bound needs the robust aggregation settings.')
  upload, binding_checks = unbind_upload(payload, round_digest)
  payload_of = extension.payload_of if extension else (lambda u: u)
  num_active = tuple(num_active) or _value_lengths(payload_of(upload).values)
  dense_shapes = [total.shape.as_list() for total in
                  _totals_of(aggregate).weighted_dense_sums]
  spec = upload_spec(dense_shapes, kernel_shapes, num_active,
                      payload_encoding, extension)
  upload = tf.nest.map_structure(tf.convert_to_tensor, upload)
  num_bytes = received_num_bytes(payload_of(upload))
  if extension:
    num_bytes += extension.num_bytes(upload)
  binding_bytes = tf.constant(
      0 if round_digest is None else upload_binding.DIGEST_BYTES, tf.int64)
  num_bytes += binding_bytes
  used_weight, capped = weight, tf.constant(0, tf.int32)
  if robust is not None:
    round_cap = round_bound.weight_cap if round_bound is not None else None
    used_weight = robust_aggregation.effective_weight(weight, robust,
                                                      round_cap)
    capped = robust_aggregation.weight_was_capped(weight, robust, round_cap)
  adder = _UploadAdder(
      aggregate, kernel_shapes=kernel_shapes, num_active=num_active,
      payload_encoding=payload_encoding, extension=extension, robust=robust,
      round_bound=round_bound, global_masks=global_masks,
      used_weight=used_weight, capped=capped, num_bytes=num_bytes,
      binding_bytes=binding_bytes, payload_of=payload_of)
  shape_code = payload_validation.rejection_code('shape')
  return check_then(upload, spec, weight, kernel_shapes, num_active,
                     payload_encoding, checks, targets, extension,
                     adder.on_checked,
                     lambda: adder.rejected(tf.constant(shape_code, tf.int32)),
                     binding_checks)


class _UploadAdder:
  """What `accumulate_payload` does with an upload once it is checked.

  A checked upload is rejected with its code, or passes the round's screens
  (replays, then the clip bound, the zeroing bound and the direction check
  of `round_bound`) and is added to the sums with the server's weight. Each
  step is a method; all of them build ops in the caller's graph, in the
  order the checks run.
  """

  def __init__(self, aggregate, *, kernel_shapes, num_active,
               payload_encoding: encoding.PayloadEncoding,
               extension: Optional[UploadExtension],
               robust: Optional[robust_aggregation.RobustAggregation],
               round_bound: Optional[robust_aggregation.RoundBound],
               global_masks: Optional[Sequence[tf.Tensor]],
               used_weight: tf.Tensor, capped: tf.Tensor,
               num_bytes: tf.Tensor, binding_bytes: tf.Tensor, payload_of):
    self._aggregate = aggregate
    self._with_values = isinstance(aggregate,
                                   robust_means.WithClientValues)
    self._inner = aggregate.sums if self._with_values else aggregate
    self._kernel_shapes = kernel_shapes
    self._num_active = num_active
    self._payload_encoding = payload_encoding
    self._extension = extension
    self._robust = robust
    self._round_bound = round_bound
    self._global_masks = global_masks
    self._used_weight = used_weight
    self._capped = capped
    self._num_bytes = num_bytes
    self._binding_bytes = binding_bytes
    self._payload_of = payload_of

  def rejected(self, code: tf.Tensor):
    """The aggregate with the upload's bytes and its rejection `code`."""
    return _add_rejection(self._aggregate, code, self._num_bytes)

  def on_checked(self, checked: CheckedUpload):
    """Screens an upload that passed the payload checks, else rejects it."""
    return tf.cond(
        tf.equal(checked.content.rejection, payload_validation.ACCEPTED),
        lambda: self._accepted(checked),
        lambda: self.rejected(checked.content.rejection))

  def _accepted(self, checked: CheckedUpload):
    """Rejects a replayed upload (a first pass counted it twice)."""
    static, _ = checked
    round_bound = self._round_bound
    if round_bound is None or round_bound.replay_counts is None:
      return self._add_checked(checked)
    replayed = robust_aggregation.is_replayed(
        robust_aggregation.upload_fingerprint(static),
        round_bound.replay_counts)
    return tf.cond(
        replayed,
        lambda: self.rejected(tf.constant(
            payload_validation.rejection_code('replay'), tf.int32)),
        lambda: self._add_checked(checked))

  def _add_checked(self, checked: CheckedUpload):
    """Clips the upload's delta to the round's bound, or rejects it."""
    static, content = checked
    received = self._payload_of(static)
    round_bound = self._round_bound
    if round_bound is None or round_bound.reference is None:
      return self._add(static, content, received, tf.constant(0, tf.int32))
    delta = client_delta(received, content, round_bound.reference,
                         self._num_active)
    factor = robust_aggregation.clip_factor(delta.norm, round_bound.bound)

    def clipped_payload():
      values, dense = robust_aggregation.clip_values(
          received.values, received.dense, delta.ref_values,
          round_bound.reference, factor)
      return tuple(values), tuple(dense)

    def as_received():
      return (tuple(tf.cast(v, tf.float32) for v in received.values),
              tuple(tf.cast(d, tf.float32) for d in received.dense))

    values, dense = tf.cond(factor < 1.0, clipped_payload, as_received)
    as_summed = received._replace(values=values, dense=dense)
    code = self._screen_code(received, delta)
    return tf.cond(
        tf.not_equal(code, payload_validation.ACCEPTED),
        lambda: self.rejected(tf.cast(code, tf.int32)),
        lambda: self._add(static, content, as_summed,
                          tf.cast(factor < 1.0, tf.int32)))

  def _screen_code(self, received: encoding.Payload, delta) -> tf.Tensor:
    """'update_norm' beyond the zeroing bound, else 'direction' or accepted."""
    robust, round_bound = self._robust, self._round_bound
    too_far = delta.norm > robust.clip_zeroing_multiple * round_bound.bound
    code = tf.where(too_far, payload_validation.rejection_code('update_norm'),
                    payload_validation.ACCEPTED)
    if round_bound.direction_sum is None:
      return code
    cosine = update_direction.update_cosine(
        received.values, received.dense, delta.ref_values,
        round_bound.reference.dense, delta.masks, self._num_active,
        round_bound.direction_sum, includes_own=robust.sums_unit_deltas)
    return tf.where(
        tf.logical_and(tf.logical_not(too_far),
                       cosine < robust.min_update_cosine),
        payload_validation.rejection_code('direction'), code)

  def _add(self, static, content, summed_payload, clipped: tf.Tensor):
    """Adds `summed_payload` (the upload, clipped) with the server's weight."""
    extension = self._extension
    sums = _add_valid(_totals_of(self._inner) if extension else self._inner,
                      summed_payload, self._used_weight, self._kernel_shapes,
                      self._num_active, self._payload_encoding,
                      content.masks, content.has_masks,
                      received=self._payload_of(static))
    totals = _totals_of(sums)
    sums = _with_totals(sums, totals._replace(
        upload_bytes=totals.upload_bytes + self._binding_bytes,
        clipped_clients=totals.clipped_clients + clipped,
        capped_weights=totals.capped_weights + self._capped))
    if extension:
      sums = sums._replace(upload_bytes=sums.upload_bytes +
                           extension.num_bytes(static))
      sums = ExtendedAggregate(sums=sums, extra=extension.add(
          self._inner.extra, static, self._used_weight))
    if not self._with_values:
      return sums
    return robust_means.WithClientValues(
        sums, self._client_values(content, summed_payload))

  def _client_values(self, content, summed_payload):
    """The client's values for a robust mean (global masks where it sent none)."""
    masks = content.masks
    if self._global_masks is not None:
      masks = [tf.where(content.has_masks, tf.cast(mask, tf.float32),
                        tf.cast(global_mask, tf.float32))
               for mask, global_mask in zip(masks, self._global_masks)]
    return robust_means.client_values(
        encoding.scatter_values(summed_payload.values, masks), masks,
        summed_payload.dense, self._used_weight)


def zero_sums(kernel_shapes: Sequence[Sequence[int]],
              dense_shapes: Sequence[Sequence[int]],
              payload_encoding: encoding.PayloadEncoding,
              num_active: Sequence[int] = (),
              extension: Optional[UploadExtension] = None):
  """The aggregate of no clients, of the type `payload_encoding` needs.

  Args:
    kernel_shapes: Shape of each prunable kernel.
    dense_shapes: Shape of each dense parameter tensor, in payload order.
    payload_encoding: The upload encoding.
    num_active: Values per kernel (needed when masks may be left out).
    extension: The uploads' `UploadExtension`, if any.

  Returns:
    An `ExtendedAggregate` with an extension; else a `CompactAggregate` when
    the encoding may leave masks out, else a `SparseAggregate`; all sums 0.

  Raises:
    ValueError: For an extension with an encoding that may leave masks out.
  """
  if extension is not None:
    if payload_encoding.masks_only_when_changed:
      raise ValueError('uploads with an extension always carry their masks: '
                       'masks_only_when_changed is not supported.')
    return ExtendedAggregate(sums=zero_aggregate(kernel_shapes, dense_shapes),
                             extra=extension.zero())
  if payload_encoding.masks_only_when_changed:
    return zero_compact_aggregate(kernel_shapes, dense_shapes, num_active)
  return zero_aggregate(kernel_shapes, dense_shapes)


def add_exactly(exact_aggregate, payload: encoding.Payload,
                weight: tf.Tensor, kernel_shapes: Sequence[Sequence[int]],
                dense_shapes: Sequence[Sequence[int]],
                num_active: Sequence[int],
                payload_encoding: encoding.PayloadEncoding,
                checks: Optional[payload_validation.PayloadChecks] = None,
                targets: Optional[tf.Tensor] = None,
                extension: Optional[UploadExtension] = None,
                robust: Optional[robust_aggregation.RobustAggregation] = None,
                round_bound: Optional[robust_aggregation.RoundBound] = None,
                round_digest: Optional[tf.Tensor] = None,
                global_masks: Optional[Sequence[tf.Tensor]] = None):
  """`accumulate_payload` into sums kept in `exact_sum` form.

  The client's contribution (its checked, decoded payload times its weight,
  float32, exactly as `accumulate_payload` computes it) is added to integer
  sums, so the total does not depend on the order in which clients arrive
  or on how they are split over workers: a run gives the same bits on one
  worker or several, under any load. With a robust mean
  (`robust.robust_mean`) the sums are a `robust_means.RobustSums`, whose
  order terms take the accepted client's values (`robust_means.add_client`).

  Args:
    exact_aggregate: `exact_sum.to_exact` of an aggregate (`zero_sums`'s
      type), or a sum of such; with a robust mean, a `RobustSums`
      (`sum_factory.zero_exact_sums`).
    payload: The client's upload.
    weight: Its float32 example count.
    kernel_shapes: Shape of each prunable kernel.
    dense_shapes: Shape of each dense parameter tensor, in payload order.
    num_active: Values per kernel (see `accumulate_payload`).
    payload_encoding: The upload encoding.
    checks: See `accumulate_payload`.
    targets: See `accumulate_payload`.
    extension: See `accumulate_payload`.
    robust: See `accumulate_payload`.
    round_bound: See `accumulate_payload`.
    round_digest: See `accumulate_payload`.
    global_masks: See `accumulate_payload` (default: the reference's).

  Returns:
    The updated exact sums.

  Raises:
    ValueError: For a robust mean with an encoding that may leave masks out
      and no global masks at hand.
  """
  zero = zero_sums(kernel_shapes, dense_shapes, payload_encoding, num_active,
                   extension)
  mean = robust.robust_mean if robust is not None else None
  if mean is None:
    contribution = accumulate_payload(
        zero, payload, weight, kernel_shapes, num_active, payload_encoding,
        checks, targets, extension, robust, round_bound, round_digest)
    return exact_sum.add(exact_aggregate, exact_sum.to_exact(contribution))
  if global_masks is None and round_bound is not None and (
      round_bound.reference is not None):
    global_masks = round_bound.reference.masks
  if payload_encoding.masks_only_when_changed and global_masks is None:
    raise ValueError('a robust mean of uploads that may leave masks out '
                     'needs the global masks.')
  contribution = accumulate_payload(
      robust_means.WithClientValues(zero, robust_means.no_client_values(
          tuple(kernel_shapes) + tuple(dense_shapes))),
      payload, weight, kernel_shapes, num_active, payload_encoding, checks,
      targets, extension, robust, round_bound, round_digest, global_masks)
  return robust_means.RobustSums(
      sums=exact_sum.add(exact_aggregate.sums,
                         exact_sum.to_exact(contribution.sums)),
      terms=robust_means.add_client(exact_aggregate.terms,
                                    contribution.client))


def expand_aggregate(aggregate: CompactAggregate,
                     global_masks: Sequence[tf.Tensor]) -> SparseAggregate:
  """Turns a `CompactAggregate` into the `SparseAggregate` it stands for.

  The clients that sent no masks held `global_masks`: their value sums are
  scattered onto the global masks' active positions, and their weight and
  count become votes there.

  Args:
    aggregate: The compact sums.
    global_masks: The global masks of the round (0/1, kernel shapes).

  Returns:
    The `SparseAggregate` decoding every payload would have given.
  """
  masks = [tf.cast(m, tf.float32) for m in global_masks]
  positional = aggregate.with_masks
  scattered = encoding.scatter_values(aggregate.global_mask_value_sums, masks)
  return positional._replace(
      weighted_kernel_sums=tuple(
          total + sums for total, sums in zip(
              positional.weighted_kernel_sums, scattered)),
      weighted_votes=tuple(
          total + aggregate.global_mask_weight * mask
          for total, mask in zip(positional.weighted_votes, masks)),
      votes=tuple(total + aggregate.global_mask_voters * mask
                  for total, mask in zip(positional.votes, masks)))


def with_robust_values(aggregate, values: robust_means.RobustValues):
  """`aggregate` (any type) with its totals' `robust_values` set."""
  return _with_totals(aggregate,
                      _totals_of(aggregate)._replace(robust_values=values))


def measurements_of(aggregate) -> collections.OrderedDict:
  """The aggregator's measurements of a round's aggregate.

  Returns:
    OrderedDict: `upload_bytes` (int64, every received upload),
    `num_clients` (accepted), `rejected_clients` (all kinds), then
    `rejected_<kind>` for each of `payload_validation.REJECTION_KINDS`,
    `clipped_clients` and `capped_weights` (`robust_aggregation`), and
    with a robust mean `robust_mean_over_capacity` (`robust_means`).
  """
  totals = _totals_of(aggregate)
  measurements = collections.OrderedDict(
      upload_bytes=totals.upload_bytes, num_clients=totals.num_clients,
      rejected_clients=tf.reduce_sum(totals.rejected))
  for index, kind in enumerate(payload_validation.REJECTION_KINDS):
    measurements[f'rejected_{kind}'] = totals.rejected[index]
  measurements['clipped_clients'] = totals.clipped_clients
  measurements['capped_weights'] = totals.capped_weights
  if totals.robust_values:
    measurements['robust_mean_over_capacity'] = (
        totals.robust_values.over_capacity)
  return measurements
