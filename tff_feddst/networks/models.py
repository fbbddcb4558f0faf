"""The paper's Keras models, with TF-MOT pruning wrappers on every kernel.

Architectures follow the FedDST paper's reference code (bibikar/feddst
`models.py`): conv and dense layers are pruned (all of them, first and last
included); biases stay dense. Models output logits: the softmax lives in the
loss (`from_logits=True`), unlike the reference, which applies it twice.

Initialisation matches PyTorch's default for `nn.Conv2d`/`nn.Linear` (kernel
and bias uniform in +-1/sqrt(fan_in)), so learning rates carry over from the
reference.

`ModelLayout` records where each kind of variable sits in TFF's
`ModelWeights(trainable, non_trainable)` lists, so that FedDST code addresses
kernels, masks and dense parameters by role, not by position.
"""

import math
from typing import Callable, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tff_feddst.networks import pruning
from tff_feddst.running import choices

ModelFn = Callable[[], tf.keras.Model]


def _torch_default_init(fan_in: int, seed: Optional[int]):
  """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default init."""
  limit = 1.0 / math.sqrt(fan_in)
  return tf.keras.initializers.RandomUniform(-limit, limit, seed=seed)


def _conv(filters: int, kernel_size: int, in_channels: int, seed_stream,
          padding: str = 'valid', activation: Optional[str] = 'relu'):
  fan_in = in_channels * kernel_size * kernel_size
  return pruning.wrap_layer(
      tf.keras.layers.Conv2D(
          filters, kernel_size, padding=padding, activation=activation,
          kernel_initializer=_torch_default_init(fan_in, next(seed_stream)),
          bias_initializer=_torch_default_init(fan_in, next(seed_stream))))


def _dense(units: int, fan_in: int, seed_stream,
           activation: Optional[str] = 'relu'):
  return pruning.wrap_layer(
      tf.keras.layers.Dense(
          units, activation=activation,
          kernel_initializer=_torch_default_init(fan_in, next(seed_stream)),
          bias_initializer=_torch_default_init(fan_in, next(seed_stream))))


def _seed_stream(seed: Optional[int]):
  """Yields distinct per-initializer seeds derived from `seed` (or None)."""
  counter = 0
  while True:
    yield None if seed is None else seed * 1000 + counter
    counter += 1


def mnist_net(seed: Optional[int] = None) -> tf.keras.Model:
  """The paper's MNIST net: conv5 1->10, pool3/1, conv5 10->20, pool3/1, fc.

  28x28x1 -> conv 24x24x10 -> pool 22x22 -> conv 18x18x20 -> pool 16x16 ->
  flatten 5120 -> dense 50 -> dense 10 (logits).

  Args:
    seed: Seed for the initializers, or None for random.

  Returns:
    An uncompiled Keras model with wrapped conv and dense layers.
  """
  seeds = _seed_stream(seed)
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(28, 28, 1)),
      _conv(10, 5, 1, seeds),
      tf.keras.layers.MaxPool2D(pool_size=3, strides=1),
      _conv(20, 5, 10, seeds),
      tf.keras.layers.MaxPool2D(pool_size=3, strides=1),
      tf.keras.layers.Flatten(),
      _dense(50, 5120, seeds),
      _dense(10, 50, seeds, activation=None),
  ], name='mnist_net')


def _lenet_cifar(num_classes: int, hidden: tuple[int, ...], name: str,
                 seed: Optional[int]) -> tf.keras.Model:
  seeds = _seed_stream(seed)
  layers = [
      tf.keras.layers.InputLayer(input_shape=(32, 32, 3)),
      _conv(6, 5, 3, seeds),
      tf.keras.layers.MaxPool2D(pool_size=3, strides=1),
      _conv(16, 5, 6, seeds),
      tf.keras.layers.MaxPool2D(pool_size=3, strides=1),
      tf.keras.layers.Flatten(),
  ]
  fan_in = 16 * 20 * 20
  for units in hidden:
    layers.append(_dense(units, fan_in, seeds))
    fan_in = units
  layers.append(_dense(num_classes, fan_in, seeds, activation=None))
  return tf.keras.Sequential(layers, name=name)


def cifar10_net(seed: Optional[int] = None) -> tf.keras.Model:
  """The paper's CIFAR-10 net: conv5 3->6, conv5 6->16 (pool3/1), fc 120-84-10.

  Args:
    seed: Seed for the initializers, or None for random.

  Returns:
    An uncompiled wrapped Keras model for 32x32x3 inputs.
  """
  return _lenet_cifar(10, (120, 84), 'cifar10_net', seed)


def cifar100_net(seed: Optional[int] = None) -> tf.keras.Model:
  """The paper's CIFAR-100 net: as the CIFAR-10 net with fc 120-100.

  Args:
    seed: Seed for the initializers, or None for random.

  Returns:
    An uncompiled wrapped Keras model for 32x32x3 inputs.
  """
  return _lenet_cifar(100, (120,), 'cifar100_net', seed)


def emnist_conv2(seed: Optional[int] = None) -> tf.keras.Model:
  """LEAF's FEMNIST CNN ("Conv2"): conv5 32, pool2, conv5 64, pool2, fc 2048, 62.

  Args:
    seed: Seed for the initializers, or None for random.

  Returns:
    An uncompiled wrapped Keras model for 28x28x1 inputs.
  """
  seeds = _seed_stream(seed)
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(28, 28, 1)),
      _conv(32, 5, 1, seeds, padding='same'),
      tf.keras.layers.MaxPool2D(pool_size=2, strides=2),
      _conv(64, 5, 32, seeds, padding='same'),
      tf.keras.layers.MaxPool2D(pool_size=2, strides=2),
      tf.keras.layers.Flatten(),
      _dense(2048, 64 * 7 * 7, seeds),
      _dense(62, 2048, seeds, activation=None),
  ], name='emnist_conv2')


MODEL_BUILDERS = dict(zip(choices.MODEL_NAMES, (mnist_net, cifar10_net,
                                                 cifar100_net, emnist_conv2)))


def get_model_fn(name: str, seed: Optional[int] = None) -> ModelFn:
  """Returns a no-argument function that builds the named wrapped model.

  Args:
    name: One of `MODEL_BUILDERS`.
    seed: Initializer seed used by every model the function builds.

  Returns:
    A `ModelFn`.

  Raises:
    ValueError: For an unknown model name.
  """
  if name not in MODEL_BUILDERS:
    raise ValueError(f'Unknown model {name!r}; accepted: '
                     f'{", ".join(sorted(MODEL_BUILDERS))}.')
  builder = MODEL_BUILDERS[name]
  return lambda: builder(seed)


class ModelLayout(NamedTuple):
  """Where each role's variables sit in `ModelWeights(trainable, non_trainable)`.

  Attributes:
    kernel_indices: Index in `trainable` of each prunable kernel.
    mask_indices: Index in `non_trainable` of each kernel's mask.
    dense_trainable_indices: Index in `trainable` of every other trainable
      variable (biases), which FedDST keeps dense.
    dense_non_trainable_indices: Index in `non_trainable` of non-trainable
      variables that are model state (e.g. normalisation statistics), averaged
      like dense weights.
    bookkeeping_indices: Index in `non_trainable` of TF-MOT's thresholds and
      pruning steps, which are never communicated.
    kernel_shapes: Shape of each prunable kernel.
    layer_bias_sizes: Number of bias entries in each prunable kernel's layer
      (used by the reference ERK, which counts biases in layer sizes).
  """
  kernel_indices: tuple[int, ...]
  mask_indices: tuple[int, ...]
  dense_trainable_indices: tuple[int, ...]
  dense_non_trainable_indices: tuple[int, ...]
  bookkeeping_indices: tuple[int, ...]
  kernel_shapes: tuple[tuple[int, ...], ...]
  layer_bias_sizes: tuple[int, ...]

  @property
  def kernel_sizes(self) -> tuple[int, ...]:
    return tuple(int(np.prod(shape)) for shape in self.kernel_shapes)

  @property
  def num_prunable(self) -> int:
    return len(self.kernel_indices)


def _index_by_ref(variables) -> dict:
  return {variable.ref(): index for index, variable in enumerate(variables)}


def model_layout(model: tf.keras.Model) -> ModelLayout:
  """Reads the `ModelLayout` of a built wrapped Keras model.

  Args:
    model: A built Keras model from this module (or any model whose Conv2D and
      Dense layers were wrapped with `pruning.wrap_layer`).

  Returns:
    The model's `ModelLayout`.
  """
  trainable = _index_by_ref(model.trainable_variables)
  non_trainable = _index_by_ref(model.non_trainable_variables)
  pairs = pruning.prunable_weights(model)
  kernel_indices = tuple(trainable[p.weight.ref()] for p in pairs)
  mask_indices = tuple(non_trainable[p.mask.ref()] for p in pairs)
  bookkeeping = tuple(
      non_trainable[v.ref()] for v in pruning.tfmot_bookkeeping_variables(model))
  bias_sizes = []
  for layer in pruning.wrapped_layers(model):
    bias = getattr(layer.layer, 'bias', None)
    for _ in layer.pruning_vars:
      bias_sizes.append(0 if bias is None else int(np.prod(bias.shape)))
  return ModelLayout(
      kernel_indices=kernel_indices,
      mask_indices=mask_indices,
      dense_trainable_indices=tuple(
          i for i in range(len(model.trainable_variables))
          if i not in kernel_indices),
      dense_non_trainable_indices=tuple(
          i for i in range(len(model.non_trainable_variables))
          if i not in mask_indices and i not in bookkeeping),
      bookkeeping_indices=bookkeeping,
      kernel_shapes=tuple(tuple(p.weight.shape.as_list()) for p in pairs),
      layer_bias_sizes=tuple(bias_sizes))
