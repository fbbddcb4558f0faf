"""How a run's global mask moved, read from its checkpoints.

A run's checkpoints (`--checkpoint_every`, and `--keep_checkpoints` high
enough to keep them all) hold the global model every few rounds. Compared
with the seeded initial mask, they tell which positions entered the mask,
how long those stayed, and whether they carry more weight magnitude than the
positions they replaced: issue 17's question of why a moving mask helps
little at S = 0.8 and more at S = 0.95.

The history is sampled at the checkpoints only: a position that entered and
left between two checkpoints is not seen.
"""

import dataclasses
from typing import Sequence

import numpy as np

from tff_feddst.outputs import checkpoints


class MaskHistoryError(ValueError):
  """A checkpoint that does not hold the run's model."""


@dataclasses.dataclass(frozen=True)
class MaskSnapshot:
  """The global model's prunable kernels and masks after one round.

  Attributes:
    round_num: The round the snapshot follows (0: the initial model).
    masks: Per prunable layer, a bool array of its active positions.
    kernels: Per prunable layer, the (masked) kernel.
  """
  round_num: int
  masks: tuple[np.ndarray, ...]
  kernels: tuple[np.ndarray, ...]


def snapshot_of_weights(round_num: int, trainable: Sequence[np.ndarray],
                        non_trainable: Sequence[np.ndarray],
                        kernel_indices: Sequence[int],
                        mask_indices: Sequence[int]) -> MaskSnapshot:
  """The prunable kernels and masks of model weights.

  Args:
    round_num: The round the weights follow.
    trainable: The model's trainable arrays.
    non_trainable: The model's non-trainable arrays (the masks among them).
    kernel_indices: Where each prunable kernel sits in `trainable`.
    mask_indices: Where each mask sits in `non_trainable`.

  Returns:
    The snapshot.
  """
  return MaskSnapshot(
      round_num=round_num,
      masks=tuple(np.asarray(non_trainable[i]) != 0 for i in mask_indices),
      kernels=tuple(np.asarray(trainable[i]) for i in kernel_indices))


def load_snapshot(path: str, trainable_like: Sequence[np.ndarray],
                  non_trainable_like: Sequence[np.ndarray],
                  kernel_indices: Sequence[int],
                  mask_indices: Sequence[int],
                  num_active: Sequence[int]) -> MaskSnapshot:
  """Reads the global model out of a checkpoint file.

  A checkpoint is the process state's leaves in order, and a learning
  process's state starts with its global model weights (trainable, then
  non-trainable). The leaves are checked against the run's model: shapes
  and dtypes, 0/1 masks with at most `num_active` ones, kernels zero off
  their masks.

  Args:
    path: A `ckpt-NNNNNN.npz` file (`checkpoints.save_checkpoint`).
    trainable_like: The model's trainable arrays (shapes and dtypes).
    non_trainable_like: Its non-trainable arrays.
    kernel_indices: Where each prunable kernel sits in the trainable ones.
    mask_indices: Where each mask sits in the non-trainable ones.
    num_active: Active positions per prunable layer.

  Returns:
    The snapshot after the checkpoint's round.

  Raises:
    MaskHistoryError: If the file does not hold this model.
  """
  count = len(trainable_like) + len(non_trainable_like)
  with np.load(path) as archive:
    if sum(name.startswith('leaf_') for name in archive.files) < count:
      raise MaskHistoryError(f'{path}: fewer state leaves than the model '
                             f'has arrays ({count}).')
    leaves = [archive[f'leaf_{i}'] for i in range(count)]
    round_num = int(archive['round_num'])
  for index, (leaf, like) in enumerate(
      zip(leaves, list(trainable_like) + list(non_trainable_like))):
    if leaf.shape != np.shape(like) or leaf.dtype != np.asarray(like).dtype:
      raise MaskHistoryError(
          f'{path}: leaf_{index} is {leaf.dtype}{list(leaf.shape)}, the '
          f'model expects {np.asarray(like).dtype}{list(np.shape(like))}; '
          'not a checkpoint of this run.')
  trainable = leaves[:len(trainable_like)]
  non_trainable = leaves[len(trainable_like):]
  for layer, (mask_index, kernel_index, active) in enumerate(
      zip(mask_indices, kernel_indices, num_active)):
    mask, kernel = non_trainable[mask_index], trainable[kernel_index]
    if not np.all((mask == 0) | (mask == 1)) or int(mask.sum()) > active:
      raise MaskHistoryError(
          f'{path}: mask of layer {layer} is not 0/1 with at most {active} '
          'ones.')
    if np.any(kernel[mask == 0] != 0):
      raise MaskHistoryError(
          f'{path}: kernel of layer {layer} is not zero off its mask.')
  return snapshot_of_weights(round_num, trainable, non_trainable,
                             kernel_indices, mask_indices)


def load_run_snapshots(checkpoint_dir: str, *args) -> list[MaskSnapshot]:
  """Every checkpoint of a directory, oldest first (`load_snapshot`'s
  other arguments follow the directory)."""
  return [load_snapshot(path, *args)
          for _, path in sorted(checkpoints.list_checkpoints(checkpoint_dir))]


def _count(masks: Sequence[np.ndarray]) -> int:
  return int(sum(int(mask.sum()) for mask in masks))


def _and(first: Sequence[np.ndarray],
         second: Sequence[np.ndarray]) -> list[np.ndarray]:
  return [a & b for a, b in zip(first, second)]


def _not(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
  return [~mask for mask in masks]


def _mean_magnitude(kernels: Sequence[np.ndarray],
                    where: Sequence[np.ndarray]) -> float:
  """Mean |weight| over the positions `where` holds (NaN if none)."""
  total = sum(float(np.abs(k[w]).sum()) for k, w in zip(kernels, where))
  count = _count(where)
  return total / count if count else float('nan')


def history_rows(snapshots: Sequence[MaskSnapshot]) -> list[dict]:
  """One row per snapshot after the first (the initial model).

  Args:
    snapshots: The initial snapshot, then the run's, oldest first.

  Returns:
    Rows with: `round`; `active` positions; `from_initial`, the share of
    them that were in the initial mask; `entered` and `left` since the
    previous snapshot; `entered_still_active_next` and
    `entered_still_active_last`, the share of this snapshot's entered
    positions still active at the next and at the last snapshot (empty
    when there is none); `magnitude_entered`, `magnitude_stayed`, the mean
    |w| now of the entered positions and of those active in both; and
    `magnitude_left_before`, the mean |w| the positions that left had at
    the previous snapshot.
  """
  rows = []
  for k in range(1, len(snapshots)):
    before, now = snapshots[k - 1], snapshots[k]
    entered = _and(now.masks, _not(before.masks))
    left = _and(before.masks, _not(now.masks))
    stayed = _and(now.masks, before.masks)
    num_entered, num_active = _count(entered), _count(now.masks)
    row = {
        'round': now.round_num,
        'active': num_active,
        'from_initial': _count(_and(now.masks, snapshots[0].masks)) /
                        num_active,
        'entered': num_entered,
        'left': _count(left),
        'entered_still_active_next': '',
        'entered_still_active_last': '',
        'magnitude_entered': _mean_magnitude(now.kernels, entered),
        'magnitude_stayed': _mean_magnitude(now.kernels, stayed),
        'magnitude_left_before': _mean_magnitude(before.kernels, left),
    }
    if num_entered and k + 1 < len(snapshots):
      row['entered_still_active_next'] = _count(
          _and(entered, snapshots[k + 1].masks)) / num_entered
      row['entered_still_active_last'] = _count(
          _and(entered, snapshots[-1].masks)) / num_entered
    rows.append(row)
  return rows
