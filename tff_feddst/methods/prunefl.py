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
   carries a 4-byte int32 telling whether it is there. The aggregator sums
   n_c * z_c beside the usual sparse sums; the finalizer averages the weights
   over the (shared) mask as FedAvg does, then, if importance arrived, runs
   the rule with the averaged weights' magnitudes. Otherwise the mask is kept.

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
import logging
import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import finalizer
from tff_feddst.sparse import exact_sum
from tff_feddst.sparse import masks as mask_lib

# Bytes of `PruneflUpload.has_importance` (int32), sent with every upload.
IMPORTANCE_FLAG_BYTES = 4
# Bytes per position of the uploaded importance (float32).
IMPORTANCE_VALUE_BYTES = 4
# Mixed into the run seed to pick the initial-pruning client.
_INITIAL_CLIENT_SALT = 0x7072_756E  # b'prun'.


@dataclasses.dataclass(frozen=True)
class PruneflConfig:
  """Settings of PruneFL's two pruning stages.

  Attributes:
    initial_rounds: Reconfigurations during initial pruning, >= 0 (0: start
      federated training from the dense model).
    initial_steps: Local SGD steps before each initial reconfiguration, >= 1.
    reconfigure_every: Federated rounds t with t % reconfigure_every == 0
      reconfigure the mask, >= 1.
    round_cost: c, the fixed time of a round, as a fraction (> 0) of the
      time of all prunable parameters of the dense model. Larger: denser.
    max_remove_fraction: f in [0, 1]: share of each layer's active weights
      (the smallest) that a reconfiguration may remove.
    layer_times: Per-parameter time of each prunable layer (any positive
      unit), or empty for 'uniform' (every position costs the same).
  """
  initial_rounds: int = 5
  initial_steps: int = 50
  reconfigure_every: int = 5
  round_cost: float = 0.14
  max_remove_fraction: float = 0.3
  layer_times: tuple[float, ...] = ()

  def __post_init__(self):
    if self.initial_rounds < 0:
      raise ValueError(f'initial_rounds must be >= 0, got '
                       f'{self.initial_rounds}.')
    if self.initial_steps < 1:
      raise ValueError(f'initial_steps must be >= 1, got '
                       f'{self.initial_steps}.')
    if self.reconfigure_every < 1:
      raise ValueError(f'reconfigure_every must be >= 1, got '
                       f'{self.reconfigure_every}.')
    if not self.round_cost > 0:
      raise ValueError(f'round_cost must be > 0, got {self.round_cost}.')
    if not 0 <= self.max_remove_fraction <= 1:
      raise ValueError(f'max_remove_fraction must be in [0, 1], got '
                       f'{self.max_remove_fraction}.')
    if any(not t > 0 for t in self.layer_times):
      raise ValueError(f'layer_times must be > 0, got {self.layer_times}.')

  def times_for(self, num_layers: int) -> tuple[float, ...]:
    """Per-parameter time of each of `num_layers` prunable layers.

    Raises:
      ValueError: If `layer_times` is set for another number of layers.
    """
    if not self.layer_times:
      return (1.0,) * num_layers
    if len(self.layer_times) != num_layers:
      raise ValueError(f'layer_times has {len(self.layer_times)} values but '
                       f'the model has {num_layers} prunable layers.')
    return tuple(float(t) for t in self.layer_times)


def parse_layer_times(text: str) -> tuple[float, ...]:
  """Reads 'uniform' (or '') as () and 'a,b,...' as positive floats.

  Raises:
    ValueError: For anything else.
  """
  if text.strip() in ('', 'uniform'):
    return ()
  try:
    times = tuple(float(part) for part in text.split(','))
  except ValueError:
    raise ValueError(f'not a comma-separated list of numbers: {text!r}') from None
  if any(not (t > 0 and math.isfinite(t)) for t in times):
    raise ValueError(f'every time must be a finite number > 0: {text!r}')
  return times


class MaskSelection(NamedTuple):
  """Outcome of `select_masks`.

  Attributes:
    masks: The next masks (float32 0/1, kernel shapes).
    num_kept: int32, positions kept without competing (active minus
      removable).
    num_added: int32, candidates the objective took in (inactive or
      removable).
    objective: float64, sum z / (c + sum t) of the chosen masks.
  """
  masks: list
  num_kept: tf.Tensor
  num_added: tf.Tensor
  objective: tf.Tensor


def select_masks(weights: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
                 importances: Sequence[tf.Tensor],
                 layer_times: Sequence[float], round_cost: float,
                 max_remove_fraction: float) -> MaskSelection:
  """PruneFL's reconfiguration: the masks of most importance per unit time.

  See the module docstring for the rule.

  Args:
    weights: Prunable kernels (magnitudes pick the removable weights).
    masks: Their current 0/1 masks.
    importances: Non-negative importance z of every position, kernel shapes.
    layer_times: Per-parameter time t_l of each layer, > 0.
    round_cost: Fixed round time c relative to sum_l n_l t_l, > 0.
    max_remove_fraction: Share of each layer's active weights that may be
      removed (the smallest |w|: floor(f * active)).

  Returns:
    A `MaskSelection`.
  """
  sizes = [int(np.prod(w.shape)) for w in weights]
  fixed_time = round_cost * sum(n * t for n, t in zip(sizes, layer_times))
  kept, flat_ratio, flat_importance, flat_time = [], [], [], []
  kept_importance = tf.constant(0.0, tf.float64)
  kept_time = tf.constant(fixed_time, tf.float64)
  for weight, mask, importance, time, size in zip(
      weights, masks, importances, layer_times, sizes):
    mask = tf.cast(mask, tf.float32)
    num_removable = tf.cast(tf.floor(
        max_remove_fraction * tf.reduce_sum(mask)), tf.int32)
    removable = mask_lib.prune_by_magnitude(weight, mask, num_removable)
    kept_mask = mask * (1.0 - removable)
    kept.append(kept_mask)
    importance = tf.reshape(tf.cast(importance, tf.float64), [-1])
    kept_flat = tf.reshape(tf.cast(kept_mask, tf.float64), [-1])
    kept_importance += tf.reduce_sum(kept_flat * importance)
    kept_time += time * tf.reduce_sum(kept_flat)
    # Candidates rank by z / t; kept positions get -1 (never added).
    flat_ratio.append(tf.where(kept_flat > 0, tf.constant(-1.0, tf.float64),
                                importance / time))
    flat_importance.append(importance)
    flat_time.append(tf.fill([size], tf.constant(time, tf.float64)))
  ratio = tf.concat(flat_ratio, axis=0)
  order = tf.argsort(ratio, direction='DESCENDING', stable=True)
  sorted_ratio = tf.gather(ratio, order)
  sorted_importance = tf.gather(tf.concat(flat_importance, axis=0), order)
  sorted_time = tf.gather(tf.concat(flat_time, axis=0), order)
  # Objective before each candidate: (N + z of earlier ones) / (D + t ...).
  numerator = kept_importance + tf.cumsum(sorted_importance, exclusive=True)
  denominator = kept_time + tf.cumsum(sorted_time, exclusive=True)
  improves = tf.logical_and(sorted_ratio >= 0,
                            sorted_ratio * denominator > numerator)
  num_added = tf.reduce_sum(tf.math.cumprod(tf.cast(improves, tf.int32)))
  added = tf.scatter_nd(order[:num_added, tf.newaxis],
                        tf.ones([num_added], tf.float32), [sum(sizes)])
  new_masks = []
  offset = 0
  for kept_mask, size in zip(kept, sizes):
    grown = tf.reshape(added[offset:offset + size], kept_mask.shape)
    new_masks.append(kept_mask + grown)
    offset += size
  total_importance = kept_importance + tf.reduce_sum(
      sorted_importance[:num_added])
  total_time = kept_time + tf.reduce_sum(sorted_time[:num_added])
  return MaskSelection(
      masks=new_masks,
      num_kept=tf.cast(tf.add_n([tf.reduce_sum(k) for k in kept]), tf.int32),
      num_added=num_added,
      objective=total_importance / total_time)


# ---------------------------------------------------------------------------
# Initial pruning on one client.


def choose_initial_client(client_ids: Sequence[str], seed: int) -> str:
  """The client that runs initial pruning: a seeded uniform choice."""
  rng = np.random.default_rng([seed, _INITIAL_CLIENT_SALT])
  return client_ids[int(rng.integers(len(client_ids)))]


class InitialPruningResult(NamedTuple):
  """Outcome of `run_initial_pruning`.

  Attributes:
    weights: `ModelWeights` (numpy) of the trained, pruned model, TF-MOT
      bookkeeping as in the initial model.
    layer_num_active: Active weights per layer at the end.
    densities: Overall density after each reconfiguration.
  """
  weights: tff.learning.models.ModelWeights
  layer_num_active: tuple[int, ...]
  densities: tuple[float, ...]


def run_initial_pruning(model_fn: models.ModelFn,
                        initial_weights: tff.learning.models.ModelWeights,
                        layout: models.ModelLayout,
                        dataset: tf.data.Dataset,
                        client_config: client_work.ClientConfig,
                        config: PruneflConfig) -> InitialPruningResult:
  """PruneFL's initial pruning on one client's data (plain TF).

  The model trains with masked SGD (the client's learning rate, momentum and
  weight decay; no proximal term) for `config.initial_rounds` blocks of
  `config.initial_steps` steps over `dataset` repeated; after each block the
  importance z = sum over its steps of the squared minibatch gradient picks
  the next masks with `select_masks`. Weights leaving the mask become 0.

  Args:
    model_fn: Builds the wrapped Keras model.
    initial_weights: The starting `ModelWeights` (usually all-ones masks).
    layout: The model's `ModelLayout`.
    dataset: The chosen client's batched `(x, y)` training data.
    client_config: Local training hyper-parameters.
    config: PruneFL settings.

  Returns:
    The `InitialPruningResult`.
  """
  layer_times = config.times_for(layout.num_prunable)
  trainer = client_work.ClientTrainer(
      model_fn(), layout, layout.kernel_sizes,
      dataclasses.replace(client_config, grow_score='last_batch', prox_mu=0.0))
  trainer.set_weights(initial_weights)
  importances = [tf.Variable(tf.zeros_like(k), trainable=False)
                 for k in trainer.kernels]

  # Both functions are free of tensor-dependent Python control flow, so
  # they do not rely on AutoGraph (which was seen disabled in a process
  # that had run TFF computations before).
  @tf.function(autograph=False)
  def train_one_step(iterator):
    x, y = iterator.get_next()
    trainer.train_step(x, y, True)
    for importance, gradient in zip(importances, trainer.grow_scores):
      importance.assign_add(tf.square(gradient))

  @tf.function(autograph=False)
  def reconfigure():
    selection = select_masks(trainer.kernels, trainer.masks, importances,
                             layer_times, config.round_cost,
                             config.max_remove_fraction)
    for position, (kernel, mask, new_mask) in enumerate(
        zip(trainer.kernels, trainer.masks, selection.masks)):
      new_mask = tf.cast(new_mask, mask.dtype)
      mask.assign(new_mask)
      kernel.assign(kernel * new_mask)
      momentum = trainer.momenta[layout.kernel_indices[position]]
      momentum.assign(momentum * new_mask)
      importances[position].assign(tf.zeros_like(importances[position]))

  iterator = iter(dataset.repeat())
  densities = []
  total = float(sum(layout.kernel_sizes))
  for block in range(config.initial_rounds):
    for _ in range(config.initial_steps):
      train_one_step(iterator)
    reconfigure()
    densities.append(sum(float(tf.reduce_sum(m)) for m in trainer.masks)
                     / total)
    logging.info('PruneFL initial pruning %d/%d: density %.4f', block + 1,
                 config.initial_rounds, densities[-1])
  non_trainable = [v.numpy() for v in trainer.model.non_trainable_variables]
  for index in layout.bookkeeping_indices:
    non_trainable[index] = np.asarray(initial_weights.non_trainable[index])
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in trainer.model.trainable_variables],
      non_trainable=non_trainable)
  return InitialPruningResult(
      weights=weights,
      layer_num_active=tuple(int(np.sum(non_trainable[i]))
                             for i in layout.mask_indices),
      densities=tuple(densities))


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


def upload_num_bytes(upload: PruneflUpload,
                     masks: Sequence[tf.Tensor]) -> tf.Tensor:
  """Bytes of an upload without the example count.

  Args:
    upload: The `PruneflUpload`.
    masks: The masks its payload decodes to (values are charged for their
      ones only, not for the padding up to the layer's size).

  Returns:
    int64: payload bytes + the 4-byte flag + 4 bytes per prunable position
    when the importance is present.
  """
  importance_positions = sum(
      int(np.prod(t.shape)) for t in upload.importance)
  return (encoding.payload_num_bytes(upload.payload, masks)
          + IMPORTANCE_FLAG_BYTES
          + tf.cast(upload.has_importance, tf.int64) *
          IMPORTANCE_VALUE_BYTES * importance_positions)


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
    for x, y in iter(dataset.repeat(self.config.num_epochs)):
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
# Aggregation: sparse sums plus example-weighted importance.


class PruneflAggregate(NamedTuple):
  """Sums over a round's clients.

  Attributes:
    sums: The `aggregation.SparseAggregate` of the payloads (its
      `upload_bytes` includes flags and importance).
    importance_sums: Per kernel, sum_c n_c * z_c.
    importance_weight: sum of n_c over the clients that sent importance.
  """
  sums: aggregation.SparseAggregate
  importance_sums: tuple
  importance_weight: tf.Tensor


class ImportanceSumFactory(tff.aggregators.WeightedAggregationFactory):
  """Aggregates `PruneflUpload`s: `aggregation`'s sparse sums plus importance.

  `create(upload_type, weight_type)` returns an `AggregationProcess`:
    initialize: `( -> <>@SERVER)`
    next: `(<<>@SERVER, PruneflUpload@CLIENTS, float32@CLIENTS> ->
      <state=<>@SERVER, result=PruneflAggregate@SERVER,
      measurements=<upload_bytes=int64, num_clients=int32>@SERVER>)`
  """

  def __init__(self, kernel_shapes: Sequence[Sequence[int]],
               payload_encoding: encoding.PayloadEncoding):
    """Creates the factory.

    Args:
      kernel_shapes: Shape of each prunable kernel.
      payload_encoding: The clients' payload encoding (payload capacity is
        each kernel's full size).

    Raises:
      ValueError: For an encoding that may leave masks out.
    """
    if payload_encoding.masks_only_when_changed:
      raise ValueError('PruneFL uploads always carry their masks: '
                       'masks_only_when_changed is not supported.')
    self._kernel_shapes = tuple(tuple(s) for s in kernel_shapes)
    self._encoding = payload_encoding

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    kernel_shapes = self._kernel_shapes
    sizes = [int(np.prod(s)) for s in kernel_shapes]
    payload_encoding = self._encoding
    dense_shapes = tuple(tuple(t.shape) for t in
                         tff.structure.flatten(value_type.payload.dense))

    def float_zero():
      return PruneflAggregate(
          sums=aggregation.zero_aggregate(kernel_shapes, dense_shapes),
          importance_sums=tuple(tf.zeros(s, tf.float32)
                                for s in kernel_shapes),
          importance_weight=tf.constant(0.0, tf.float32))

    def contribution(upload, weight):
      """One client's terms of the sums (float32), as if added to zero."""
      weight = tf.cast(weight, tf.float32)
      zero = float_zero()
      sums = aggregation.accumulate_payload(
          zero.sums, upload.payload, weight, kernel_shapes, sizes,
          payload_encoding)
      # Bytes are counted here: values on the mask's ones only, the flag,
      # and the importance when present.
      _, masks, _ = encoding.decode_payload(upload.payload, kernel_shapes,
                                            sizes, payload_encoding)
      sums = sums._replace(
          upload_bytes=upload_num_bytes(upload, masks) +
          aggregation.WEIGHT_BYTES)
      reported = weight * tf.cast(upload.has_importance, tf.float32)
      return PruneflAggregate(
          sums=sums,
          importance_sums=tuple(reported * z for z in upload.importance),
          importance_weight=reported)

    # Sums in `exact_sum` form: the same bits for any client order or split
    # over workers.
    @tff.tensorflow.computation
    def zero_fn():
      return exact_sum.to_exact(float_zero())

    exact_type = zero_fn.type_signature.result

    @tff.tensorflow.computation(exact_type, (value_type, weight_type))
    def accumulate(exact_aggregate, upload_and_weight):
      return exact_sum.add(exact_aggregate,
                           exact_sum.to_exact(contribution(*upload_and_weight)))

    @tff.tensorflow.computation(exact_type, exact_type)
    def merge(first, second):
      return exact_sum.add(first, second)

    @tff.tensorflow.computation(exact_type)
    def report(exact_aggregate):
      return exact_sum.from_exact(float_zero(), exact_aggregate)

    aggregate_type = report.type_signature.result

    @tff.tensorflow.computation(aggregate_type)
    def measure(aggregate):
      return collections.OrderedDict(
          upload_bytes=aggregate.sums.upload_bytes,
          num_clients=aggregate.sums.num_clients)

    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.types.FederatedType(value_type, tff.CLIENTS),
        tff.types.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, upload, weight):
      aggregate = tff.federated_aggregate(
          tff.federated_zip((upload, weight)), zero_fn(), accumulate, merge,
          report)
      return tff.templates.MeasuredProcessOutput(
          state=state, result=aggregate,
          measurements=tff.federated_map(measure, aggregate))

    return tff.templates.AggregationProcess(init_fn, next_fn)


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
# Finalizer: FedAvg on the mask, then the PruneFL rule on reconfiguration.


def build_finalizer(layout: models.ModelLayout, config: PruneflConfig,
                    model_weights_type: tff.Type, aggregate_type: tff.Type,
                    server_learning_rate: float = 1.0,
                    server_momentum: float = 0.0
                    ) -> tff.learning.templates.FinalizerProcess:
  """Builds PruneFL's `FinalizerProcess`.

  Weights are averaged over the clients holding each position
  (`finalizer.apply_aggregate`; all hold the global mask, so the mask stays);
  when some client sent importance, `select_masks` gives the next masks and
  weights and momentum buffers are zeroed off them.

  Type signatures:
    initialize: `( -> <buffers>@SERVER)`
    next: `(<<buffers>@SERVER, ModelWeights@SERVER, PruneflAggregate@SERVER>
      -> <state=<buffers>@SERVER, result=ModelWeights@SERVER,
      measurements=<mask_changed_positions, sparsity, layer_num_active,
      num_clients_aggregated, reconfigured, num_kept, num_added,
      objective>@SERVER>)`

  Args:
    layout: The model's `ModelLayout`.
    config: PruneFL settings.
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    aggregate_type: TFF type of the (unplaced) `PruneflAggregate`.
    server_learning_rate: Server step size, > 0.
    server_momentum: Server momentum in [0, 1).

  Returns:
    A `tff.learning.templates.FinalizerProcess`.

  Raises:
    ValueError: For bad server settings or layer times.
  """
  if server_learning_rate <= 0:
    raise ValueError(
        f'server_learning_rate must be > 0, got {server_learning_rate}.')
  if not 0 <= server_momentum < 1:
    raise ValueError(f'server_momentum must be in [0, 1), got {server_momentum}.')
  layer_times = config.times_for(layout.num_prunable)
  trainable_specs = [(t.shape, t.dtype) for t in model_weights_type.trainable]

  @tff.tensorflow.computation
  def initial_buffers():
    return tuple(tf.zeros(shape, dtype) for shape, dtype in trainable_specs)

  buffers_type = initial_buffers.type_signature.result

  @tff.tensorflow.computation(buffers_type, model_weights_type, aggregate_type)
  def server_update(buffers, weights, aggregate):
    def averaged():
      new_buffers, new_weights, _ = finalizer.apply_aggregate(
          buffers, weights, aggregate.sums, layout, layout.kernel_sizes,
          server_learning_rate, server_momentum)
      return (tuple(new_buffers), tuple(new_weights.trainable),
              tuple(new_weights.non_trainable))

    def unchanged():
      return (tuple(tf.identity(b) for b in buffers),
              tuple(tf.identity(t) for t in weights.trainable),
              tuple(tf.identity(t) for t in weights.non_trainable))

    new_buffers, trainable, non_trainable = tf.cond(
        aggregate.sums.total_weight > 0, averaged, unchanged)
    trainable, non_trainable = list(trainable), list(non_trainable)
    new_buffers = list(new_buffers)
    old_masks = [tf.cast(non_trainable[i], tf.float32)
                 for i in layout.mask_indices]
    should_reconfigure = aggregate.importance_weight > 0

    def select():
      selection = select_masks(
          [trainable[i] for i in layout.kernel_indices], old_masks,
          aggregate.importance_sums, layer_times, config.round_cost,
          config.max_remove_fraction)
      return (tuple(selection.masks), selection.num_kept,
              selection.num_added, selection.objective)

    def keep():
      return (tuple(tf.identity(m) for m in old_masks),
              tf.constant(0, tf.int32), tf.constant(0, tf.int32),
              tf.constant(0.0, tf.float64))

    new_masks, num_kept, num_added, objective = tf.cond(
        should_reconfigure, select, keep)
    changed = tf.constant(0, tf.int32)
    for position, (kernel_index, mask_index) in enumerate(
        zip(layout.kernel_indices, layout.mask_indices)):
      new_mask = new_masks[position]
      changed += tf.math.count_nonzero(
          tf.not_equal(new_mask, old_masks[position]), dtype=tf.int32)
      trainable[kernel_index] = trainable[kernel_index] * new_mask
      new_buffers[kernel_index] = new_buffers[kernel_index] * new_mask
      non_trainable[mask_index] = tf.cast(
          new_mask, model_weights_type.non_trainable[mask_index].dtype)
    new_weights = tff.learning.models.ModelWeights(
        trainable=trainable, non_trainable=non_trainable)
    measurements = collections.OrderedDict(
        mask_changed_positions=changed,
        sparsity=finalizer.global_sparsity(new_weights, layout),
        layer_num_active=tuple(tf.cast(tf.reduce_sum(m), tf.int32)
                               for m in new_masks),
        num_clients_aggregated=aggregate.sums.num_clients,
        reconfigured=should_reconfigure,
        num_kept=num_kept,
        num_added=num_added,
        objective=objective)
    return tuple(new_buffers), new_weights, measurements

  return finalizer.finalizer_on_server(initial_buffers, server_update,
                                       model_weights_type, aggregate_type)


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
                  download_encoding: Optional[encoding.PayloadEncoding] = None
                  ) -> tff.learning.templates.LearningProcess:
  """Builds the PruneFL `LearningProcess` (federated stage).

  Composed like `fed_dst.build_fed_dst`: the sparse broadcast at full
  capacity, PruneFL client work, `ImportanceSumFactory`, PruneFL finalizer.
  Payloads hold up to each kernel's full size (the mask size changes).

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

  Returns:
    A `tff.learning.templates.LearningProcess`.

  Raises:
    ValueError: For conflicting encodings, or layer times that do not fit
      the model.
  """
  config.times_for(layout.num_prunable)
  initial_trainable = [np.asarray(v) for v in initial_weights.trainable]
  initial_non_trainable = [np.asarray(v)
                           for v in initial_weights.non_trainable]

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights(
        trainable=[tf.constant(v) for v in initial_trainable],
        non_trainable=[tf.constant(v) for v in initial_non_trainable])

  model_weights_type = initial_model_weights_fn.type_signature.result
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(data_element_spec))
  upload_encoding = full_capacity_encoding(
      client_work.resolve_upload_encoding(client_config, upload_encoding))
  download_encoding = full_capacity_encoding(download_encoding)
  aggregator_factory = ImportanceSumFactory(layout.kernel_shapes,
                                            upload_encoding)
  work = build_client_work(model_fn, layout, config.reconfigure_every,
                           client_config, model_weights_type, data_type,
                           upload_encoding)
  result_type = work.next.type_signature.result.result.member
  aggregator = aggregator_factory.create(result_type.update,
                                         result_type.update_weight)
  aggregate_type = aggregator.next.type_signature.result.result.member
  # Capacity = every kernel's size: PruneFL's mask size changes.
  broadcast = distributor.build_sparse_broadcast(
      layout, layout.kernel_sizes, model_weights_type, download_encoding)
  server_finalizer = build_finalizer(
      layout, config, model_weights_type, aggregate_type,
      server_learning_rate=server_learning_rate,
      server_momentum=server_momentum)
  return tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, broadcast, work, aggregator, server_finalizer)
