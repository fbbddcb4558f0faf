"""TF-MOT pruning wrappers whose masks are written only by FedDST.

TF Model Optimization's `prune_low_magnitude` wrapper owns, for every prunable
weight, a non-trainable `mask` variable that multiplies the weight in each
forward pass. Its own schedule would rewrite that mask by magnitude; here the
schedule never fires (`NeverPrune`), so the mask changes only when FedDST
assigns it (random init, client readjustment, server re-prune).

This module is the only place that reaches into the wrapper's variables:
callers get named `PrunableWeight(weight, mask)` pairs from
`prunable_weights(model)` instead of TF-MOT's positional tuples.
"""

from typing import NamedTuple, Sequence

import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

PRUNED_LAYER_TYPES = (tf.keras.layers.Conv2D, tf.keras.layers.Dense)


@tf.keras.utils.register_keras_serializable(package='tff_feddst')
class NeverPrune(tfmot.sparsity.keras.PruningSchedule):
  """A pruning schedule that never asks TF-MOT to update a mask.

  With it, TF-MOT's `conditional_mask_update` is a no-op and the wrapper's
  masks hold whatever FedDST last assigned to them.
  """

  def __call__(self, step):
    del step  # The answer is the same at every step.
    return (tf.constant(False), tf.constant(0.0, dtype=tf.float32))

  def get_config(self):
    return {'class_name': self.__class__.__name__, 'config': {}}


class PrunableWeight(NamedTuple):
  """One prunable kernel of a wrapped layer and the mask TF-MOT applies to it.

  Attributes:
    layer_name: Name of the wrapping `PruneLowMagnitude` layer.
    weight: The kernel variable (dense storage; inactive entries are 0).
    mask: The float 0/1 mask variable of the same shape and dtype.
  """
  layer_name: str
  weight: tf.Variable
  mask: tf.Variable


def wrap_layer(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
  """Wraps `layer` in TF-MOT's pruning wrapper with the `NeverPrune` schedule.

  Args:
    layer: A Keras `Conv2D` or `Dense` layer, not yet built.

  Returns:
    The wrapped layer (`PruneLowMagnitude`).

  Raises:
    TypeError: If `layer` is not one of `PRUNED_LAYER_TYPES`.
  """
  if not isinstance(layer, PRUNED_LAYER_TYPES):
    raise TypeError(
        f'Only {[t.__name__ for t in PRUNED_LAYER_TYPES]} layers are pruned, '
        f'got {type(layer).__name__}.')
  return tfmot.sparsity.keras.prune_low_magnitude(
      layer, pruning_schedule=NeverPrune())


def is_wrapped(layer: tf.keras.layers.Layer) -> bool:
  """Returns whether `layer` is a TF-MOT pruning wrapper."""
  return isinstance(layer, pruning_wrapper.PruneLowMagnitude)


def wrapped_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
  """Returns the model's pruning wrappers in layer order."""
  return [layer for layer in model.layers if is_wrapped(layer)]


def prunable_weights(model: tf.keras.Model) -> list[PrunableWeight]:
  """Returns every prunable `(weight, mask)` pair of a built model, in order.

  Args:
    model: A built Keras model whose prunable layers were wrapped by
      `wrap_layer`.

  Returns:
    One `PrunableWeight` per pruned kernel, in layer order.
  """
  pairs = []
  for layer in wrapped_layers(model):
    for weight, mask, _ in layer.pruning_vars:
      pairs.append(PrunableWeight(layer.name, weight, mask))
  return pairs


def pruning_steps(model: tf.keras.Model) -> list[tf.Variable]:
  """Returns each wrapper's int64 `pruning_step` variable, in layer order."""
  return [layer.pruning_step for layer in wrapped_layers(model)]


def tfmot_bookkeeping_variables(model: tf.keras.Model) -> list[tf.Variable]:
  """Returns the wrapper-owned variables that FedDST never communicates.

  These are each wrapper's `threshold`s (unused: TF-MOT writes them only when
  its schedule fires) and `pruning_step`.

  Args:
    model: A built wrapped Keras model.

  Returns:
    The list of those variables.
  """
  variables = []
  for layer in wrapped_layers(model):
    variables.extend(threshold for _, _, threshold in layer.pruning_vars)
    variables.append(layer.pruning_step)
  return variables


def set_masks(model: tf.keras.Model, masks: Sequence[tf.Tensor]) -> None:
  """Assigns masks to the model's wrappers and zeroes masked-out weights.

  Args:
    model: A built wrapped Keras model.
    masks: One 0/1 mask per prunable weight, in `prunable_weights` order.

  Raises:
    ValueError: If the number of masks does not match.
  """
  pairs = prunable_weights(model)
  if len(pairs) != len(masks):
    raise ValueError(f'Model has {len(pairs)} prunable weights, got '
                     f'{len(masks)} masks.')
  for pair, mask in zip(pairs, masks):
    pair.mask.assign(tf.cast(mask, pair.mask.dtype))
    pair.weight.assign(pair.weight * pair.mask)


def start_pruning_steps(model: tf.keras.Model) -> None:
  """Sets every `pruning_step` to 0 so `call(training=True)` works outside fit.

  TF-MOT's wrapper increments the step on each training call and asserts it is
  at least 1; its initial value is -1, which only the `UpdatePruningStep`
  Keras callback would fix. FedDST trains without `fit`.

  Args:
    model: A built wrapped Keras model.
  """
  for step in pruning_steps(model):
    step.assign(0)


def strip(model: tf.keras.Model) -> tf.keras.Model:
  """Returns a copy of `model` without wrappers, with masks applied to kernels.

  `tfmot.sparsity.keras.strip_pruning` copies the stored kernels as they are;
  the masks are multiplied in first so the stripped model computes what the
  wrapped one does.

  Args:
    model: A built wrapped Keras model.

  Returns:
    A plain Keras model with the masked kernels.
  """
  for pair in prunable_weights(model):
    pair.weight.assign(pair.weight * pair.mask)
  return tfmot.sparsity.keras.strip_pruning(model)
