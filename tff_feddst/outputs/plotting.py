"""Accuracy-versus-upload and accuracy-versus-round plots of finished runs."""

import os
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from tff_feddst.outputs import comparison
from tff_feddst.outputs import seed_statistics


def plot_runs(run_dirs: Sequence[str], output_prefix: str,
              labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> list[str]:
  """Draws test accuracy against cumulative upload and against rounds.

  One line per run, points at evaluated rounds; a run with personalised
  accuracy (LotteryFL) gets a second, dashed line of it. Writes
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
  paths = _unused_figure_paths(output_prefix)
  figure, (by_upload, by_round) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, evaluated in runs:
    upload_mb = [r['upload_bytes_cumulative'] / 1e6 for r in evaluated]
    accuracy = [r['test_accuracy'] for r in evaluated]
    by_upload.plot(upload_mb, accuracy, marker='o', markersize=3, label=name)
    by_round.plot([r['round'] for r in evaluated], accuracy, marker='o',
                  markersize=3, label=name)
    personal = [r for r in evaluated
                if r.get('personal_test_accuracy') is not None]
    if personal:  # Methods with personal models: dashed, same axes.
      by_upload.plot([r['upload_bytes_cumulative'] / 1e6 for r in personal],
                     [r['personal_test_accuracy'] for r in personal],
                     linestyle='--', marker='x', markersize=3,
                     label=f'{name} (personalised, local test)')
      by_round.plot([r['round'] for r in personal],
                    [r['personal_test_accuracy'] for r in personal],
                    linestyle='--', marker='x', markersize=3,
                    label=f'{name} (personalised, local test)')
  by_upload.set_xlabel('cumulative client upload (MB, all clients)')
  _finish_and_save(figure, (by_upload, by_round),
                   'test accuracy (global test set)', title, paths)
  return paths


def _unused_figure_paths(output_prefix: str) -> list[str]:
  """The .png and .svg paths of a figure; refuses to overwrite either.

  Args:
    output_prefix: Path without extension.

  Returns:
    `[<output_prefix>.png, <output_prefix>.svg]`.

  Raises:
    FileExistsError: If either exists.
  """
  paths = [f'{output_prefix}.png', f'{output_prefix}.svg']
  for path in paths:
    if os.path.exists(path):
      raise FileExistsError(f'{path} exists; choose another --output.')
  return paths


def _finish_and_save(figure, axes_pair, accuracy_label: str,
                     title: Optional[str], paths: Sequence[str]) -> None:
  """Labels the by-round axes, adds grids and legends, writes and closes.

  Args:
    figure: The matplotlib figure.
    axes_pair: `(by_upload, by_round)` axes.
    accuracy_label: The y label of both.
    title: Figure title, or None.
    paths: Where to save it.
  """
  axes_pair[1].set_xlabel('round')
  for axes in axes_pair:
    axes.set_ylabel(accuracy_label)
    axes.grid(True, alpha=0.3)
    axes.legend()
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  for path in paths:
    figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_seed_bands(run_dirs_by_method: Mapping[str, Sequence[str]],
                    output_prefix: str,
                    title: Optional[str] = None) -> list[str]:
  """Draws each method's mean test accuracy over seeds with a band.

  Per method, at every round evaluated in all of its seeds' runs: the mean
  accuracy (line) and mean +- one sample standard deviation over the seeds
  (shaded; none for one seed), against the mean cumulative upload and
  against rounds. Writes `<output_prefix>.png` and `<output_prefix>.svg`.

  Args:
    run_dirs_by_method: Per method (legend label), its runs' output
      directories, one per seed.
    output_prefix: Path without extension for the figure files.
    title: Figure title.

  Returns:
    The paths written.

  Raises:
    comparison.RunDirError: For a directory without metrics.
    FileExistsError: If a figure file already exists.
  """
  curves = []
  for method, run_dirs in run_dirs_by_method.items():
    per_run = []
    for run_dir in run_dirs:
      per_run.append({r['round']: r for r in comparison.read_metrics(run_dir)
                      if r['test_accuracy'] is not None})
    rounds = sorted(set.intersection(*(set(rows) for rows in per_run)))
    points = []
    for round_num in rounds:
      accuracy = seed_statistics.spread(
          [rows[round_num]['test_accuracy'] for rows in per_run])
      upload = seed_statistics.spread(
          [rows[round_num]['upload_bytes_cumulative'] for rows in per_run])
      points.append((round_num, upload.mean / 1e6, accuracy.mean,
                     accuracy.std or 0.0))
    curves.append((f'{method} (n={len(run_dirs)})', points))
  paths = _unused_figure_paths(output_prefix)
  figure, (by_upload, by_round) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, points in curves:
    rounds, upload_mb, means, stds = (list(c) for c in zip(*points)) if (
        points) else ([], [], [], [])
    low = [m - s for m, s in zip(means, stds)]
    high = [m + s for m, s in zip(means, stds)]
    for axes, x in ((by_upload, upload_mb), (by_round, rounds)):
      line, = axes.plot(x, means, marker='o', markersize=3, label=name)
      axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
  by_upload.set_xlabel('mean cumulative client upload (MB, all clients)')
  _finish_and_save(figure, (by_upload, by_round),
                   'test accuracy, mean +- std over seeds', title, paths)
  return paths
