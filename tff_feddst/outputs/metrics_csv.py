"""metrics.csv: its columns, how a row is written, and how a resume reads it.

One row per round, in `METRICS_COLUMNS` order. Rows are appended whole
(`atomic_files.append_record`), so only the last line can be torn, by a kill
in mid-write; `truncate_metrics` drops such a line when a run resumes. The
writer is `release_managers.MetricsCsvReleaseManager`; the rows come from
`measurements.metrics_row`.
"""

import csv
import io
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

from tff_feddst.outputs import atomic_files

# Training FLOPs (`networks.flops`): over the active weights, and the dense
# equivalent; per round and since round 1.
FLOPS_COLUMNS = ('training_flops', 'training_flops_dense',
                 'training_flops_cumulative',
                 'training_flops_dense_cumulative')
# How the global mask moved (`server_step.mask_movement`); empty for methods
# without one.
MASK_MOVEMENT_COLUMNS = ('mask_new_positions_offered',
                         'mask_new_positions_entered',
                         'mask_entered_weight_mass', 'mask_left_weight_mass')
METRICS_COLUMNS = (
    'round', 'test_accuracy', 'client_test_accuracy', 'train_loss',
    'sparsity', 'mask_changed_positions', 'upload_bytes', 'download_bytes',
    'upload_bytes_cumulative', 'download_bytes_cumulative', 'round_seconds',
    'clients_sampled', 'clients_reported', 'rejected_clients',
    'server_update_failed', 'clipped_clients', *FLOPS_COLUMNS,
    'personal_test_accuracy', 'personal_test_accuracy_std',
    *MASK_MOVEMENT_COLUMNS, 'clients_readjusted')
_FLOAT_COLUMNS = ('test_accuracy', 'client_test_accuracy', 'train_loss',
                  'sparsity', 'round_seconds', 'personal_test_accuracy',
                  'personal_test_accuracy_std', 'mask_entered_weight_mass',
                  'mask_left_weight_mass')


class MetricsFileError(ValueError):
  """metrics.csv is damaged before its last line (not just a torn row)."""


def _parse_metric(column: str, text: Optional[str]):
  if text is None or text == '':  # None: a column the row's file lacked.
    return None
  if column in _FLOAT_COLUMNS:
    return float(text)
  return int(text)


def _read_metrics(metrics_path: str) -> tuple[list[str], list[tuple[
    str, dict]]]:
  """Reads metrics.csv as its header and `(line, record)` pairs.

  Rows are appended whole (`atomic_files.append_record`), so only the last
  line can be torn, by a kill in mid-write: a last line with no newline, or
  one that does not parse, is dropped.

  Raises:
    MetricsFileError: If a line before the last does not parse.
  """
  with open(metrics_path, newline='') as f:
    lines = f.read().splitlines(keepends=True)
  if lines and not lines[-1].endswith('\n'):
    logging.warning('%s: dropping the torn last line %r.', metrics_path,
                    lines[-1])
    lines.pop()
  if not lines:
    return [], []
  header = next(csv.reader(lines[:1]), [])
  if 'round' not in header:
    raise MetricsFileError(f'{metrics_path}: line 1 is not a metrics header.')
  records = []
  for number, line in enumerate(lines[1:], start=2):
    fields = next(csv.reader([line]), [])
    record = dict(zip(header, fields))
    try:
      if len(fields) != len(header):
        raise ValueError(f'{len(fields)} fields, the header has {len(header)}')
      for column in METRICS_COLUMNS:
        _parse_metric(column, record.get(column))
    except ValueError as error:
      if number == len(lines):
        logging.warning('%s: dropping the torn last line %r (%s).',
                        metrics_path, line, error)
        break
      raise MetricsFileError(f'{metrics_path}: line {number} is damaged '
                             f'({error}).') from error
    records.append((line, record))
  return header, records


def truncate_metrics(metrics_path: str, last_round: int) -> list[dict]:
  """Keeps metrics.csv rows up to `last_round` (atomically) and returns them.

  A torn last row (a kill in mid-write) is dropped too.

  Args:
    metrics_path: An existing metrics file, or a path with none yet (then an
      empty file with the header is created).
    last_round: Rows of later rounds are dropped.

  Returns:
    The kept rows, parsed like `measurements.metrics_row`'s output.

  Raises:
    MetricsFileError: If the file is damaged before its last line.
    atomic_files.WriteError: If the file cannot be rewritten.
  """
  kept_lines, rows = [], []
  if os.path.exists(metrics_path):
    header, records = _read_metrics(metrics_path)
    for line, record in records:
      if int(record['round']) <= last_round:
        if header != list(METRICS_COLUMNS):
          # A file written before a column was added (or reordered): the
          # row is rewritten under the current header, new columns empty.
          line = csv_line([record.get(column) or ''
                           for column in METRICS_COLUMNS])
        kept_lines.append(line)
        rows.append({column: _parse_metric(column, record.get(column, ''))
                     for column in METRICS_COLUMNS})
  atomic_files.write_text(metrics_path,
                          csv_line(METRICS_COLUMNS) + ''.join(kept_lines))
  return rows


def create_metrics_file(metrics_path: str) -> None:
  """Creates metrics.csv with its header, atomically and exclusively.

  Raises:
    FileExistsError: If the file exists (a finished result is never
      overwritten).
    atomic_files.WriteError: If it cannot be written.
  """
  atomic_files.write_text(metrics_path, csv_line(METRICS_COLUMNS),
                          exclusive=True)


def csv_line(fields: Sequence[str]) -> str:
  """One CSV line (with its '\\r\\n') of `fields`, quoted as `csv` does."""
  buffer = io.StringIO()
  csv.writer(buffer).writerow(fields)
  return buffer.getvalue()


def _format(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return '' if math.isnan(value) else repr(value)
  return str(value)


def row_line(row: Mapping[str, Any]) -> bytes:
  """The bytes of one metrics.csv row: None and NaN empty, floats as repr.

  Args:
    row: A dict keyed by `METRICS_COLUMNS`.

  Returns:
    The UTF-8 line, newline included.
  """
  return csv_line([_format(row[column])
                   for column in METRICS_COLUMNS]).encode('utf-8')
