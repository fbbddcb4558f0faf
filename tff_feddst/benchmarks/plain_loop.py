"""FedDST rounds in plain TensorFlow, without TFF: the benchmark's yardstick.

`PlainFedDst` runs the computations of the TFF process that
`fed_dst.build_fed_dst` builds, from the same parts, as eager calls of
`tf.function`s in this Python process, one client after the other:

  settings    `fed_dst.resolve_round_settings` (encodings, payload checks,
              growing-sparsity table), as `build_fed_dst` resolves them;
  broadcast   `client_work.encode_weights` of the global model, then, per
              client, `distributor.decode_model_weights`;
  client      `client_work.ClientTrainer.update` (one trainer, one trace);
  aggregation `aggregation.add_exactly`, client by client, with the same
              payload checks and the round's nnz targets;
  server      `finalizer.server_update_fn`, the TFF finalizer's own step
              (momentum, `min_votes`, `min_new_position_votes`,
              `remember_old`, growing sparsity, the round without clients,
              the finiteness guard).

It takes every setting of `build_fed_dst` but growing sparsity
(`num_active_by_round`), which it refuses: with it, the masks and every
per-round metric still agree with the TFF process, but the convolution
kernels drift apart by up to 7e-6 from the first round that thins a layer
(measured on the test's model; at constant counts the drift stays below
1e-7), for a reason not yet found. Given the same initial model, schedule,
settings and client datasets, it computes the same masks and, to float
rounding in local training (the TFF worker runs the same graph in another
runtime), the same global model as the TFF process (`tests/plain_loop_test.py`
checks each accepted setting), and each phase can be timed separately
(`PhaseTimer`).

`next` takes an optional `upload_hook`, which sees each client's upload
(with its weight and the broadcast model the client started from) and
returns the uploads the server receives in its place: a hostile client
(`benchmarks/attacks.py`) may change it or send several. Without a hook
every upload is aggregated as it is, exactly as before.
"""

import collections
import contextlib
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.outputs import metrics_csv
from tff_feddst.process import aggregation
from tff_feddst.process import aggregator_feedback
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import finalizer
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import robust_means
from tff_feddst.process import sum_factory
from tff_feddst.process import upload_binding
from tff_feddst.process import upload_screening
from tff_feddst.sparse import exact_sum

# Phase names, in round order.
BROADCAST = 'broadcast'
CLIENT_UPDATE = 'client_update'
AGGREGATION = 'aggregation'
SERVER_UPDATE = 'server_update'
PHASES = (BROADCAST, CLIENT_UPDATE, AGGREGATION, SERVER_UPDATE)

# The finalizer's measurements of the mask's movement
# (`server_step.mask_movement`) that `PlainServer.server_update` reports.
MASK_MOVEMENT_KEYS = metrics_csv.MASK_MOVEMENT_COLUMNS


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


# `upload_hook(client_index, upload, weight, broadcast_weights)` -> the
# `(upload, weight)` pairs the server receives instead of `(upload, weight)`.
UploadHook = Callable[[int, encoding.Payload, np.float32,
                       tff.learning.models.ModelWeights],
                      Sequence[tuple[encoding.Payload, Any]]]


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


class PlainServer:
  """The server side of plain FedDST rounds (see the module docstring).

  It encodes the broadcast, checks and sums uploads (screening them in two
  passes when `robust` asks for it) and steps the global model, with the
  calls the TFF process makes. `PlainFedDst` drives it with clients trained
  in this process; `ondevice.device_round` with uploads read from files.
  """

  def __init__(self, initial_model: fed_dst.InitialModel,
               schedule: Any,
               client_config: client_work.ClientConfig,
               *,
               server_learning_rate: float = 1.0,
               server_momentum: float = 0.0,
               min_votes: int = 0,
               upload_encoding: Optional[encoding.PayloadEncoding] = None,
               download_encoding: Optional[encoding.PayloadEncoding] = None,
               remember_old: bool = False,
               num_active_by_round: Optional[np.ndarray] = None,
               payload_checks: Optional[
                   payload_validation.PayloadChecks] = None,
               robust: Optional[robust_aggregation.RobustAggregation] = None,
               min_new_position_votes: int = 1):
    """Builds the server functions; arguments as for `PlainFedDst`.

    Raises:
      ValueError: For `num_active_by_round`, or as `fed_dst.build_fed_dst`
        for the same settings.
    """
    if num_active_by_round is not None:
      raise ValueError('PlainFedDst does not reproduce num_active_by_round '
                       '(growing sparsity); pass None (constant counts).')
    self._initial_model = initial_model
    self._schedule = schedule
    self.layout = layout = initial_model.layout
    num_active = initial_model.num_active
    settings = fed_dst.resolve_round_settings(
        initial_model, client_config, min_votes=min_votes,
        upload_encoding=upload_encoding, download_encoding=download_encoding,
        num_active_by_round=num_active_by_round,
        payload_checks=payload_checks)
    self.upload_encoding = settings.upload_encoding
    self.download_encoding = settings.download_encoding
    # `decode_model_weights` reads only shapes and dtypes from the type.
    self.weights_type = tff.learning.models.ModelWeights(
        trainable=[tf.TensorSpec(np.shape(v), np.asarray(v).dtype)
                   for v in initial_model.weights.trainable],
        non_trainable=[tf.TensorSpec(np.shape(v), np.asarray(v).dtype)
                       for v in initial_model.weights.non_trainable])
    self.dense_shapes = tuple(
        tuple(np.shape(initial_model.weights.trainable[i]))
        for i in layout.dense_trainable_indices) + tuple(
            tuple(np.shape(initial_model.weights.non_trainable[i]))
            for i in layout.dense_non_trainable_indices)
    # Row r of the targets checks round r + 1 (the TFF aggregator's state).
    self._targets_table = settings.payload_checks.targets_table(num_active)
    self.robust = robust
    self._build_broadcast_functions()
    self._build_aggregation_functions(settings.payload_checks)
    self._server_update = self._build_server_update(finalizer.server_update_fn(
        layout, num_active, server_learning_rate=server_learning_rate,
        server_momentum=server_momentum, min_votes=min_votes,
        remember_old=remember_old,
        num_active_by_round=settings.num_active_by_round,
        min_new_position_votes=min_new_position_votes))

  def _build_broadcast_functions(self) -> None:
    """The broadcast's coding, its digest and the clipping reference."""
    layout, num_active = self.layout, self._initial_model.num_active
    download_encoding, weights_type = self.download_encoding, self.weights_type

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

    @tf.function
    def reference_of(weights):
      return aggregator_feedback.reference_of_weights(
          weights, layout, num_active, download_encoding)

    @tf.function
    def weights_digest(weights):
      return upload_binding.weights_digest(weights, layout)

    self.encode_global = encode_global
    self.decode_global = decode_global
    self._reference_of = reference_of
    self.weights_digest = weights_digest

  def _float_zero(self):
    """Zero float sums of an upload's layout (`aggregation.zero_sums`)."""
    return aggregation.zero_sums(self.layout.kernel_shapes, self.dense_shapes,
                                 self.upload_encoding,
                                 self._initial_model.num_active)

  def _build_aggregation_functions(
      self, payload_checks: payload_validation.PayloadChecks) -> None:
    """The exact sums' zero, one upload's checked sum, and the screening
    pass's count of one upload."""
    kernel_shapes, dense_shapes = self.layout.kernel_shapes, self.dense_shapes
    num_active, robust = self._initial_model.num_active, self.robust
    upload_encoding = self.upload_encoding

    # Exact sums, as the TFF aggregator keeps them (`aggregation.add_exactly`).
    @tf.function
    def zero_aggregate():
      return sum_factory.zero_exact_sums(self._float_zero(), kernel_shapes,
                                         dense_shapes, robust)

    @tf.function
    def accumulate(aggregate, payload, weight, targets, round_bound=None,
                   round_digest=None):
      return aggregation.add_exactly(aggregate, payload, weight,
                                     kernel_shapes, dense_shapes, num_active,
                                     upload_encoding, payload_checks, targets,
                                     robust=robust, round_bound=round_bound,
                                     round_digest=round_digest)

    sums_unit_deltas = robust is not None and robust.sums_unit_deltas

    @tf.function
    def screen(counts, payload, weight, targets, reference=None,
               round_digest=None):
      upload = upload_screening.screen_upload(
          payload, weight, kernel_shapes, dense_shapes, num_active,
          upload_encoding, payload_checks, reference, targets,
          round_digest=round_digest, with_direction=sums_unit_deltas)
      return upload_screening.add_screen(counts, upload, weight)

    self.zero_aggregate = zero_aggregate
    self.accumulate = accumulate
    self._screen = screen
    self._direction_shapes = ((tuple(kernel_shapes), dense_shapes)
                              if sums_unit_deltas else None)
    self._root_direction = None
    if (robust is not None and robust.checks_direction and
        robust.server_root_step is not None):
      # One trainer for every round (a tf.function creates no variables
      # after its first call), as the TFF aggregator builds one per call.
      root_step = robust.server_root_step
      root_trainer = root_step.new_trainer()
      self._root_direction = tf.function(
          lambda reference: root_step.direction(root_trainer, reference))
      # Traced now, before TFF traces its copy of the model (as the
      # client update is, `PlainFedDst`).
      self._root_direction.get_concrete_function(tf.nest.map_structure(
          lambda t: tf.TensorSpec(t.shape, t.dtype),
          robust_aggregation.zero_reference(kernel_shapes, dense_shapes)))

  def _build_server_update(self, server_step: Callable) -> Callable:
    """The server update of a round's exact sums (`finalizer`'s step)."""
    layout, robust, upload_encoding = (self.layout, self.robust,
                                       self.upload_encoding)
    num_kernels = len(layout.kernel_shapes)

    @tf.function
    def server_update(state, weights, exact_aggregate):
      aggregate = sum_factory.report_exact_sums(
          self._float_zero(), exact_aggregate, robust, num_kernels)
      if upload_encoding.masks_only_when_changed:
        aggregate = aggregation.expand_aggregate(
            aggregate, [weights.non_trainable[i] for i in layout.mask_indices])
      new_state, new_weights, measurements = server_step(state, weights,
                                                         aggregate)
      movement = {key: measurements[key] for key in MASK_MOVEMENT_KEYS}
      return (new_state, new_weights, measurements['mask_changed_positions'],
              measurements['sparsity'], measurements['server_update_failed'],
              movement)

    return server_update

  @property
  def screens_uploads(self) -> bool:
    """Whether a round needs all its uploads before summing any."""
    return self.robust is not None and self.robust.screens_uploads

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

  def targets(self, round_num: int) -> tf.Tensor:
    """The per-layer nnz targets uploads of round `round_num` must meet."""
    return tf.constant(self._targets_table[
        min(round_num - 1, len(self._targets_table) - 1)], tf.int32)

  def round_digest(self, weights) -> Optional[tf.Tensor]:
    """The digest uploads answering a broadcast of `weights` must carry
    (None when the server does not reject stale uploads)."""
    if self.robust is None or not self.robust.reject_stale:
      return None
    return upload_binding.reference_digest(self._reference_of(weights))

  def aggregate_screened(self, aggregate, uploads, global_weights,
                         targets, round_digest=None):
    """Both passes of a screening aggregator (`robust_aggregation`)."""
    robust = self.robust
    reference = (self._reference_of(global_weights) if robust.clip_updates
                 else None)
    counts = upload_screening.zero_counts(self._direction_shapes)
    for upload, weight in uploads:
      counts = self._screen(counts, upload, weight, targets, reference,
                            round_digest)
    bound, replay_counts, weight_cap = upload_screening.screening_findings(
        counts, robust)
    direction_sum = None
    if self._root_direction is not None:
      direction_sum = self._root_direction(reference)
    elif self._direction_shapes is not None:
      direction_sum = upload_screening.direction_sum_of(
          counts, *self._direction_shapes)
    round_bound = robust_aggregation.RoundBound(
        reference, bound, replay_counts if robust.reject_replays else None,
        weight_cap if robust.caps_weights_by_round else None, direction_sum)
    for upload, weight in uploads:
      aggregate = self.accumulate(aggregate, upload, weight, targets,
                                  round_bound, round_digest)
    tf.nest.flatten(aggregate)[-1].numpy()  # Waits for the result.
    return aggregate

  def server_update(self, state: PlainState, aggregate
                    ) -> tuple[PlainState, collections.OrderedDict]:
    """Steps the global model with a round's aggregate.

    Args:
      state: The state the round started from.
      aggregate: The round's sums (`zero_aggregate` plus every upload).

    Returns:
      `(new_state, metrics)`: `upload_bytes`, `mask_changed_positions`,
      `sparsity`, `rejected_clients`, `clipped_clients`, `capped_weights`,
      `server_update_failed`, `rejected_<kind>` for each of
      `payload_validation.REJECTION_KINDS`, then the finalizer's mask
      movement (`MASK_MOVEMENT_KEYS`).
    """
    (server_state, weights, changed, sparsity, failed,
     movement) = self._server_update(
        finalizer.FinalizerState(
            buffers=state.buffers,
            round_num=tf.constant(state.round_num, tf.int32)),
        state.weights, aggregate)
    totals = (aggregate.sums
              if isinstance(aggregate, robust_means.RobustSums)
              else aggregate)
    totals = (totals.with_masks
              if isinstance(totals, aggregation.CompactAggregate)
              else totals)
    metrics = collections.OrderedDict(
        upload_bytes=int(totals.upload_bytes),
        mask_changed_positions=int(changed),
        sparsity=float(sparsity),
        rejected_clients=int(tf.reduce_sum(totals.rejected)),
        clipped_clients=int(totals.clipped_clients),
        capped_weights=int(totals.capped_weights),
        server_update_failed=int(failed))
    for index, kind in enumerate(payload_validation.REJECTION_KINDS):
      metrics[f'rejected_{kind}'] = int(totals.rejected[index])
    for key in MASK_MOVEMENT_KEYS:
      metrics[key] = movement[key].numpy().item()
    new_state = PlainState(state.round_num + 1, weights,
                           tuple(server_state.buffers))
    return new_state, metrics


class PlainFedDst:
  """FedDST rounds as plain `tf.function` calls (see module docstring)."""

  def __init__(self, model_fn: models.ModelFn,
               initial_model: fed_dst.InitialModel,
               data_element_spec: Any,
               schedule: Any,
               client_config: client_work.ClientConfig,
               **server_arguments: Any):
    """Builds the client model, its trainer and the server (`PlainServer`).

    Arguments mean what they mean for `fed_dst.build_fed_dst`.

    Args:
      model_fn: Builds the wrapped Keras model.
      initial_model: From `fed_dst.build_initial_model` with `model_fn`.
      data_element_spec: `element_spec` of a client's batched `(x, y)`
        dataset.
      schedule: Readjustment schedule.
      client_config: Local training hyper-parameters.
      **server_arguments: Keyword arguments of `PlainServer`:
        server_learning_rate: Server step size.
        server_momentum: Server momentum in [0, 1).
        min_votes: Minimum number of clients holding an eligible position.
        upload_encoding: How clients encode uploads (None: bitmap masks,
          `client_config.value_dtype` values).
        download_encoding: How the server encodes the broadcast (None:
          float32 values, bitmap masks).
        remember_old: Count a client lacking a global-mask position as
          sending the old global weight there.
        num_active_by_round: Must be None (growing sparsity is refused, see
          the module docstring).
        payload_checks: What an upload must satisfy to be aggregated (None:
          `payload_validation.default_checks`).
        robust: How the server bounds each client (None: not at all). When
          it screens uploads (clipping, replays), a round keeps its uploads
          until every client has reported: the clip bound and the replay
          counts come from all of them, as in the TFF aggregator's first
          pass.
        min_new_position_votes: Minimum number of clients holding a
          position outside the global mask for it to enter.

    Raises:
      ValueError: For `num_active_by_round`, or as `fed_dst.build_fed_dst`
        for the same settings.
    """
    self._server = PlainServer(initial_model, schedule, client_config,
                               **server_arguments)
    server = self._server
    self._trainer = client_work.ClientTrainer(
        model_fn(), server.layout, initial_model.num_active, client_config,
        server.upload_encoding)
    # Traced now, once: calling Keras layers after TFF has traced its own
    # copy of the model can fail, calling a traced function does not.
    self._trainer.update.get_concrete_function(
        tf.nest.map_structure(
            lambda spec: tf.TensorSpec(spec.shape, spec.dtype),
            server.weights_type),
        tf.data.DatasetSpec(data_element_spec),
        client_work.RoundInstructions(
            should_readjust=tf.TensorSpec([], tf.bool),
            drop_fraction=tf.TensorSpec([], tf.float32)))

  @property
  def trainer(self) -> client_work.ClientTrainer:
    """The one `ClientTrainer` every client's update runs on."""
    return self._trainer

  @property
  def server(self) -> PlainServer:
    """The `PlainServer` the rounds aggregate and step with."""
    return self._server

  def initialize(self) -> PlainState:
    """Returns the state before round 1 (the initial model, zero buffers)."""
    return self._server.initialize()

  def instructions(self, round_num: int) -> client_work.RoundInstructions:
    """The `RoundInstructions` of 1-based round `round_num`."""
    return self._server.instructions(round_num)

  def next(self, state: PlainState, datasets: Sequence[tf.data.Dataset],
           timer: Optional[PhaseTimer] = None,
           upload_hook: Optional[UploadHook] = None
           ) -> tuple[PlainState, collections.OrderedDict]:
    """Runs one round on the given client datasets.

    Args:
      state: From `initialize` or a previous `next`.
      datasets: One batched `(x, y)` dataset per participating client.
      timer: If given, receives the time of each phase (`PHASES`).
      upload_hook: If given, called after each client's training with
        `(client_index, upload, weight, broadcast_weights)` (the 0-based
        index in `datasets`, the client's payload and np.float32 example
        count, and the decoded `ModelWeights` it started from); the
        `(upload, weight)` pairs it returns are aggregated instead, each
        through the same checks (weights as np.float32). When the server
        rejects stale uploads, a returned payload is bound to the digest of
        the client's model, and a returned `upload_binding.BoundUpload` is
        sent as it is (without that check, its digest is dropped). None:
        each upload as it is.

    Returns:
      `(new_state, metrics)`, the metrics keyed like the TFF process's
      (`train_loss`, `num_regrown`, `should_readjust`, `upload_bytes`,
      `download_bytes`, `mask_changed_positions`, `sparsity`,
      `rejected_clients`, `rejected_<kind>` for each of
      `payload_validation.REJECTION_KINDS`, `server_update_failed`). The
      train loss and regrown count are the clients' own, whatever the hook
      sends.
    """
    timer = timer or PhaseTimer()
    server = self._server
    round_num = state.round_num + 1
    instructions = server.instructions(round_num)
    targets = server.targets(round_num)
    with timer.phase(BROADCAST):
      payload, payload_bytes = server.encode_global(state.weights)
    aggregate = server.zero_aggregate()
    loss_terms, num_regrown = exact_sum.zero_mean_terms(), 0
    screens = server.screens_uploads
    round_digest = server.round_digest(state.weights)
    kept_uploads = []
    for client_index, dataset in enumerate(datasets):
      with timer.phase(BROADCAST):
        client_weights = server.decode_global(payload)
      with timer.phase(CLIENT_UPDATE):
        upload, weight, stats = self._trainer.update(client_weights, dataset,
                                                     instructions)
        weight = weight.numpy()  # Waits for the result.
      received = [(upload, weight)]
      if upload_hook is not None:
        received = [(sent, np.float32(sent_weight)) for sent, sent_weight in
                    upload_hook(client_index, upload, weight, client_weights)]
      if round_digest is not None:
        digest = server.weights_digest(client_weights)
        received = [
            (sent if isinstance(sent, upload_binding.BoundUpload) else
             upload_binding.BoundUpload(sent, digest), sent_weight)
            for sent, sent_weight in received]
      else:  # A server that does not check digests never sees them.
        received = [
            (sent.upload if isinstance(sent, upload_binding.BoundUpload)
             else sent, sent_weight) for sent, sent_weight in received]
      if screens:
        kept_uploads.extend(received)
      else:
        with timer.phase(AGGREGATION):
          for sent, sent_weight in received:
            aggregate = server.accumulate(aggregate, sent, sent_weight,
                                          targets, None, round_digest)
          tf.nest.flatten(aggregate)[-1].numpy()  # Waits for the result.
      loss_terms = exact_sum.add(loss_terms, exact_sum.mean_terms(
          stats.train_loss, stats.num_examples))
      num_regrown += int(stats.num_regrown)
    if screens:
      with timer.phase(AGGREGATION):
        aggregate = server.aggregate_screened(aggregate, kept_uploads,
                                              state.weights, targets,
                                              round_digest)
    with timer.phase(SERVER_UPDATE):
      new_state, server_metrics = server.server_update(state, aggregate)
    metrics = collections.OrderedDict(
        round_num=round_num,
        train_loss=(float(exact_sum.mean_of(loss_terms)) if datasets
                    else 0.0),
        num_regrown=num_regrown,
        should_readjust=bool(instructions.should_readjust),
        upload_bytes=server_metrics.pop('upload_bytes'),
        download_bytes=int(payload_bytes) * len(datasets))
    metrics.update(server_metrics)
    return new_state, metrics

  @staticmethod
  def get_model_weights(state: PlainState) -> tff.learning.models.ModelWeights:
    """The global model of `state` as numpy arrays."""
    return tff.learning.models.ModelWeights(
        trainable=[np.asarray(v) for v in state.weights.trainable],
        non_trainable=[np.asarray(v) for v in state.weights.non_trainable])

  def client_update_tracing_count(self) -> int:
    """How many times `ClientTrainer.update` has been traced (ideally 1)."""
    return self._trainer.update.experimental_get_tracing_count()
