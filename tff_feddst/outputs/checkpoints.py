"""Atomic checkpoints of a run's full state, for resuming after a kill.

A checkpoint holds every leaf of the process state (global weights and
masks, server optimizer buffers, the client-work round counter), the round
number and the cumulative byte counts. Client sampling and shuffling are
seeded per round, so no random-generator state is needed to continue
exactly. Files are written with `atomic_files` (a temporary name, flushed
to disk, renamed), so a kill or a full disk at any moment leaves either the
old or the new checkpoint, never a torn one; the newest `keep` are kept. Loading tries the newest first and falls
back to older ones (with a warning) when a file is unreadable or does not fit
the process.
"""

import glob
import io
import logging
import os
import re
from typing import Any, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tff_feddst.outputs import atomic_files

_NAME = re.compile(r'ckpt-(\d{6})\.npz$')


class CheckpointError(ValueError):
  """There are checkpoints, but none can be used."""


class Checkpoint(NamedTuple):
  """A loaded checkpoint."""
  round_num: int
  state: Any
  upload_bytes_cumulative: int
  download_bytes_cumulative: int


def checkpoint_path(directory: str, round_num: int) -> str:
  """Returns the file name of the checkpoint taken after `round_num`."""
  return os.path.join(directory, f'ckpt-{round_num:06d}.npz')


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
  """Returns `(round_num, path)` of the checkpoints in `directory`, newest
  first."""
  found = []
  for path in glob.glob(os.path.join(directory, 'ckpt-*.npz')):
    match = _NAME.search(os.path.basename(path))
    if match:
      found.append((int(match.group(1)), path))
  return sorted(found, reverse=True)


def save_checkpoint(directory: str, round_num: int, state: Any,
                    upload_bytes_cumulative: int,
                    download_bytes_cumulative: int, keep: int = 3) -> str:
  """Writes a checkpoint atomically and deletes all but the newest `keep`.

  Args:
    directory: Checkpoint directory (created if needed).
    round_num: The last completed round.
    state: The process state (any nest of arrays and scalars).
    upload_bytes_cumulative: Upload so far.
    download_bytes_cumulative: Download so far.
    keep: How many checkpoints to keep, >= 1.

  Returns:
    The checkpoint's path.

  Raises:
    atomic_files.WriteError: If the checkpoint cannot be written (e.g. a
      full disk); the older checkpoints are then left as they were.
  """
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    raise atomic_files.WriteError(directory, error) from error
  arrays = {f'leaf_{i}': np.asarray(leaf)
            for i, leaf in enumerate(tf.nest.flatten(state))}
  arrays['round_num'] = np.asarray(round_num, np.int64)
  arrays['upload_bytes_cumulative'] = np.asarray(upload_bytes_cumulative,
                                                 np.int64)
  arrays['download_bytes_cumulative'] = np.asarray(download_bytes_cumulative,
                                                   np.int64)
  path = checkpoint_path(directory, round_num)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_files.write_bytes(path, buffer.getvalue())
  for _, old in list_checkpoints(directory)[keep:]:
    os.remove(old)
  return path


def load_checkpoint(path: str, state_structure: Any) -> Checkpoint:
  """Loads one checkpoint file.

  Args:
    path: A file written by `save_checkpoint`.
    state_structure: A state of the same process (e.g. from `initialize()`),
      giving the nest structure and leaf shapes.

  Returns:
    The checkpoint.

  Raises:
    Exception: Whatever reading a damaged file raises (`ValueError`,
      `OSError`, `zipfile.BadZipFile`, ...), or ValueError if it does not
      fit `state_structure`.
  """
  template = tf.nest.flatten(state_structure)
  with np.load(path) as archive:
    num_leaves = sum(1 for name in archive.files if name.startswith('leaf_'))
    if num_leaves != len(template):
      raise ValueError(f'{num_leaves} state leaves, the process has '
                       f'{len(template)}')
    leaves = []
    for i, expected in enumerate(template):
      leaf = archive[f'leaf_{i}']
      if leaf.shape != np.shape(expected):
        raise ValueError(f'leaf {i} has shape {leaf.shape}, the process '
                         f'has {np.shape(expected)}')
      leaves.append(leaf)
    return Checkpoint(
        round_num=int(archive['round_num']),
        state=tf.nest.pack_sequence_as(state_structure, leaves),
        upload_bytes_cumulative=int(archive['upload_bytes_cumulative']),
        download_bytes_cumulative=int(archive['download_bytes_cumulative']))


def load_latest_checkpoint(directory: str,
                           state_structure: Any) -> Optional[Checkpoint]:
  """Loads the newest usable checkpoint.

  Args:
    directory: Checkpoint directory.
    state_structure: A state of the same process (e.g. from `initialize()`),
      giving the nest structure and leaf shapes.

  Returns:
    The newest checkpoint that reads back and fits, or None if there is no
    checkpoint file at all.

  Raises:
    CheckpointError: If there are checkpoint files but none is usable (never
      a silent restart from round 0).
  """
  candidates = list_checkpoints(directory)
  if not candidates:
    return None
  problems = []
  for _, path in candidates:
    try:
      return load_checkpoint(path, state_structure)
    except Exception as error:  # pylint: disable=broad-except
      problems.append(f'{path}: {error}')
      logging.warning('Checkpoint %s is unusable (%s); trying an older one.',
                      path, error)
  raise CheckpointError('no usable checkpoint: ' + '; '.join(problems))
