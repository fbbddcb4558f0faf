"""FedDST's server update: averaged sparse weights, momentum, re-prune.

The step itself, averages over holders, momentum and the magnitude
re-prune, with the vote, remember-old, new-position and server rules,
lives in `server_step`; this module wraps it in the `FinalizerProcess`:
per-round counts, the finiteness guard, an adaptive server optimizer's
state and a method's own mask rule.

Growing sparsity: with `num_active_by_round`, round t keeps row min(t, last)
of that table per layer (`sparsity_distribution.num_active_by_round`); the
state counts completed rounds for this (and is checkpointed with the rest of
the process state).

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

A method with its own mask rule (PruneFL's importance-based
reconfiguration) plugs it in as `mask_rule`: after the averaging step
(`server_step`),
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
from tff_feddst.process import server_step
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
      server_update_failed, mask_new_positions_offered,
      mask_new_positions_entered, mask_entered_weight_mass,
      mask_left_weight_mass (`server_step.mask_movement`, against the
      final masks)>@SERVER>)`

  Args:
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel (with `num_active_by_round`: the
      payload capacity, which no row may exceed).
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    aggregate_type: TFF type of the (unplaced) `SparseAggregate`.
    server_learning_rate: Server step size, > 0.
    server_momentum: Server momentum in [0, 1).
    min_votes: Vote threshold for a position to be eligible for the next
      mask, in `min_votes_unit` (`server_step.eligible_votes`).
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
    min_votes_unit: 'clients' or 'weight' (`server_step.eligible_votes`).

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
  _check_server_settings(server_learning_rate, server_momentum,
                         min_new_position_votes, server_rule, min_votes_unit)
  count_table = _checked_count_table(num_active, num_active_by_round, layout)
  last_row = count_table.shape[0] - 1
  rules = dict(server_learning_rate=server_learning_rate,
               server_momentum=server_momentum, min_votes=min_votes,
               remember_old=remember_old,
               min_new_position_votes=min_new_position_votes,
               server_rule=server_rule, min_votes_unit=min_votes_unit)

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
    step = tf.cond(
        aggregate.total_weight > 0,
        lambda: _averaged_step(buffers, optimizer_state, weights, aggregate,
                               layout, counts, server_optimizer, rules),
        lambda: _kept_step(buffers, optimizer_state, weights, layout, counts,
                           reprune_to_counts=True))
    rule_measurements = {}
    if mask_rule is not None:
      new_buffers, new_weights, changed, rule_measurements = apply_mask_rule(
          mask_rule, weights, step[0], step[1], round_aggregate, layout)
      step = (new_buffers, new_weights, changed, step[3])
    finite = server_step.all_finite([
        *step[0], *step[1].trainable, *step[1].non_trainable,
        *tf.nest.flatten(step[3])])
    new_buffers, new_weights, changed, new_optimizer_state = tf.cond(
        finite, lambda: step,
        lambda: _kept_step(buffers, optimizer_state, weights, layout, counts,
                           reprune_to_counts=last_row > 0))
    masks = [new_weights.non_trainable[i] for i in layout.mask_indices]
    measurements = collections.OrderedDict(
        mask_changed_positions=changed,
        sparsity=server_step.global_sparsity(new_weights, layout),
        layer_num_active=tuple(
            tf.cast(tf.reduce_sum(m), tf.int32) for m in masks),
        num_clients_aggregated=aggregate.num_clients,
        server_update_failed=tf.cast(tf.logical_not(finite), tf.int32))
    measurements.update(server_step.mask_movement(
        weights, new_weights, aggregate, layout, min_votes,
        min_new_position_votes, min_votes_unit))
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
        server_step.kernel_masks(new_weights, layout))
    return (AdaptiveFinalizerState(buffers=new_buffers, round_num=round_num,
                                   optimizer_state=new_optimizer_state),
            new_weights, measurements)

  return update


def _check_server_settings(server_learning_rate: float,
                           server_momentum: float,
                           min_new_position_votes: int, server_rule: str,
                           min_votes_unit: str) -> None:
  """Raises ValueError for settings `server_update_fn` cannot use."""
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


def _averaged_step(buffers: Sequence[tf.Tensor], optimizer_state: Any,
                   weights, aggregate: aggregation.SparseAggregate,
                   layout: models.ModelLayout,
                   counts: Sequence[mask_lib.Count],
                   server_optimizer: Optional[
                       tff.learning.optimizers.Optimizer],
                   rules: dict):
  """The step of a round with clients: averages, server step, re-prune.

  Args:
    buffers: The momentum buffers.
    optimizer_state: The adaptive optimizer's state (() without one).
    weights: The round's global `ModelWeights`.
    aggregate: The round's `SparseAggregate`.
    layout: The model's `ModelLayout`.
    counts: The round's active weights per kernel.
    server_optimizer: An adaptive optimizer, or None for the momentum step.
    rules: `server_step.apply_aggregate`'s keyword settings.

  Returns:
    `(new_buffers, new_weights, mask_changed_positions,
    new_optimizer_state)`.
  """
  if server_optimizer is None:
    new_buffers, new_weights, changed = server_step.apply_aggregate(
        buffers, weights, aggregate, layout, counts, **rules)
    return tuple(new_buffers), new_weights, changed, ()
  # Averages as above; the optimizer's step (server_optimizers).
  admitted, targets, dense_targets = server_step.round_targets(
      weights, aggregate, layout, rules['remember_old'],
      rules['min_new_position_votes'])
  new_optimizer_state, new_trainable = server_optimizers.masked_step(
      server_optimizer, optimizer_state, list(weights.trainable),
      targets, server_step.kernel_masks(weights, layout))
  new_buffers, new_weights, changed = server_step.reprune(
      list(buffers), new_trainable, weights, admitted, dense_targets,
      layout, counts, rules['min_votes'], rules['min_new_position_votes'],
      rules['server_rule'], rules['min_votes_unit'])
  return tuple(new_buffers), new_weights, changed, new_optimizer_state


def _kept_step(buffers: Sequence[tf.Tensor], optimizer_state: Any, weights,
               layout: models.ModelLayout, counts: Sequence[mask_lib.Count],
               reprune_to_counts: bool):
  """The old model kept: bit for bit, or re-pruned to the round's counts.

  Args:
    buffers: The momentum buffers.
    optimizer_state: The adaptive optimizer's state (() without one).
    weights: The round's global `ModelWeights`.
    layout: The model's `ModelLayout`.
    counts: The round's active weights per kernel.
    reprune_to_counts: Re-prune by magnitude within the old masks
      (`server_step.prune_to_counts`; a round without clients, or a failed
      round under growing sparsity); else copy the old model as it is.

  Returns:
    `(buffers, weights, mask_changed_positions, optimizer_state)`.
  """
  old_optimizer_state = tf.nest.map_structure(tf.identity, optimizer_state)
  if not reprune_to_counts:
    return (tuple(tf.identity(b) for b in buffers),
            tff.learning.models.ModelWeights(
                trainable=[tf.identity(t) for t in weights.trainable],
                non_trainable=[tf.identity(t)
                               for t in weights.non_trainable]),
            tf.constant(0, tf.int32), old_optimizer_state)
  new_buffers, new_weights, changed = server_step.prune_to_counts(
      buffers, weights, layout, counts)
  return tuple(new_buffers), new_weights, changed, old_optimizer_state


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
