"""The round loop, on `tff.program`: sample, run, release, save.

Shaped like `tff.learning.programs.train_model`: the loop resumes from the
newest program state (`program_state.CheckpointManager`, a
`tff.program.FileProgramStateManager`), runs `process.next` on the round's
clients (`client_sampling.ClientSampler`, which carries their ids),
releases each round (`release_managers`: metrics.csv, TensorBoard,
progress, callbacks) and saves the program state last. The loop stays
synchronous (a Ctrl-C or a stop request acts at once, as before); each
`tff.program` call runs to its end in a private event loop (`_run_sync`).

Client sampling and data shuffling are seeded per round (from `seed` and the
round number), so a run is reproducible and any round can be replayed without
carrying random-generator state. What a process must report for a round's
row is `measurements.REQUIRED_MEASUREMENTS`.
"""

import asyncio
import logging
import threading
import time
from typing import Any, Callable, Coroutine, Optional, Sequence

import tensorflow_federated as tff

from tff_feddst.data import client_files as client_files_lib
from tff_feddst.data import federated
from tff_feddst.outputs import checkpoints
from tff_feddst.outputs import metrics_csv
from tff_feddst.outputs import program_state
from tff_feddst.outputs import release_managers as release_managers_lib
from tff_feddst.running import client_sampling
from tff_feddst.running import errors
from tff_feddst.running import evaluation
from tff_feddst.running import measurements
from tff_feddst.running import training_flops

# Where these lived before the loop was split by concern; callers use them.
METRICS_COLUMNS = metrics_csv.METRICS_COLUMNS
MetricsFileError = metrics_csv.MetricsFileError
truncate_metrics = metrics_csv.truncate_metrics
sample_clients = client_sampling.sample_clients
drop_out = client_sampling.drop_out
client_datasets = client_sampling.client_datasets
metrics_row = measurements.metrics_row


class FailedRoundsError(errors.RunError):
  """Too many rounds in a row failed; the run stopped after the last one.

  Attributes:
    rounds: The failed rounds, in order (consecutive).
    checkpoint_path: The checkpoint of the last of them (its state holds
      the last good model, which failed rounds keep), or None without a
      checkpoint directory.
  """

  def __init__(self, rounds: Sequence[int], checkpoint_path: Optional[str]):
    self.rounds = list(rounds)
    self.checkpoint_path = checkpoint_path
    super().__init__(
        f'rounds {self.rounds[0]}-{self.rounds[-1]} failed in a row (a '
        'new global model that was not finite, or every upload rejected); '
        f'the model of round {self.rounds[0] - 1} is kept')


def round_failed(round_metrics) -> bool:
  """Whether a round failed: its new model was refused as not finite, or
  uploads arrived and every one was rejected.

  Args:
    round_metrics: The `metrics` of the process's `next` output.

  Returns:
    True for a failed round.
  """
  if measurements.value(round_metrics, 'finalizer/server_update_failed'):
    return True
  return (measurements.value(round_metrics, 'aggregator/num_clients') == 0 and
          measurements.value(round_metrics, 'aggregator/rejected_clients') > 0)


def _run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
  """Runs one `tff.program` coroutine to its end in a private event loop.

  Where this thread already runs an event loop (a Jupyter kernel does), the
  private loop runs on a helper thread and this call waits for it. Its
  exceptions (KeyboardInterrupt included) propagate unchanged.
  """
  try:
    asyncio.get_running_loop()
  except RuntimeError:  # No loop here: the usual case (bin/train.py).
    return _run_in_private_loop(coroutine)
  outcome = {}

  def run() -> None:
    try:
      outcome['value'] = _run_in_private_loop(coroutine)
    except BaseException as error:  # pylint: disable=broad-except
      outcome['error'] = error

  thread = threading.Thread(target=run, name='tff_feddst_program_loop')
  thread.start()
  thread.join()
  if 'error' in outcome:
    raise outcome['error']
  return outcome['value']


def _run_in_private_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
  """Runs `coroutine` in a new event loop on this thread, then closes it."""
  loop = asyncio.new_event_loop()
  task = loop.create_task(coroutine)
  try:
    return loop.run_until_complete(task)
  except BaseException:
    if task.done() and not task.cancelled():
      task.exception()  # Retrieved: asyncio logs nothing about it.
    raise
  finally:
    loop.close()


def _failed_streak(streak: list[int], round_num: int,
                   round_metrics) -> list[int]:
  """The consecutive failed rounds up to `round_num` (logs a failed one)."""
  if not round_failed(round_metrics):
    return []
  why = ('its new model was not finite' if measurements.value(
      round_metrics, 'finalizer/server_update_failed') else
         'every upload was rejected')
  logging.warning('round %d failed (%s): the global model is kept',
                  round_num, why)
  return streak + [round_num]


def _check_arguments(process: tff.learning.templates.LearningProcess,
                     upload_budget_bytes: Optional[int],
                     round_upload_bytes: Optional[Callable[[int, Any], int]],
                     checkpoint_dir: Optional[str],
                     uses_checkpoints: bool) -> None:
  """Raises what `run_training` documents for arguments that do not fit."""
  if upload_budget_bytes is not None and round_upload_bytes is None:
    raise ValueError('round_upload_bytes is required with a budget.')
  if uses_checkpoints and not checkpoint_dir:
    raise ValueError('checkpoint_dir is required with resume or '
                     'checkpoint_every.')
  # Rounds run outside TFF (`ondevice.tflite_rounds.TFLiteRounds`) have no
  # type signature; they check each round's metrics themselves
  # (`measurements.check_metrics`).
  if hasattr(process.next, 'type_signature'):
    measurements.check_process(process)


def _start(process: tff.learning.templates.LearningProcess,
           csv_manager: release_managers_lib.MetricsCsvReleaseManager,
           state_manager: Optional[program_state.CheckpointManager],
           resume: bool) -> tuple[program_state.ProgramState, list[dict]]:
  """Returns the program state to continue from and the rows already done.

  A new run starts metrics.csv; a resumed one continues from the newest
  usable checkpoint (round 0 if there is none) and keeps the rows up to it.
  """
  initial = program_state.ProgramState(
      round_num=0, state=process.initialize(), upload_bytes_cumulative=0,
      download_bytes_cumulative=0)
  if not resume:
    csv_manager.create()
    return initial, []
  latest, _ = _run_sync(state_manager.load_latest(initial))
  start = latest if latest is not None else initial
  return start, csv_manager.resume_after(start.round_num)


def _flops_so_far(rows: Sequence[dict]) -> dict:
  """The cumulative training FLOPs after the rows a resumed run keeps.

  None (unknown) if the last row has none: a run started before metrics.csv
  had the FLOPs columns; its later rows then leave the cumulative empty.
  """
  totals = {'training_flops': 0, 'training_flops_dense': 0}
  if rows:
    for key in totals:
      totals[key] = rows[-1][f'{key}_cumulative']
    if totals['training_flops'] is None:
      logging.warning('metrics.csv has no training FLOPs for the rounds done '
                      'before this resume: the cumulative FLOPs columns stay '
                      'empty (per-round FLOPs are still written).')
  return totals


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
                 round_upload_bytes: Optional[Callable[[int, Any],
                                                       int]] = None,
                 dropout_rate: float = 0.0,
                 sample_with_replacement: bool = False,
                 client_download_bytes: int = 0,
                 checkpoint_dir: Optional[str] = None,
                 checkpoint_every: int = 0,
                 keep_checkpoints: int = 3,
                 resume: bool = False,
                 on_start: Optional[Callable[[list[dict]], None]] = None,
                 on_round_end: Optional[Callable[[dict], None]] = None,
                 on_model_weights: Optional[Callable[
                     [int, tff.learning.models.ModelWeights], None]] = None,
                 on_round_start: Optional[Callable[[int], None]] = None,
                 on_round_state: Optional[Callable[
                     [int, Any, dict], None]] = None,
                 on_round_clients: Optional[Callable[
                     [client_sampling.RoundClients], None]] = None,
                 release_managers: Sequence[
                     tff.program.ReleaseManager] = (),
                 max_failed_rounds: int = 0,
                 flops_counter: Optional[
                     training_flops.RoundFlopsCounter] = None,
                 client_inputs: Optional[Callable[
                     [Any, client_sampling.RoundClients], list]] = None,
                 personal_evaluation: Optional[Callable[
                     [Any, tff.learning.models.ModelWeights],
                     tuple[float, float]]] = None,
                 client_files: Optional[client_files_lib.ClientFiles] = None):
  """Runs up to `total_rounds` rounds, one metrics.csv row per round.

  Each round: sample the clients (`client_sampling.ClientSampler`), run
  `process.next` on the reporters' datasets, evaluate when due, build the
  row (`measurements.metrics_row`), release a
  `release_managers.RoundRelease` keyed by the round to metrics.csv, then to
  `release_managers`, then to the callbacks (in that order; a failure stops
  the round), and last save the program state
  (`program_state.CheckpointManager`) when due.

  With an upload budget, a round runs only if the cumulative upload after it
  stays within the budget, so runs compared at one budget never exceed it.

  A failed round (`round_failed`: the server refused a new model that was
  not finite, or every upload was rejected) keeps the global model and is
  logged; after `max_failed_rounds` of them in a row the loop saves a
  checkpoint of the last one (whose state holds the last good model) and
  raises `FailedRoundsError`, so the run never freezes silently.

  The metrics file is created exclusively (an existing file is never
  overwritten) and atomically; each row is appended whole and synced to disk
  (a failed write leaves the file as it was). A round is committed by its
  checkpoint, which is written after everything else of the round (the row
  and the releases), so a run resumed after a kill at any moment recomputes
  whatever the checkpoint does not cover. Evaluation runs every
  `eval_every` rounds and after the last round (the last of `total_rounds`,
  or the last the budget allows); other rows leave the accuracy columns
  empty.

  Args:
    process: The method's `LearningProcess`; its `next` must report
      `measurements.REQUIRED_MEASUREMENTS` (checked before round 1). Or an
      object with the same `initialize`, `next` and `get_model_weights`
      that runs outside TFF (`ondevice.tflite_rounds.TFLiteRounds`, which
      checks each round's metrics itself).
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
      budget): a function of the 1-based round number and the state the
      round starts from, in bytes.
    dropout_rate: Probability that a sampled client fails to report (seeded
      per round and client). The round aggregates those that report; if none
      does, the global model stays as it is (the round is still counted, and
      logged).
    sample_with_replacement: Sample each round's clients with replacement
      (`client_sampling.sample_clients`).
    client_download_bytes: Download of one client, charged for clients that
      dropped out after receiving the model.
    checkpoint_dir: Where checkpoints go (required with checkpoint_every or
      resume).
    checkpoint_every: Save the full state every this many rounds and after
      the last round (0: never).
    keep_checkpoints: How many of the newest checkpoints to keep, >= 1.
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
      state and the running totals `{'upload': int, 'download': int}`
      (bytes; with `flops_counter` also the cumulative FLOPs):
      once before the first round (round 0 and the initial state, or the
      resumed checkpoint's), then after each round's row and checkpoint. A
      caller that is stopped mid-round checkpoints the last one it got
      (`experiment.run_experiment` does).
    on_round_clients: Called with each round's `RoundClients` (sampled and
      reporting ids, and the datasets) before `process.next` runs, e.g. to
      prepare per-client inputs.
    release_managers: More `tff.program.ReleaseManager`s of
      `RoundRelease` values keyed by round (e.g.
      `release_managers.TensorBoardReleaseManager`), released to after
      metrics.csv and before the callbacks.
    max_failed_rounds: Stop after this many consecutive failed rounds, >= 0
      (0: never), counted from this call's first round (a resumed run
      starts a new count). The checkpoint needs `checkpoint_dir`.
    flops_counter: Counts each round's training FLOPs from its metrics and
      the masks of the model it starts from (fetched once per round, outside
      `round_seconds`); None leaves the FLOPs columns empty. A resumed run
      continues the cumulative FLOPs of its kept rows (unknown, so empty,
      when those rows predate the columns).
    client_inputs: For a process with per-client state
      (`process.client_states`): `(state, RoundClients) -> client data`,
      the reporters' datasets with their stored rows. None: the datasets.
    personal_evaluation: `(state, global weights) -> (mean, std)` of the
      clients' personal models' local test accuracy, run with every
      evaluation (the `personal_test_accuracy` columns); None: empty.
    client_files: If given, the clients' datasets read their examples from
      its files (`client_files`; workers must see this file system), so the
      examples do not travel inside the datasets; None: they do.

  Returns:
    `(final_state, rows, stop_reason)`, where `stop_reason` is
    'total_rounds' or 'upload_budget'.

  Raises:
    ValueError: If a budget is given without `round_upload_bytes`, or a
      resume or checkpoints without `checkpoint_dir`.
    measurements.MissingMeasurementError: If `process` does not report a
      required measurement.
    MetricsFileError: On resume, if metrics.csv is damaged before its last
      line.
    atomic_files.WriteError: If metrics.csv or a checkpoint cannot be
      written (the files are then left whole; resume continues).
    FailedRoundsError: After `max_failed_rounds` failed rounds in a row
      (their rows written, the last one checkpointed).
  """
  _check_arguments(process, upload_budget_bytes, round_upload_bytes,
                   checkpoint_dir, resume or checkpoint_every)
  sampler = client_sampling.ClientSampler(
      federated_data, clients_per_round, batch_size, seed, dropout_rate,
      with_replacement=sample_with_replacement, client_files=client_files)
  csv_manager = release_managers_lib.MetricsCsvReleaseManager(metrics_path)
  state_manager = (program_state.CheckpointManager(
      checkpoint_dir, keep_total=keep_checkpoints)
                   if resume or checkpoint_every else None)
  start, rows = _start(process, csv_manager, state_manager, resume)
  releases = release_managers_lib.SequentialReleaseManager([
      csv_manager, *release_managers,
      release_managers_lib.CallbackReleaseManager(on_round_end,
                                                  on_model_weights)])
  state, cumulative = start.state, {
      'upload': start.upload_bytes_cumulative,
      'download': start.download_bytes_cumulative}
  active_counts = None
  if flops_counter is not None:
    cumulative.update(_flops_so_far(rows))
    active_counts = flops_counter.active_counts(
        process.get_model_weights(state))
  if on_round_state is not None:
    on_round_state(start.round_num, state, dict(cumulative))
  if on_start is not None:
    on_start(list(rows))
  has_budget = upload_budget_bytes is not None
  stop_reason = 'total_rounds'
  # The bound of the round about to run: computed once per round (for
  # PruneFL it reads the global mask), after the round before it.
  next_bound = round_upload_bytes(start.round_num + 1, state) if (
      has_budget and start.round_num < total_rounds) else 0
  failed_rounds = []
  for round_num in range(start.round_num + 1, total_rounds + 1):
    if has_budget and (cumulative['upload'] + next_bound >
                       upload_budget_bytes):
      stop_reason = 'upload_budget'
      break
    if on_round_start is not None:
      on_round_start(round_num)
    round_start = time.perf_counter()
    clients = sampler.sample(round_num)
    if on_round_clients is not None:
      on_round_clients(clients)
    output = process.next(state, list(clients.datasets) if client_inputs is
                          None else client_inputs(state, clients))
    state = output.state
    if has_budget and round_num < total_rounds:
      next_bound = round_upload_bytes(round_num + 1, state)
    is_last = round_num == total_rounds or (has_budget and (
        cumulative['upload'] + next_bound +
        measurements.value(output.metrics, 'aggregator/upload_bytes') >
        upload_budget_bytes))
    weights = eval_result = None
    if round_num % eval_every == 0 or is_last:
      weights = process.get_model_weights(state)
      eval_result = evaluator.evaluate(weights)
      if personal_evaluation is not None:
        mean, std = personal_evaluation(state, weights)
        eval_result = eval_result._replace(personal_test_accuracy=mean,
                                           personal_test_accuracy_std=std)
    row = measurements.metrics_row(
        round_num, output.metrics, eval_result, cumulative,
        time.perf_counter() - round_start,
        clients_sampled=len(clients.sampled_ids),
        dropped_download_bytes=clients.num_dropped * client_download_bytes,
        round_flops=None if flops_counter is None else flops_counter.count(
            output.metrics, active_counts))
    if flops_counter is not None:  # The masks the next round starts from.
      if weights is None:
        weights = process.get_model_weights(state)
      active_counts = flops_counter.active_counts(weights)
    release = release_managers_lib.RoundRelease(
        row, clients.sampled_ids, clients.client_ids,
        release_managers_lib.ModelWeightsReference(process, state, weights))
    _run_sync(releases.release(release, key=round_num))
    rows.append(row)
    # Last: a checkpoint says the round is done, and all of it is on disk.
    if checkpoint_every and (round_num % checkpoint_every == 0 or is_last):
      completed = program_state.ProgramState(
          round_num, state, cumulative['upload'], cumulative['download'])
      _run_sync(state_manager.save(completed, version=round_num))
    if on_round_state is not None:
      on_round_state(round_num, state, dict(cumulative))
    failed_rounds = _failed_streak(failed_rounds, round_num, output.metrics)
    if max_failed_rounds and len(failed_rounds) >= max_failed_rounds:
      path = None
      if checkpoint_dir:  # Saved again if due anyway: same file, same bits.
        path = checkpoints.save_checkpoint(
            checkpoint_dir, round_num, state, cumulative['upload'],
            cumulative['download'])
      raise FailedRoundsError(failed_rounds, path)
  return state, rows, stop_reason
