"""FedDST rounds in plain TensorFlow, without TFF: the benchmark's yardstick.

`PlainFedDst` runs exactly the computations of the TFF process that
`fed_dst.build_fed_dst` builds, as eager calls of `tf.function`s in this
Python process, one client after the other:

  broadcast   `client_work.encode_weights` of the global model, then, per
              client, `distributor.decode_model_weights`;
  client      `client_work.ClientTrainer.update` (one trainer, one trace);
  aggregation `aggregation.accumulate_payload`, client by client;
  server      `finalizer.apply_aggregate` (skipped when no client reported,
              as the TFF finalizer does).

Given the same initial model, schedule, settings and client datasets, it
computes the same global model as the TFF process (up to the order of float
additions), and each phase can be timed separately (`PhaseTimer`).
"""

import collections
import contextlib
import time
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import finalizer
from tff_feddst.process import payload_validation
from tff_feddst.sparse import exact_sum

# Phase names, in round order.
BROADCAST = 'broadcast'
CLIENT_UPDATE = 'client_update'
AGGREGATION = 'aggregation'
SERVER_UPDATE = 'server_update'
PHASES = (BROADCAST, CLIENT_UPDATE, AGGREGATION, SERVER_UPDATE)


class PhaseTimer:
  """Seconds spent in named phases, summed over calls.

  Attributes:
    seconds: `{phase: total wall-clock seconds}`.
    cpu_seconds: `{phase: total CPU seconds of this process, all threads}`
      (less sensitive than wall time to other jobs on a shared machine).
    calls: `{phase: number of timed calls}`.
  """

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.cpu_seconds = collections.defaultdict(float)
    self.calls = collections.defaultdict(int)

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Adds the time spent in the `with` block to phase `name`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
      yield
    finally:
      self.seconds[name] += time.perf_counter() - start
      self.cpu_seconds[name] += time.process_time() - start_cpu
      self.calls[name] += 1


class PlainState(NamedTuple):
  """The server's state between plain rounds.

  Attributes:
    round_num: Rounds completed (0 before the first).
    weights: Global `ModelWeights` (tensors).
    buffers: Server momentum buffers, one per trainable variable.
  """
  round_num: int
  weights: tff.learning.models.ModelWeights
  buffers: tuple


def _as_tensors(weights) -> tff.learning.models.ModelWeights:
  return tff.learning.models.ModelWeights(
      trainable=[tf.convert_to_tensor(v) for v in weights.trainable],
      non_trainable=[tf.convert_to_tensor(v) for v in weights.non_trainable])


class PlainFedDst:
  """FedDST rounds as plain `tf.function` calls (see module docstring)."""

  def __init__(self, model_fn: models.ModelFn,
               initial_model: fed_dst.InitialModel,
               data_element_spec: Any,
               schedule: Any,
               client_config: client_work.ClientConfig,
               *,
               server_learning_rate: float = 1.0,
               server_momentum: float = 0.0,
               min_votes: int = 0,
               upload_encoding: Optional[encoding.PayloadEncoding] = None,
               download_encoding: Optional[encoding.PayloadEncoding] = None):
    """Builds the client model, its trainer and the server functions.

    Arguments mean what they mean for `fed_dst.build_fed_dst`.

    Args:
      model_fn: Builds the wrapped Keras model.
      initial_model: From `fed_dst.build_initial_model` with `model_fn`.
      data_element_spec: `element_spec` of a client's batched `(x, y)`
        dataset.
      schedule: Readjustment schedule.
      client_config: Local training hyper-parameters.
      server_learning_rate: Server step size.
      server_momentum: Server momentum in [0, 1).
      min_votes: Minimum number of clients holding an eligible position.
      upload_encoding: How clients encode uploads (None: bitmap masks,
        `client_config.value_dtype` values).
      download_encoding: How the server encodes the broadcast (None:
        float32 values, bitmap masks).
    """
    self._initial_model = initial_model
    self._schedule = schedule
    layout = initial_model.layout
    num_active = initial_model.num_active
    self._layout = layout
    self._trainer = client_work.ClientTrainer(model_fn(), layout, num_active,
                                              client_config, upload_encoding)
    upload_encoding = self._trainer.upload_encoding
    download_encoding = download_encoding or encoding.PayloadEncoding()
    # `decode_model_weights` reads only shapes and dtypes from the type.
    weights_type = tff.learning.models.ModelWeights(
        trainable=[tf.TensorSpec(np.shape(v), np.asarray(v).dtype)
                   for v in initial_model.weights.trainable],
        non_trainable=[tf.TensorSpec(np.shape(v), np.asarray(v).dtype)
                       for v in initial_model.weights.non_trainable])
    dense_shapes = tuple(
        tuple(np.shape(initial_model.weights.trainable[i]))
        for i in layout.dense_trainable_indices) + tuple(
            tuple(np.shape(initial_model.weights.non_trainable[i]))
            for i in layout.dense_non_trainable_indices)
    kernel_shapes = layout.kernel_shapes
    # The checks `fed_dst.build_fed_dst` applies by default.
    payload_checks = payload_validation.default_checks(
        client_config.readjust_rule, min_votes)

    @tf.function
    def encode_global(weights):
      payload = client_work.encode_weights(weights, layout, num_active,
                                           payload_encoding=download_encoding)
      return payload, encoding.payload_num_bytes(
          payload, [weights.non_trainable[i] for i in layout.mask_indices])

    @tf.function
    def decode_global(payload):
      return distributor.decode_model_weights(
          payload, layout, weights_type, num_active, download_encoding)

    def float_zero():
      return aggregation.zero_sums(kernel_shapes, dense_shapes,
                                   upload_encoding, num_active)

    # Exact sums, as the TFF aggregator keeps them (`aggregation.add_exactly`).
    @tf.function
    def zero_aggregate():
      return exact_sum.to_exact(float_zero())

    @tf.function
    def accumulate(aggregate, payload, weight):
      return aggregation.add_exactly(aggregate, payload, weight,
                                     kernel_shapes, dense_shapes, num_active,
                                     upload_encoding, payload_checks)

    @tf.function
    def server_update(buffers, weights, exact_aggregate):
      aggregate = exact_sum.from_exact(float_zero(), exact_aggregate)
      if upload_encoding.masks_only_when_changed:
        aggregate = aggregation.expand_aggregate(
            aggregate, [weights.non_trainable[i] for i in layout.mask_indices])

      def updated():
        new_buffers, new_weights, changed = finalizer.apply_aggregate(
            buffers, weights, aggregate, layout, num_active,
            server_learning_rate, server_momentum, min_votes)
        return tuple(new_buffers), new_weights, changed

      def unchanged():
        return (tuple(tf.identity(b) for b in buffers),
                tf.nest.map_structure(tf.identity, weights),
                tf.constant(0, tf.int32))

      new_buffers, new_weights, changed = tf.cond(
          aggregate.total_weight > 0, updated, unchanged)
      return (new_buffers, new_weights, changed,
              finalizer.global_sparsity(new_weights, layout))

    # Traced now, once: calling Keras layers after TFF has traced its own
    # copy of the model can fail, calling a traced function does not.
    self._trainer.update.get_concrete_function(
        tf.nest.map_structure(
            lambda spec: tf.TensorSpec(spec.shape, spec.dtype), weights_type),
        tf.data.DatasetSpec(data_element_spec),
        client_work.RoundInstructions(
            should_readjust=tf.TensorSpec([], tf.bool),
            drop_fraction=tf.TensorSpec([], tf.float32)))
    self._encode_global = encode_global
    self._decode_global = decode_global
    self._zero_aggregate = zero_aggregate
    self._accumulate = accumulate
    self._server_update = server_update

  @property
  def trainer(self) -> client_work.ClientTrainer:
    """The one `ClientTrainer` every client's update runs on."""
    return self._trainer

  def initialize(self) -> PlainState:
    """Returns the state before round 1 (the initial model, zero buffers)."""
    weights = _as_tensors(self._initial_model.weights)
    return PlainState(
        round_num=0, weights=weights,
        buffers=tuple(tf.zeros_like(v) for v in weights.trainable))

  def instructions(self, round_num: int) -> client_work.RoundInstructions:
    """The `RoundInstructions` of 1-based round `round_num`."""
    schedule_round = round_num - 1 + self._schedule.first_round
    return client_work.RoundInstructions(
        should_readjust=tf.convert_to_tensor(
            self._schedule.should_readjust(schedule_round)),
        drop_fraction=tf.cast(self._schedule.drop_fraction_at(schedule_round),
                              tf.float32))

  def next(self, state: PlainState, datasets: Sequence[tf.data.Dataset],
           timer: Optional[PhaseTimer] = None
           ) -> tuple[PlainState, collections.OrderedDict]:
    """Runs one round on the given client datasets.

    Args:
      state: From `initialize` or a previous `next`.
      datasets: One batched `(x, y)` dataset per participating client.
      timer: If given, receives the time of each phase (`PHASES`).

    Returns:
      `(new_state, metrics)`, the metrics keyed like the TFF process's
      (`train_loss`, `num_regrown`, `should_readjust`, `upload_bytes`,
      `download_bytes`, `mask_changed_positions`, `sparsity`).
    """
    timer = timer or PhaseTimer()
    round_num = state.round_num + 1
    instructions = self.instructions(round_num)
    with timer.phase(BROADCAST):
      payload, payload_bytes = self._encode_global(state.weights)
    aggregate = self._zero_aggregate()
    loss_terms, num_regrown = exact_sum.zero_mean_terms(), 0
    for dataset in datasets:
      with timer.phase(BROADCAST):
        client_weights = self._decode_global(payload)
      with timer.phase(CLIENT_UPDATE):
        upload, weight, stats = self._trainer.update(client_weights, dataset,
                                                     instructions)
        weight = weight.numpy()  # Waits for the result.
      with timer.phase(AGGREGATION):
        aggregate = self._accumulate(aggregate, upload, weight)
        tf.nest.flatten(aggregate)[-1].numpy()  # Waits for the result.
      loss_terms = exact_sum.add(loss_terms, exact_sum.mean_terms(
          stats.train_loss, stats.num_examples))
      num_regrown += int(stats.num_regrown)
    with timer.phase(SERVER_UPDATE):
      buffers, weights, changed, sparsity = self._server_update(
          state.buffers, state.weights, aggregate)
      sparsity = float(sparsity)
    totals = (aggregate.with_masks
              if isinstance(aggregate, aggregation.CompactAggregate)
              else aggregate)
    metrics = collections.OrderedDict(
        round_num=round_num,
        train_loss=(float(exact_sum.mean_of(loss_terms)) if datasets
                    else 0.0),
        num_regrown=num_regrown,
        should_readjust=bool(instructions.should_readjust),
        upload_bytes=int(totals.upload_bytes),
        download_bytes=int(payload_bytes) * len(datasets),
        mask_changed_positions=int(changed),
        sparsity=sparsity)
    return PlainState(round_num, weights, buffers), metrics

  @staticmethod
  def get_model_weights(state: PlainState) -> tff.learning.models.ModelWeights:
    """The global model of `state` as numpy arrays."""
    return tff.learning.models.ModelWeights(
        trainable=[np.asarray(v) for v in state.weights.trainable],
        non_trainable=[np.asarray(v) for v in state.weights.non_trainable])

  def client_update_tracing_count(self) -> int:
    """How many times `ClientTrainer.update` has been traced (ideally 1)."""
    return self._trainer.update.experimental_get_tracing_count()
