"""TensorBoard logs of a FedDST run: per-round scalars and the global model.

`TensorBoardWriter` writes, with the round number as the step:

* the metrics.csv columns as scalars (`SCALAR_TAGS`; accuracies only on
  evaluated rounds), plus `accuracy_by_upload/test`, the test accuracy with
  the cumulative client upload in bytes as its step, so TensorBoard draws
  accuracy against upload;
* per prunable layer of the global model, the mask density
  (`density/<layer>`) and a histogram of the active kernel values
  (`weights/<layer>`), where `<layer>` is `layer_names(layout)`.

A resumed run recomputes the rounds after its checkpoint. Before it logs
them, `TensorBoardWriter.resume_after` removes from the event files every
event of those rounds (and a record torn by a kill), so that each tag has
exactly one value per step, as an uninterrupted run would have; TensorBoard
itself would otherwise show both values of a step.

`read_scalars` reads the scalars back from the event files.
"""

import errno
import glob
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.networks import models
from tff_feddst.outputs import atomic_files

_EVENT_FILE_PATTERN = 'events.out.tfevents.*'
# Temporary files of `truncate_event_files`: their names must not contain
# 'tfevents', or TensorBoard would read them.
_REWRITE_STEM = 'events-rewrite'

# metrics.csv column -> scalar tag.
SCALAR_TAGS = {
    'test_accuracy': 'accuracy/test',
    'client_test_accuracy': 'accuracy/client_test',
    'train_loss': 'train/loss',
    'sparsity': 'model/sparsity',
    'mask_changed_positions': 'model/mask_changed_positions',
    'upload_bytes': 'bytes/upload',
    'download_bytes': 'bytes/download',
    'upload_bytes_cumulative': 'bytes/upload_cumulative',
    'download_bytes_cumulative': 'bytes/download_cumulative',
    'round_seconds': 'time/round_seconds',
    'rejected_clients': 'clients/rejected',
    'server_update_failed': 'server/update_failed',
    'clipped_clients': 'clients/clipped',
}
ACCURACY_BY_UPLOAD_TAG = 'accuracy_by_upload/test'


def layer_names(layout: models.ModelLayout) -> list[str]:
  """Names the prunable layers by position, kind and kernel shape.

  Args:
    layout: The model's layout.

  Returns:
    One name per prunable kernel, e.g. '0_conv_5x5x1x10', '2_dense_5120x50'.
  """
  names = []
  for position, shape in enumerate(layout.kernel_shapes):
    kind = 'conv' if len(shape) == 4 else 'dense'
    names.append(f'{position}_{kind}_{"x".join(map(str, shape))}')
  return names


def layer_densities(layout: models.ModelLayout, weights: Any) -> list[float]:
  """Returns the fraction of ones in each prunable layer's mask.

  Args:
    layout: The model's layout.
    weights: `ModelWeights` (or anything with `trainable` and
      `non_trainable` lists) of the model.

  Returns:
    One density in [0, 1] per prunable kernel.
  """
  return [float(np.mean(np.asarray(weights.non_trainable[index]) != 0))
          for index in layout.mask_indices]


class TensorBoardWriter:
  """Writes a run's per-round scalars and global-model summaries.

  Use as a context manager, or call `close()`. Every write is flushed, so
  TensorBoard shows a run while it trains. The event file (and `logdir`) is
  created at the first write.
  """

  def __init__(self, logdir: str, layout: models.ModelLayout):
    """Prepares a writer for `logdir`; nothing is written yet.

    Args:
      logdir: The TensorBoard log directory.
      layout: The model's layout (where kernels and masks are).
    """
    self._logdir = logdir
    self._layout = layout
    self._names = layer_names(layout)
    self._writer = None

  def _file_writer(self):
    if self._writer is None:
      self._writer = self._call(tf.summary.create_file_writer, self._logdir)
    return self._writer

  def _call(self, function, *args, **kwargs):
    """Runs a TF summary call; a failed write becomes a WriteError."""
    try:
      return function(*args, **kwargs)
    except tf.errors.OpError as error:
      code = {tf.errors.ResourceExhaustedError: errno.ENOSPC,
              tf.errors.PermissionDeniedError: errno.EACCES}.get(type(error))
      reason = (os.strerror(code) if code is not None
                else error.message.strip().splitlines()[-1])
      raise atomic_files.WriteError(self._logdir,
                                    OSError(code, reason)) from error

  def resume_after(self, rows: Sequence[Mapping[str, Any]]) -> None:
    """Drops logged events of the rounds after `rows`, before a resume.

    Call before the first write.

    Args:
      rows: The metrics rows of the rounds kept (all rounds up to the
        resumed checkpoint, in order; empty to drop every round).

    Raises:
      ValueError: If this writer has written already.
      atomic_files.WriteError: If an event file cannot be rewritten.
    """
    if self._writer is not None:
      raise ValueError('resume_after must come before the first write.')
    truncate_event_files(
        self._logdir, last_round=int(rows[-1]['round']) if rows else 0,
        num_evaluated_rounds=sum(1 for row in rows
                                 if row.get('test_accuracy') is not None))

  def __enter__(self) -> 'TensorBoardWriter':
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()

  def write_metrics(self, row: Mapping[str, Any]) -> None:
    """Writes one metrics.csv row as scalars at step `row['round']`.

    Args:
      row: A row from `training_loop.metrics_row`; None values (accuracies
        on rounds without evaluation) are skipped.
    """
    step = int(row['round'])
    writer = self._file_writer()

    def write():
      with writer.as_default(step=step):
        for column, tag in SCALAR_TAGS.items():
          value = row.get(column)
          if value is not None:
            tf.summary.scalar(tag, float(value))
        if row.get('test_accuracy') is not None:
          tf.summary.scalar(ACCURACY_BY_UPLOAD_TAG,
                            float(row['test_accuracy']),
                            step=int(row['upload_bytes_cumulative']))
      writer.flush()
    self._call(write)

  def write_model(self, round_num: int, weights: Any) -> None:
    """Writes per-layer mask densities and active-weight histograms.

    Args:
      round_num: The step (1-based round).
      weights: The global `ModelWeights` after that round.
    """
    densities = layer_densities(self._layout, weights)
    writer = self._file_writer()

    def write():
      with writer.as_default(step=round_num):
        for name, density, kernel_index, mask_index in zip(
            self._names, densities, self._layout.kernel_indices,
            self._layout.mask_indices):
          tf.summary.scalar(f'density/{name}', density)
          mask = np.asarray(weights.non_trainable[mask_index]) != 0
          active = np.asarray(weights.trainable[kernel_index])[mask]
          tf.summary.histogram(f'weights/{name}', active)
      writer.flush()
    self._call(write)

  def close(self) -> None:
    """Flushes and closes the event file. Idempotent."""
    if self._writer is not None:
      self._call(self._writer.close)


def _read_records(path: str) -> tuple[list[bytes], bool]:
  """Reads an event file's records; stops at a record torn by a kill.

  Returns:
    `(records, is_torn)`.
  """
  records = []
  iterator = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      records.append(next(iterator).numpy())
    except StopIteration:
      return records, False
    except tf.errors.DataLossError:
      return records, True


def truncate_event_files(logdir: str, last_round: int,
                         num_evaluated_rounds: int) -> None:
  """Keeps only the logged events of rounds 1..`last_round` in `logdir`.

  Each event file is rewritten atomically (`atomic_files`), so a kill
  leaves every file either as it was or truncated; a second call finishes
  the job. Events whose step is a round number are kept up to `last_round`;
  `ACCURACY_BY_UPLOAD_TAG`, whose step is an upload, keeps its first
  `num_evaluated_rounds` values (one per evaluated round, in round order,
  files taken in name (= creation time) order). Events without summaries
  (the file version) are kept; a file left without summaries is removed,
  and so is a record torn by a kill.

  Args:
    logdir: A directory written by `TensorBoardWriter`; a missing one is
      fine.
    last_round: The last round whose events are kept.
    num_evaluated_rounds: Evaluated rounds among 1..`last_round`.

  Raises:
    atomic_files.WriteError: If a file cannot be rewritten or removed.
  """
  atomic_files.remove_temporaries(logdir)
  by_upload_left = num_evaluated_rounds
  for path in sorted(glob.glob(os.path.join(logdir, _EVENT_FILE_PATTERN))):
    records, is_torn = _read_records(path)
    kept, has_summaries = [], False
    for record in records:
      event = tf.compat.v1.Event.FromString(record)
      values = []
      for value in event.summary.value:
        if value.tag == ACCURACY_BY_UPLOAD_TAG:
          if by_upload_left > 0:
            by_upload_left -= 1
            values.append(value)
        elif event.step <= last_round:
          values.append(value)
      if len(values) == len(event.summary.value):
        kept.append(record)
      elif values:
        del event.summary.value[:]
        event.summary.value.extend(values)
        kept.append(event.SerializeToString())
      has_summaries = has_summaries or bool(values)
    if kept == records and not is_torn:
      continue
    if not has_summaries:
      try:
        os.remove(path)
      except OSError as error:
        raise atomic_files.WriteError(path, error) from error
      continue
    logging.debug('%s: keeping %d of %d events (rounds up to %d).', path,
                 len(kept), len(records), last_round)

    def write(temporary, kept=kept):
      with tf.io.TFRecordWriter(temporary) as writer:
        for record in kept:
          writer.write(record)
    atomic_files.write_file_at(path, write, temporary_stem=_REWRITE_STEM)


def read_scalars(logdir: str,
                 tag: Optional[str] = None) -> dict[str, list[tuple[int,
                                                                    float]]]:
  """Reads the scalars of every event file in `logdir`.

  Args:
    logdir: A directory written by `TensorBoardWriter`.
    tag: Only this tag; None for all.

  Returns:
    Tag -> `(step, value)` pairs in the order written.

  Raises:
    FileNotFoundError: If `logdir` holds no event file.
  """
  paths = sorted(glob.glob(os.path.join(logdir, _EVENT_FILE_PATTERN)))
  if not paths:
    raise FileNotFoundError(f'{logdir}: no TensorBoard event files')
  scalars = {}
  for path in paths:
    for record in _read_records(path)[0]:
      event = tf.compat.v1.Event.FromString(record)
      for value in event.summary.value:
        if tag is not None and value.tag != tag:
          continue
        if value.metadata.plugin_data.plugin_name != 'scalars':
          continue
        scalars.setdefault(value.tag, []).append(
            (int(event.step), float(tf.make_ndarray(value.tensor))))
  return scalars
