"""Adaptive server optimizers (FedOpt) on the sparse global model.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021): the server
treats the round's average as a step and feeds the pseudo-gradient

  g = w - target   (target: the holders' average, `finalizer`)

to an optimizer from `tff.learning.optimizers` (`build_adam`,
`build_yogi`, `build_adagrad`). `sgd` and `sgdm` are not built here: they
are the finalizer's own momentum buffers (buffer = m * buffer - g;
w = w + lr * buffer), which is TFF's `build_sgdm` rule with the buffer's
sign flipped (a test checks the two agree bit for bit), so FedAvg and
FedAvgM keep their exact numbers.

On a sparse model the adaptive step is confined to the round's global mask:

- A kernel position p in the global mask gets g[p] = w[p] - target[p] and
  the optimizer's step; dense parameters (biases) always do.
- A position outside the global mask gets g[p] = 0, so the optimizer leaves
  its state where it is (Adam, Yogi and Adagrad all keep a zero gradient's
  state), and its new weight is its average, target[p], as it is (0 where
  nobody holds it), not an optimizer step from 0: a step would be about
  lr * sign(target[p]) whatever the clients learnt, and the re-prune by
  magnitude would then choose new positions by sign alone. So a position
  entering the mask enters with the clients' average, as with server SGD
  at lr 1.
- After the re-prune (or a method's mask rule), every per-position state
  tensor (Adam's and Yogi's accumulator and preconditioner, Adagrad's
  preconditioner) is reset to the optimizer's initial value off the new
  mask: a position that leaves the mask forgets its state, and one that
  enters (it was outside, so its state is the initial one) starts from the
  initial state: zeros, except Yogi's and Adagrad's preconditioners, which
  start at `initial_preconditioner_value` (TFF's defaults, 1e-6 and 0.1).
- The step counter (Adam's and Yogi's bias correction) counts the rounds
  that stepped (a round without clients, or one whose new model was not
  finite, keeps the old state), shared by all positions: an entering
  position's first moments are bias-corrected as those of step t, not of
  its own first step.

The optimizer state lives in the finalizer's state (`finalizer`
`AdaptiveFinalizerState`), so checkpoints carry it and a resumed run
continues bit for bit.
"""

import collections
from typing import Any, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.running import choices

# `sgd`/`sgdm`: the finalizer's momentum buffers; the rest: TFF optimizers.
MOMENTUM_OPTIMIZERS = choices.MOMENTUM_OPTIMIZERS
ADAPTIVE_OPTIMIZERS = choices.ADAPTIVE_OPTIMIZERS
SERVER_OPTIMIZERS = choices.SERVER_OPTIMIZERS


def build_server_optimizer(name: str, learning_rate: float, beta_1: float,
                           beta_2: float, epsilon: float
                           ) -> Optional[tff.learning.optimizers.Optimizer]:
  """The adaptive server optimizer `name`, or None for `sgd`/`sgdm`.

  Args:
    name: One of `SERVER_OPTIMIZERS`.
    learning_rate: Server step size, > 0.
    beta_1: First-moment decay (Adam, Yogi), in [0, 1).
    beta_2: Second-moment decay (Adam, Yogi), in [0, 1).
    epsilon: Added to the denominator, > 0 (FedOpt's tau).

  Returns:
    A `tff.learning.optimizers.Optimizer`, or None when the finalizer's
    momentum buffers do the step.

  Raises:
    ValueError: For an unknown name.
  """
  if name in MOMENTUM_OPTIMIZERS:
    return None
  if name == 'adam':
    return tff.learning.optimizers.build_adam(
        learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
  if name == 'yogi':
    return tff.learning.optimizers.build_yogi(
        learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
  if name == 'adagrad':
    return tff.learning.optimizers.build_adagrad(learning_rate,
                                                 epsilon=epsilon)
  raise ValueError(f'server optimizer must be one of {SERVER_OPTIMIZERS}, '
                   f'got {name!r}.')


def initial_state(optimizer: tff.learning.optimizers.Optimizer,
                  trainable_specs: Sequence[tuple[Any, Any]]):
  """The optimizer's state before round 1 for `(shape, dtype)` variables.

  Hyperparameters and the step counter are tensors too (TFF keeps them in
  the state; TFF's optimizers hold them as Python numbers).
  """
  return tf.nest.map_structure(tf.convert_to_tensor, optimizer.initialize(
      tuple(tf.TensorSpec(shape, dtype) for shape, dtype in trainable_specs)))


def masked_step(optimizer: tff.learning.optimizers.Optimizer, state,
                trainable: Sequence[tf.Tensor], targets: Sequence[tf.Tensor],
                global_masks: dict[int, tf.Tensor]):
  """One optimizer step on the global mask; new positions take the target.

  Args:
    optimizer: The adaptive optimizer.
    state: Its state.
    trainable: The current global trainable variables.
    targets: Per variable, the round's average (same structure).
    global_masks: Trainable index of each kernel -> its round's global mask
      (0/1, the kernel's dtype). Variables not in it are dense.

  Returns:
    `(new_state, new_trainable)`: kernels hold the step inside the global
    mask and the target outside it.
  """
  gradients = []
  for index, (current, target) in enumerate(zip(trainable, targets)):
    gradient = current - target
    if index in global_masks:
      gradient = gradient * global_masks[index]
    gradients.append(gradient)
  new_state, stepped = optimizer.next(state, tuple(trainable),
                                      tuple(gradients))
  new_state = tf.nest.map_structure(tf.convert_to_tensor, new_state)
  new_trainable = list(stepped)
  for index, mask in global_masks.items():
    new_trainable[index] = tf.where(mask > 0, stepped[index], targets[index])
  return new_state, new_trainable


def reset_off_masks(state, initial, masks: dict[int, tf.Tensor]):
  """Resets per-position state off `masks` to its initial value.

  Args:
    state: The optimizer state after the step.
    initial: The optimizer's initial state (`initial_state`).
    masks: Trainable index of each kernel -> its new mask (0/1).

  Returns:
    The state with every per-variable entry (accumulators,
    preconditioners) equal to `initial`'s wherever the kernel's new mask is
    0; scalars (step, hyperparameters) and dense variables untouched.
  """
  reset = collections.OrderedDict()
  for key, value in state.items():
    if not tf.nest.is_nested(value):  # One tensor per variable, else scalar.
      reset[key] = value
      continue
    values = list(tf.nest.flatten(value))
    initial_values = tf.nest.flatten(initial[key])
    for index, mask in masks.items():
      values[index] = tf.where(mask > 0, values[index],
                               tf.cast(initial_values[index],
                                       values[index].dtype))
    reset[key] = tf.nest.pack_sequence_as(value, values)
  return reset
