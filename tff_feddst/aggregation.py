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

Upload bytes are counted from the received encoded tensors (payload plus the
4-byte float32 weight).
"""

import collections
from typing import NamedTuple, Sequence

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


def _zero_aggregate(kernel_shapes, dense_specs) -> SparseAggregate:
  kernel_zeros = tuple(tf.zeros(shape, tf.float32) for shape in kernel_shapes)
  return SparseAggregate(
      weighted_kernel_sums=kernel_zeros,
      weighted_votes=kernel_zeros,
      votes=kernel_zeros,
      weighted_dense_sums=tuple(
          tf.zeros(shape, tf.float32) for shape in dense_specs),
      total_weight=tf.constant(0.0, tf.float32),
      num_clients=tf.constant(0, tf.int32),
      upload_bytes=tf.constant(0, tf.int64))


def accumulate_payload(aggregate: SparseAggregate,
                       payload: encoding.SparsePayload, weight: tf.Tensor,
                       kernel_shapes: Sequence[Sequence[int]]
                       ) -> SparseAggregate:
  """Decodes one client's payload and adds it to the running sums.

  Args:
    aggregate: The sums so far.
    payload: The client's `SparsePayload`.
    weight: Its float32 example count.
    kernel_shapes: Shape of each prunable kernel.

  Returns:
    The updated `SparseAggregate`.
  """
  kernels, masks, dense = encoding.decode(payload, kernel_shapes)
  weight = tf.cast(weight, tf.float32)
  has_weight = tf.cast(weight > 0, tf.float32)
  return SparseAggregate(
      weighted_kernel_sums=tuple(
          total + weight * kernel * mask for total, kernel, mask in zip(
              aggregate.weighted_kernel_sums, kernels, masks)),
      weighted_votes=tuple(
          total + weight * mask
          for total, mask in zip(aggregate.weighted_votes, masks)),
      votes=tuple(total + has_weight * mask
                  for total, mask in zip(aggregate.votes, masks)),
      weighted_dense_sums=tuple(
          total + weight * tf.cast(value, tf.float32)
          for total, value in zip(aggregate.weighted_dense_sums, dense)),
      total_weight=aggregate.total_weight + weight,
      num_clients=aggregate.num_clients + 1,
      upload_bytes=aggregate.upload_bytes +
      encoding.payload_num_bytes(payload) + WEIGHT_BYTES)


def merge_aggregates(first: SparseAggregate,
                     second: SparseAggregate) -> SparseAggregate:
  """Adds two partial aggregates (from different workers)."""
  return tf.nest.map_structure(tf.add, first, second)


class SparseSumFactory(tff.aggregators.WeightedAggregationFactory):
  """Aggregation factory for FedDST's sparse payloads.

  `create(payload_type, weight_type)` returns an `AggregationProcess`:
    initialize: `( -> <>@SERVER)`
    next: `(<<>@SERVER, SparsePayload@CLIENTS, float32@CLIENTS> ->
      <state=<>@SERVER, result=SparseAggregate@SERVER,
      measurements=<upload_bytes=int64, num_clients=int32>@SERVER>)`
  """

  def __init__(self, kernel_shapes: Sequence[Sequence[int]]):
    """Creates the factory.

    Args:
      kernel_shapes: Shape of each prunable kernel, in payload order.
    """
    self._kernel_shapes = tuple(tuple(s) for s in kernel_shapes)

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    kernel_shapes = self._kernel_shapes
    dense_shapes = tuple(
        tuple(t.shape) for t in tff.structure.flatten(value_type.dense))

    @tff.tensorflow.computation
    def zero_fn():
      return _zero_aggregate(kernel_shapes, dense_shapes)

    aggregate_type = zero_fn.type_signature.result

    @tff.tensorflow.computation(aggregate_type, (value_type, weight_type))
    def accumulate(aggregate, payload_and_weight):
      payload, weight = payload_and_weight
      return accumulate_payload(aggregate, payload, weight, kernel_shapes)

    @tff.tensorflow.computation(aggregate_type, aggregate_type)
    def merge(first, second):
      return merge_aggregates(first, second)

    @tff.tensorflow.computation(aggregate_type)
    def report(aggregate):
      return aggregate

    @tff.tensorflow.computation(aggregate_type)
    def measure(aggregate):
      return collections.OrderedDict(upload_bytes=aggregate.upload_bytes,
                                     num_clients=aggregate.num_clients)

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
