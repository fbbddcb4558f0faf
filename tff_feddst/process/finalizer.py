"""FedDST's server update: averaged sparse weights, momentum, re-prune.

From the `SparseAggregate` of a round:

  target[p] = weighted_kernel_sums[p] / weighted_votes[p]  (0 where nobody
              holds p: each position is averaged only over its holders)
  target_dense = weighted_dense_sums / total_weight
  buffer = server_momentum * buffer + (target - w);  w = w + server_lr * buffer
  per layer: mask = the layer's num_active positions held by some client with
             the largest |w| (ties: more votes, then lower index);
             w = w * mask; buffer = buffer * mask

With a robust mean (`robust_means`: the aggregate's `robust_values`), target
is each position's trimmed mean or median over its holders instead, and
target_dense each dense parameter's, taken as they are; the rest of the
step is the same.

With server_lr 1 and server_momentum 0 the new weights are the averages
themselves (FedAvg on the sparse support); server momentum gives FedAvgM.
With an adaptive server optimizer (`server_optimizers`: Adam, Yogi,
Adagrad), its step on w - target replaces the momentum step on the round's
global mask, positions outside it take their averages, and its state (in an
`AdaptiveFinalizerState`) is reset off the final mask. A
round in which no client reported (total weight 0) leaves the weights as
they are, only re-pruned to the round's counts (a no-op at constant
sparsity). TF-MOT's bookkeeping variables are never touched; masks live in
`ModelWeights.non_trainable`, which TFF's stock finalizers leave unchanged,
hence this finalizer.

remember_old (the authors' `--remember-old`): a client that does not hold a
position of the GLOBAL mask counts as if it had sent the old global weight
there. With W = total_weight, for every p in the global mask:

  weighted_kernel_sums[p] += w_global[p] * (W - weighted_votes[p])
  weighted_votes[p] = W;  votes[p] = num_clients

so such a position is averaged over all clients (the ones that pruned it
pull it towards its old value rather than being ignored), is always
eligible for the next mask (also under `min_votes`), and wins magnitude ties
by its full vote count. It needs no extra upload: the server holds w_global.
It changes both the averaged values and the mask choice. The authors'
`dst.py` means to use the remembered weights only to choose the mask, but
overwrites `aggregated_params_for_mask` with `aggregated_params` before
choosing, while its denominator already includes the remembered weight: in
effect it counts a missing client as having sent 0 (shrinking the average
by the share of clients that pruned p) and makes every global-mask position
eligible. We implement what the flag says (old values, not zeros), for the
values and the mask alike, since a value averaged with zeros is an
artefact of the overwrite, not a choice. (`num_clients` counts the
accepted clients, and payload validation refuses a weight <= 0, so it
equals the number of clients that vote.)

Growing sparsity: with `num_active_by_round`, round t keeps row min(t, last)
of that table per layer (`sparsity_distribution.num_active_by_round`); the
state counts completed rounds for this (and is checkpointed with the rest of
the process state).

New positions need more than one voice (`min_new_position_votes` = k):
a position OUTSIDE the round's global mask held by fewer than
min(k, num_clients) clients is treated as held by nobody
(`admit_new_positions`): its sums and votes are dropped, so its average is
0 and the re-prune cannot choose it. Positions inside the global mask keep
the rule above; `min_votes` applies to all. So one client cannot bring a
weight of its own choosing into the global model, unless it is the round's
only accepted client (it then sets every average anyway, and a mask that
could never move would be worse). When fewer positions are eligible than
the target (clients all pruned some global positions, and too few new
ones found holders), the layer is topped up from the global mask's
remaining positions, by magnitude (`fill_from_global_mask`; not with
`min_votes` > 1, which may thin a layer on purpose), so the rule never
thins a layer and uploads keep their exact counts.

Finiteness guard: a new global model (any trainable or non-trainable
tensor) or momentum buffer that is not all finite is never accepted. The
round is counted as failed (measurement `server_update_failed` = 1) and
the previous model and buffers are kept, bit for bit at constant sparsity;
under growing sparsity they are re-pruned by magnitude to the round's row,
as a round without clients is (`prune_to_counts`). The round counter still
advances, so the count table stays aligned with the rounds, and the next
clients are checked against the counts they were sent.
`mask_changed_positions`, `sparsity` and `layer_num_active` then describe
the kept model; a mask rule's own measurements are those of the rejected
step. The round loop stops a run after `--max_failed_rounds` such rounds in
a row.

The authors' server rule (`server_rule='reference'`, bibikar/feddst
`dst.py`): the next mask is the union of the clients' masks (positions
passing the vote threshold), and only when that union holds more active
positions than the round's counts is each layer re-pruned by |w| over ALL
its positions, clearing union bits only (`mask_lib.server_reprune_reference`;
no top-up, no vote tie-break). A regrown weight uploaded as 0 then ties
with positions nobody holds: when only some clients readjust, exactly the
regrown positions go and the mask does not move; when all do, every
nonzero average lies in the old mask and a held 0 loses every tie to a
position nobody holds, so the mask only shrinks (it gains regrown zeros
only if the union is not denser than the counts, with few clients). The
target is the round's counts (the authors compare with the target
sparsity, which the counts round down).

A method with its own mask rule (PruneFL's importance-based
reconfiguration) plugs it in as `mask_rule`: after the averaging step above,
the rule sees the averaged weights, the round's global masks and the whole
aggregate (an `aggregation.ExtendedAggregate` carries the method's extra
sums) and returns the next masks; weights and momentum buffers are zeroed
off them, and `mask_changed_positions` counts changes against the round's
global masks.
"""

import collections
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import server_optimizers
from tff_feddst.sparse import masks as mask_lib


class FinalizerState(NamedTuple):
  """The finalizer's state.

  Attributes:
    buffers: Server momentum buffers, one per trainable variable.
    round_num: int32, the number of completed rounds (0 at the start).
  """
  buffers: tuple
  round_num: tf.Tensor


class AdaptiveFinalizerState(NamedTuple):
  """The finalizer's state with an adaptive server optimizer.

  Attributes:
    buffers: As `FinalizerState` (unused by the optimizer; zero).
    round_num: As `FinalizerState`.
    optimizer_state: The `tff.learning.optimizers` state (step counter,
      hyperparameters, per-variable accumulators), initial off the global
      mask (`server_optimizers`).
  """
  buffers: tuple
  round_num: tf.Tensor
  optimizer_state: Any


class MaskRuleResult(NamedTuple):
  """What a method's mask rule decides.

  Attributes:
    masks: The next masks, float32 0/1, one per prunable kernel.
    measurements: `OrderedDict` of the rule's own measurements (added after
      the finalizer's).
  """
  masks: list
  measurements: collections.OrderedDict


# (averaged ModelWeights, the round's global masks (float32), the aggregate)
# -> MaskRuleResult; traced inside the finalizer's TF computation.
MaskRule = Callable[[Any, Sequence[tf.Tensor], Any], MaskRuleResult]


def sums_of(aggregate) -> aggregation.SparseAggregate:
  """The `SparseAggregate` of a round's aggregate (also inside an
  `aggregation.ExtendedAggregate`)."""
  if isinstance(aggregate, aggregation.ExtendedAggregate):
    return aggregate.sums
  return aggregate


def apply_mask_rule(mask_rule: MaskRule, global_weights, buffers,
                    averaged_weights, aggregate, layout: models.ModelLayout):
  """Replaces the averaged model's masks by a method's own rule's.

  Args:
    mask_rule: The method's `MaskRule`.
    global_weights: The round's global `ModelWeights` (its masks are what
      the rule starts from and what changes are counted against).
    buffers: Server momentum buffers after the averaging step.
    averaged_weights: `ModelWeights` after the averaging step.
    aggregate: The round's aggregate, as the finalizer received it.
    layout: The model's `ModelLayout`.

  Returns:
    `(new_buffers, new_weights, mask_changed_positions, rule_measurements)`.
  """
  global_masks = [tf.cast(global_weights.non_trainable[i], tf.float32)
                  for i in layout.mask_indices]
  result = mask_rule(averaged_weights, global_masks, aggregate)
  trainable = list(averaged_weights.trainable)
  non_trainable = list(averaged_weights.non_trainable)
  new_buffers = list(buffers)
  changed = tf.constant(0, tf.int32)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    new_mask = result.masks[position]
    changed += tf.math.count_nonzero(
        tf.not_equal(new_mask, global_masks[position]), dtype=tf.int32)
    trainable[kernel_index] = trainable[kernel_index] * new_mask
    new_buffers[kernel_index] = new_buffers[kernel_index] * new_mask
    non_trainable[mask_index] = tf.cast(
        new_mask, global_weights.non_trainable[mask_index].dtype)
  new_weights = tff.learning.models.ModelWeights(
      trainable=trainable, non_trainable=non_trainable)
  return tuple(new_buffers), new_weights, changed, result.measurements


def remember_global_weights(aggregate: aggregation.SparseAggregate, weights,
                            layout: models.ModelLayout
                            ) -> aggregation.SparseAggregate:
  """Counts clients lacking a global-mask position as sending the old weight.

  For each kernel and every position p of the global mask:
  weighted_kernel_sums[p] += w_global[p] * (W - weighted_votes[p]),
  weighted_votes[p] += W - weighted_votes[p] (= W, the total weight) and
  votes[p] += num_clients - votes[p]. Other positions are unchanged.

  Args:
    aggregate: The round's `SparseAggregate` (expanded if the upload encoding
      left masks out).
    weights: The current global `ModelWeights` (masked kernels, masks).
    layout: The model's `ModelLayout`.

  Returns:
    The `SparseAggregate` with the remembered weights added.
  """
  total_weight = tf.cast(aggregate.total_weight, tf.float32)
  num_clients = tf.cast(aggregate.num_clients, tf.float32)
  kernel_sums = list(aggregate.weighted_kernel_sums)
  weighted_votes = list(aggregate.weighted_votes)
  votes = list(aggregate.votes)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    global_mask = tf.cast(weights.non_trainable[mask_index], tf.float32)
    global_kernel = tf.cast(weights.trainable[kernel_index], tf.float32)
    # max(., 0): float sums of weights never exceed the total in exact
    # arithmetic; a rounding residue must not subtract.
    missing_weight = global_mask * tf.maximum(
        total_weight - weighted_votes[position], 0.0)
    missing_votes = global_mask * tf.maximum(num_clients - votes[position],
                                             0.0)
    kernel_sums[position] = (kernel_sums[position] +
                             global_kernel * missing_weight)
    weighted_votes[position] = weighted_votes[position] + missing_weight
    votes[position] = votes[position] + missing_votes
  return aggregate._replace(weighted_kernel_sums=tuple(kernel_sums),
                            weighted_votes=tuple(weighted_votes),
                            votes=tuple(votes))


def admit_new_positions(aggregate: aggregation.SparseAggregate, weights,
                        layout: models.ModelLayout,
                        min_new_position_votes: int
                        ) -> aggregation.SparseAggregate:
  """Drops positions outside the global mask that too few clients hold.

  For each kernel and every position p outside the global mask with
  votes[p] < min(`min_new_position_votes`, num_clients):
  weighted_kernel_sums[p], weighted_votes[p], votes[p] and a robust value
  (`robust_values`) become 0 (as if no client held p), so its
  average is 0 and `mask_lib.server_reprune` cannot choose it. Positions
  inside the global mask and the other sums are unchanged (multiplied by
  1, so their bits are too).

  Args:
    aggregate: The round's `SparseAggregate`.
    weights: The current global `ModelWeights` (its masks).
    layout: The model's `ModelLayout`.
    min_new_position_votes: Clients that must hold a position outside the
      global mask for it to be eligible (all of the round's accepted
      clients when fewer reported).

  Returns:
    The `SparseAggregate` with those positions dropped.
  """
  kernel_sums = list(aggregate.weighted_kernel_sums)
  needed = tf.minimum(tf.cast(min_new_position_votes, tf.float32),
                      tf.cast(aggregate.num_clients, tf.float32))
  weighted_votes = list(aggregate.weighted_votes)
  votes = list(aggregate.votes)
  for position, mask_index in enumerate(layout.mask_indices):
    global_mask = tf.cast(weights.non_trainable[mask_index] > 0,
                          votes[position].dtype)
    enough = tf.cast(
        votes[position] >= tf.cast(needed, votes[position].dtype),
        votes[position].dtype)
    admitted = tf.maximum(global_mask, enough)
    kernel_sums[position] = kernel_sums[position] * tf.cast(
        admitted, kernel_sums[position].dtype)
    weighted_votes[position] = weighted_votes[position] * tf.cast(
        admitted, weighted_votes[position].dtype)
    votes[position] = votes[position] * admitted
  robust_values = aggregate.robust_values
  if robust_values:
    robust_values = robust_values._replace(kernels=tuple(
        value * tf.cast(votes[position] > 0, value.dtype)
        for position, value in enumerate(robust_values.kernels)))
  return aggregate._replace(weighted_kernel_sums=tuple(kernel_sums),
                            weighted_votes=tuple(weighted_votes),
                            votes=tuple(votes), robust_values=robust_values)


def fill_from_global_mask(mask: tf.Tensor, weight: tf.Tensor,
                          global_mask: tf.Tensor,
                          num_active: mask_lib.Count) -> tf.Tensor:
  """Tops `mask` up to `num_active` ones from the global mask.

  When too few positions were eligible (new ones lacking holders, global
  ones that every client pruned), the global-mask positions `mask` lacks
  are added by larger |weight| (then lower index) until the layer has
  `num_active` ones again, ranked after every eligible position. So the
  new-position rule never thins a layer, and honest uploads keep the
  target count.

  Args:
    mask: The re-pruned mask (float, 0/1).
    weight: The averaged kernel (its dtype is `mask`'s).
    global_mask: The round's global mask.
    num_active: The layer's target count (int or int scalar tensor).

  Returns:
    `mask` plus the added positions.
  """
  shortfall = tf.maximum(
      tf.cast(num_active, tf.int32) -
      tf.cast(tf.reduce_sum(mask), tf.int32), 0)
  candidates = tf.cast(global_mask, mask.dtype) * (1.0 - mask)
  return mask + mask_lib.server_reprune(weight, candidates, shortfall)


def all_finite(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  """bool scalar: every floating-point entry of `tensors` is finite.

  Integer tensors (TF-MOT's pruning steps) are always finite.
  """
  checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
            if t.dtype.is_floating]
  if not checks:
    return tf.constant(True)
  return tf.reduce_all(tf.stack(checks))


def prune_to_counts(buffers: Sequence[tf.Tensor], weights,
                    layout: models.ModelLayout,
                    num_active: Sequence[mask_lib.Count]):
  """Re-prunes the global model by magnitude within its own masks.

  What a round without clients does: each layer keeps its `num_active`
  largest active weights (all of them when it has no more), so a growing
  sparsity target is still met. At constant sparsity nothing changes.

  Args:
    buffers: Server momentum buffers, one per trainable variable.
    weights: Current global `ModelWeights`.
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel to keep (ints or int tensors).

  Returns:
    `(new_buffers, new_weights, mask_changed_positions)` as in
    `apply_aggregate`.
  """
  new_trainable = [tf.identity(t) for t in weights.trainable]
  new_non_trainable = [tf.identity(t) for t in weights.non_trainable]
  new_buffers = [tf.identity(b) for b in buffers]
  mask_changed_positions = tf.constant(0, tf.int32)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    mask = weights.non_trainable[mask_index]
    kernel = new_trainable[kernel_index]
    new_mask = tf.cast(
        mask_lib.server_reprune(kernel, tf.cast(mask, kernel.dtype),
                                num_active[position]), mask.dtype)
    new_trainable[kernel_index] = kernel * tf.cast(new_mask, kernel.dtype)
    new_buffers[kernel_index] = new_buffers[kernel_index] * tf.cast(
        new_mask, new_buffers[kernel_index].dtype)
    mask_changed_positions += tf.math.count_nonzero(
        tf.not_equal(new_mask, mask), dtype=tf.int32)
    new_non_trainable[mask_index] = new_mask
  return (new_buffers,
          tff.learning.models.ModelWeights(trainable=new_trainable,
                                           non_trainable=new_non_trainable),
          mask_changed_positions)


def apply_aggregate(buffers: Sequence[tf.Tensor], weights,
                    aggregate: aggregation.SparseAggregate,
                    layout: models.ModelLayout, num_active: Sequence[int],
                    server_learning_rate: float, server_momentum: float,
                    min_votes: int = 0, remember_old: bool = False,
                    min_new_position_votes: int = 1,
                    server_rule: str = 'feddst',
                    min_votes_unit: str = 'clients'):
  """Computes the next global model from the current one and the sums.

  Args:
    buffers: Server momentum buffers, one per trainable variable.
    weights: Current global `ModelWeights` (masked kernels, masks).
    aggregate: The round's `SparseAggregate`.
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel in the next mask (ints, or int
      scalar tensors for a per-round count).
    server_learning_rate: Server step size (1.0 for FedAvg).
    server_momentum: Server momentum in [0, 1) (0 for FedAvg).
    min_votes: Vote threshold for a position to be eligible for the next
      mask, in `min_votes_unit`.
    remember_old: Count clients lacking a global-mask position as sending
      the old global weight there (`remember_global_weights`).
    min_new_position_votes: A position outside the global mask needs at
      least this many holders (at most all the round's clients) to count at
      all (`admit_new_positions`; 1: any holder).
    server_rule: 'feddst' (`mask_lib.server_reprune` to each layer's count,
      topped up by `fill_from_global_mask`) or 'reference' (the authors'
      conditional re-prune of the union, `mask_lib.server_reprune_reference`).
    min_votes_unit: 'clients': a position needs at least `min_votes`
      holders; 'weight': its holders' summed aggregation weights must
      exceed `min_votes` (strict, as the authors' threshold).

  Returns:
    `(new_buffers, new_weights, mask_changed_positions)` where the last is the
    int32 number of positions whose mask value changed (either direction).

  Raises:
    ValueError: For `remember_old` with a robust mean.
  """
  aggregate, targets, dense_targets = round_targets(
      weights, aggregate, layout, remember_old, min_new_position_votes)
  trainable = list(weights.trainable)
  new_buffers = [server_momentum * buffer + (target - current)
                 for buffer, target, current in zip(buffers, targets, trainable)]
  new_trainable = [current + server_learning_rate * buffer
                   for current, buffer in zip(trainable, new_buffers)]
  return reprune(new_buffers, new_trainable, weights, aggregate, dense_targets,
                 layout, num_active, min_votes, min_new_position_votes,
                 server_rule, min_votes_unit)


def round_targets(weights, aggregate: aggregation.SparseAggregate,
                  layout: models.ModelLayout, remember_old: bool,
                  min_new_position_votes: int):
  """The round's averages per trainable variable (see the module docstring).

  Args:
    weights: Current global `ModelWeights`.
    aggregate: The round's `SparseAggregate`.
    layout: The model's `ModelLayout`.
    remember_old: Count clients lacking a global-mask position as sending
      the old weight (`remember_global_weights`).
    min_new_position_votes: See `admit_new_positions`.

  Returns:
    `(aggregate, targets, dense_targets)`: the aggregate after those rules,
    one target per trainable variable, and the dense parameters' targets
    (trainable ones first).

  Raises:
    ValueError: For `remember_old` with a robust mean.
  """
  robust_values = aggregate.robust_values
  if remember_old and robust_values:
    raise ValueError('remember_old does not combine with a robust mean.')
  if remember_old:
    aggregate = remember_global_weights(aggregate, weights, layout)
  if min_new_position_votes > 1:
    aggregate = admit_new_positions(aggregate, weights, layout,
                                    min_new_position_votes)
  targets = list(weights.trainable)
  for position, index in enumerate(layout.kernel_indices):
    targets[index] = tf.math.divide_no_nan(
        aggregate.weighted_kernel_sums[position],
        aggregate.weighted_votes[position])
    if robust_values:  # Taken as they are (robust_means).
      targets[index] = robust_values.kernels[position]
  dense_targets = [total / aggregate.total_weight
                   for total in aggregate.weighted_dense_sums]
  if robust_values:
    dense_targets = list(robust_values.dense)
  for position, index in enumerate(layout.dense_trainable_indices):
    targets[index] = dense_targets[position]
  return aggregate, targets, dense_targets


def reprune(new_buffers: list, new_trainable: list, weights,
            aggregate: aggregation.SparseAggregate, dense_targets: list,
            layout: models.ModelLayout, num_active: Sequence[mask_lib.Count],
            min_votes: int, min_new_position_votes: int,
            server_rule: str = 'feddst', min_votes_unit: str = 'clients'):
  """Chooses the next masks from the stepped weights; zeroes off them.

  Args:
    new_buffers: Momentum buffers after the step.
    new_trainable: Trainable variables after the step.
    weights: The round's global `ModelWeights` (its masks).
    aggregate: The round's aggregate after `round_targets`' rules.
    dense_targets: From `round_targets` (non-trainable dense ones follow
      the trainable ones).
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel in the next mask.
    min_votes: As `apply_aggregate`.
    min_new_position_votes: As `apply_aggregate`.
    server_rule: As `apply_aggregate`.
    min_votes_unit: As `apply_aggregate`.

  Returns:
    `(new_buffers, new_weights, mask_changed_positions)`.
  """
  non_trainable = list(weights.non_trainable)
  num_dense_trainable = len(layout.dense_trainable_indices)
  new_non_trainable = list(non_trainable)
  mask_changed_positions = tf.constant(0, tf.int32)
  all_votes = eligible_votes(aggregate, min_votes, min_votes_unit)
  if server_rule == 'reference':
    reference_masks = mask_lib.server_reprune_reference(
        [new_trainable[i] for i in layout.kernel_indices], all_votes,
        num_active)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    if server_rule == 'reference':
      new_mask = reference_masks[position]
    else:
      new_mask = mask_lib.server_reprune(new_trainable[kernel_index],
                                         all_votes[position],
                                         num_active[position])
    if (server_rule != 'reference' and min_new_position_votes > 1 and
        not min_votes_thin(min_votes, min_votes_unit)):
      new_mask = fill_from_global_mask(
          new_mask, new_trainable[kernel_index], non_trainable[mask_index],
          num_active[position])
    new_mask = tf.cast(new_mask, non_trainable[mask_index].dtype)
    new_trainable[kernel_index] = new_trainable[kernel_index] * new_mask
    new_buffers[kernel_index] = new_buffers[kernel_index] * new_mask
    mask_changed_positions += tf.math.count_nonzero(
        tf.not_equal(new_mask, non_trainable[mask_index]), dtype=tf.int32)
    new_non_trainable[mask_index] = new_mask
  for position, index in enumerate(layout.dense_non_trainable_indices):
    new_non_trainable[index] = dense_targets[num_dense_trainable + position]
  new_weights = tff.learning.models.ModelWeights(
      trainable=new_trainable, non_trainable=new_non_trainable)
  return new_buffers, new_weights, mask_changed_positions


def kernel_masks(weights, layout: models.ModelLayout) -> dict:
  """Trainable index of each kernel -> its mask in `weights` (kernel dtype)."""
  return {kernel_index: tf.cast(weights.non_trainable[mask_index],
                                weights.trainable[kernel_index].dtype)
          for kernel_index, mask_index in zip(layout.kernel_indices,
                                              layout.mask_indices)}


def min_votes_thin(min_votes: int, min_votes_unit: str = 'clients') -> bool:
  """Whether the vote threshold can leave a position with holders out.

  Args:
    min_votes: The threshold.
    min_votes_unit: 'clients' (at least `min_votes` holders: 0 and 1 let
      every held position through) or 'weight' (summed weights above
      `min_votes`: 0 lets every held position through, weights being > 0).

  Returns:
    True when some held position may fail the threshold.
  """
  if min_votes_unit == 'weight':
    return min_votes > 0
  return min_votes > 1


def eligible_votes(aggregate: aggregation.SparseAggregate, min_votes: int,
                   min_votes_unit: str = 'clients') -> list[tf.Tensor]:
  """Each kernel's votes, 0 where the position fails the vote threshold.

  Args:
    aggregate: The round's `SparseAggregate`.
    min_votes: The threshold.
    min_votes_unit: 'clients': votes[p] >= min_votes passes; 'weight':
      weighted_votes[p] > min_votes passes (the authors' `--min-votes` on
      train-size-weighted sums).

  Returns:
    The votes (`aggregate.votes`, unchanged where no threshold applies).

  Raises:
    ValueError: For an unknown unit.
  """
  if min_votes_unit not in mask_lib.MIN_VOTES_UNITS:
    raise ValueError(f'min_votes_unit must be one of '
                     f'{mask_lib.MIN_VOTES_UNITS}, got {min_votes_unit!r}.')
  votes = list(aggregate.votes)
  if not min_votes_thin(min_votes, min_votes_unit):
    return votes
  for position, position_votes in enumerate(votes):
    if min_votes_unit == 'weight':
      passes = aggregate.weighted_votes[position] > float(min_votes)
    else:
      passes = position_votes >= min_votes
    votes[position] = position_votes * tf.cast(passes, position_votes.dtype)
  return votes


def global_sparsity(weights, layout: models.ModelLayout) -> tf.Tensor:
  """Fraction of zeros over all prunable positions of `weights`' masks."""
  masks = [weights.non_trainable[i] for i in layout.mask_indices]
  active = tf.add_n([tf.reduce_sum(tf.cast(m, tf.float32)) for m in masks])
  return 1.0 - active / float(sum(layout.kernel_sizes))


def _checked_count_table(num_active: Sequence[int],
                         num_active_by_round: Optional[np.ndarray],
                         layout: models.ModelLayout) -> np.ndarray:
  """The per-round count table as int32 [rounds, layers], checked."""
  capacity = np.asarray([int(n) for n in num_active], np.int64)
  if num_active_by_round is None:
    return capacity.astype(np.int32)[np.newaxis, :]
  table = np.asarray(num_active_by_round)
  if (table.ndim != 2 or table.shape[0] < 1 or
      table.shape[1] != len(layout.kernel_indices) or
      not np.issubdtype(table.dtype, np.integer)):
    raise ValueError(
        'num_active_by_round must be an integer array [rounds, '
        f'{len(layout.kernel_indices)}], got shape {table.shape} and dtype '
        f'{table.dtype}.')
  if np.any(table < 0) or np.any(table > capacity[np.newaxis, :]):
    raise ValueError(
        'num_active_by_round must be in [0, num_active] per layer (the '
        f'payload capacity {capacity.tolist()}), got rows '
        f'{table.tolist()[:3]}...')
  return table.astype(np.int32)


def build_finalizer(layout: models.ModelLayout, num_active: Sequence[int],
                    model_weights_type: tff.Type, aggregate_type: tff.Type,
                    server_learning_rate: float = 1.0,
                    server_momentum: float = 0.0,
                    min_votes: int = 0,
                    remember_old: bool = False,
                    num_active_by_round: Optional[np.ndarray] = None,
                    mask_rule: Optional[MaskRule] = None,
                    min_new_position_votes: int = 1,
                    server_optimizer: Optional[
                        tff.learning.optimizers.Optimizer] = None,
                    server_rule: str = 'feddst',
                    min_votes_unit: str = 'clients'
                    ) -> tff.learning.templates.FinalizerProcess:
  """Builds FedDST's `FinalizerProcess` (or another method's, `mask_rule`).

  Type signatures:
    initialize: `( -> FinalizerState(<buffers>, int32)@SERVER)`
    next: `(<FinalizerState@SERVER, ModelWeights@SERVER,
      SparseAggregate@SERVER> -> <state=FinalizerState@SERVER,
      result=ModelWeights@SERVER, measurements=<mask_changed_positions,
      sparsity, layer_num_active, num_clients_aggregated,
      server_update_failed>@SERVER>)`

  Args:
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel (with `num_active_by_round`: the
      payload capacity, which no row may exceed).
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    aggregate_type: TFF type of the (unplaced) `SparseAggregate`.
    server_learning_rate: Server step size, > 0.
    server_momentum: Server momentum in [0, 1).
    min_votes: Vote threshold for a position to be eligible for the next
      mask, in `min_votes_unit` (`eligible_votes`).
    remember_old: Count a client lacking a global-mask position as sending
      the old global weight there (see the module docstring).
    num_active_by_round: Optional int array [T_end + 1, num_layers]: round
      t (1-based) keeps row min(t, T_end) per layer; row 0 describes the
      initial model. None: `num_active` in every round.
    mask_rule: A method's own rule for the next masks (see the module
      docstring), run after the averaging step; its measurements follow
      the finalizer's. None: FedDST's magnitude re-prune.
    min_new_position_votes: Clients that must hold a position outside the
      round's global mask for it to count (see the module docstring), >= 1.
    server_optimizer: An adaptive `tff.learning.optimizers.Optimizer`
      (`server_optimizers`) for the step instead of server SGD with
      momentum; its state is in an `AdaptiveFinalizerState`. None: the
      momentum buffers with `server_learning_rate` and `server_momentum`.
    server_rule: 'feddst' or 'reference' (the authors' conditional re-prune;
      see the module docstring).
    min_votes_unit: 'clients' or 'weight' (`eligible_votes`).

  Returns:
    A `tff.learning.templates.FinalizerProcess`.

  Raises:
    ValueError: For a server learning rate <= 0, momentum outside [0, 1),
      `min_new_position_votes` < 1, an unknown server rule or vote unit, or
      a count table of the wrong shape or with counts outside
      [0, num_active].
  """
  update = server_update_fn(
      layout, num_active, server_learning_rate=server_learning_rate,
      server_momentum=server_momentum, min_votes=min_votes,
      remember_old=remember_old, num_active_by_round=num_active_by_round,
      mask_rule=mask_rule, min_new_position_votes=min_new_position_votes,
      server_optimizer=server_optimizer,
      server_rule=server_rule, min_votes_unit=min_votes_unit)
  trainable_specs = [(t.shape, t.dtype) for t in model_weights_type.trainable]

  @tff.tensorflow.computation
  def initial_state():
    return initial_finalizer_state(trainable_specs, server_optimizer)

  state_type = initial_state.type_signature.result

  @tff.tensorflow.computation(state_type, model_weights_type, aggregate_type)
  def server_update(state, weights, round_aggregate):
    return update(state, weights, round_aggregate)

  return finalizer_on_server(initial_state, server_update, model_weights_type,
                             aggregate_type)


def initial_finalizer_state(
    trainable_specs: Sequence[tuple[Any, Any]],
    server_optimizer: Optional[tff.learning.optimizers.Optimizer] = None):
  """The state before round 1: zero buffers (`(shape, dtype)` each), round 0.

  With an adaptive `server_optimizer`, an `AdaptiveFinalizerState` that also
  holds the optimizer's initial state; else a `FinalizerState`.
  """
  state = FinalizerState(
      buffers=tuple(tf.zeros(shape, dtype) for shape, dtype in trainable_specs),
      round_num=tf.constant(0, tf.int32))
  if server_optimizer is None:
    return state
  return AdaptiveFinalizerState(
      buffers=state.buffers, round_num=state.round_num,
      optimizer_state=server_optimizers.initial_state(server_optimizer,
                                                      trainable_specs))


ServerUpdate = Callable[[FinalizerState, Any, Any],
                        tuple[FinalizerState, Any, collections.OrderedDict]]


def server_update_fn(layout: models.ModelLayout, num_active: Sequence[int],
                     *,
                     server_learning_rate: float = 1.0,
                     server_momentum: float = 0.0,
                     min_votes: int = 0,
                     remember_old: bool = False,
                     num_active_by_round: Optional[np.ndarray] = None,
                     mask_rule: Optional[MaskRule] = None,
                     min_new_position_votes: int = 1,
                     server_optimizer: Optional[
                         tff.learning.optimizers.Optimizer] = None,
                     server_rule: str = 'feddst',
                     min_votes_unit: str = 'clients') -> ServerUpdate:
  """The finalizer's server step as a plain TF function.

  `build_finalizer` wraps it in a TFF computation; the plain-TF benchmark
  loop (`plain_loop.PlainFedDst`) calls the same function, so both run the
  same server step. Arguments as for `build_finalizer`.

  Returns:
    `update(state, weights, aggregate) -> (new_state, new_weights,
    measurements)` with a `FinalizerState` (an `AdaptiveFinalizerState`
    with `server_optimizer`), the global `ModelWeights` and the
    round's aggregate (a `SparseAggregate` or `ExtendedAggregate`; expand a
    `CompactAggregate` first); measurements as in `build_finalizer`.

  Raises:
    ValueError: As `build_finalizer`.
  """
  if server_learning_rate <= 0:
    raise ValueError(
        f'server_learning_rate must be > 0, got {server_learning_rate}.')
  if not 0 <= server_momentum < 1:
    raise ValueError(f'server_momentum must be in [0, 1), got {server_momentum}.')
  if min_new_position_votes < 1:
    raise ValueError('min_new_position_votes must be >= 1, got '
                     f'{min_new_position_votes}.')
  if server_rule not in mask_lib.SERVER_RULES:
    raise ValueError(f'server_rule must be one of {mask_lib.SERVER_RULES}, '
                     f'got {server_rule!r}.')
  if min_votes_unit not in mask_lib.MIN_VOTES_UNITS:
    raise ValueError(f'min_votes_unit must be one of '
                     f'{mask_lib.MIN_VOTES_UNITS}, got {min_votes_unit!r}.')
  count_table = _checked_count_table(num_active, num_active_by_round, layout)
  last_row = count_table.shape[0] - 1

  def round_num_active(round_num: tf.Tensor) -> list:
    """Per-layer counts of round `round_num` (Python ints if constant)."""
    if last_row == 0:
      return [int(n) for n in count_table[0]]
    row = tf.gather(tf.constant(count_table),
                    tf.minimum(round_num, last_row))
    return [row[position] for position in range(count_table.shape[1])]

  def update(state, weights, round_aggregate):
    round_num = state.round_num + 1
    counts = round_num_active(round_num)
    buffers = state.buffers
    # () without an adaptive optimizer: nothing more flows through the conds.
    optimizer_state = (state.optimizer_state if server_optimizer is not None
                       else ())
    aggregate = sums_of(round_aggregate)

    def updated():
      if server_optimizer is None:
        new_buffers, new_weights, changed = apply_aggregate(
            buffers, weights, aggregate, layout, counts,
            server_learning_rate, server_momentum, min_votes, remember_old,
            min_new_position_votes, server_rule, min_votes_unit)
        new_optimizer_state = ()
      else:  # Averages as above; the optimizer's step (server_optimizers).
        admitted, targets, dense_targets = round_targets(
            weights, aggregate, layout, remember_old, min_new_position_votes)
        new_optimizer_state, new_trainable = server_optimizers.masked_step(
            server_optimizer, optimizer_state, list(weights.trainable),
            targets, kernel_masks(weights, layout))
        new_buffers, new_weights, changed = reprune(
            list(buffers), new_trainable, weights, admitted, dense_targets,
            layout, counts, min_votes, min_new_position_votes, server_rule,
            min_votes_unit)
      return tuple(new_buffers), new_weights, changed, new_optimizer_state

    def unchanged():
      new_buffers, new_weights, changed = prune_to_counts(
          buffers, weights, layout, counts)
      return (tuple(new_buffers), new_weights, changed,
              tf.nest.map_structure(tf.identity, optimizer_state))

    new_buffers, new_weights, changed, new_optimizer_state = tf.cond(
        aggregate.total_weight > 0, updated, unchanged)
    rule_measurements = {}
    if mask_rule is not None:
      new_buffers, new_weights, changed, rule_measurements = apply_mask_rule(
          mask_rule, weights, new_buffers, new_weights, round_aggregate,
          layout)
    finite = all_finite([*new_buffers, *new_weights.trainable,
                         *new_weights.non_trainable,
                         *tf.nest.flatten(new_optimizer_state)])

    def kept():
      old_optimizer_state = tf.nest.map_structure(tf.identity,
                                                  optimizer_state)
      if last_row == 0:  # Constant counts: the old model, bit for bit.
        return (tuple(tf.identity(b) for b in buffers),
                tff.learning.models.ModelWeights(
                    trainable=[tf.identity(t) for t in weights.trainable],
                    non_trainable=[tf.identity(t)
                                   for t in weights.non_trainable]),
                tf.constant(0, tf.int32), old_optimizer_state)
      old_buffers, old_weights, old_changed = prune_to_counts(
          buffers, weights, layout, counts)
      return (tuple(old_buffers), old_weights, old_changed,
              old_optimizer_state)

    new_buffers, new_weights, changed, new_optimizer_state = tf.cond(
        finite, lambda: (new_buffers, new_weights, changed,
                         new_optimizer_state), kept)
    masks = [new_weights.non_trainable[i] for i in layout.mask_indices]
    measurements = collections.OrderedDict(
        mask_changed_positions=changed,
        sparsity=global_sparsity(new_weights, layout),
        layer_num_active=tuple(
            tf.cast(tf.reduce_sum(m), tf.int32) for m in masks),
        num_clients_aggregated=aggregate.num_clients,
        server_update_failed=tf.cast(tf.logical_not(finite), tf.int32))
    measurements.update(rule_measurements)
    if server_optimizer is None:
      return (FinalizerState(buffers=new_buffers, round_num=round_num),
              new_weights, measurements)
    # Off the final masks (FedDST's re-prune, a mask rule or a kept model's
    # re-prune), every position's state is the initial one.
    new_optimizer_state = server_optimizers.reset_off_masks(
        new_optimizer_state,
        server_optimizers.initial_state(
            server_optimizer,
            [(t.shape, t.dtype) for t in weights.trainable]),
        kernel_masks(new_weights, layout))
    return (AdaptiveFinalizerState(buffers=new_buffers, round_num=round_num,
                                   optimizer_state=new_optimizer_state),
            new_weights, measurements)

  return update


def finalizer_on_server(initial_state: tff.Computation,
                        server_update: tff.Computation,
                        model_weights_type: tff.Type, aggregate_type: tff.Type
                        ) -> tff.learning.templates.FinalizerProcess:
  """A `FinalizerProcess` whose whole step is one server-side computation.

  Args:
    initial_state: A no-argument TF computation returning the state.
    server_update: A TF computation `(state, weights, aggregate) ->
      (new_state, new_weights, measurements)`.
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    aggregate_type: TFF type of the (unplaced) aggregate.

  Returns:
    The `tff.learning.templates.FinalizerProcess`.
  """

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_state, tff.SERVER)

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.types.FederatedType(model_weights_type, tff.SERVER),
      tff.types.FederatedType(aggregate_type, tff.SERVER))
  def next_fn(state, weights, aggregate):
    new_state, new_weights, measurements = tff.federated_map(
        server_update, (state, weights, aggregate))
    return tff.templates.MeasuredProcessOutput(
        state=new_state, result=new_weights, measurements=measurements)

  return tff.learning.templates.FinalizerProcess(init_fn, next_fn)
