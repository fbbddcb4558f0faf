"""Accuracy-versus-upload and accuracy-versus-round plots of finished runs."""

import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from tff_feddst.outputs import comparison


def plot_runs(run_dirs: Sequence[str], output_prefix: str,
              labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> list[str]:
  """Draws test accuracy against cumulative upload and against rounds.

  One line per run, points at evaluated rounds. Writes
  `<output_prefix>.png` and `<output_prefix>.svg`.

  Args:
    run_dirs: Output directories of `bin/train.py` runs.
    output_prefix: Path without extension for the figure files.
    labels: Legend labels (default: each run's method, else its directory).
    title: Figure title.

  Returns:
    The paths written.

  Raises:
    comparison.RunDirError: For a directory without metrics.
    FileExistsError: If a figure file already exists.
  """
  labels = list(labels) if labels else [None] * len(run_dirs)
  runs = []
  for run_dir, label in zip(run_dirs, labels):
    rows = comparison.read_metrics(run_dir)
    name = label or comparison.summarize_run(run_dir)['method']
    evaluated = [r for r in rows if r['test_accuracy'] is not None]
    runs.append((name, evaluated))
  paths = [f'{output_prefix}.png', f'{output_prefix}.svg']
  for path in paths:
    if os.path.exists(path):
      raise FileExistsError(f'{path} exists; choose another --output.')

  figure, (by_upload, by_round) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, evaluated in runs:
    upload_mb = [r['upload_bytes_cumulative'] / 1e6 for r in evaluated]
    accuracy = [r['test_accuracy'] for r in evaluated]
    by_upload.plot(upload_mb, accuracy, marker='o', markersize=3, label=name)
    by_round.plot([r['round'] for r in evaluated], accuracy, marker='o',
                  markersize=3, label=name)
  by_upload.set_xlabel('cumulative client upload (MB, all clients)')
  by_round.set_xlabel('round')
  for axes in (by_upload, by_round):
    axes.set_ylabel('test accuracy (global test set)')
    axes.grid(True, alpha=0.3)
    axes.legend()
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  for path in paths:
    figure.savefig(path, dpi=120)
  plt.close(figure)
  return paths
