"""PruneFL (Jiang et al., "Model Pruning Enables Efficient Federated Learning
on Edge Devices", IEEE TNNLS 2022) as a baseline in the FedDST harness.

PruneFL lets the server choose the model's size. Its objective, per
reconfiguration, is the approximate reduction of the empirical risk per unit
of round time:

  maximise over masks M:  sum_{j in M} z_j / (c + sum_{j in M} t_j)

where z_j is the importance of prunable position j (a squared gradient, an
estimate of how much the risk falls if j trains), t_j the time one round
spends per parameter of j's layer (computation plus communication) and c the
round's fixed time. The best M is a prefix of the positions sorted by
z_j / t_j: starting from the positions that must stay, add the next position
while its ratio exceeds the current objective (adding j raises the ratio
exactly when z_j / t_j is above it), and stop at the first that does not.

What this module implements (`select_masks`, used by both stages):

  per prunable layer l with active count a_l:
    removable_l = the floor(f * a_l) active weights of smallest |w|
    kept_l      = active_l minus removable_l  (always in the next mask)
  candidates = every position not kept (inactive ones and removable ones)
  c_abs = round_cost * sum_l n_l t_l   (round_cost is relative to the time
                                        of the dense model's kernels)
  N = sum_{kept} z,  D = c_abs + sum_{kept} t
  for candidates in order of z/t descending (ties: lower flat index):
    if z/t > N/D: add it; N += z; D += t   else: stop
  next mask = kept + added; newly added weights start at 0, a removable
  weight that is added back keeps its value.

1. Initial pruning (`run_initial_pruning`, plain TF, before the process is
   built): one seeded client trains the dense model on its own data for
   `initial_rounds` blocks of `initial_steps` SGD steps; after each block the
   rule above runs on z = sum over the block's steps of the squared minibatch
   gradient (dense, inactive positions included). The trained, pruned model
   is the server's starting point.
2. Federated rounds (`build_prunefl`): clients train on the fixed global mask
   (masked SGD, no readjustment, as for RandomMask). On reconfiguration
   rounds (t % reconfigure_every == 0) each client also uploads, for every
   prunable position, z_c = (sum over its local steps of the minibatch
   gradient)^2, charged 4 bytes a position on those rounds only; every upload
   carries a 4-byte int32 telling whether it is there. The shared aggregator
   (`sum_factory.SparseSumFactory`) checks every upload as it does FedDST's
   (shapes, weight, finite values, mask code, each layer's mask count equal
   to the global mask's, optional norm bound; the importance must have the
   kernels' shapes and be finite) and sums n_c * z_c beside the usual sparse
   sums (`ImportanceExtension`); the shared finalizer averages the weights
   over the (shared) mask as FedAvg does, then PruneFL's rule
   (`importance_mask_rule`), if importance arrived, runs `select_masks`
   with the averaged weights' magnitudes. Otherwise the mask is kept.

Where this differs from the PruneFL paper and its official code:
- Clients here are stateless and only K of C take part in a round, so the
  importance covers the local steps of the reconfiguration round only, not
  every iteration since the previous reconfiguration (that would need every
  client to report every round). The official code likewise squares the
  per-round sum of gradients and weights it by examples processed.
- Per-parameter times t_l are not measured on a device: by default every
  position costs the same ('uniform': the harness counts bytes, and values
  cost the same in every layer); `layer_times` takes measured per-layer
  values. c is given relative to the dense kernels' time (the paper's
  FEMNIST setting, 6.2 s fixed against about 45 s for all prunable
  parameters, is about 0.14), so the units of t_l do not matter.
- The paper's numerator also holds the squared gradients of the
  non-prunable parameters (biases); only prunable kernels are counted here.
- The removable fraction f is constant (the official code halves it every
  10,000 rounds, i.e. it is constant over runs of this length), and there is
  no density cap and no early stop of the initial stage (the official code
  stops it once the density moved less than 10 % on 5 reconfigurations in a
  row); both stages run their configured number of reconfigurations.
- Uploads carry the mask bitmap like every method of this harness, although
  a PruneFL client's mask always equals the one it received.

Where it differs from the FedDST authors' PruneFL script (bibikar/feddst
`prunefl.py` and `models.py:prunefl_readjust`):
- Their rule sorts by the squared gradient, not by importance per unit time,
  and first takes a minimum count of positions regardless of the objective:
  (1 - p) of ALL positions, p = 0.3 at initial pruning and 0.3 * 0.5**t in
  round t; it reconfigures in rounds 1, 51, 101, ..., so from round 51 on
  p < 1e-15, every position is forced in and the model turns dense. No
  active weight is preferred. Here the rule is the paper's.
- Their importance is the last minibatch's gradient, averaged over clients
  without weights and then squared; here it is the accumulated gradient,
  squared per client and example-weighted.
- Their initial pruning reconfigures once (round 1 of 5 local rounds with
  the default interval of 50) with measured GPU layer times.
"""

import collections
import dataclasses
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import prunefl_masks
from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import aggregator_feedback
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import finalizer
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import sum_factory
from tff_feddst.process import upload_binding

# Bytes of `PruneflUpload.has_importance` (int32), sent with every upload.
IMPORTANCE_FLAG_BYTES = 4
# Bytes per position of the uploaded importance (float32).
IMPORTANCE_VALUE_BYTES = 4

# The mask rule and the initial stage live in `prunefl_masks`; their names
# stay reachable here, where the method is built.
PruneflConfig = prunefl_masks.PruneflConfig
parse_layer_times = prunefl_masks.parse_layer_times
MaskSelection = prunefl_masks.MaskSelection
select_masks = prunefl_masks.select_masks
choose_initial_client = prunefl_masks.choose_initial_client
InitialPruningResult = prunefl_masks.InitialPruningResult
run_initial_pruning = prunefl_masks.run_initial_pruning


# ---------------------------------------------------------------------------
# Client work: masked training, importance on reconfiguration rounds.


class PruneflUpload(NamedTuple):
  """What a PruneFL client uploads.

  Attributes:
    payload: The usual sparse payload (values on the global mask, masks,
      dense parameters), with each layer's full size as capacity.
    importance: Per prunable kernel, the dense importance z_c (zeros, and
      not counted in bytes, when `has_importance` is 0).
    has_importance: int32 scalar, 1 on reconfiguration rounds.
  """
  payload: encoding.Payload
  importance: tuple
  has_importance: tf.Tensor


def max_upload_num_bytes(kernel_sizes: Sequence[int],
                         num_dense_parameters: int,
                         upload_encoding: encoding.PayloadEncoding,
                         num_active_total: Optional[int] = None,
                         with_importance: bool = True) -> int:
  """The most bytes one client can upload in a round, example count included.

  Values are charged for the global mask's ones (a PruneFL client's mask is
  the one it received), masks at the encoding's full-capacity code, plus
  the 4-byte importance flag and, on reconfiguration rounds, the dense
  importance.

  Args:
    kernel_sizes: Positions per prunable kernel.
    num_dense_parameters: Number of dense (float32) parameters.
    upload_encoding: The upload encoding (made full-capacity here).
    num_active_total: Ones of the global mask this round; None: every
      position (a bound for any round).
    with_importance: Whether the round is a reconfiguration round.

  Returns:
    Bytes.
  """
  payload_encoding = full_capacity_encoding(upload_encoding)
  positions = sum(int(n) for n in kernel_sizes)
  if num_active_total is None:
    num_active_total = positions
  value_bytes_full = positions * payload_encoding.value_bits // 8
  payload_full = encoding.max_payload_num_bytes(
      kernel_sizes, kernel_sizes, num_dense_parameters, payload_encoding)
  return (payload_full - value_bytes_full
          + int(num_active_total) * payload_encoding.value_bits // 8
          + aggregation.WEIGHT_BYTES + IMPORTANCE_FLAG_BYTES
          + (IMPORTANCE_VALUE_BYTES * positions if with_importance else 0))


def is_reconfiguration_round(round_num: int, reconfigure_every: int) -> bool:
  """Whether 1-based federated round `round_num` uploads importance (the
  client work's rule, round_num % reconfigure_every == 0)."""
  return round_num % reconfigure_every == 0


class ImportanceTrainer(client_work.ClientTrainer):
  """A `ClientTrainer` that never readjusts and can report importance.

  Its payloads have every layer's full size as capacity and carry every
  layer's mask (`full_capacity_encoding`); build it with `num_active` equal
  to `layout.kernel_sizes`.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.upload_encoding = full_capacity_encoding(self.upload_encoding)

  @tf.function
  def update_with_importance(self, initial_weights, dataset: tf.data.Dataset,
                             should_report: tf.Tensor):
    """One round of masked local training from the global model.

    Args:
      initial_weights: `ModelWeights` of the global model.
      dataset: Batched `(x, y)` client data for one epoch.
      should_report: bool scalar: also return the importance
        (sum over the round's steps of the dense gradient, squared).

    Returns:
      `(upload, num_examples, stats)`: the `PruneflUpload`, float32 number of
      examples in one epoch, and `client_work.ClientStats`.
    """
    self.set_weights(initial_weights)
    num_examples = dataset.reduce(
        tf.constant(0, tf.int64),
        lambda count, batch: count + tf.shape(batch[1], out_type=tf.int64)[0])
    loss_sum = tf.constant(0.0, tf.float32)
    # After the counting pass, as in `client_work.ClientTrainer.update`.
    with tf.control_dependencies([num_examples]):
      batches = iter(dataset.repeat(self.config.num_epochs))
    for x, y in batches:
      loss = self.train_step(x, y, should_report)
      loss_sum += loss * tf.cast(tf.shape(y)[0], tf.float32)
    report = tf.cast(should_report, tf.float32)
    importance = tuple(tf.square(score) * report
                       for score in self.grow_scores)
    global_masks = [initial_weights.non_trainable[i]
                    for i in self.layout.mask_indices]
    upload = PruneflUpload(
        payload=self.encoded_upload(global_masks),
        importance=importance,
        has_importance=tf.cast(should_report, tf.int32))
    examples_trained = (tf.cast(num_examples, tf.float32) *
                        self.config.num_epochs)
    stats = client_work.ClientStats(
        train_loss=tf.math.divide_no_nan(loss_sum, examples_trained),
        num_examples=tf.cast(num_examples, tf.float32),
        num_regrown=tf.constant(0, tf.int32))
    return upload, tf.cast(num_examples, tf.float32), stats


def build_client_work(model_fn: models.ModelFn, layout: models.ModelLayout,
                      reconfigure_every: int,
                      client_config: client_work.ClientConfig,
                      model_weights_type: tff.Type, data_type: tff.Type,
                      upload_encoding: encoding.PayloadEncoding
                      ) -> tff.learning.templates.ClientWorkProcess:
  """Builds PruneFL's `ClientWorkProcess`.

  The state is the last completed round (int32, starts at 0); round t asks
  for importance when t % reconfigure_every == 0.

  Type signatures:
    initialize: `( -> int32@SERVER)`
    next: `(<int32@SERVER, ModelWeights@CLIENTS, {(x, y)*}@CLIENTS> ->
      <state=int32@SERVER, result=ClientResult(PruneflUpload,
      float32)@CLIENTS, measurements=<round_num, train_loss, num_examples,
      should_reconfigure>@SERVER>)`

  Args:
    model_fn: Builds the wrapped Keras model.
    layout: The model's `ModelLayout`.
    reconfigure_every: Reconfiguration interval in rounds, >= 1.
    client_config: Local training hyper-parameters (its grow score setting
      is replaced by 'accumulated').
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    data_type: TFF sequence type of a client's batched `(x, y)` data.
    upload_encoding: The payload encoding (not `masks_only_when_changed`).

  Returns:
    A `tff.learning.templates.ClientWorkProcess`.
  """
  config = dataclasses.replace(client_config, grow_score='accumulated')

  @tff.tensorflow.computation
  def initial_round():
    return tf.constant(0, tf.int32)

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_round, tff.SERVER)

  @tff.tensorflow.computation(tff.types.TensorType(np.int32))
  def advance(round_num):
    return round_num + 1

  @tff.tensorflow.computation(tff.types.TensorType(np.int32))
  def should_reconfigure(round_num):
    return tf.equal(round_num % reconfigure_every, 0)

  @tff.tensorflow.computation(model_weights_type, data_type,
                              tff.types.TensorType(np.bool_))
  def client_update(initial_weights, dataset, should_report):
    trainer = ImportanceTrainer(model_fn(), layout, layout.kernel_sizes,
                                config, upload_encoding)
    upload, weight, stats = trainer.update_with_importance(
        initial_weights, dataset, should_report)
    return tff.learning.templates.ClientResult(
        update=upload, update_weight=weight), stats

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.types.FederatedType(model_weights_type, tff.CLIENTS),
      tff.types.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, client_data):
    round_num = tff.federated_map(advance, state)
    should_report = tff.federated_map(should_reconfigure, round_num)
    results, stats = tff.federated_map(
        client_update,
        (weights, client_data, tff.federated_broadcast(should_report)))
    measurements = tff.federated_zip(collections.OrderedDict(
        round_num=round_num,
        train_loss=client_work.federated_weighted_mean(
            stats.train_loss, stats.num_examples),
        num_examples=tff.federated_sum(stats.num_examples),
        should_reconfigure=should_report))
    return tff.templates.MeasuredProcessOutput(
        state=round_num, result=results, measurements=measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


# ---------------------------------------------------------------------------
# Broadcast.


def full_capacity_encoding(
    payload_encoding: Optional[encoding.PayloadEncoding] = None
) -> encoding.PayloadEncoding:
  """`payload_encoding` (None: the default) with every layer's mask sent.

  PruneFL payloads have each layer's full size as capacity, and any layer may
  lose ones, so no mask can be left out as an implied all-ones mask.
  """
  return dataclasses.replace(payload_encoding or encoding.PayloadEncoding(),
                             omit_dense_masks=False)



# ---------------------------------------------------------------------------
# Aggregation: the shared sparse sums, plus example-weighted importance.


class ImportanceSums(NamedTuple):
  """PruneFL's sums beside the sparse ones (`aggregation.ExtendedAggregate`).

  Attributes:
    importance_sums: Per kernel, sum_c n_c * z_c over the accepted clients.
    importance_weight: sum of n_c over the accepted clients that sent
      importance (0: nobody did, the mask stays).
  """
  importance_sums: tuple
  importance_weight: tf.Tensor


class ImportanceExtension(aggregation.UploadExtension):
  """The importance a `PruneflUpload` carries beside its payload.

  Checked like the payload (a failure rejects the whole upload): the
  importance tensors must have the kernels' shapes ('shape', with the
  payload's shape check), `has_importance` must be 0 or 1 ('shape': a
  malformed flag) and every importance value finite ('nonfinite').
  Accepted uploads add n_c * z_c when `has_importance` is 1, and are
  charged the flag plus, then, 4 bytes a position.
  """

  def __init__(self, kernel_shapes: Sequence[Sequence[int]]):
    self._kernel_shapes = tuple(tuple(int(d) for d in s)
                                for s in kernel_shapes)

  def spec(self, payload_spec: encoding.Payload) -> 'PruneflUpload':
    return PruneflUpload(
        payload=payload_spec,
        importance=tuple(tf.TensorSpec(s, tf.float32)
                         for s in self._kernel_shapes),
        has_importance=tf.TensorSpec([], tf.int32))

  def zero(self) -> ImportanceSums:
    return ImportanceSums(
        importance_sums=tuple(tf.zeros(s, tf.float32)
                              for s in self._kernel_shapes),
        importance_weight=tf.constant(0.0, tf.float32))

  def checks(self, upload: 'PruneflUpload') -> list[tuple[str, tf.Tensor]]:
    flag = upload.has_importance
    return [('shape', tf.logical_or(tf.equal(flag, 0), tf.equal(flag, 1))),
            ('nonfinite', payload_validation.all_finite(
                list(upload.importance)))]

  def add(self, extra_sums: ImportanceSums, upload: 'PruneflUpload',
          weight: tf.Tensor) -> ImportanceSums:
    reported = weight * tf.cast(upload.has_importance, tf.float32)
    return ImportanceSums(
        importance_sums=tuple(
            total + reported * z
            for total, z in zip(extra_sums.importance_sums,
                                upload.importance)),
        importance_weight=extra_sums.importance_weight + reported)

  def num_bytes(self, upload: 'PruneflUpload') -> tf.Tensor:
    sent = tf.cast(tf.not_equal(upload.has_importance, 0), tf.int64)
    positions = tf.add_n([tf.size(z, out_type=tf.int64)
                          for z in upload.importance])
    return (IMPORTANCE_FLAG_BYTES +
            sent * IMPORTANCE_VALUE_BYTES * positions)


# ---------------------------------------------------------------------------
# The server's mask rule, plugged into the shared finalizer.


def build_aggregator_factory(
    kernel_shapes: Sequence[Sequence[int]],
    upload_encoding: encoding.PayloadEncoding,
    initial_targets: Sequence[int],
    payload_checks: Optional[payload_validation.PayloadChecks] = None,
    robust: Optional[robust_aggregation.RobustAggregation] = None
) -> sum_factory.SparseSumFactory:
  """PruneFL's aggregator: the shared sparse sums with every check.

  Args:
    kernel_shapes: Shape of each prunable kernel (each one's full size is
      the payload capacity).
    upload_encoding: The clients' (full-capacity) encoding.
    initial_targets: Ones per layer of the first round's global mask; an
      upload's masks must have exactly these (then the counts of each new
      global mask, written into the state by the process).
    payload_checks: See `build_prunefl`.
    robust: See `build_prunefl`.

  Returns:
    The `sum_factory.SparseSumFactory`, whose `create(PruneflUpload type,
    float32)` process sums into an `aggregation.ExtendedAggregate` with
    `ImportanceSums`.
  """
  kernel_sizes = [int(np.prod(s)) for s in kernel_shapes]
  return sum_factory.SparseSumFactory(
      kernel_shapes, kernel_sizes, upload_encoding,
      payload_checks or payload_validation.PayloadChecks(),
      initial_targets=initial_targets,
      extension=ImportanceExtension(kernel_shapes), robust=robust)


def importance_mask_rule(layout: models.ModelLayout,
                         config: PruneflConfig) -> finalizer.MaskRule:
  """PruneFL's `finalizer.MaskRule`: `select_masks` when importance arrived.

  On a round whose aggregate holds importance (`importance_weight` > 0)
  the next masks are `select_masks` of the averaged kernels, the round's
  global masks and the summed importance; otherwise the global masks stay.

  Args:
    layout: The model's `ModelLayout`.
    config: PruneFL settings.

  Returns:
    The rule; its measurements are `reconfigured`, `num_kept`, `num_added`
    and `objective` (zeros on rounds that keep the mask).

  Raises:
    ValueError: For layer times that do not fit the model.
  """
  layer_times = config.times_for(layout.num_prunable)

  def rule(weights, global_masks, aggregate) -> finalizer.MaskRuleResult:
    importance = aggregate.extra
    should_reconfigure = importance.importance_weight > 0

    def select():
      selection = select_masks(
          [weights.trainable[i] for i in layout.kernel_indices],
          global_masks, importance.importance_sums, layer_times,
          config.round_cost, config.max_remove_fraction)
      return (tuple(selection.masks), selection.num_kept,
              selection.num_added, selection.objective)

    def keep():
      return (tuple(tf.identity(m) for m in global_masks),
              tf.constant(0, tf.int32), tf.constant(0, tf.int32),
              tf.constant(0.0, tf.float64))

    new_masks, num_kept, num_added, objective = tf.cond(
        should_reconfigure, select, keep)
    return finalizer.MaskRuleResult(
        masks=list(new_masks),
        measurements=collections.OrderedDict(
            reconfigured=should_reconfigure, num_kept=num_kept,
            num_added=num_added, objective=objective))

  return rule


def build_prunefl(model_fn: models.ModelFn,
                  layout: models.ModelLayout,
                  initial_weights: tff.learning.models.ModelWeights,
                  data_element_spec,
                  client_config: client_work.ClientConfig,
                  config: PruneflConfig,
                  *,
                  server_learning_rate: float = 1.0,
                  server_momentum: float = 0.0,
                  upload_encoding: Optional[encoding.PayloadEncoding] = None,
                  download_encoding: Optional[encoding.PayloadEncoding] = None,
                  payload_checks: Optional[
                      payload_validation.PayloadChecks] = None,
                  robust: Optional[
                      robust_aggregation.RobustAggregation] = None,
                  min_new_position_votes: int = 1,
                  server_optimizer: Optional[
                      tff.learning.optimizers.Optimizer] = None
                  ) -> tff.learning.templates.LearningProcess:
  """Builds the PruneFL `LearningProcess` (federated stage).

  Composed like `fed_dst.build_fed_dst`, from the same parts: the sparse
  broadcast at full capacity, PruneFL client work, the shared
  `sum_factory.SparseSumFactory` (every upload checked, importance summed
  by `ImportanceExtension`) and the shared finalizer with PruneFL's
  `importance_mask_rule`. Payloads hold up to each kernel's full size (the
  mask size changes); each layer's mask must have as many ones as the
  global mask the client received (the aggregator's targets follow it).

  Type signatures:
    initialize: `( -> LearningAlgorithmState@SERVER)`
    next: `(<LearningAlgorithmState@SERVER, {(x, y)*}@CLIENTS> ->
      <state=LearningAlgorithmState@SERVER, metrics=<distributor=...,
      client_work=..., aggregator=..., finalizer=...>@SERVER>)`

  Args:
    model_fn: Builds the wrapped Keras model.
    layout: The model's `ModelLayout`.
    initial_weights: The starting `ModelWeights` (after initial pruning).
    data_element_spec: `element_spec` of a client's batched `(x, y)` data.
    client_config: Local training hyper-parameters.
    config: PruneFL settings.
    server_learning_rate: Server step size (1.0: FedAvg).
    server_momentum: Server momentum in [0, 1).
    upload_encoding: Client payload encoding (None: bitmap masks, values in
      `client_config.value_dtype`); every layer's mask is sent
      (`full_capacity_encoding`).
    download_encoding: Broadcast encoding (None: float32, bitmap masks);
      every layer's mask is sent.
    payload_checks: What an upload must satisfy to be aggregated (None:
      `payload_validation.PayloadChecks()`: exact mask counts, no norm
      bound); invalid uploads are dropped and counted in the aggregator's
      `rejected_clients`. A per-round target table is not accepted (the
      targets follow the global mask).
    robust: How the server bounds each client (`robust_aggregation`), as
      for FedDST: clipped deltas (the importance sums are not clipped: they
      choose the mask, which the mask counts bound), capped or uniform
      weights. None: neither.
    min_new_position_votes: Values a client sends outside the global mask
      count only where at least this many clients hold the position
      (`server_step.admit_new_positions`). Honest PruneFL clients hold the
      global mask exactly, so this changes nothing for them; it keeps one
      client's off-mask values out of positions the importance rule adds.
    server_optimizer: An adaptive server optimizer (`server_optimizers`) in
      place of server SGD; its state is reset off each new mask.

  Returns:
    A `tff.learning.templates.LearningProcess`.

  Raises:
    ValueError: For conflicting encodings, an encoding that may leave masks
      out, a per-round target table, or layer times that do not fit the
      model.
  """
  mask_rule = importance_mask_rule(layout, config)
  initial_model_weights_fn = distributor.initial_weights_computation(
      initial_weights)

  model_weights_type = initial_model_weights_fn.type_signature.result
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(data_element_spec))
  upload_encoding = full_capacity_encoding(
      client_work.resolve_upload_encoding(client_config, upload_encoding))
  download_encoding = full_capacity_encoding(download_encoding)
  work = build_client_work(model_fn, layout, config.reconfigure_every,
                           client_config, model_weights_type, data_type,
                           upload_encoding)
  if robust is not None and robust.reject_stale:
    work = upload_binding.bind_uploads(work, layout)
  result_type = work.next.type_signature.result.result.member
  initial_targets = [int(np.sum(initial_weights.non_trainable[i]))
                     for i in layout.mask_indices]
  aggregator_factory = build_aggregator_factory(
      layout.kernel_shapes, upload_encoding, initial_targets,
      payload_checks, robust)
  aggregator = aggregator_factory.create(result_type.update,
                                         result_type.update_weight)
  aggregate_type = aggregator.next.type_signature.result.result.member
  # Capacity = every kernel's size: PruneFL's mask size changes.
  broadcast = distributor.build_sparse_broadcast(
      layout, layout.kernel_sizes, model_weights_type, download_encoding)
  server_finalizer = finalizer.build_finalizer(
      layout, layout.kernel_sizes, model_weights_type, aggregate_type,
      server_learning_rate=server_learning_rate,
      server_momentum=server_momentum, mask_rule=mask_rule,
      min_new_position_votes=min_new_position_votes,
      server_optimizer=server_optimizer)
  process = tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, broadcast, work, aggregator, server_finalizer)
  # The aggregator checks each upload's mask counts against targets in its
  # state: after every round (and in `set_model_weights`) they become the
  # counts of the new global mask, which the next round's clients receive;
  # when it holds a reference (clipping, stale checks), the broadcast
  # model becomes that reference too.
  return aggregator_feedback.with_aggregator_state_from_model(
      process, aggregator_feedback.mask_count_update(
          layout, aggregator_factory.holds_reference, download_encoding))
