"""Training FLOPs of a sparse model, counted the way RigL and FedDST count.

The FedDST paper, like RigL (Evci et al., "Rigging the Lottery", ICML 2020),
measures compute as training FLOPs: per layer, the forward multiply-adds of
the dense conv or dense layer scaled by the layer's density; the backward
pass costs twice the forward (the gradient with respect to the layer's
inputs and the one with respect to its weights, each as costly as the
forward). A step that needs the dense weight gradient (RigL's grow score)
costs f_S + f_S + f_D instead of 3 f_S, where f_S and f_D are the sparse and
dense forward costs (RigL's `(3 f_S dT + 2 f_S + f_D) / (dT + 1)` per step).

The convention here, per training example:
- Counted: the multiply-adds of every prunable layer (the model's Conv2D and
  Dense layers), a multiply-add being 2 FLOPs (a multiplication and an
  addition, as RigL's published counts do). A kernel entry is used once per
  output position: H_out * W_out times for a conv (so the dense layer cost is
  H_out * W_out * C_out * k_h * k_w * C_in multiply-adds), once for a dense
  layer (n_in * n_out). At density d_l only the active entries count, which
  is exactly `uses_l * active_l` multiply-adds (`forward_flops`).
- Backward: 2x the forward at the same density, for every layer (RigL too
  charges the first layer's input gradient, which no one needs).
- Where the dense kernel gradient is needed (FedDST's grow score on a
  readjustment round, PruneFL's importance on a reconfiguration round),
  that example's weight-gradient term is dense: f_S + f_S + f_D.
- Not counted, as in RigL's tables: biases, activations, pooling, the
  softmax and loss, the optimizer's update, applying masks, and the top-k of
  a readjustment. They are element-wise or per step rather than per weight
  and example; for the MNIST net, biases, ReLUs and max pooling would add
  about 2.6 % to its 4.04 MFLOPs dense forward count.
- The dense equivalent is the same steps at density 1: 3 f_D per example.
  It is also what the masked-dense implementation actually runs today
  (masks multiply dense kernels), so the sparse count is what a sparse
  kernel would need, not the time this code spends.

The functions are pure: layer shapes come from a built Keras model, active
counts from masks, examples from the round's measurements.
"""

from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.networks import pruning

# FLOPs per multiply-add (a multiplication and an addition).
FLOPS_PER_MULTIPLY_ADD = 2


class TrainingFlops(NamedTuple):
  """Training FLOPs of some steps.

  Attributes:
    sparse: Over the active weights (the paper's measure).
    dense: The same steps with every weight active (density 1).
  """
  sparse: int
  dense: int


def kernel_uses(model: tf.keras.Model) -> tuple[int, ...]:
  """Per prunable kernel, how often each entry is used in one example's forward.

  A Conv2D (channels last, no groups) uses each kernel entry once per output
  position, H_out * W_out times; a Dense layer once per input row (once for
  a flat input). In `pruning.prunable_weights` order, which is the order of
  `ModelLayout.kernel_indices` and `mask_indices`.

  Args:
    model: A built Keras model whose Conv2D and Dense layers are wrapped
      (`pruning.wrap_layer`).

  Returns:
    One positive int per prunable kernel.

  Raises:
    ValueError: For a prunable layer that is not a plain Conv2D or Dense.
  """
  uses = []
  for layer in pruning.wrapped_layers(model):
    inner = layer.layer
    is_conv = isinstance(inner, tf.keras.layers.Conv2D) and not isinstance(
        inner, (tf.keras.layers.DepthwiseConv2D,
                tf.keras.layers.Conv2DTranspose))
    if is_conv and (inner.groups != 1 or
                    inner.data_format != 'channels_last'):
      is_conv = False
    is_dense = type(inner) is tf.keras.layers.Dense  # pylint: disable=unidiomatic-typecheck
    if not (is_conv or is_dense):
      raise ValueError(f'layer {inner.name} ({type(inner).__name__}): FLOPs '
                       'are counted for Conv2D (channels last, groups=1) and '
                       'Dense layers only.')
    # Every output dimension but the batch and the channels/units.
    layer_uses = int(np.prod(layer.output_shape[1:-1], dtype=np.int64))
    uses.extend(layer_uses for _ in layer.pruning_vars)
  return tuple(uses)


def forward_flops(uses: Sequence[int], active_counts: Sequence[int]) -> int:
  """Forward FLOPs of one example over the active kernel entries.

  Args:
    uses: `kernel_uses` of the model.
    active_counts: Active (mask 1) entries per prunable kernel; the kernel
      sizes give the dense count.

  Returns:
    FLOPS_PER_MULTIPLY_ADD * sum over layers of uses * active entries.

  Raises:
    ValueError: If the two sequences differ in length.
  """
  if len(uses) != len(active_counts):
    raise ValueError(f'{len(uses)} prunable layers but {len(active_counts)} '
                     'active counts.')
  return FLOPS_PER_MULTIPLY_ADD * sum(
      int(u) * int(a) for u, a in zip(uses, active_counts))


def training_flops(uses: Sequence[int], active_counts: Sequence[int],
                   kernel_sizes: Sequence[int], examples_trained: int,
                   dense_gradient_examples: int = 0) -> TrainingFlops:
  """Training FLOPs of local SGD over some examples (all passes counted).

  Args:
    uses: `kernel_uses` of the model.
    active_counts: Active entries per prunable kernel during these steps.
    kernel_sizes: Entries per prunable kernel (the dense count).
    examples_trained: Examples trained on, each epoch counted (a partial
      last batch counts its examples), >= 0.
    dense_gradient_examples: Of those, how many also needed the dense kernel
      gradient, in [0, examples_trained].

  Returns:
    `TrainingFlops`: sparse = 3 f_S * examples + (f_D - f_S) *
    dense_gradient_examples; dense = 3 f_D * examples.

  Raises:
    ValueError: For counts out of range or sequences of different lengths.
  """
  if len(kernel_sizes) != len(active_counts):
    raise ValueError(f'{len(kernel_sizes)} kernel sizes but '
                     f'{len(active_counts)} active counts.')
  if any(not 0 <= a <= n for a, n in zip(active_counts, kernel_sizes)):
    raise ValueError(f'active counts {list(active_counts)} must lie in '
                     f'[0, kernel size {list(kernel_sizes)}].')
  if not 0 <= dense_gradient_examples <= examples_trained:
    raise ValueError(f'dense_gradient_examples={dense_gradient_examples} '
                     f'must lie in [0, examples_trained={examples_trained}].')
  sparse_forward = forward_flops(uses, active_counts)
  dense_forward = forward_flops(uses, kernel_sizes)
  return TrainingFlops(
      sparse=3 * sparse_forward * examples_trained +
      (dense_forward - sparse_forward) * dense_gradient_examples,
      dense=3 * dense_forward * examples_trained)
