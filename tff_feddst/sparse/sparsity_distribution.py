"""How a global sparsity target is split across the prunable layers.

Sparsity is the fraction of zeros in a kernel and density = 1 - sparsity.
Kernel shapes follow Keras: conv kernels are (kh, kw, in, out) (any number of
leading spatial dims is accepted), dense kernels are (in, out). Only kernels
are pruned; biases are never masked.

Three distributions follow RigL (Evci et al., 2020;
google-research/rigl `sparse_utils.get_sparsities_erdos_renyi`):

* 'uniform': every layer gets the target sparsity.
* 'er' (Erdos-Renyi): the density of layer l is eps * (n_in + n_out) /
  (n_in * n_out), with n_in, n_out the last two kernel dims.
* 'erk' (Erdos-Renyi-Kernel): the density of layer l is
  eps * sum(shape_l) / prod(shape_l).

For 'er' and 'erk' one global eps is solved so that the kept weights add up to
the budget of the uniform distribution, sum_l (n_l - floor(S * n_l)) (RigL
floors the zeros per layer, so this is (1 - S) * sum_l n_l within one weight
per layer). A layer whose density eps * score_l would exceed 1 is made dense,
its weights are taken out of the budget, and eps is solved again until no
layer exceeds 1.

'erk_reference' (only in `compute_layer_num_active`) reproduces the FedDST
authors' PyTorch code (`PrunableNet._weights_by_layer` followed by
`layer_prune` in bibikar/feddst `models.py`), which is not RigL's ERK:

* It makes a layer's SPARSITY, not its density, follow the score: the raw
  sparsity is 1 - score_l (same ERK score as above: (in + out + kh + kw) /
  (in * out * kh * kw) for a conv, (in + out) / (in * out) for a dense
  layer), and all raw sparsities are multiplied by one common factor. RigL
  instead makes the density proportional to the score. Because scores of
  real layers are small, the authors' kernel sparsities end up close to the
  global target (MNIST net at S = 0.8: 0.74 / 0.81 / 0.80 / 0.71), while
  RigL's ERK spreads them much more (0.17 / 0.92 / 0.80 / 0.0).
* Layer sizes include the bias, both in the weighted mean that is matched to
  the target and in the kept count, floor((1 - s_l) * (n_l + bias_l)). The
  count is then applied to the kernel alone, so the kernel ends up slightly
  denser than s_l.
* There is no dense-layer redistribution and counts are floored, not rounded.
* A layer whose kept count reaches the kernel size is left dense. A layer
  whose kept count is <= 0 (only at extreme targets, e.g. the MNIST net's
  second conv at S = 0.99) is skipped by the authors' `layer_prune`, so it
  also stays dense; we return the kernel size for it as well.
"""

import math
from typing import Sequence

import numpy as np

UNIFORM = 'uniform'
ERDOS_RENYI = 'er'
ERDOS_RENYI_KERNEL = 'erk'
ERDOS_RENYI_KERNEL_REFERENCE = 'erk_reference'

DISTRIBUTIONS = (UNIFORM, ERDOS_RENYI, ERDOS_RENYI_KERNEL)
NUM_ACTIVE_DISTRIBUTIONS = DISTRIBUTIONS + (ERDOS_RENYI_KERNEL_REFERENCE,)


def _validate_target_sparsity(target_sparsity: float) -> float:
  """Returns `target_sparsity` as a float after checking it is in [0, 1)."""
  if isinstance(target_sparsity, bool) or not isinstance(
      target_sparsity, (int, float, np.integer, np.floating)):
    raise TypeError(
        f'target_sparsity must be a number, got {type(target_sparsity)}.')
  if not 0.0 <= target_sparsity < 1.0:
    raise ValueError(
        f'target_sparsity must be in [0, 1), got {target_sparsity}.')
  return float(target_sparsity)


def _validate_kernel_shapes(
    kernel_shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
  """Returns the shapes as tuples of ints after checking them."""
  shapes = []
  for index, shape in enumerate(kernel_shapes):
    shape = tuple(int(dim) for dim in shape)
    if len(shape) < 2:
      raise ValueError(
          f'Kernel {index} has shape {shape}; kernels need at least 2 dims '
          '(dense: (in, out), conv: (kh, kw, in, out)).')
    if any(dim < 1 for dim in shape):
      raise ValueError(f'Kernel {index} has a non-positive dim: {shape}.')
    shapes.append(shape)
  return shapes


def _raw_score(shape: tuple[int, ...], distribution: str) -> float:
  """RigL's unnormalised density score of one kernel ('er' or 'erk')."""
  if distribution == ERDOS_RENYI_KERNEL:
    return sum(shape) / math.prod(shape)
  num_in, num_out = shape[-2:]
  return (num_in + num_out) / (num_in * num_out)


def _erdos_renyi_densities(shapes: list[tuple[int, ...]],
                           target_sparsity: float,
                           distribution: str) -> list[float]:
  """Solves RigL's eps, making layers dense while eps * score > 1."""
  sizes = [math.prod(shape) for shape in shapes]
  scores = [_raw_score(shape, distribution) for shape in shapes]
  dense_layers = set()
  eps = 0.0
  while True:
    budget = 0.0
    divisor = 0.0
    for index, (size, score) in enumerate(zip(sizes, scores)):
      num_zeros = math.floor(size * target_sparsity)
      if index in dense_layers:
        # The layer keeps all `size` weights instead of `size - num_zeros`,
        # so the other layers lose `num_zeros` from their budget.
        budget -= num_zeros
      else:
        budget += size - num_zeros
        divisor += score * size
    if divisor == 0.0:  # Every layer is dense.
      break
    eps = budget / divisor
    newly_dense = {
        index for index, score in enumerate(scores)
        if index not in dense_layers and eps * score > 1.0
    }
    if not newly_dense:
      break
    dense_layers |= newly_dense
  return [
      1.0 if index in dense_layers else min(max(eps * score, 0.0), 1.0)
      for index, score in enumerate(scores)
  ]


def compute_layer_densities(kernel_shapes: Sequence[Sequence[int]],
                            target_sparsity: float,
                            distribution: str) -> list[float]:
  """Returns the density of each kernel for a global sparsity target.

  Args:
    kernel_shapes: Keras kernel shapes, in layer order: (kh, kw, in, out) for
      conv layers, (in, out) for dense layers.
    target_sparsity: Global fraction of zeros over all kernels, in [0, 1).
    distribution: 'uniform', 'er' or 'erk' (RigL's definitions, see the
      module docstring).

  Returns:
    One density (fraction of ones, in [0, 1]) per kernel. A sparsity of 0
    gives all ones.

  Raises:
    ValueError: If `target_sparsity` is outside [0, 1), a shape has fewer
      than 2 dims or a non-positive dim, or `distribution` is unknown.
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(
        f'distribution must be one of {DISTRIBUTIONS}, got {distribution!r}.')
  target_sparsity = _validate_target_sparsity(target_sparsity)
  shapes = _validate_kernel_shapes(kernel_shapes)
  if target_sparsity == 0.0:
    return [1.0] * len(shapes)
  if distribution == UNIFORM:
    return [1.0 - target_sparsity] * len(shapes)
  return _erdos_renyi_densities(shapes, target_sparsity, distribution)


def _reference_num_active(shapes: list[tuple[int, ...]],
                          target_sparsity: float,
                          bias_sizes: Sequence[int]) -> list[int]:
  """The authors' `_weights_by_layer` + `layer_prune` counts ('erk_reference').

  The arithmetic follows theirs operation by operation in float64 so that
  the floors land on the same integers.
  """
  kernel_sizes = [math.prod(shape) for shape in shapes]
  sizes_with_bias = np.array(
      [size + bias for size, bias in zip(kernel_sizes, bias_sizes)],
      dtype=np.int64)
  sparsities = np.empty(len(shapes), dtype=np.float64)
  for index, shape in enumerate(shapes):
    num_in, num_out = shape[-2:]
    kernel_dims = shape[:-2]
    if kernel_dims:  # A conv layer: PyTorch's kernel_size is (kh, kw, ...).
      sparsities[index] = 1 - (num_in + num_out + sum(kernel_dims)) / (
          num_in * num_out * math.prod(kernel_dims))
    else:
      sparsities[index] = 1 - (num_in + num_out) / (num_in * num_out)
  weighted_sum = np.sum(sparsities * sizes_with_bias)
  if weighted_sum == 0.0:
    raise ValueError(
        'erk_reference is undefined for these shapes: every raw sparsity '
        '1 - score is 0, so the rescaling divides by zero.')
  sparsities *= target_sparsity * np.sum(sizes_with_bias) / weighted_sum
  kept = np.floor((1 - sparsities) * sizes_with_bias)
  num_active = []
  for kernel_size, num_kept in zip(kernel_sizes, kept):
    num_kept = int(num_kept)
    # `layer_prune` skips the layer when the prune count is < 0 (kept above
    # the kernel size) or >= the kernel size (kept <= 0): it stays dense.
    if num_kept <= 0 or num_kept >= kernel_size:
      num_kept = kernel_size
    num_active.append(num_kept)
  return num_active


def compute_layer_num_active(kernel_shapes: Sequence[Sequence[int]],
                             target_sparsity: float,
                             distribution: str,
                             bias_sizes: Sequence[int] | None = None
                            ) -> list[int]:
  """Returns the exact number of active (nonzero) weights of each kernel.

  For 'uniform', 'er' and 'erk' this is round(density * n) of
  `compute_layer_densities` (halves round up), at least 1 and at most the
  kernel size n. For 'erk_reference' it is the authors' count (see the
  module docstring): floor((1 - s_l) * (n_l + bias_l)), with kernel size
  for layers their code leaves dense.

  Args:
    kernel_shapes: Keras kernel shapes, in layer order: (kh, kw, in, out) for
      conv layers, (in, out) for dense layers.
    target_sparsity: Global fraction of zeros, in [0, 1). For
      'erk_reference' it is the bias-inclusive fraction, as in the authors'
      code.
    distribution: 'uniform', 'er', 'erk' or 'erk_reference'.
    bias_sizes: Number of bias weights of each layer (0 for no bias).
      Required for 'erk_reference', ignored by the others (RigL does not
      count biases).

  Returns:
    One count per kernel, each in [1, prod(shape)].

  Raises:
    ValueError: If `target_sparsity` is outside [0, 1), `distribution` is
      unknown, a shape is invalid, or 'erk_reference' is asked for without
      one non-negative bias size per kernel.
  """
  if distribution not in NUM_ACTIVE_DISTRIBUTIONS:
    raise ValueError(f'distribution must be one of {NUM_ACTIVE_DISTRIBUTIONS},'
                     f' got {distribution!r}.')
  if distribution == ERDOS_RENYI_KERNEL_REFERENCE:
    target_sparsity = _validate_target_sparsity(target_sparsity)
    shapes = _validate_kernel_shapes(kernel_shapes)
    if bias_sizes is None or len(bias_sizes) != len(shapes):
      raise ValueError(
          "distribution 'erk_reference' needs one bias size per kernel, got "
          f'{bias_sizes!r} for {len(shapes)} kernels.')
    if any(int(bias) < 0 for bias in bias_sizes):
      raise ValueError(f'bias_sizes must be >= 0, got {list(bias_sizes)}.')
    return _reference_num_active(shapes, target_sparsity,
                                 [int(bias) for bias in bias_sizes])

  densities = compute_layer_densities(kernel_shapes, target_sparsity,
                                      distribution)
  num_active = []
  for shape, density in zip(kernel_shapes, densities):
    size = math.prod(int(dim) for dim in shape)
    rounded = math.floor(density * size + 0.5)
    num_active.append(min(max(rounded, 1), size))
  return num_active


def num_active_by_round(kernel_shapes: Sequence[Sequence[int]],
                        sparsity_by_round: Sequence[float],
                        distribution: str,
                        bias_sizes: Sequence[int] | None = None) -> np.ndarray:
  """Per-round, per-layer active counts for a sequence of global targets.

  Row t holds `compute_layer_num_active(kernel_shapes, sparsity_by_round[t],
  distribution, bias_sizes)`, except that a count never rises above the
  count of the row before (`np.minimum.accumulate` down each column), so
  that a layer never has to grow back, which the server could not do from
  the clients' masks. For non-decreasing targets 'uniform', 'er' and 'erk'
  give non-increasing counts anyway; 'erk_reference' does not at extreme
  targets, where a layer that would keep no weight is left dense (e.g. the
  MNIST net's second conv at S = 0.99): the clamp keeps it at its last
  count instead.

  Args:
    kernel_shapes: Keras kernel shapes, in layer order.
    sparsity_by_round: Global target sparsity of each row (e.g.
      `schedules.SparsitySchedule.sparsities()`), non-decreasing, each in
      [0, 1).
    distribution: 'uniform', 'er', 'erk' or 'erk_reference'.
    bias_sizes: Bias sizes per layer (needed for 'erk_reference').

  Returns:
    An int32 array [len(sparsity_by_round), num_layers]; each column is
    non-increasing.

  Raises:
    ValueError: If `sparsity_by_round` is empty or decreases somewhere, or
      for anything `compute_layer_num_active` rejects.
  """
  sparsities = [float(s) for s in sparsity_by_round]
  if not sparsities:
    raise ValueError('sparsity_by_round must have at least one target.')
  if any(later < earlier for earlier, later in zip(sparsities, sparsities[1:])):
    raise ValueError(
        f'sparsity_by_round must be non-decreasing, got {sparsities}.')
  rows = [compute_layer_num_active(kernel_shapes, sparsity, distribution,
                                   bias_sizes=bias_sizes)
          for sparsity in sparsities]
  table = np.array(rows, dtype=np.int64).reshape(len(rows), len(kernel_shapes))
  return np.minimum.accumulate(table, axis=0).astype(np.int32)
