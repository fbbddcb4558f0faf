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
partial aggregates from several workers merge by addition.

With an encoding that leaves unchanged masks out (`encoding.PayloadEncoding`
with `masks_only_when_changed`), a client without masks holds the global
masks, which the aggregator does not see; its values are summed in the
compact domain (`CompactAggregate`) and `expand_aggregate`, given the global
masks, turns the result into the same `SparseAggregate`.

Upload bytes are counted from the received encoded tensors (payload plus the
4-byte float32 weight; `encoding.payload_num_bytes`).
"""

import collections
from typing import NamedTuple, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst import encoding

WEIGHT_BYTES = 4  # The float32 example count sent with each payload.


class SparseAggregate(NamedTuple):
  """Sums over clients that the finalizer turns into the next global model."""
  weighted_kernel_sums: tuple
  weighted_votes: tuple
  votes: tuple
  weighted_dense_sums: tuple
  total_weight: tf.Tensor
  num_clients: tf.Tensor
  upload_bytes: tf.Tensor


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
      upload_bytes=tf.constant(0, tf.int64))


_zero_aggregate = zero_aggregate  # The earlier private name, still used.


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
                payload: encoding.Payload) -> SparseAggregate:
  """Adds a client's dense parameters, weight, count and bytes."""
  return aggregate._replace(
      weighted_dense_sums=tuple(
          total + weight * tf.cast(value, tf.float32)
          for total, value in zip(aggregate.weighted_dense_sums, dense)),
      total_weight=aggregate.total_weight + weight,
      num_clients=aggregate.num_clients + 1,
      upload_bytes=aggregate.upload_bytes +
      encoding.payload_num_bytes(payload) + WEIGHT_BYTES)


def accumulate_payload(aggregate, payload: encoding.Payload,
                       weight: tf.Tensor,
                       kernel_shapes: Sequence[Sequence[int]],
                       num_active: Sequence[int] = (),
                       payload_encoding: Optional[
                           encoding.PayloadEncoding] = None):
  """Decodes one client's payload and adds it to the running sums.

  Args:
    aggregate: The sums so far: a `CompactAggregate` when the encoding
      may leave masks out, else a `SparseAggregate`.
    payload: The client's `SparsePayload` or `CodedPayload`.
    weight: Its float32 example count.
    kernel_shapes: Shape of each prunable kernel.
    num_active: Active weights per kernel (needed for `CodedPayload`s).
    payload_encoding: The upload encoding; None is the default
      `PayloadEncoding()` (`SparsePayload`s).

  Returns:
    The updated aggregate, of the type of `aggregate`.
  """
  payload_encoding = payload_encoding or encoding.PayloadEncoding()
  weight = tf.cast(weight, tf.float32)
  if payload_encoding.masks_only_when_changed:
    def with_masks():
      masks = encoding.decode_masks(payload.mask_code, kernel_shapes,
                                    num_active, payload_encoding.mask_code)
      kernels = encoding.scatter_values(payload.values, masks)
      return (_add_positional(aggregate.with_masks, kernels, masks, weight),
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
        payload.mask_code_bits > 0, with_masks, without_masks)
    return CompactAggregate(
        with_masks=_add_totals(positional, payload.dense, weight, payload),
        global_mask_value_sums=value_sums,
        global_mask_weight=global_weight,
        global_mask_voters=voters)
  kernels, masks, dense = encoding.decode_payload(
      payload, kernel_shapes, num_active, payload_encoding)
  return _add_totals(_add_positional(aggregate, kernels, masks, weight),
                     dense, weight, payload)


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


def merge_aggregates(first, second):
  """Adds two partial aggregates of the same type (from different workers)."""
  return tf.nest.map_structure(tf.add, first, second)


class SparseSumFactory(tff.aggregators.WeightedAggregationFactory):
  """Aggregation factory for FedDST's sparse payloads.

  `create(payload_type, weight_type)` returns an `AggregationProcess`:
    initialize: `( -> <>@SERVER)`
    next: `(<<>@SERVER, Payload@CLIENTS, float32@CLIENTS> ->
      <state=<>@SERVER, result=Aggregate@SERVER,
      measurements=<upload_bytes=int64, num_clients=int32>@SERVER>)`
  where Payload is a `SparsePayload` or `CodedPayload` and Aggregate a
  `SparseAggregate`, or a `CompactAggregate` when the encoding may leave
  masks out (the finalizer then expands it with `expand_aggregate`).
  """

  def __init__(self, kernel_shapes: Sequence[Sequence[int]],
               num_active: Sequence[int] = (),
               payload_encoding: Optional[encoding.PayloadEncoding] = None):
    """Creates the factory.

    Args:
      kernel_shapes: Shape of each prunable kernel, in payload order.
      num_active: Active weights per kernel (needed unless the encoding is
        the default bitmap one).
      payload_encoding: The clients' upload encoding (None: the default
        `PayloadEncoding()`).

    Raises:
      ValueError: If `num_active` is missing for a `CodedPayload` encoding.
    """
    self._kernel_shapes = tuple(tuple(s) for s in kernel_shapes)
    self._num_active = tuple(int(n) for n in num_active)
    self._encoding = payload_encoding or encoding.PayloadEncoding()
    if (not self._encoding.is_bitmap_payload and
        len(self._num_active) != len(self._kernel_shapes)):
      raise ValueError(f'encoding {self._encoding.name} needs num_active '
                       'for every kernel.')

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    kernel_shapes = self._kernel_shapes
    num_active = self._num_active
    payload_encoding = self._encoding
    dense_shapes = tuple(
        tuple(t.shape) for t in tff.structure.flatten(value_type.dense))

    @tff.tensorflow.computation
    def zero_fn():
      if payload_encoding.masks_only_when_changed:
        return zero_compact_aggregate(kernel_shapes, dense_shapes, num_active)
      return zero_aggregate(kernel_shapes, dense_shapes)

    aggregate_type = zero_fn.type_signature.result

    @tff.tensorflow.computation(aggregate_type, (value_type, weight_type))
    def accumulate(aggregate, payload_and_weight):
      payload, weight = payload_and_weight
      return accumulate_payload(aggregate, payload, weight, kernel_shapes,
                                num_active, payload_encoding)

    @tff.tensorflow.computation(aggregate_type, aggregate_type)
    def merge(first, second):
      return merge_aggregates(first, second)

    @tff.tensorflow.computation(aggregate_type)
    def report(aggregate):
      return aggregate

    @tff.tensorflow.computation(aggregate_type)
    def measure(aggregate):
      totals = (aggregate.with_masks
                if payload_encoding.masks_only_when_changed else aggregate)
      return collections.OrderedDict(upload_bytes=totals.upload_bytes,
                                     num_clients=totals.num_clients)

    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.types.FederatedType(value_type, tff.CLIENTS),
        tff.types.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, payload, weight):
      aggregate = tff.federated_aggregate(
          tff.federated_zip((payload, weight)), zero_fn(), accumulate, merge,
          report)
      return tff.templates.MeasuredProcessOutput(
          state=state, result=aggregate,
          measurements=tff.federated_map(measure, aggregate))

    return tff.templates.AggregationProcess(init_fn, next_fn)
