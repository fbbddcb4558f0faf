"""Mask arithmetic of FedDST on plain tensors.

A mask is a float tensor of 0.0 / 1.0 with the shape (and, unless stated
otherwise, the dtype) of the weight it belongs to; a position is "active"
where the mask is nonzero. Sparsity is the fraction of zeros, density =
1 - sparsity.

Every function here works eagerly and inside `tf.function` (or a TFF
`tf_computation`) on tensors with static shapes, and takes counts either as
Python ints or as scalar integer tensors. All choices are deterministic:
orders are exact lexicographic sorts built from stable argsorts, and ties
always fall back to the flat (row-major) index, lower index first.
"""

from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.running import choices

# Second word of the stateless seed derived from a scalar seed, so that the
# mask stream does not coincide with other users of the same scalar seed.
_RANDOM_MASK_SEED_SALT = 0x6665_6464  # b'fedd'.

Count = int | tf.Tensor

# The names of the mask rules a run chooses from (`choices` says what each
# one is).
INITIAL_MASKS = choices.INITIAL_MASKS
GROW_SCORES = choices.GROW_SCORES
READJUST_RULES = choices.READJUST_RULES
SERVER_RULES = choices.SERVER_RULES
MIN_VOTES_UNITS = choices.MIN_VOTES_UNITS


class ReadjustResult(NamedTuple):
  """Outcome of one prune-and-regrow step on one kernel.

  Attributes:
    weight: The new weight: pruned and newly grown positions are exactly 0,
      inactive positions are 0, the rest is unchanged.
    mask: The new float 0/1 mask, same shape and dtype as the input mask.
    num_pruned: int32 scalar, positions that went from active to inactive.
    num_grown: int32 scalar, positions that went from inactive to active.
  """
  weight: tf.Tensor
  mask: tf.Tensor
  num_pruned: tf.Tensor
  num_grown: tf.Tensor


def _checked_count(count: Count, size: tf.Tensor | int, name: str) -> tf.Tensor:
  """Returns `count` as an int32 scalar tensor, checked to be in [0, size].

  A Python int is checked now (ValueError); a tensor is checked when it runs
  (InvalidArgumentError), with the check wired in as a control dependency so
  that it also runs in TF1-style graphs.
  """
  if isinstance(count, bool):
    raise TypeError(f'{name} must be an integer, got a bool.')
  if isinstance(count, (int, np.integer)):
    if count < 0 or (isinstance(size, int) and count > size):
      raise ValueError(f'{name} must be in [0, {size}], got {count}.')
    return tf.constant(int(count), dtype=tf.int32)
  count = tf.cast(count, tf.int32)
  checks = [
      tf.debugging.assert_non_negative(count, message=f'{name} must be >= 0'),
      tf.debugging.assert_less_equal(
          count, tf.cast(size, tf.int32),
          message=f'{name} must be <= the number of positions'),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(count)


def _size(tensor: tf.Tensor) -> tf.Tensor | int:
  """Number of elements: a Python int when the shape is static."""
  num_elements = tensor.shape.num_elements()
  if num_elements is not None:
    return num_elements
  return tf.size(tensor, out_type=tf.int32)


def _descending_rank(keys: Sequence[tf.Tensor]) -> tf.Tensor:
  """Rank (0 = first) of every flat position in a lexicographic order.

  The order is keys[0] descending, then keys[1] descending, ..., then the
  flat index ascending. It is built with one stable argsort per key, from
  the least to the most significant key, starting from the index order.

  Args:
    keys: Tensors of the same shape; each may have its own dtype.

  Returns:
    An int32 vector `rank` with rank[i] = position of flat index i.
  """
  flat_keys = [tf.reshape(key, [-1]) for key in keys]
  order = tf.range(tf.size(flat_keys[0], out_type=tf.int32))
  for flat_key in reversed(flat_keys):
    key_in_order = tf.gather(flat_key, order)
    order = tf.gather(
        order, tf.argsort(key_in_order, direction='DESCENDING', stable=True))
  return tf.math.invert_permutation(order)


def _first_k(keys: Sequence[tf.Tensor], k: Count) -> tf.Tensor:
  """Bool tensor of keys[0]'s shape, True at the first k positions."""
  k = _checked_count(k, _size(keys[0]), 'k')
  rank = _descending_rank(keys)
  shape = keys[0].shape
  return tf.reshape(
      rank < k, shape if shape.is_fully_defined() else tf.shape(keys[0]))


def top_k_mask(scores: tf.Tensor,
               k: Count,
               secondary_scores: tf.Tensor | None = None) -> tf.Tensor:
  """Marks the k positions with the highest scores.

  Ties in `scores` go to the higher `secondary_scores`, then to the lower
  flat index, so the result is deterministic and has exactly k ones.

  Args:
    scores: Tensor of any shape and real dtype.
    k: Number of ones, in [0, size of scores]; a Python int or an integer
      scalar tensor.
    secondary_scores: Optional tensor of the same shape, used to break ties.

  Returns:
    A float32 tensor of the shape of `scores` with exactly k ones.

  Raises:
    ValueError: If a Python int `k` is outside [0, size].
    tf.errors.InvalidArgumentError: If a tensor `k` is outside [0, size]
      (when the computation runs).
  """
  scores = tf.convert_to_tensor(scores)
  keys = [scores]
  if secondary_scores is not None:
    secondary_scores = tf.convert_to_tensor(secondary_scores)
    scores.shape.assert_is_compatible_with(secondary_scores.shape)
    keys.append(secondary_scores)
  return tf.cast(_first_k(keys, k), tf.float32)


def _stateless_seed(seed: int | tf.Tensor) -> tf.Tensor:
  """Turns a scalar seed (or an explicit [2] seed) into a [2] int64 seed."""
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return tf.constant([int(seed), _RANDOM_MASK_SEED_SALT], dtype=tf.int64)
  seed = tf.cast(seed, tf.int64)
  if seed.shape.rank == 1 and seed.shape[0] == 2:
    return seed
  seed.shape.assert_has_rank(0)
  return tf.stack([seed, tf.constant(_RANDOM_MASK_SEED_SALT, tf.int64)])


def random_mask(shape: Sequence[int],
                num_active: Count,
                seed: int | tf.Tensor,
                dtype: tf.DType = tf.float32) -> tf.Tensor:
  """A uniformly random mask with exactly `num_active` ones.

  The mask is a pure function of (shape, num_active, seed): the positions
  are the `num_active` highest draws of `tf.random.stateless_uniform`.

  Args:
    shape: Static shape of the mask.
    num_active: Number of ones, in [0, prod(shape)]; a Python int or an
      integer scalar tensor.
    seed: A Python int or an integer scalar tensor (expanded to the
      stateless seed [seed, salt]), or a [2] integer tensor used as is.
    dtype: Float dtype of the mask.

  Returns:
    A mask of `shape` and `dtype`.

  Raises:
    ValueError: If a Python int `num_active` is outside [0, prod(shape)].
  """
  draws = tf.random.stateless_uniform(
      shape, seed=_stateless_seed(seed), dtype=tf.float32)
  return tf.cast(top_k_mask(draws, num_active), dtype)


def count_active(mask: tf.Tensor) -> tf.Tensor:
  """Number of nonzero entries of `mask`, as an int32 scalar."""
  return tf.cast(tf.math.count_nonzero(mask), tf.int32)


def apply_mask(weight: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Returns `weight` with its inactive positions set to 0."""
  weight = tf.convert_to_tensor(weight)
  return weight * tf.cast(mask, weight.dtype)


def num_to_readjust(num_active: Count, num_total: Count,
                    drop_fraction: float | tf.Tensor) -> tf.Tensor:
  """How many weights one readjustment prunes (and then regrows).

  round(drop_fraction * num_active), halves rounded up, clamped to
  [0, min(num_active, num_total - num_active)] so that there are always
  enough inactive positions to regrow into.

  Args:
    num_active: Active positions of the kernel (int or int scalar tensor).
    num_total: Size of the kernel (int or int scalar tensor).
    drop_fraction: Fraction of the active weights to drop, in [0, 1]
      (float or float scalar tensor).

  Returns:
    An int32 scalar tensor.
  """
  num_active = tf.cast(num_active, tf.int32)
  num_total = tf.cast(num_total, tf.int32)
  # float32 (exact for counts below 2**24) keeps this op set within TFLite's
  # builtins, so the on-device readjust needs no select TF ops.
  wanted = tf.floor(
      tf.cast(drop_fraction, tf.float32) * tf.cast(num_active, tf.float32) +
      0.5)
  upper = tf.maximum(tf.minimum(num_active, num_total - num_active), 0)
  return tf.clip_by_value(tf.cast(wanted, tf.int32), 0, upper)


def prune_by_magnitude(weight: tf.Tensor, mask: tf.Tensor,
                       num_prune: Count) -> tf.Tensor:
  """Selects the `num_prune` active positions with the smallest |weight|.

  Ties in |weight| prune the lower flat index first. If `num_prune` exceeds
  the number of active positions, all active positions are returned.

  Args:
    weight: Kernel tensor.
    mask: Its float 0/1 mask.
    num_prune: In [0, size of weight]; int or int scalar tensor.

  Returns:
    A mask (dtype of `mask`) of the positions to PRUNE, not the remaining
    mask.
  """
  weight = tf.convert_to_tensor(weight)
  mask = tf.convert_to_tensor(mask)
  active = tf.cast(tf.not_equal(mask, 0), tf.int32)
  chosen = _first_k([active, -tf.abs(weight)], num_prune)
  return tf.cast(tf.logical_and(chosen, active > 0), mask.dtype)


def regrow_by_gradient(mask: tf.Tensor, excluded: tf.Tensor,
                       gradient: tf.Tensor, num_regrow: Count) -> tf.Tensor:
  """Selects `num_regrow` inactive positions with the largest |gradient|.

  Candidates are the positions inactive in `mask` and zero in `excluded`.
  Ties in |gradient| pick the lower flat index first. If `num_regrow`
  exceeds the number of candidates, all candidates are returned.

  Args:
    mask: Current float 0/1 mask.
    excluded: 0/1 tensor of positions that must not be grown (e.g. the ones
      just pruned).
    gradient: Dense gradient of the loss w.r.t. the kernel.
    num_regrow: In [0, size of mask]; int or int scalar tensor.

  Returns:
    A mask (dtype of `mask`) of the positions to GROW.
  """
  mask = tf.convert_to_tensor(mask)
  candidate = tf.logical_and(
      tf.equal(mask, 0), tf.equal(tf.convert_to_tensor(excluded), 0))
  chosen = _first_k([tf.cast(candidate, tf.int32), tf.abs(gradient)],
                    num_regrow)
  return tf.cast(tf.logical_and(chosen, candidate), mask.dtype)


def readjust(weight: tf.Tensor, mask: tf.Tensor, gradient: tf.Tensor,
             drop_fraction: float | tf.Tensor) -> ReadjustResult:
  """One FedDST/RigL readjustment: prune by magnitude, regrow by gradient.

  n = num_to_readjust(active, size, drop_fraction) active weights with the
  smallest |weight| are pruned, then n inactive positions (never the
  just-pruned ones) with the largest |gradient| are grown. The number of
  active positions is unchanged. Pruned and grown weights are exactly 0.

  Args:
    weight: Kernel tensor (inactive entries are expected to be 0; they are
      zeroed in the result anyway).
    mask: Its float 0/1 mask.
    gradient: Dense gradient of the loss w.r.t. the kernel.
    drop_fraction: Fraction of active weights to readjust, in [0, 1].

  Returns:
    A `ReadjustResult`; num_pruned == num_grown.
  """
  weight = tf.convert_to_tensor(weight)
  mask = tf.convert_to_tensor(mask)
  num_readjust = num_to_readjust(
      count_active(mask), tf.size(mask, out_type=tf.int32), drop_fraction)
  pruned = prune_by_magnitude(weight, mask, num_readjust)
  grown = regrow_by_gradient(mask, pruned, gradient, num_readjust)
  kept = mask * (1 - pruned)
  new_mask = kept + grown
  # Multiplying by `kept` zeroes the pruned positions and the grown ones
  # (which were inactive).
  new_weight = apply_mask(weight, kept)
  return ReadjustResult(
      weight=new_weight,
      mask=new_mask,
      num_pruned=count_active(pruned),
      num_grown=count_active(grown))


def readjust_reference(weight: tf.Tensor, mask: tf.Tensor, gradient: tf.Tensor,
                       num_keep_after_prune: Count,
                       num_target: Count) -> ReadjustResult:
  """The FedDST authors' readjustment (`layer_prune` then `layer_grow`).

  1. Prune: keep the `num_keep_after_prune` positions with the largest
     |weight| over ALL positions (inactive weights are 0, so they go first);
     everything else becomes inactive and 0. Among equal |weight|, active
     positions are kept before inactive ones, then the lower flat index.
  2. Grow: g = num_target - active_after_prune; if g > 0, take the g
     positions with the largest |gradient| over ALL positions (ties: lower
     index), set their mask to 1 and their weight to 0.

  Why a client can end sparser than the target: step 2 does not exclude
  positions that are still active. Every grown position that was already
  active is counted in g but adds no new weight (it only loses its value),
  so the kernel ends with num_target minus that overlap active weights.
  With a large gradient on surviving weights (common: large weights often
  have large gradients) the overlap is substantial.

  Args:
    weight: Kernel tensor. The authors' weights are 0 where masked; the mask
      is applied first so that this holds.
    mask: Its float 0/1 mask.
    gradient: Dense gradient of the loss w.r.t. the kernel.
    num_keep_after_prune: Positions kept by step 1, in [0, size]; from
      `compute_layer_num_active(..., 'erk_reference')` at the prune
      sparsity S + (1 - S) * alpha. A value >= the active count prunes
      nothing (the authors skip the layer then).
    num_target: Active positions step 2 aims for; the count at sparsity S.

  Returns:
    A `ReadjustResult`; num_grown counts only positions that became active.
  """
  weight = tf.convert_to_tensor(weight)
  mask = tf.convert_to_tensor(mask)
  size = tf.size(mask, out_type=tf.int32)
  masked_weight = apply_mask(weight, mask)
  keep = tf.cast(
      _first_k([tf.abs(masked_weight), mask], num_keep_after_prune),
      mask.dtype)
  mask_after_prune = mask * keep
  num_after_prune = count_active(mask_after_prune)
  num_grow = tf.clip_by_value(
      tf.cast(num_target, tf.int32) - num_after_prune, 0, size)
  grow = tf.cast(_first_k([tf.abs(gradient)], num_grow), mask.dtype)
  new_mask = tf.maximum(mask_after_prune, grow)
  new_weight = apply_mask(masked_weight, mask_after_prune * (1 - grow))
  return ReadjustResult(
      weight=new_weight,
      mask=new_mask,
      num_pruned=count_active(mask) - num_after_prune,
      num_grown=count_active(new_mask) - num_after_prune)


def server_reprune(mean_weight: tf.Tensor, votes: tf.Tensor,
                   num_active: Count) -> tf.Tensor:
  """The next global mask from the aggregated weights and mask votes.

  Only positions that some client holds (votes > 0) can be active. They are
  ordered by larger |mean_weight|, then more votes, then lower flat index,
  and the first `num_active` are kept: among voted positions the largest
  magnitudes win, ties going to the more popular position. If fewer than
  `num_active` positions have votes (only when clients upload sparser masks
  than the target, as the reference readjust rule makes them), all voted
  positions are kept and the layer ends sparser: the server never activates
  a weight that no client holds.

  Args:
    mean_weight: Aggregated (averaged) kernel.
    votes: Per-position count (or weighted count) of clients whose mask had
      the position active; same shape.
    num_active: Active positions of the new mask, in [0, size]; int or int
      scalar tensor.

  Returns:
    A mask of the shape and dtype of `mean_weight` with min(`num_active`,
    number of voted positions) ones.
  """
  mean_weight = tf.convert_to_tensor(mean_weight)
  votes = tf.convert_to_tensor(votes)
  has_vote = tf.cast(votes > 0, tf.int32)
  chosen = _first_k([has_vote, tf.abs(mean_weight), votes], num_active)
  return tf.cast(chosen, mean_weight.dtype) * tf.cast(has_vote,
                                                      mean_weight.dtype)


def server_reprune_reference(mean_weights: Sequence[tf.Tensor],
                             votes: Sequence[tf.Tensor],
                             num_active: Sequence[Count]) -> list[tf.Tensor]:
  """The FedDST authors' server mask: a conditional re-prune of the union.

  The union mask of a layer is every position some client holds (votes >
  0). Only when the union holds more active positions over all layers
  than the round's counts (the authors: the model's sparsity is below the
  round's target) is every layer re-pruned: it keeps the union's positions
  among its `num_active` largest |mean_weight| over ALL positions, so a
  position nobody holds (mean 0) and a regrown weight uploaded as 0 tie.
  The authors' `torch.topk` breaks such ties as it happens to; here a
  position outside the union wins a tie against one inside it (then the
  lower flat index wins), so a held 0 never survives a tie and a re-prune
  only clears bits, as the authors' runs showed. The rule never grows a
  position nobody holds, a layer may end sparser than its count, and the
  union is kept as it is when it is not denser (its regrown zeros then
  stay).

  Args:
    mean_weights: Aggregated (averaged) kernels.
    votes: Per-position count (or weighted count) of holders, one per
      kernel, same shapes.
    num_active: Each layer's count for the round (ints or int scalar
      tensors), in [0, size].

  Returns:
    One mask per kernel, in `mean_weights`' shapes and dtypes.
  """
  unions = [tf.cast(tf.convert_to_tensor(v) > 0, tf.convert_to_tensor(w).dtype)
            for w, v in zip(mean_weights, votes)]
  union_active = tf.add_n([tf.cast(count_active(u), tf.int64)
                           for u in unions])
  target_active = tf.add_n([tf.cast(n, tf.int64) for n in num_active])
  is_denser = union_active > target_active
  new_masks = []
  for weight, union, count in zip(mean_weights, unions, num_active):
    largest = tf.cast(_first_k([tf.abs(weight), 1 - union], count),
                      union.dtype)
    new_masks.append(tf.where(is_denser, union * largest, union))
  return new_masks
