"""LotteryFL (Li et al., "LotteryFL: Personalized and Communication-Efficient
Federated Learning with Lottery Ticket Hypothesis on Non-IID Datasets",
arXiv:2008.03371, 2020) as a method of the FedDST harness.

Each client keeps its own mask (a personal sub-network of one shared dense
model) between the rounds it takes part in; the server keeps one dense
global model. Round t, for each sampled client c with mask m_c (all ones
until c first prunes) and n_c training examples:

  personal = w_global * m_c
  a_c = accuracy of `personal` on c's local data (before any training)
  if a_c > accuracy_threshold and some layer l of m_c holds more than
        keep_l = ceil((1 - target_sparsity) * size_l) ones:
    per layer: remove the k_l = min(floor(prune_rate * ones_l),
               ones_l - keep_l) active weights of smallest |personal|
               (ties: higher flat index goes first)
    kernels of `personal` := initial kernels * m_c   (the lottery-ticket
               reset to the run's seeded initialisation)
  E epochs of masked SGD on `personal` (as every method's client)
  upload personal's values on m_c, m_c itself and n_c (the shared sparse
  payload, every layer's mask sent); keep m_c and the prune count

Server, per prunable position p (`keep_unheld`, then the shared finalizer):

  w[p] = sum_c n_c m_c[p] w_c[p] / sum_c n_c m_c[p]   where some client
         of the round holds p, else the old w[p] (kept, not zeroed)
  biases: example-weighted mean; the global mask stays all ones.

The personal model a client is scored with (`evaluation`) is the global
model under its own mask, on its local test split.

Where this follows the paper: personal masks found by iterative magnitude
pruning of the downloaded model on the client, triggered by local accuracy
passing a threshold, a fixed pruning rate per step down to a target,
reset of the kept weights to their initial values (the lottery ticket), and
an aggregation of each weight over the clients whose sub-network holds it.

Where it follows the authors' code (github.com/charleslipku/LotteryFL,
`src/lotteryFL.py`) rather than the paper's prose: accuracy is measured on
the downloaded model under the client's mask before local training; the
prune step removes a percentile of each layer's surviving weights by
magnitude; positions that no client of the round holds keep their old
global value (their `mix_global_weights`); the personal model evaluated is
the current global model under the client's mask.

Where it differs from both:
- The accuracy that triggers pruning is measured on the client's training
  data, not its test split: the round's client data carry only the
  training set (the test split is used for personalised evaluation).
- The target sparsity is a floor per layer (`keep_l`), so a client never
  prunes below it; the authors stop once the overall pruned share passes
  the end rate, which can overshoot by one step.
- Only prunable kernels are reset to their initial values; biases keep
  their trained values.
- The broadcast is the dense global model, charged in full to every client
  (a simulation broadcasts one value; the paper's client downloads only its
  sub-network). Uploads are charged as every method's: the encoded payload
  (values of the client's mask, the mask bitmap, dense parameters, the
  4-byte example count).
- The FedDST authors' repository (bibikar/feddst) ships no LotteryFL client:
  it only reads the LotteryFL authors' non-iid data split; our comparison
  uses the harness's own partitions.

Per-client state lives in the process state (`client_states`): packed mask
bits and a prune count per client, checkpointed with the run.
"""

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import aggregator_feedback
from tff_feddst.process import client_states
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import finalizer
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import sum_factory
from tff_feddst.process import upload_binding


@dataclasses.dataclass(frozen=True)
class LotteryflConfig:
  """LotteryFL's own hyper-parameters.

  Attributes:
    accuracy_threshold: A client prunes when its personal model's local
      accuracy is above this, in [0, 1].
    prune_rate: Share of each layer's surviving weights removed per prune
      step, in (0, 1).
    target_sparsity: Per-layer sparsity below which no client prunes, in
      [0, 1).
  """
  accuracy_threshold: float = 0.5
  prune_rate: float = 0.2
  target_sparsity: float = 0.8

  def __post_init__(self):
    if not 0 <= self.accuracy_threshold <= 1:
      raise ValueError('accuracy_threshold must be in [0, 1], got '
                       f'{self.accuracy_threshold}.')
    if not 0 < self.prune_rate < 1:
      raise ValueError(f'prune_rate must be in (0, 1), got {self.prune_rate}.')
    if not 0 <= self.target_sparsity < 1:
      raise ValueError('target_sparsity must be in [0, 1), got '
                       f'{self.target_sparsity}.')

  def min_active(self, kernel_sizes: Sequence[int]) -> list[int]:
    """Ones each layer keeps at least: ceil((1 - S) * size), >= 1."""
    return [max(int(math.ceil((1 - self.target_sparsity) * n - 1e-9)), 1)
            for n in kernel_sizes]


def prune_personal_masks(kernels: Sequence[tf.Tensor],
                         masks: Sequence[tf.Tensor], prune_rate: float,
                         min_active: Sequence[int]) -> list[tf.Tensor]:
  """One LotteryFL prune step: each layer drops its smallest active weights.

  Per layer with a = ones of the mask, k = min(floor(prune_rate * a),
  a - min_active) (at least 0) active positions of smallest |kernel| are
  cleared; among equal magnitudes the higher flat index goes first.

  Args:
    kernels: The personal kernels (zero off their masks).
    masks: Their 0/1 masks.
    prune_rate: Share of active weights to remove, in (0, 1).
    min_active: Ones each layer keeps at least.

  Returns:
    The new masks, in the masks' dtypes.
  """
  new_masks = []
  for kernel, mask, floor in zip(kernels, masks, min_active):
    flat_mask = tf.reshape(tf.cast(mask, tf.float32), [-1])
    size = int(flat_mask.shape[0])
    num_active = tf.cast(tf.reduce_sum(flat_mask), tf.int32)
    num_removed = tf.cast(tf.floor(
        prune_rate * tf.cast(num_active, tf.float64)), tf.int32)
    num_removed = tf.maximum(tf.minimum(num_removed, num_active - floor), 0)
    # Inactive positions score -1: below every |w|, so never kept.
    score = tf.where(flat_mask > 0,
                     tf.abs(tf.reshape(tf.cast(kernel, tf.float32), [-1])),
                     -tf.ones_like(flat_mask))
    _, order = tf.math.top_k(score, k=size)  # Ties: lower index first.
    keep = num_active - num_removed
    kept = tf.scatter_nd(order[:keep, tf.newaxis],
                         tf.ones([keep], tf.float32), [size])
    new_masks.append(tf.cast(tf.reshape(kept, mask.shape), mask.dtype))
  return new_masks


def keep_unheld(round_aggregate, weights, layout: models.ModelLayout):
  """The aggregate with every position nobody held voted for its old value.

  Where a kernel position has no weighted vote, its sum becomes the old
  global weight and its (weighted) votes 1, so the finalizer's average
  there is the old weight and the position stays eligible: the global
  model stays dense and unheld weights keep their values. Held positions
  are unchanged.

  Args:
    round_aggregate: A `SparseAggregate` (or `ExtendedAggregate`).
    weights: The round's global `ModelWeights`.
    layout: The model's `ModelLayout`.

  Returns:
    The aggregate of the same structure.
  """
  sums = finalizer.sums_of(round_aggregate)
  kernel_sums, weighted_votes, votes = [], [], []
  for position, index in enumerate(layout.kernel_indices):
    weighted = sums.weighted_votes[position]
    held = weighted > 0
    kernel_sums.append(tf.where(
        held, sums.weighted_kernel_sums[position],
        tf.cast(weights.trainable[index],
                sums.weighted_kernel_sums[position].dtype)))
    weighted_votes.append(tf.where(held, weighted, tf.ones_like(weighted)))
    count = sums.votes[position]
    votes.append(tf.where(count > 0, count, tf.ones_like(count)))
  sums = sums._replace(weighted_kernel_sums=tuple(kernel_sums),
                       weighted_votes=tuple(weighted_votes),
                       votes=tuple(votes))
  if isinstance(round_aggregate, aggregation.ExtendedAggregate):
    return round_aggregate._replace(sums=sums)
  return sums


class ClientRoundStats(collections.namedtuple(
    'ClientRoundStats', ['train_loss', 'num_examples', 'pruned', 'density',
                         'accuracy_before'])):
  """One client's round: loss, examples, pruned (0/1), personal density of
  its prunable kernels after the round, local accuracy before training."""


class LotteryTrainer(client_work.ClientTrainer):
  """A `ClientTrainer` that trains the client's personal sub-network."""

  def __init__(self, model: tf.keras.Model, layout: models.ModelLayout,
               config: client_work.ClientConfig,
               upload_encoding: encoding.PayloadEncoding,
               lottery_config: LotteryflConfig,
               initial_kernels: Sequence[np.ndarray], num_slots: int):
    super().__init__(model, layout, layout.kernel_sizes, config,
                     upload_encoding)
    self.lottery_config = lottery_config
    self.initial_kernels = [tf.constant(k) for k in initial_kernels]
    self.min_active = lottery_config.min_active(layout.kernel_sizes)
    self.num_slots = num_slots

  def _load_personal(self, global_weights, masks) -> None:
    trainable = list(global_weights.trainable)
    non_trainable = list(global_weights.non_trainable)
    for position, (kernel_index, mask_index) in enumerate(
        zip(self.layout.kernel_indices, self.layout.mask_indices)):
      trainable[kernel_index] = trainable[kernel_index] * tf.cast(
          masks[position], trainable[kernel_index].dtype)
      non_trainable[mask_index] = tf.cast(masks[position],
                                          non_trainable[mask_index].dtype)
    self.set_weights(tff.learning.models.ModelWeights(
        trainable=trainable, non_trainable=non_trainable))

  def _accuracy(self, dataset: tf.data.Dataset) -> tf.Tensor:
    correct = tf.constant(0.0, tf.float32)
    count = tf.constant(0.0, tf.float32)
    for x, y in iter(dataset):
      predicted = tf.argmax(self.model(x, training=False), axis=-1,
                            output_type=tf.int32)
      correct += tf.reduce_sum(tf.cast(
          tf.equal(predicted, tf.cast(y, tf.int32)), tf.float32))
      count += tf.cast(tf.shape(y)[0], tf.float32)
    return tf.math.divide_no_nan(correct, count)

  def _prune(self) -> None:
    new_masks = prune_personal_masks(self.kernels, self.masks,
                                     self.lottery_config.prune_rate,
                                     self.min_active)
    for kernel, mask, initial, new_mask in zip(
        self.kernels, self.masks, self.initial_kernels, new_masks):
      mask.assign(new_mask)
      kernel.assign(initial * tf.cast(new_mask, initial.dtype))

  @tf.function
  def personal_update(self, global_weights, dataset: tf.data.Dataset,
                      state: client_states.ClientInput):
    """One LotteryFL round on a client (see the module docstring).

    Returns:
      `(upload, num_examples, rows, stats)`: the payload, float32 examples
      of one epoch, the client's `RoundRows` and `ClientRoundStats`.
    """
    masks = client_states.unpack_masks(state.mask_bits,
                                       self.layout.kernel_shapes)
    self._load_personal(global_weights, masks)
    accuracy = self._accuracy(dataset)
    can_prune = tf.reduce_any([
        tf.reduce_sum(m) > floor for m, floor in zip(masks, self.min_active)])
    should_prune = tf.logical_and(
        accuracy > self.lottery_config.accuracy_threshold, can_prune)
    if should_prune:
      self._prune()
    num_examples = tf.constant(0.0, tf.float32)
    loss_sum = tf.constant(0.0, tf.float32)
    # A shuffled dataset reshuffles on each pass, in the order its passes
    # start; nothing else orders this pass after the accuracy pass (the
    # dataset is no resource), so without this the two could start in
    # either order and training would see either shuffle: not repeatable.
    with tf.control_dependencies([accuracy]):
      batches = iter(dataset.repeat(self.config.num_epochs))
    for x, y in batches:
      loss = self.train_step(x, y, tf.constant(False))
      batch = tf.cast(tf.shape(y)[0], tf.float32)
      loss_sum += loss * batch
      num_examples += batch
    num_examples /= self.config.num_epochs
    global_masks = [global_weights.non_trainable[i]
                    for i in self.layout.mask_indices]
    upload = self.encoded_upload(global_masks)
    pruned = tf.cast(should_prune, tf.int32)
    rows = client_states.slot_rows(
        state.slot, self.num_slots, state.client_index,
        client_states.pack_masks(self.masks), state.num_prunes + pruned)
    active = tf.add_n([tf.reduce_sum(tf.cast(m, tf.float32))
                       for m in self.masks])
    stats = ClientRoundStats(
        train_loss=tf.math.divide_no_nan(
            loss_sum, num_examples * self.config.num_epochs),
        num_examples=num_examples, pruned=pruned,
        density=active / float(sum(self.layout.kernel_sizes)),
        accuracy_before=accuracy)
    return upload, num_examples, rows, stats


def client_data_type(data_element_spec, packed_size: int) -> tff.Type:
  """The TFF type of one client's data: `OrderedDict(data, state)`, both
  sequences (TFF's client work takes sequences only): the batched `(x, y)`
  data and a one-element sequence of the client's `ClientInput`."""
  state_type = tff.types.StructWithPythonType([
      ('slot', tff.TensorType(np.int32)),
      ('client_index', tff.TensorType(np.int32)),
      ('mask_bits', tff.TensorType(np.uint8, [packed_size])),
      ('num_prunes', tff.TensorType(np.int32))], collections.OrderedDict)
  return tff.types.StructWithPythonType([
      ('data', tff.SequenceType(
          tff.types.tensorflow_to_type(data_element_spec))),
      ('state', tff.SequenceType(state_type))], collections.OrderedDict)


def build_client_work(model_fn: models.ModelFn, layout: models.ModelLayout,
                      client_config: client_work.ClientConfig,
                      lottery_config: LotteryflConfig,
                      initial_kernels: Sequence[np.ndarray],
                      model_weights_type: tff.Type, data_type: tff.Type,
                      upload_encoding: encoding.PayloadEncoding,
                      num_clients: int, num_slots: int
                      ) -> tff.learning.templates.ClientWorkProcess:
  """LotteryFL's `ClientWorkProcess`; its state is the client store.

  Type signatures:
    initialize: `( -> ClientStates@SERVER)`
    next: `(<ClientStates@SERVER, ModelWeights@CLIENTS,
      <data={(x, y)*}, state={ClientInput*}>@CLIENTS> -> <state=ClientStates@
      SERVER, result=ClientResult(Payload, float32)@CLIENTS,
      measurements=<train_loss, num_examples, num_pruned, personal_density,
      accuracy_before_training>@SERVER>)`

  Args:
    model_fn: Builds the wrapped Keras model.
    layout: The model's `ModelLayout`.
    client_config: Local training hyper-parameters (no readjustment).
    lottery_config: LotteryFL settings.
    initial_kernels: The run's initial prunable kernels (reset values).
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    data_type: `client_data_type(...)`.
    upload_encoding: The (full-capacity) upload encoding.
    num_clients: Rows of the store (client indices 0 .. num_clients - 1).
    num_slots: Reporters per round at most (clients per round).

  Returns:
    A `tff.learning.templates.ClientWorkProcess`.
  """
  initial = client_states.initial_states(1, layout.kernel_shapes)
  initial_row = initial.mask_bits[0]
  kernels = [np.asarray(k, np.float32) for k in initial_kernels]

  @tff.tensorflow.computation
  def initial_store():
    return client_states.ClientStates(
        mask_bits=tf.tile(tf.constant(initial_row)[tf.newaxis, :],
                          [num_clients, 1]),
        num_prunes=tf.zeros([num_clients], tf.int32))

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_store, tff.SERVER)

  store_type = initial_store.type_signature.result

  @tff.tensorflow.computation(model_weights_type, data_type)
  def client_update(global_weights, client_data):
    trainer = LotteryTrainer(model_fn(), layout, client_config,
                             upload_encoding, lottery_config, kernels,
                             num_slots)
    upload, weight, rows, stats = trainer.personal_update(
        global_weights, client_data['data'],
        client_states.ClientInput(
            **client_data['state'].get_single_element()))
    return (tff.learning.templates.ClientResult(update=upload,
                                                update_weight=weight),
            rows, stats)

  rows_type = client_update.type_signature.result[1]

  @tff.tensorflow.computation(store_type, rows_type)
  def write_rows(store, rows):
    return client_states.scatter_rows(store, rows)

  @tff.tensorflow.computation(tff.TensorType(np.int32))
  def to_float(value):
    return tf.cast(value, tf.float32)

  @tff.tensorflow.computation(tff.TensorType(np.int32))
  def one(value):  # 1 per client: weights of a plain mean over clients.
    return tf.ones_like(value)

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.types.FederatedType(model_weights_type, tff.CLIENTS),
      tff.types.FederatedType(data_type, tff.CLIENTS))
  def next_fn(store, weights, client_data):
    results, rows, stats = tff.federated_map(client_update,
                                             (weights, client_data))
    new_store = tff.federated_map(
        write_rows, (store, tff.federated_sum(rows)))
    ones = tff.federated_map(to_float, tff.federated_map(one,
                                                         stats.pruned))
    measurements = tff.federated_zip(collections.OrderedDict(
        train_loss=client_work.federated_weighted_mean(
            stats.train_loss, stats.num_examples),
        num_examples=tff.federated_sum(stats.num_examples),
        num_pruned=tff.federated_sum(stats.pruned),
        personal_density=client_work.federated_weighted_mean(
            stats.density, ones),
        accuracy_before_training=client_work.federated_weighted_mean(
            stats.accuracy_before, ones)))
    return tff.templates.MeasuredProcessOutput(
        state=new_store, result=results, measurements=measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)



def max_upload_num_bytes(kernel_sizes: Sequence[int],
                         num_dense_parameters: int,
                         upload_encoding: encoding.PayloadEncoding) -> int:
  """The most bytes one client can upload: the dense payload (every mask
  full, every value sent) and the 4-byte example count. A client that has
  pruned sends fewer values."""
  payload_encoding = full_capacity_encoding(upload_encoding)
  return (encoding.max_payload_num_bytes(kernel_sizes, kernel_sizes,
                                         num_dense_parameters,
                                         payload_encoding)
          + aggregation.WEIGHT_BYTES)


def full_capacity_encoding(
    payload_encoding: Optional[encoding.PayloadEncoding] = None
) -> encoding.PayloadEncoding:
  """`payload_encoding` (None: the default) with every layer's mask sent:
  a personal mask may thin any layer."""
  return dataclasses.replace(payload_encoding or encoding.PayloadEncoding(),
                             omit_dense_masks=False)


def build_lotteryfl(model_fn: models.ModelFn,
                    layout: models.ModelLayout,
                    initial_weights: tff.learning.models.ModelWeights,
                    data_element_spec,
                    client_config: client_work.ClientConfig,
                    config: LotteryflConfig,
                    *,
                    num_clients: int,
                    clients_per_round: int,
                    server_learning_rate: float = 1.0,
                    server_momentum: float = 0.0,
                    upload_encoding: Optional[encoding.PayloadEncoding] = None,
                    download_encoding: Optional[
                        encoding.PayloadEncoding] = None,
                    payload_checks: Optional[
                        payload_validation.PayloadChecks] = None,
                    robust: Optional[
                        robust_aggregation.RobustAggregation] = None,
                    server_optimizer: Optional[
                        tff.learning.optimizers.Optimizer] = None
                    ) -> tff.learning.templates.LearningProcess:
  """Builds the LotteryFL `LearningProcess`.

  Composed from the shared parts: the dense broadcast (full-capacity
  sparse encoding), LotteryFL's client work (whose state is the client
  store, `client_states`), the shared `sum_factory.SparseSumFactory`
  (every upload checked; a layer may hold at most its size) and the shared
  finalizer step, fed `keep_unheld` aggregates and keeping every layer
  full.

  Type signatures:
    initialize: `( -> LearningAlgorithmState@SERVER)` (its `client_work`
      is the `ClientStates` store)
    next: `(<LearningAlgorithmState@SERVER, <data={(x, y)*},
      state={ClientInput*}>@CLIENTS> -> <state=LearningAlgorithmState@SERVER,
      metrics=<distributor=..., client_work=..., aggregator=...,
      finalizer=...>@SERVER>)`; client data from `client_states.client_inputs`.

  Args:
    model_fn: Builds the wrapped Keras model.
    layout: The model's `ModelLayout`.
    initial_weights: The dense starting `ModelWeights` (all masks ones).
    data_element_spec: `element_spec` of a client's batched `(x, y)` data.
    client_config: Local training hyper-parameters.
    config: LotteryFL settings.
    num_clients: Clients of the run (rows of the store).
    clients_per_round: Clients sampled per round (slots of a round).
    server_learning_rate: Server step size (1.0: plain averaging).
    server_momentum: Server momentum in [0, 1).
    upload_encoding: Client payload encoding (every mask sent).
    download_encoding: Broadcast encoding (every mask sent).
    payload_checks: What an upload must satisfy (None: masks with at most
      each layer's size, no norm bound); its count rule is made 'at_most'.
    robust: How the server bounds each client, as for FedDST.
    server_optimizer: An adaptive server optimizer instead of server SGD.

  Returns:
    A `tff.learning.templates.LearningProcess`.

  Raises:
    ValueError: For an upload encoding that may leave masks out.
  """
  upload_encoding = client_work.resolve_upload_encoding(client_config,
                                                        upload_encoding)
  if upload_encoding.masks_only_when_changed:
    raise ValueError('LotteryFL uploads always carry their masks (each '
                     'client prunes its own): masks_only_when_changed is not '
                     'supported.')
  initial_model_weights_fn = distributor.initial_weights_computation(
      initial_weights)

  model_weights_type = initial_model_weights_fn.type_signature.result
  packed_size = client_states.packed_size(layout.kernel_sizes)
  data_type = client_data_type(data_element_spec, packed_size)
  upload_encoding = full_capacity_encoding(upload_encoding)
  download_encoding = full_capacity_encoding(download_encoding)
  work = build_client_work(
      model_fn, layout, client_config, config,
      [np.asarray(initial_weights.trainable[i]) for i in layout.kernel_indices],
      model_weights_type, data_type, upload_encoding, num_clients,
      clients_per_round)
  if robust is not None and robust.reject_stale:
    work = upload_binding.bind_uploads(work, layout)
  result_type = work.next.type_signature.result.result.member
  checks = dataclasses.replace(
      payload_checks or payload_validation.PayloadChecks(),
      num_active_rule='at_most')
  aggregator_factory = sum_factory.SparseSumFactory(
      layout.kernel_shapes, layout.kernel_sizes, upload_encoding, checks,
      initial_targets=list(layout.kernel_sizes), robust=robust)
  aggregator = aggregator_factory.create(result_type.update,
                                         result_type.update_weight)
  aggregate_type = aggregator.next.type_signature.result.result.member
  broadcast = distributor.build_sparse_broadcast(
      layout, layout.kernel_sizes, model_weights_type, download_encoding)
  process = tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, broadcast, work, aggregator,
      _build_finalizer(layout, model_weights_type, aggregate_type,
                       server_learning_rate, server_momentum,
                       server_optimizer))
  return aggregator_feedback.with_aggregator_state_from_model(
      process, aggregator_feedback.mask_count_update(
          layout, aggregator_factory.holds_reference, download_encoding))


def _build_finalizer(layout: models.ModelLayout, model_weights_type: tff.Type,
                     aggregate_type: tff.Type, server_learning_rate: float,
                     server_momentum: float,
                     server_optimizer) -> tff.learning.templates.FinalizerProcess:
  """The shared finalizer step on `keep_unheld` aggregates, layers full."""
  step = finalizer.server_update_fn(
      layout, layout.kernel_sizes, server_learning_rate=server_learning_rate,
      server_momentum=server_momentum, server_optimizer=server_optimizer)
  trainable_specs = [(t.shape, t.dtype) for t in model_weights_type.trainable]

  @tff.tensorflow.computation
  def initial_state():
    return finalizer.initial_finalizer_state(trainable_specs, server_optimizer)

  @tff.tensorflow.computation(initial_state.type_signature.result,
                              model_weights_type, aggregate_type)
  def server_update(state, weights, round_aggregate):
    return step(state, weights, keep_unheld(round_aggregate, weights, layout))

  return finalizer.finalizer_on_server(initial_state, server_update,
                                       model_weights_type, aggregate_type)
