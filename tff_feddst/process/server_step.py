"""The server's averaging step and re-prune, as pure TF functions.

`finalizer` composes them into FedDST's server update (with its round
counter, finiteness guard, optimizer and a method's own mask rule);
the plain-TF loop and the device round call the same functions.

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
sparsity, which the counts round down)."""

from typing import Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.sparse import masks as mask_lib


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


def mask_movement(old_weights, new_weights,
                  aggregate: aggregation.SparseAggregate,
                  layout: models.ModelLayout, min_votes: int = 0,
                  min_new_position_votes: int = 1,
                  min_votes_unit: str = 'clients') -> dict:
  """How the global mask moved this round: measurements only, no state.

  Summed over the kernels, against the round's global mask (`old_weights`)
  and the final one (`new_weights`: FedDST's re-prune, a method's mask
  rule, or a kept model):

    mask_new_positions_offered: positions outside the old mask that some
      accepted client holds and that pass the admission rules
      (`admit_new_positions`, `eligible_votes`), i.e. that the re-prune
      could choose;
    mask_new_positions_entered: of those, the ones in the new mask;
    mask_entered_weight_mass: sum of |w| in the new model over every
      position that entered the mask (offered or not: a mask rule may grow
      positions nobody holds);
    mask_left_weight_mass: sum of |w| in the old model over every position
      that left it.

  A kept round (failed, or no client) has no entries (its mask only
  shrinks, if at all) but still counts what was offered; a round without
  clients offers nothing.

  Args:
    old_weights: The round's global `ModelWeights`.
    new_weights: The next global `ModelWeights`.
    aggregate: The round's `SparseAggregate`, as the finalizer received it.
    layout: The model's `ModelLayout`.
    min_votes: As `apply_aggregate`.
    min_new_position_votes: As `apply_aggregate`.
    min_votes_unit: As `apply_aggregate`.

  Returns:
    A dict of the four measurements (int32 counts, float32 masses).
  """
  if min_new_position_votes > 1:
    aggregate = admit_new_positions(aggregate, old_weights, layout,
                                    min_new_position_votes)
  votes = eligible_votes(aggregate, min_votes, min_votes_unit)
  offered = tf.constant(0, tf.int32)
  entered = tf.constant(0, tf.int32)
  entered_mass = tf.constant(0.0, tf.float32)
  left_mass = tf.constant(0.0, tf.float32)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    old_mask = old_weights.non_trainable[mask_index] > 0
    new_mask = new_weights.non_trainable[mask_index] > 0
    outside = tf.logical_not(old_mask)
    offered_here = tf.logical_and(outside, votes[position] > 0)
    offered += tf.math.count_nonzero(offered_here, dtype=tf.int32)
    entered += tf.math.count_nonzero(
        tf.logical_and(offered_here, new_mask), dtype=tf.int32)
    entering = tf.cast(tf.logical_and(outside, new_mask), tf.float32)
    leaving = tf.cast(tf.logical_and(old_mask, tf.logical_not(new_mask)),
                      tf.float32)
    entered_mass += tf.reduce_sum(
        entering * tf.abs(tf.cast(new_weights.trainable[kernel_index],
                                  tf.float32)))
    left_mass += tf.reduce_sum(
        leaving * tf.abs(tf.cast(old_weights.trainable[kernel_index],
                                 tf.float32)))
  return dict(mask_new_positions_offered=offered,
              mask_new_positions_entered=entered,
              mask_entered_weight_mass=entered_mass,
              mask_left_weight_mass=left_mass)
