"""Keeps the aggregator's view of the global model current between rounds.

`tff.learning.templates.compose_learning_process` hands the aggregator only
its own state and the clients' values; the global model lives in the
learning process's state. An aggregator that must know the model the round
broadcast (to bound client deltas: `robust_aggregation`; to check that an
upload answers it: `upload_binding`; to check mask counts against the
global mask: PruneFL) keeps what it needs in its state, and the process
built here writes it there: after every round, from the new global model,
and in `initialize` and `set_model_weights`, so a resumed or reset run
agrees with an uninterrupted one.
"""

from typing import Any, Callable, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import robust_aggregation
from tff_feddst.process import sum_factory

# `(aggregator state, global ModelWeights) -> aggregator state`, in TF.
StateUpdate = Callable[[Any, tff.learning.models.ModelWeights], Any]


def with_aggregator_state_from_model(
    process: tff.learning.templates.LearningProcess,
    update: StateUpdate) -> tff.learning.templates.LearningProcess:
  """`process` with `update` applied to its aggregator state from the model.

  Args:
    process: A composed `LearningProcess`.
    update: Writes what the aggregator needs of the global model into its
      state (a TF function).

  Returns:
    The `LearningProcess` whose `initialize`, `next` and `set_model_weights`
    leave the aggregator state updated from the global model they return.
  """
  state_type, data_type = process.next.type_signature.parameter
  weights_type = process.get_model_weights.type_signature.result
  aggregator_type = state_type.member.aggregator

  @tff.tensorflow.computation(aggregator_type, weights_type)
  def updated(aggregator_state, weights):
    return update(aggregator_state, weights)

  def with_aggregator(state, aggregator_state):
    return tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
        global_model_weights=state.global_model_weights,
        distributor=state.distributor, client_work=state.client_work,
        aggregator=aggregator_state, finalizer=state.finalizer))

  @tff.federated_computation
  def init_fn():
    state = process.initialize()
    return with_aggregator(state, tff.federated_map(
        updated, (state.aggregator, state.global_model_weights)))

  @tff.federated_computation(state_type, data_type)
  def next_fn(state, client_data):
    output = process.next(state, client_data)
    new_state = output.state
    return tff.learning.templates.LearningProcessOutput(
        state=with_aggregator(new_state, tff.federated_map(
            updated, (new_state.aggregator,
                      new_state.global_model_weights))),
        metrics=output.metrics)

  @tff.tensorflow.computation(
      process.set_model_weights.type_signature.parameter[0], weights_type)
  def set_model_weights(state, weights):
    return tff.learning.templates.LearningAlgorithmState(
        global_model_weights=weights, distributor=state.distributor,
        client_work=state.client_work,
        aggregator=update(state.aggregator, weights),
        finalizer=state.finalizer)

  return tff.learning.templates.LearningProcess(
      init_fn, next_fn, process.get_model_weights, set_model_weights)


def reference_of_weights(weights: tff.learning.models.ModelWeights,
                         layout: models.ModelLayout,
                         num_active: Sequence[int],
                         download_encoding: Optional[
                             encoding.PayloadEncoding] = None
                         ) -> robust_aggregation.Reference:
  """The model the clients decode from the broadcast of `weights`.

  Args:
    weights: The global `ModelWeights`.
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel (the payload's capacity).
    download_encoding: The broadcast encoding (None: float32 bitmap).

  Returns:
    Its `robust_aggregation.Reference` (float16 downloads: rounded).
  """
  download_encoding = download_encoding or encoding.PayloadEncoding()
  payload = client_work.encode_weights(weights, layout, num_active,
                                       payload_encoding=download_encoding)
  return robust_aggregation.reference_of_payload(
      payload, layout.kernel_shapes, num_active, download_encoding)


def reference_update(layout: models.ModelLayout, num_active: Sequence[int],
                     download_encoding: Optional[
                         encoding.PayloadEncoding] = None) -> StateUpdate:
  """The `StateUpdate` that writes the broadcast reference into the state.

  For a `SparseSumFactory` that clips updates (its state an
  `sum_factory.AggregatorState`).
  """
  def update(aggregator_state, weights):
    return sum_factory.AggregatorState(
        counter=aggregator_state.counter,
        reference=reference_of_weights(weights, layout, num_active,
                                       download_encoding),
        carried=aggregator_state.carried)
  return update


def mask_counts(weights: tff.learning.models.ModelWeights,
                layout: models.ModelLayout) -> tf.Tensor:
  """int32 [layers]: the ones of each mask of `weights`."""
  return tf.stack([tf.cast(tf.reduce_sum(tf.cast(
      weights.non_trainable[i], tf.float32)), tf.int32)
                   for i in layout.mask_indices])


def mask_count_update(layout: models.ModelLayout,
                      holds_reference: bool,
                      download_encoding: Optional[
                          encoding.PayloadEncoding] = None) -> StateUpdate:
  """The `StateUpdate` of a method whose mask counts change between rounds.

  PruneFL and LotteryFL check each upload's mask counts against the global
  mask the client received, so the aggregator's targets become the new
  global mask's counts after every round; when the aggregator also holds a
  reference (clipping, stale checks), the broadcast model is written too.
  Payloads hold up to every kernel's full size.

  Args:
    layout: The model's `ModelLayout`.
    holds_reference: `SparseSumFactory.holds_reference`: the state is a
      `sum_factory.AggregatorState`, else only the targets.
    download_encoding: The broadcast encoding (None: float32 bitmap).

  Returns:
    The update for `with_aggregator_state_from_model`.
  """
  if not holds_reference:
    def update_targets(aggregator_state, weights):
      del aggregator_state  # Only the targets.
      return mask_counts(weights, layout)
    return update_targets
  write_reference = reference_update(layout, layout.kernel_sizes,
                                     download_encoding)

  def update_targets_and_reference(aggregator_state, weights):
    return write_reference(aggregator_state._replace(
        counter=mask_counts(weights, layout)), weights)
  return update_targets_and_reference
