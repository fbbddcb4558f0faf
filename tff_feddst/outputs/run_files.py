"""The files of a run's output directory, each written atomically.

  flags.txt         the settings as `--name=value` lines (usable as --flagfile)
  metrics.csv       one row per round (see `training_loop.METRICS_COLUMNS`)
  global_model.npz  the final global `ModelWeights`
  summary.json      why and where the run stopped (total rounds, or the
                    upload budget), final and best accuracy, bytes, seconds

Every file is written atomically (`atomic_files`): a kill or a full disk
leaves each file old or new, never torn. `NewFiles` removes what a fresh run
wrote when it fails before its first round is done.
"""

import errno
import io
import json
import logging
import os
import shutil
import tempfile
from typing import Mapping, Optional

import numpy as np

from tff_feddst.outputs import atomic_files
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib

RESULT_FILES = ('metrics.csv', 'flags.txt', 'global_model.npz',
                'summary.json')
ConfigError = settings_lib.ConfigError


class OutputError(errors.RunError):
  """An output file could not be written; says how to go on.

  Attributes:
    problem: What failed, e.g. 'writing runs/x/metrics.csv failed: [Errno
      28] No space left on device'.
    fix: What to do about it, e.g. 'free space'.
    is_resumable: Whether the run's output directory was kept, so that
      `resume=True` continues it; otherwise nothing of the run was kept.
    output_dir: The run's output directory.
  """

  def __init__(self, problem: str, fix: str, is_resumable: bool,
               output_dir: str):
    self.problem = problem
    self.fix = fix
    self.is_resumable = is_resumable
    self.output_dir = output_dir
    super().__init__(problem, fix, is_resumable, output_dir)

  def __str__(self) -> str:
    if self.is_resumable:
      return f'{self.problem}; {self.fix} and rerun with --resume'
    return f'{self.problem}; nothing was kept: {self.fix} and rerun'

  @classmethod
  def from_os_error(cls, error: OSError, is_resumable: bool,
                    output_dir: str) -> 'OutputError':
    """Words an OSError of a write, with the fix its errno calls for."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
      fix = 'free space'
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
      fix = 'make it writable'
    else:
      fix = 'fix that'
    problem = (str(error) if isinstance(error, atomic_files.WriteError)
               else f'writing {error.filename or output_dir} failed: '
               f'[Errno {error.errno}] {error.strerror}')
    return cls(problem, fix, is_resumable, output_dir)


def check_writable_dir(path: str, flag: str) -> None:
  """Checks, without leaving anything behind, that `path` can be written.

  The directory itself or its nearest existing ancestor must be a directory
  in which a (probe) directory can be created.

  Args:
    path: A directory that may not exist yet.
    flag: The flag that set it, for the message.

  Raises:
    ConfigError: One line naming the flag, if `path` is not writable.
  """
  existing = os.path.abspath(path)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--{flag}={path} is not writable: {existing} is not a '
                      'directory.')
  try:
    probe = tempfile.mkdtemp(prefix='.write_probe_', dir=existing)
  except OSError as error:
    raise ConfigError(f'--{flag}={path} is not writable: cannot create '
                      f'anything in {existing} ({error.strerror}).') from None
  os.rmdir(probe)


def check_output_dir(output_dir: str) -> None:
  """Refuses an output directory that already holds results.

  Args:
    output_dir: The run's output directory (may not exist yet).

  Raises:
    ConfigError: If it holds any of `RESULT_FILES`, or is not a directory.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ConfigError(f'--output_dir={output_dir} exists and is not a '
                      'directory.')
  if os.path.isdir(output_dir):
    present = [f for f in RESULT_FILES
               if os.path.exists(os.path.join(output_dir, f))]
    if present:
      raise ConfigError(
          f'--output_dir={output_dir} already holds results ({present[0]}); '
          'choose a new directory, nothing was changed.')



def save_model_weights(path: str, weights, *, exclusive: bool = True) -> None:
  """Saves `ModelWeights` as an .npz of `trainable_i`/`non_trainable_i`.

  Args:
    path: The .npz path.
    weights: The `ModelWeights`.
    exclusive: Refuse to replace an existing file (FileExistsError).

  Raises:
    FileExistsError: With `exclusive`, if `path` exists.
    atomic_files.WriteError: If the file cannot be written; nothing (or the
      old file) is left at `path` then.
  """
  arrays = {f'trainable_{i}': np.asarray(v)
            for i, v in enumerate(weights.trainable)}
  arrays.update({f'non_trainable_{i}': np.asarray(v)
                 for i, v in enumerate(weights.non_trainable)})
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_files.write_bytes(path, buffer.getvalue(), exclusive=exclusive)


def is_complete_npz(path: str) -> bool:
  """Whether `path` is an .npz whose arrays all read back."""
  try:
    with np.load(path) as archive:
      for name in archive.files:
        archive[name]  # pylint: disable=pointless-statement
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def load_model_weights(path: str):
  """Loads `ModelWeights` saved by `save_model_weights`."""
  import tensorflow_federated as tff
  with np.load(path) as archive:
    def collect(prefix):
      count = sum(1 for k in archive.files if k.startswith(prefix + '_'))
      return [archive[f'{prefix}_{i}'] for i in range(count)]
    return tff.learning.models.ModelWeights(
        trainable=collect('trainable'), non_trainable=collect('non_trainable'))



def write_summary(path: str, settings: settings_lib.ExperimentSettings,
                  rows: list, stop_reason: str,
                  client_state_bytes: int = 0,
                  peak_rss_mib: Optional[dict] = None) -> None:
  """Writes where and why a run stopped, and its headline figures.

  The file is created atomically and exclusively: it marks a finished run.
  A method with per-client state (`client_state_bytes` > 0) also gets its
  store's bytes per client and its last personalised accuracy.

  Args:
    path: Where to write (a new file).
    settings: The run's settings.
    rows: The run's metrics rows, oldest first.
    stop_reason: Why the run stopped.
    client_state_bytes: Bytes per client of the per-client store (0: none).
    peak_rss_mib: Peak resident memory of the run's processes
      (`process_memory.run_peak_rss_mib`), written as `peak_rss_mib`; None
      leaves it out.

  Raises:
    FileExistsError: If `path` exists.
    atomic_files.WriteError: If it cannot be written.
  """
  evaluated = [r for r in rows if r['test_accuracy'] is not None]
  summary = {
      'method': settings.method,
      'stop_reason': stop_reason,
      'rounds_completed': rows[-1]['round'] if rows else 0,
      'upload_budget_bytes': settings.run.upload_budget_bytes,
      'upload_bytes_cumulative': rows[-1]['upload_bytes_cumulative']
                                 if rows else 0,
      'download_bytes_cumulative': rows[-1]['download_bytes_cumulative']
                                   if rows else 0,
      'final_test_accuracy': evaluated[-1]['test_accuracy']
                             if evaluated else None,
      'final_client_test_accuracy': evaluated[-1]['client_test_accuracy']
                                    if evaluated else None,
      'best_test_accuracy': max(r['test_accuracy'] for r in evaluated)
                            if evaluated else None,
      'seconds': sum(r['round_seconds'] for r in rows),
  }
  if client_state_bytes:
    summary['client_state_bytes_per_client'] = client_state_bytes
    summary['final_personal_test_accuracy'] = (
        evaluated[-1].get('personal_test_accuracy') if evaluated else None)
  if peak_rss_mib is not None:
    summary['peak_rss_mib'] = peak_rss_mib
  atomic_files.write_text(path, json.dumps(summary, indent=2) + '\n',
                          exclusive=True)



class NewFiles:
  """Remembers what exists in some directories, to remove what is added.

  A fresh run that fails before its first round is done removes the files
  and directories it created (only those), so that its output directory can
  be used again.
  """

  def __init__(self, directories):
    self._before = {}
    for directory in {d for d in directories if d}:
      self._before[directory] = (set(os.listdir(directory))
                                 if os.path.isdir(directory) else None)

  def remove(self) -> list[str]:
    """Removes what was added since construction; errors are logged.

    Returns:
      The paths removed (directories with their content).
    """
    removed = []

    def log(unused_function, path, unused_exc_info):
      logging.warning('Could not remove %s after the failed start.', path)
    for directory, before in self._before.items():
      if before is None:
        if os.path.lexists(directory):
          shutil.rmtree(directory, onerror=log)
          removed.append(directory)
        continue
      if not os.path.isdir(directory):
        continue
      for name in sorted(set(os.listdir(directory)) - before):
        path = os.path.join(directory, name)
        removed.append(path)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, onerror=log)
        else:
          try:
            os.remove(path)
          except OSError:
            log(None, path, None)
    return removed


def remove_temporaries(output_dir: str) -> None:
  """Removes the temporary files that killed writers left in a run."""
  for directory in (output_dir, os.path.join(output_dir, 'checkpoints')):
    for path in atomic_files.remove_temporaries(directory):
      logging.info('Removed %s, left by a killed writer.', path)


def write_start_files(settings: settings_lib.ExperimentSettings,
                      output_dir: str, start_files: Mapping[str, str],
                      resume: bool) -> None:
  """Creates output_dir, flags.txt and a method's start files (if missing).

  Leftover temporary files of a killed writer are removed first.

  Args:
    settings: The run's resolved settings (written to flags.txt).
    output_dir: The run's output directory.
    start_files: A method's files (name -> text), e.g. PruneFL's record of
      its initial pruning; kept as they are when resuming.
    resume: Whether the run resumes (flags.txt exists then).

  Raises:
    FileExistsError: If a fresh run finds flags.txt.
    atomic_files.WriteError: If a file cannot be written.
  """
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as error:
    raise atomic_files.WriteError(output_dir, error) from error
  remove_temporaries(output_dir)
  if not resume:
    atomic_files.write_text(os.path.join(output_dir, 'flags.txt'),
                            '\n'.join(settings.to_flag_lines()) + '\n',
                            exclusive=True)
  for name, text in start_files.items():
    path = os.path.join(output_dir, name)
    if not os.path.exists(path):
      atomic_files.write_text(path, text, exclusive=True)
