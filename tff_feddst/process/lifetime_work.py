"""FedDST's client work with the authors' lifetime epoch counter.

With `readjust_counter='client_lifetime'` each client counts the local
epochs it has trained over its lifetime, across the rounds it was sampled
in, and readjusts only after the epochs that count selects
(`client_work.ClientConfig.readjusts_after_epoch`; the rule is in
`client_work`'s module docstring). The counts live in the process state at
SERVER, one row per client id (`client_states`), so a checkpoint keeps them
with the model; each sampled client receives its count with its data and
writes the new one into its slot of a federated sum.
"""

import collections
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import client_states
from tff_feddst.process import client_work
from tff_feddst.process import encoding


class LifetimeWorkState(NamedTuple):
  """State of the 'client_lifetime' client work, at SERVER.

  Attributes:
    round_num: int32: the last completed round (starts at 0).
    epochs_done: int32 [num_clients]: each client's lifetime count of local
      epochs (`client_states.EpochCountRows`).
  """
  round_num: Any
  epochs_done: Any


def lifetime_client_data_type(data_type: tff.Type) -> tff.Type:
  """A client's data with the lifetime count: `OrderedDict(data, state)`.

  Both are sequences (TFF's client work takes sequences only): the batched
  `(x, y)` data of `data_type` and a one-element sequence of the client's
  `client_states.EpochCountInput` (`client_states.epoch_count_inputs`).
  """
  state_type = tff.types.StructWithPythonType([
      ('slot', tff.TensorType(np.int32)),
      ('client_index', tff.TensorType(np.int32)),
      ('epochs_done', tff.TensorType(np.int32))], collections.OrderedDict)
  return tff.types.StructWithPythonType([
      ('data', data_type), ('state', tff.SequenceType(state_type))],
                                        collections.OrderedDict)


def build_lifetime_client_work(
    model_fn: models.ModelFn, layout: models.ModelLayout,
    num_active: Sequence[int], schedule: Any,
    config: client_work.ClientConfig, model_weights_type: tff.Type,
    data_type: tff.Type,
    upload_encoding: Optional[encoding.PayloadEncoding], num_clients: int,
    num_slots: int) -> tff.learning.templates.ClientWorkProcess:
  """FedDST's client work with lifetime epoch counts ('client_lifetime').

  As `client_work.build_client_work`, but each client's lifetime count of
  local epochs is kept in the state, handed to the client with its data and
  written back from its new count (`client_states`), and a client readjusts
  only after the epochs its count selects (module docstring).

  Type signatures:
    initialize: `( -> LifetimeWorkState@SERVER)`
    next: `(<LifetimeWorkState@SERVER, ModelWeights@CLIENTS,
      <data={(x, y)*}, state={EpochCountInput*}>@CLIENTS> ->
      <state=LifetimeWorkState@SERVER, result=ClientResult(Payload,
      float32)@CLIENTS, measurements=<round_num, train_loss, num_examples,
      num_regrown, should_readjust, clients_readjusted,
      grow_score_examples>@SERVER>)`

  Args:
    model_fn, layout, num_active, schedule, config, model_weights_type,
      upload_encoding: as `client_work.build_client_work`.
    data_type: The plain sequence type of a client's batched `(x, y)` data;
      the process takes `lifetime_client_data_type(data_type)`.
    num_clients: Clients of the run (rows of the epoch count store).
    num_slots: Reporters per round at most.

  Returns:
    A `tff.learning.templates.ClientWorkProcess`.

  Raises:
    ValueError: If `num_clients` or `num_slots` is < 1, or the encodings
      disagree.
  """
  if num_clients < 1 or num_slots < 1:
    raise ValueError('readjust_counter=client_lifetime needs num_clients and '
                     f'num_slots >= 1, got {num_clients} and {num_slots}.')
  upload_encoding = client_work.resolve_upload_encoding(config,
                                                        upload_encoding)
  client_data_type = lifetime_client_data_type(data_type)

  @tff.tensorflow.computation
  def initial_state():
    return LifetimeWorkState(
        round_num=tf.constant(0, tf.int32),
        epochs_done=tf.constant(client_states.initial_epoch_counts(
            num_clients)))

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_state, tff.SERVER)

  state_type = initial_state.type_signature.result
  instructions_for = client_work.instructions_computation(schedule)

  @tff.tensorflow.computation(state_type)
  def advance(state):
    return state.round_num + 1

  instructions_type = instructions_for.type_signature.result

  @tff.tensorflow.computation(model_weights_type, client_data_type,
                              instructions_type)
  def client_update(initial_weights, client_data, instructions):
    model = model_fn()
    trainer = client_work.ClientTrainer(model, layout, num_active, config,
                                        upload_encoding)
    count = client_states.EpochCountInput(
        **client_data['state'].get_single_element())
    payload, weight, stats = trainer.update(
        initial_weights, client_data['data'], instructions,
        epochs_done=count.epochs_done)
    rows = client_states.epoch_count_rows(
        count.slot, num_slots, count.client_index,
        count.epochs_done + config.num_epochs)
    return tff.learning.templates.ClientResult(
        update=payload, update_weight=weight), rows, stats

  rows_type = client_update.type_signature.result[1]

  @tff.tensorflow.computation(state_type, tff.types.TensorType(np.int32),
                              rows_type)
  def new_state(state, round_num, rows):
    return LifetimeWorkState(
        round_num=round_num,
        epochs_done=client_states.scatter_epoch_counts(state.epochs_done,
                                                       rows))

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.types.FederatedType(model_weights_type, tff.CLIENTS),
      tff.types.FederatedType(client_data_type, tff.CLIENTS))
  def next_fn(state, weights, client_data):
    round_num = tff.federated_map(advance, state)
    instructions = tff.federated_broadcast(
        tff.federated_map(instructions_for, round_num))
    results, rows, stats = tff.federated_map(
        client_update, (weights, client_data, instructions))
    measurements = client_work.round_measurements(round_num, stats,
                                                  instructions_for)
    measurements['grow_score_examples'] = tff.federated_sum(
        stats.grow_score_examples)
    measurements = tff.federated_zip(measurements)
    return tff.templates.MeasuredProcessOutput(
        state=tff.federated_map(new_state, (state, round_num,
                                            tff.federated_sum(rows))),
        result=results, measurements=measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
