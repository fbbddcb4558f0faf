"""Summaries of finished runs, for comparing methods side by side.

Reads each run's `metrics.csv` and `summary.json` (written by
`experiment.run_experiment`) and tabulates, per run: final and best test
accuracy, final mean client-local accuracy (and, for methods with personal
models such as LotteryFL, the final mean and standard deviation over clients
of each client's own model on its local test split), cumulative upload and download
bytes, cumulative training FLOPs (over the active weights, and the dense
equivalent: `networks.flops`), the upload spent until the test accuracy
first reached a target, the rounds run, why the run stopped, and its wall
time.
"""

import csv
import json
import os
from typing import Optional, Sequence

SUMMARY_COLUMNS = (
    'method', 'final_test_accuracy', 'best_test_accuracy',
    'final_client_test_accuracy', 'final_personal_test_accuracy',
    'final_personal_test_accuracy_std', 'upload_bytes_cumulative',
    'download_bytes_cumulative', 'training_flops_cumulative',
    'training_flops_dense_cumulative', 'upload_bytes_to_target',
    'rounds_completed', 'stop_reason', 'seconds')


class RunDirError(ValueError):
  """A run directory that cannot be read; one line naming the path."""


def read_metrics(run_dir: str) -> list[dict]:
  """Reads a run's metrics.csv into dicts of numbers (None where empty).

  Args:
    run_dir: A run's output directory.

  Returns:
    One dict per round, keyed by the CSV header.

  Raises:
    RunDirError: If there is no readable metrics.csv with at least one row.
  """
  path = os.path.join(run_dir, 'metrics.csv')
  if not os.path.isfile(path):
    raise RunDirError(f'{run_dir}: no metrics.csv here (give the output_dir '
                      'of a bin/train.py run).')
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows or 'upload_bytes_cumulative' not in rows[0]:
    raise RunDirError(f'{path}: no rounds recorded, or not a tff_feddst '
                      'metrics file.')
  parsed = []
  for row in rows:
    try:
      parsed.append({key: (float(value) if value != '' else None)
                     for key, value in row.items()})
    except ValueError as error:
      raise RunDirError(f'{path}: unreadable value ({error}).') from error
  return parsed


def summarize_run(run_dir: str, label: Optional[str] = None,
                  target_accuracy: Optional[float] = None) -> dict:
  """Summarises one run.

  Args:
    run_dir: The run's output directory.
    label: Name of the run in the table (default: the method in
      summary.json, else the directory name).
    target_accuracy: For `upload_bytes_to_target`: cumulative upload at the
      first evaluated round whose test accuracy is at least this.

  Returns:
    A dict keyed by `SUMMARY_COLUMNS` (None where not applicable, e.g. the
    FLOPs of a run written before metrics.csv had them).
  """
  rows = read_metrics(run_dir)
  summary = {}
  summary_path = os.path.join(run_dir, 'summary.json')
  if os.path.isfile(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  evaluated = [r for r in rows if r['test_accuracy'] is not None]
  to_target = None
  if target_accuracy is not None:
    for row in evaluated:
      if row['test_accuracy'] >= target_accuracy:
        to_target = int(row['upload_bytes_cumulative'])
        break
  return {
      'method': label or summary.get('method') or os.path.basename(
          os.path.normpath(run_dir)),
      'final_test_accuracy': evaluated[-1]['test_accuracy']
                             if evaluated else None,
      'best_test_accuracy': max(r['test_accuracy'] for r in evaluated)
                            if evaluated else None,
      'final_client_test_accuracy': evaluated[-1]['client_test_accuracy']
                                    if evaluated else None,
      # Empty for methods without personal models (and older runs).
      **{f'final_{column}': evaluated[-1].get(column) if evaluated else None
         for column in ('personal_test_accuracy',
                        'personal_test_accuracy_std')},
      'upload_bytes_cumulative': int(rows[-1]['upload_bytes_cumulative']),
      'download_bytes_cumulative': int(rows[-1]['download_bytes_cumulative']),
      **{column: _int_or_none(rows[-1].get(column))
         for column in ('training_flops_cumulative',
                        'training_flops_dense_cumulative')},
      'upload_bytes_to_target': to_target,
      'rounds_completed': int(rows[-1]['round']),
      'stop_reason': summary.get('stop_reason'),
      'seconds': sum(r['round_seconds'] for r in rows),
  }


def _int_or_none(value: Optional[float]) -> Optional[int]:
  return None if value is None else int(value)


def _cell(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4f}' if value < 10 else f'{value:.1f}'
  return str(value)


def write_summary_table(summaries: Sequence[dict], csv_path: str,
                        markdown_path: str,
                        target_accuracy: Optional[float] = None) -> None:
  """Writes the summaries as CSV and as a Markdown table.

  Args:
    summaries: From `summarize_run`.
    csv_path: CSV file to create (must not exist).
    markdown_path: Markdown file to create (must not exist).
    target_accuracy: Named in the Markdown header of the to-target column.
  """
  with open(csv_path, 'x', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for summary in summaries:
      writer.writerow({k: '' if v is None else v for k, v in summary.items()})
  header = list(SUMMARY_COLUMNS)
  if target_accuracy is not None:
    header[header.index('upload_bytes_to_target')] = (
        f'upload_bytes_to_{target_accuracy:g}')
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  for summary in summaries:
    lines.append('| ' + ' | '.join(_cell(summary[c]) for c in SUMMARY_COLUMNS)
                 + ' |')
  with open(markdown_path, 'x') as f:
    f.write('\n'.join(lines) + '\n')
