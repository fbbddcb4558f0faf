"""PruneFL's mask rule and its initial pruning stage (see `prunefl`).

`select_masks` is the reconfiguration rule of Jiang et al. (the masks of most
importance per unit of round time; the `prunefl` module docstring states it
and how it differs from the paper and from the FedDST authors' script). Both
stages use it: `run_initial_pruning` (one client, plain TF, before federated
training) and PruneFL's server-side mask rule (`prunefl.importance_mask_rule`
plugged into the shared finalizer).
"""

import dataclasses
import logging
import math
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.sparse import masks as mask_lib

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


