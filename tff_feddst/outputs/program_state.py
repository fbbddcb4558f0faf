"""Program state of a run through `tff.program.FileProgramStateManager`.

The round loop saves and loads its state the way a `tff.program` training
program does (`tff.learning.programs.train_model`): a program state (here a
`checkpoints.Checkpoint`: the process state, the last completed round and
the cumulative bytes) is saved with `save(program_state, version=round_num)`
and a run resumes from `load_latest(structure)`.

`CheckpointManager` keeps the interface and the versioning of
`tff.program.FileProgramStateManager` but not its storage, which writes each
version as a SavedModel directory: that storage does not flush to disk (a
kill or a full disk can leave a torn version, or a `_temp` directory
behind), its `load_latest` fails on a damaged newest version instead of
falling back, and runs written before this module (and the stop path of
`experiment.run_experiment`) use the `ckpt-NNNNNN.npz` files of
`checkpoints`. So the methods below store versions with `checkpoints`:
one npz file per version, written atomically (`atomic_files`), the newest
`keep_total` kept, and `load_latest` falls back to an older version (with a
warning) when the newest is unreadable or does not fit. The process state
reads back leaf for leaf, bit for bit.
"""

import os
from typing import Optional, Union

import tensorflow_federated as tff

from tff_feddst.outputs import checkpoints

ProgramState = checkpoints.Checkpoint


class CheckpointManager(tff.program.FileProgramStateManager):
  """Saves and loads `ProgramState`s as `checkpoints` files, one per round.

  Unlike `tff.program.FileProgramStateManager`, saving a version that exists
  replaces it (a resumed run recomputes the rounds after the checkpoint it
  could use, and may save over a damaged file of the same round).
  """

  def __init__(self, root_dir: Union[str, os.PathLike[str]],
               keep_total: int = 3):
    """Prepares a manager of the checkpoints in `root_dir`.

    Args:
      root_dir: The checkpoint directory; created (if needed) now.
      keep_total: How many versions to keep, >= 1: the newest.

    Raises:
      ValueError: If `root_dir` is empty or `keep_total` < 1.
    """
    if keep_total < 1:
      raise ValueError(f'keep_total must be >= 1, got {keep_total}.')
    super().__init__(root_dir, prefix='ckpt-', keep_total=keep_total,
                     keep_first=False)

  def _get_path_for_version(self, version: int) -> str:
    return checkpoints.checkpoint_path(self._root_dir, version)

  async def get_versions(self) -> Optional[list[int]]:
    """Returns the saved versions (round numbers), oldest first, or None."""
    versions = sorted(round_num for round_num, _ in
                      checkpoints.list_checkpoints(self._root_dir))
    return versions or None

  async def load(self, version: int,
                 structure: ProgramState) -> ProgramState:
    """Returns the program state saved as `version`.

    Args:
      version: A saved round number.
      structure: A program state of the same process (its `state` gives
        the nest structure and leaf shapes).

    Raises:
      tff.program.ProgramStateNotFoundError: If there is no such version.
      Exception: If its file is damaged or does not fit `structure`.
    """
    path = self._get_path_for_version(version)
    if not os.path.exists(path):
      raise tff.program.ProgramStateNotFoundError(version)
    return checkpoints.load_checkpoint(path, structure.state)

  async def load_latest(
      self, structure: ProgramState) -> tuple[Optional[ProgramState], int]:
    """Returns the newest usable program state and its version.

    Args:
      structure: A program state of the same process.

    Returns:
      `(program_state, version)`, or `(None, 0)` if nothing was saved.

    Raises:
      checkpoints.CheckpointError: If there are saved versions but none is
        usable (never a silent restart from round 0).
    """
    latest = checkpoints.load_latest_checkpoint(self._root_dir,
                                                structure.state)
    if latest is None:
      return None, 0
    return latest, latest.round_num

  async def save(self, program_state: ProgramState, version: int) -> None:
    """Saves `program_state` as `version` and removes all but the newest.

    Args:
      program_state: The state after round `version`.
      version: Its round number (`program_state.round_num`).

    Raises:
      ValueError: If `version` is not `program_state.round_num`.
      atomic_files.WriteError: If the file cannot be written; the saved
        versions are then left as they were.
    """
    if version != program_state.round_num:
      raise ValueError(f'version {version} is not the program state\'s '
                       f'round {program_state.round_num}.')
    checkpoints.save_checkpoint(
        self._root_dir, version, program_state.state,
        program_state.upload_bytes_cumulative,
        program_state.download_bytes_cumulative, keep=self._keep_total)

  async def remove_all(self) -> None:
    """Removes every saved version."""
    for _, path in checkpoints.list_checkpoints(self._root_dir):
      os.remove(path)
