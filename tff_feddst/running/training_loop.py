"""The round loop: sample clients, run the process, evaluate, write metrics.

Client sampling and data shuffling are seeded per round (from `seed` and the
round number), so a run is reproducible and any round can be replayed without
carrying random-generator state.
"""

import csv
import io
import logging
import math
import os
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.data import federated
from tff_feddst.data import pipelines
from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import checkpoints
from tff_feddst.running import evaluation

METRICS_COLUMNS = (
    'round', 'test_accuracy', 'client_test_accuracy', 'train_loss',
    'sparsity', 'mask_changed_positions', 'upload_bytes', 'download_bytes',
    'upload_bytes_cumulative', 'download_bytes_cumulative', 'round_seconds',
    'clients_sampled', 'clients_reported', 'rejected_clients')


def sample_clients(client_ids: Sequence[str], clients_per_round: int,
                   seed: int, round_num: int) -> list[str]:
  """Samples clients for a round uniformly WITHOUT replacement.

  Args:
    client_ids: All client ids.
    clients_per_round: How many to sample, in [1, len(client_ids)].
    seed: Run seed.
    round_num: 1-based round.

  Returns:
    The sampled ids, in sampling order.

  Raises:
    ValueError: If `clients_per_round` is out of range.
  """
  if not 1 <= clients_per_round <= len(client_ids):
    raise ValueError(f'clients_per_round must be in [1, {len(client_ids)}], '
                     f'got {clients_per_round}.')
  rng = np.random.default_rng([seed, round_num])
  chosen = rng.choice(len(client_ids), size=clients_per_round, replace=False)
  return [client_ids[i] for i in chosen]


def drop_out(sampled: Sequence[str], dropout_rate: float, seed: int,
             round_num: int) -> list[str]:
  """Returns the sampled clients that report, each failing w.p. dropout_rate.

  Args:
    sampled: The round's sampled clients.
    dropout_rate: Probability in [0, 1) that a client fails to report.
    seed: Run seed.
    round_num: 1-based round.

  Returns:
    The reporting clients, in sampling order.
  """
  if not dropout_rate:
    return list(sampled)
  rng = np.random.default_rng([seed, round_num, 1])
  failures = rng.random(len(sampled)) < dropout_rate
  return [client for client, failed in zip(sampled, failures) if not failed]


def _parse_metric(column: str, text: Optional[str]):
  if text is None or text == '':  # None: a column the row's file lacked.
    return None
  if column in ('test_accuracy', 'client_test_accuracy', 'train_loss',
                'sparsity', 'round_seconds'):
    return float(text)
  return int(text)


class MetricsFileError(ValueError):
  """metrics.csv is damaged before its last line (not just a torn row)."""


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
    The kept rows, parsed like `metrics_row`'s output.

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
          line = _csv_line([record.get(column) or ''
                            for column in METRICS_COLUMNS])
        kept_lines.append(line)
        rows.append({column: _parse_metric(column, record.get(column, ''))
                     for column in METRICS_COLUMNS})
  atomic_files.write_text(metrics_path,
                          _csv_line(METRICS_COLUMNS) + ''.join(kept_lines))
  return rows


def _csv_line(fields: Sequence[str]) -> str:
  buffer = io.StringIO()
  csv.writer(buffer).writerow(fields)
  return buffer.getvalue()


def _shuffle_seed(seed: int, round_num: int, client_position: int) -> int:
  return int(np.random.SeedSequence(
      [seed, round_num, client_position]).generate_state(1)[0])


def client_datasets(federated_data: federated.FederatedData,
                    client_ids: Sequence[str], batch_size: int, seed: int,
                    round_num: int) -> list[tf.data.Dataset]:
  """Builds the sampled clients' shuffled, batched training datasets.

  Args:
    federated_data: The partitioned data.
    client_ids: The sampled clients.
    batch_size: Client minibatch size.
    seed: Run seed.
    round_num: 1-based round (the shuffle order depends on it).

  Returns:
    One `tf.data.Dataset` of `(x, y)` batches per client.
  """
  datasets = []
  for client_id in client_ids:
    x, y = federated_data.train_arrays(client_id)
    position = federated_data.client_ids.index(client_id)
    datasets.append(pipelines.make_client_dataset(
        x, y, batch_size, shuffle_seed=_shuffle_seed(seed, round_num, position)))
  return datasets


def _format(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return '' if math.isnan(value) else repr(value)
  return str(value)


def metrics_row(round_num: int, round_metrics, eval_result: Optional[
    evaluation.EvalResult], cumulative: dict, round_seconds: float,
                clients_sampled: int, dropped_download_bytes: int = 0) -> dict:
  """Turns one round's process metrics into a metrics.csv row.

  Args:
    round_num: 1-based round.
    round_metrics: The `metrics` of the process's `next` output.
    eval_result: Evaluation this round, or None.
    cumulative: Running totals {'upload': int, 'download': int}, updated.
    round_seconds: Wall time of the round (training and evaluation).
    clients_sampled: Clients sampled this round (reported or not).
    dropped_download_bytes: Download of sampled clients that did not report
      (they received the model before failing).

  Returns:
    A dict keyed by `METRICS_COLUMNS`.
  """
  upload = int(round_metrics['aggregator']['upload_bytes'])
  download = (int(round_metrics['distributor']['download_bytes']) +
              dropped_download_bytes)
  cumulative['upload'] += upload
  cumulative['download'] += download
  # Uploads the server dropped as invalid (`payload_validation`); 0 for
  # processes whose aggregator does not validate.
  rejected = int(round_metrics['aggregator'].get('rejected_clients', 0))
  return {
      'round': round_num,
      'test_accuracy': eval_result.test_accuracy if eval_result else None,
      'client_test_accuracy': (
          eval_result.client_test_accuracy if eval_result else None),
      'train_loss': float(round_metrics['client_work']['train_loss']),
      'sparsity': float(round_metrics['finalizer']['sparsity']),
      'mask_changed_positions': int(
          round_metrics['finalizer']['mask_changed_positions']),
      'upload_bytes': upload,
      'download_bytes': download,
      'upload_bytes_cumulative': cumulative['upload'],
      'download_bytes_cumulative': cumulative['download'],
      'round_seconds': round_seconds,
      'clients_sampled': clients_sampled,
      # Uploads received: aggregated plus rejected.
      'clients_reported': int(round_metrics['aggregator']['num_clients']) +
                          rejected,
      'rejected_clients': rejected,
  }


def run_training(process: tff.learning.templates.LearningProcess,
                 federated_data: federated.FederatedData,
                 evaluator: evaluation.Evaluator,
                 *,
                 total_rounds: int,
                 clients_per_round: int,
                 batch_size: int,
                 seed: int,
                 eval_every: int,
                 metrics_path: str,
                 upload_budget_bytes: Optional[int] = None,
                 round_upload_bytes: Union[
                     int, Callable[[int, Any], int], None] = None,
                 dropout_rate: float = 0.0,
                 client_download_bytes: int = 0,
                 checkpoint_dir: Optional[str] = None,
                 checkpoint_every: int = 0,
                 resume: bool = False,
                 on_start: Optional[Callable[[list[dict]], None]] = None,
                 on_round_end: Optional[Callable[[dict], None]] = None,
                 on_model_weights: Optional[Callable[
                     [int, tff.learning.models.ModelWeights], None]] = None,
                 on_round_start: Optional[Callable[[int], None]] = None,
                 on_round_state: Optional[Callable[
                     [int, Any, dict], None]] = None):
  """Runs up to `total_rounds` rounds, one metrics.csv row per round.

  With an upload budget, a round runs only if the cumulative upload after it
  stays within the budget, so runs compared at one budget never exceed it.

  The metrics file is created exclusively (an existing file is never
  overwritten) and atomically; each row is appended whole and synced to disk
  (a failed write leaves the file as it was). A round is committed by its
  checkpoint, which is written after everything else of the round (the row
  and the callbacks), so a run resumed after a kill at any moment recomputes
  whatever the checkpoint does not cover. Evaluation runs every
  `eval_every` rounds and after the last round (the last of `total_rounds`,
  or the last the budget allows); other rows leave the accuracy columns
  empty.

  Args:
    process: The FedDST `LearningProcess`.
    federated_data: The partitioned data.
    evaluator: Built before `process`.
    total_rounds: Rounds to run, >= 1.
    clients_per_round: Clients sampled per round.
    batch_size: Client minibatch size.
    seed: Run seed (sampling and shuffling).
    eval_every: Evaluate every this many rounds, >= 1.
    metrics_path: Where to write metrics.csv (must not exist).
    upload_budget_bytes: Stop before the cumulative upload would exceed
      this many bytes; None for no budget.
    round_upload_bytes: The most one round can upload (required with a
      budget): a number of bytes, or a function of the 1-based round number
      and the state the round starts from (for processes whose upload
      changes between rounds, e.g. PruneFL).
    dropout_rate: Probability that a sampled client fails to report (seeded
      per round and client). The round aggregates those that report; if none
      does, the global model stays as it is (the round is still counted, and
      logged).
    client_download_bytes: Download of one client, charged for clients that
      dropped out after receiving the model.
    checkpoint_dir: Where checkpoints go (required with checkpoint_every or
      resume).
    checkpoint_every: Save the full state every this many rounds and after
      the last round (0: never).
    resume: Continue from the newest usable checkpoint in `checkpoint_dir`
      (or from round 1 if there is none): metrics.csv rows after that round
      are dropped and recomputed (identically, timing aside), then appended.
    on_start: Called once before the first round runs, with the rows of the
      rounds already done (those kept on resume, else none), e.g. to drop
      logs of the rounds that will be recomputed.
    on_round_end: Called with each row after it is written and before the
      round's checkpoint (progress, logs).
    on_model_weights: Called after every round (after `metrics.csv` has its
      row, before the checkpoint) with the round number and the global
      `process.get_model_weights(state)`, e.g. for TensorBoard; the weights
      are then fetched every round, outside `round_seconds` on rounds
      without evaluation.
    on_round_start: Called with the round number before each round (e.g. to
      check for a stop request, or to name the round in messages).
    on_round_state: Called with the number of the last completed round, its
      state and the cumulative bytes `{'upload': int, 'download': int}`:
      once before the first round (round 0 and the initial state, or the
      resumed checkpoint's), then after each round's row and checkpoint. A
      caller that is stopped mid-round checkpoints the last one it got
      (`experiment.run_experiment` does).

  Returns:
    `(final_state, rows, stop_reason)`, where `stop_reason` is
    'total_rounds' or 'upload_budget'.

  Raises:
    ValueError: If a budget is given without `round_upload_bytes`.
    MetricsFileError: On resume, if metrics.csv is damaged before its last
      line.
    atomic_files.WriteError: If metrics.csv or a checkpoint cannot be
      written (the files are then left whole; resume continues).
  """
  if upload_budget_bytes is not None and not round_upload_bytes:
    raise ValueError('round_upload_bytes is required with a budget.')
  if callable(round_upload_bytes):
    round_bound = round_upload_bytes
  else:
    round_bound = lambda unused_round, unused_state: round_upload_bytes
  stop_reason = 'total_rounds'
  state = process.initialize()
  rows = []
  cumulative = {'upload': 0, 'download': 0}
  first_round = 1
  if resume:
    latest = checkpoints.load_latest_checkpoint(checkpoint_dir, state)
    if latest is not None:
      state = latest.state
      first_round = latest.round_num + 1
      cumulative = {'upload': latest.upload_bytes_cumulative,
                    'download': latest.download_bytes_cumulative}
    rows = truncate_metrics(metrics_path, first_round - 1)
  else:
    atomic_files.write_text(metrics_path, _csv_line(METRICS_COLUMNS),
                            exclusive=True)
  if on_round_state is not None:
    on_round_state(first_round - 1, state, dict(cumulative))
  if on_start is not None:
    on_start(list(rows))
  with open(metrics_path, 'ab') as metrics_file:
    # The bound of the round about to run: computed once per round (for
    # PruneFL it reads the global mask), after the round before it.
    next_bound = (round_bound(first_round, state)
                  if upload_budget_bytes is not None else 0)
    for round_num in range(first_round, total_rounds + 1):
      if (upload_budget_bytes is not None and
          cumulative['upload'] + next_bound > upload_budget_bytes):
        stop_reason = 'upload_budget'
        break
      if on_round_start is not None:
        on_round_start(round_num)
      start = time.perf_counter()
      sampled = sample_clients(federated_data.client_ids, clients_per_round,
                               seed, round_num)
      reporting = drop_out(sampled, dropout_rate, seed, round_num)
      if not reporting:
        logging.warning('Round %d: none of the %d sampled clients reported; '
                        'the global model stays as it is.', round_num,
                        len(sampled))
      datasets = client_datasets(federated_data, reporting, batch_size, seed,
                                 round_num)
      output = process.next(state, datasets)
      state = output.state
      eval_result = None
      if upload_budget_bytes is not None and round_num < total_rounds:
        next_bound = round_bound(round_num + 1, state)
      is_last = round_num == total_rounds or (
          upload_budget_bytes is not None and cumulative['upload'] +
          int(output.metrics['aggregator']['upload_bytes']) +
          next_bound > upload_budget_bytes)
      weights = None
      if round_num % eval_every == 0 or is_last:
        weights = process.get_model_weights(state)
        eval_result = evaluator.evaluate(weights)
      row = metrics_row(
          round_num, output.metrics, eval_result, cumulative,
          time.perf_counter() - start, clients_sampled=len(sampled),
          dropped_download_bytes=(len(sampled) - len(reporting)) *
          client_download_bytes)
      atomic_files.append_record(
          metrics_file, metrics_path,
          _csv_line([_format(row[column])
                     for column in METRICS_COLUMNS]).encode('utf-8'))
      rows.append(row)
      if on_model_weights is not None:
        if weights is None:  # Fetched outside the round's timing.
          weights = process.get_model_weights(state)
        on_model_weights(round_num, weights)
      if on_round_end is not None:
        on_round_end(row)
      # Last: a checkpoint says the round is done, and all of it is on disk.
      if checkpoint_every and (round_num % checkpoint_every == 0 or is_last):
        checkpoints.save_checkpoint(checkpoint_dir, round_num, state,
                                    cumulative['upload'],
                                    cumulative['download'])
      if on_round_state is not None:
        on_round_state(round_num, state, dict(cumulative))
  return state, rows, stop_reason
