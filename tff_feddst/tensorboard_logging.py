"""TensorBoard logs of a FedDST run: per-round scalars and the global model.

`TensorBoardWriter` writes, with the round number as the step:

* the metrics.csv columns as scalars (`SCALAR_TAGS`; accuracies only on
  evaluated rounds), plus `accuracy_by_upload/test`, the test accuracy with
  the cumulative client upload in bytes as its step, so TensorBoard draws
  accuracy against upload;
* per prunable layer of the global model, the mask density
  (`density/<layer>`) and a histogram of the active kernel values
  (`weights/<layer>`), where `<layer>` is `layer_names(layout)`.

`read_scalars` reads the scalars back from the event files.
"""

import glob
import os
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from tff_feddst import models

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
  TensorBoard shows a run while it trains.
  """

  def __init__(self, logdir: str, layout: models.ModelLayout):
    """Creates the event file in `logdir` (and `logdir` if needed).

    Args:
      logdir: The TensorBoard log directory.
      layout: The model's layout (where kernels and masks are).
    """
    self._layout = layout
    self._names = layer_names(layout)
    self._writer = tf.summary.create_file_writer(logdir)

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
    with self._writer.as_default(step=step):
      for column, tag in SCALAR_TAGS.items():
        value = row.get(column)
        if value is not None:
          tf.summary.scalar(tag, float(value))
      if row.get('test_accuracy') is not None:
        tf.summary.scalar(ACCURACY_BY_UPLOAD_TAG, float(row['test_accuracy']),
                          step=int(row['upload_bytes_cumulative']))
    self._writer.flush()

  def write_model(self, round_num: int, weights: Any) -> None:
    """Writes per-layer mask densities and active-weight histograms.

    Args:
      round_num: The step (1-based round).
      weights: The global `ModelWeights` after that round.
    """
    densities = layer_densities(self._layout, weights)
    with self._writer.as_default(step=round_num):
      for name, density, kernel_index, mask_index in zip(
          self._names, densities, self._layout.kernel_indices,
          self._layout.mask_indices):
        tf.summary.scalar(f'density/{name}', density)
        mask = np.asarray(weights.non_trainable[mask_index]) != 0
        active = np.asarray(weights.trainable[kernel_index])[mask]
        tf.summary.histogram(f'weights/{name}', active)
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file. Idempotent."""
    self._writer.close()


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
  paths = sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*')))
  if not paths:
    raise FileNotFoundError(f'{logdir}: no TensorBoard event files')
  scalars = {}
  for path in paths:
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if tag is not None and value.tag != tag:
          continue
        if value.metadata.plugin_data.plugin_name != 'scalars':
          continue
        scalars.setdefault(value.tag, []).append(
            (int(event.step), float(tf.make_ndarray(value.tensor))))
  return scalars
