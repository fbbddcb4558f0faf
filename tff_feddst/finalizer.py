"""FedDST's server update: averaged sparse weights, momentum, re-prune.

From the `SparseAggregate` of a round:

  target[p] = weighted_kernel_sums[p] / weighted_votes[p]  (0 where nobody
              holds p: each position is averaged only over its holders)
  target_dense = weighted_dense_sums / total_weight
  buffer = server_momentum * buffer + (target - w);  w = w + server_lr * buffer
  per layer: mask = the layer's num_active positions held by some client with
             the largest |w| (ties: more votes, then lower index);
             w = w * mask; buffer = buffer * mask

With server_lr 1 and server_momentum 0 the new weights are the averages
themselves (FedAvg on the sparse support); server momentum gives FedAvgM. A
round in which no client reported (total weight 0) leaves everything as is.
TF-MOT's bookkeeping variables are never touched; masks live in
`ModelWeights.non_trainable`, which TFF's stock finalizers leave unchanged,
hence this finalizer.
"""

import collections
from typing import Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst import aggregation
from tff_feddst import masks as mask_lib
from tff_feddst import models


def apply_aggregate(buffers: Sequence[tf.Tensor], weights,
                    aggregate: aggregation.SparseAggregate,
                    layout: models.ModelLayout, num_active: Sequence[int],
                    server_learning_rate: float, server_momentum: float,
                    min_votes: int = 0):
  """Computes the next global model from the current one and the sums.

  Args:
    buffers: Server momentum buffers, one per trainable variable.
    weights: Current global `ModelWeights` (masked kernels, masks).
    aggregate: The round's `SparseAggregate`.
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel in the next mask.
    server_learning_rate: Server step size (1.0 for FedAvg).
    server_momentum: Server momentum in [0, 1) (0 for FedAvg).
    min_votes: Positions held by fewer clients are not eligible for the
      next mask (the reference's `--min-votes`, counted in clients).

  Returns:
    `(new_buffers, new_weights, mask_changed_positions)` where the last is the
    int32 number of positions whose mask value changed (either direction).
  """
  trainable = list(weights.trainable)
  non_trainable = list(weights.non_trainable)
  targets = list(trainable)
  for position, index in enumerate(layout.kernel_indices):
    targets[index] = tf.math.divide_no_nan(
        aggregate.weighted_kernel_sums[position],
        aggregate.weighted_votes[position])
  dense_sums = list(aggregate.weighted_dense_sums)
  num_dense_trainable = len(layout.dense_trainable_indices)
  for position, index in enumerate(layout.dense_trainable_indices):
    targets[index] = dense_sums[position] / aggregate.total_weight

  new_buffers = [server_momentum * buffer + (target - current)
                 for buffer, target, current in zip(buffers, targets, trainable)]
  new_trainable = [current + server_learning_rate * buffer
                   for current, buffer in zip(trainable, new_buffers)]

  new_non_trainable = list(non_trainable)
  mask_changed_positions = tf.constant(0, tf.int32)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    votes = aggregate.votes[position]
    if min_votes > 1:
      votes = votes * tf.cast(votes >= min_votes, votes.dtype)
    new_mask = mask_lib.server_reprune(new_trainable[kernel_index], votes,
                                       num_active[position])
    new_mask = tf.cast(new_mask, non_trainable[mask_index].dtype)
    new_trainable[kernel_index] = new_trainable[kernel_index] * new_mask
    new_buffers[kernel_index] = new_buffers[kernel_index] * new_mask
    mask_changed_positions += tf.math.count_nonzero(
        tf.not_equal(new_mask, non_trainable[mask_index]), dtype=tf.int32)
    new_non_trainable[mask_index] = new_mask
  for position, index in enumerate(layout.dense_non_trainable_indices):
    new_non_trainable[index] = (dense_sums[num_dense_trainable + position] /
                                aggregate.total_weight)
  new_weights = tff.learning.models.ModelWeights(
      trainable=new_trainable, non_trainable=new_non_trainable)
  return new_buffers, new_weights, mask_changed_positions


def global_sparsity(weights, layout: models.ModelLayout) -> tf.Tensor:
  """Fraction of zeros over all prunable positions of `weights`' masks."""
  masks = [weights.non_trainable[i] for i in layout.mask_indices]
  active = tf.add_n([tf.reduce_sum(tf.cast(m, tf.float32)) for m in masks])
  return 1.0 - active / float(sum(layout.kernel_sizes))


def build_finalizer(layout: models.ModelLayout, num_active: Sequence[int],
                    model_weights_type: tff.Type, aggregate_type: tff.Type,
                    server_learning_rate: float = 1.0,
                    server_momentum: float = 0.0,
                    min_votes: int = 0
                    ) -> tff.learning.templates.FinalizerProcess:
  """Builds FedDST's `FinalizerProcess`.

  Type signatures:
    initialize: `( -> <buffers>@SERVER)`
    next: `(<<buffers>@SERVER, ModelWeights@SERVER, SparseAggregate@SERVER>
      -> <state=<buffers>@SERVER, result=ModelWeights@SERVER,
      measurements=<mask_changed_positions, sparsity, layer_num_active,
      num_clients_aggregated>@SERVER>)`

  Args:
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel.
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    aggregate_type: TFF type of the (unplaced) `SparseAggregate`.
    server_learning_rate: Server step size, > 0.
    server_momentum: Server momentum in [0, 1).
    min_votes: Minimum number of clients holding a position for it to be
      eligible for the next mask.

  Returns:
    A `tff.learning.templates.FinalizerProcess`.

  Raises:
    ValueError: For a server learning rate <= 0 or momentum outside [0, 1).
  """
  if server_learning_rate <= 0:
    raise ValueError(
        f'server_learning_rate must be > 0, got {server_learning_rate}.')
  if not 0 <= server_momentum < 1:
    raise ValueError(f'server_momentum must be in [0, 1), got {server_momentum}.')
  trainable_specs = [(t.shape, t.dtype) for t in model_weights_type.trainable]

  @tff.tensorflow.computation
  def initial_buffers():
    return tuple(tf.zeros(shape, dtype) for shape, dtype in trainable_specs)

  buffers_type = initial_buffers.type_signature.result

  @tff.tensorflow.computation(buffers_type, model_weights_type, aggregate_type)
  def server_update(buffers, weights, aggregate):
    def updated():
      new_buffers, new_weights, changed = apply_aggregate(
          buffers, weights, aggregate, layout, num_active,
          server_learning_rate, server_momentum, min_votes)
      return tuple(new_buffers), new_weights, changed

    def unchanged():
      return (tuple(tf.identity(b) for b in buffers),
              tff.learning.models.ModelWeights(
                  trainable=[tf.identity(t) for t in weights.trainable],
                  non_trainable=[tf.identity(t) for t in weights.non_trainable]),
              tf.constant(0, tf.int32))

    new_buffers, new_weights, changed = tf.cond(
        aggregate.total_weight > 0, updated, unchanged)
    masks = [new_weights.non_trainable[i] for i in layout.mask_indices]
    measurements = collections.OrderedDict(
        mask_changed_positions=changed,
        sparsity=global_sparsity(new_weights, layout),
        layer_num_active=tuple(
            tf.cast(tf.reduce_sum(m), tf.int32) for m in masks),
        num_clients_aggregated=aggregate.num_clients)
    return new_buffers, new_weights, measurements

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_buffers, tff.SERVER)

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
