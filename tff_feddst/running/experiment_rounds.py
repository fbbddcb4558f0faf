"""The rounds of one experiment: execution context, loop, hooks, failures.

`run_rounds` is the second half of `experiment.run_experiment`: it starts
the workers, builds the method's process, writes the start files, runs
`training_loop.run_training` with TensorBoard and the progress bar as
release managers and the interrupt hooks, saves the final model and the
summary, and on failure keeps a resumable checkpoint or removes what a fresh
run wrote.
"""

import contextlib
import os
from typing import Any, Callable, Optional

from tff_feddst.data import client_files
from tff_feddst.data import federated
from tff_feddst.methods import model_setup
from tff_feddst.methods import registry
from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import checkpoints
from tff_feddst.outputs import release_managers as release_managers_lib
from tff_feddst.outputs import run_files
from tff_feddst.outputs import tensorboard_logging
from tff_feddst.process import encoding
from tff_feddst.running import errors
from tff_feddst.running import evaluation
from tff_feddst.running import execution
from tff_feddst.running import interruptions
from tff_feddst.running import process_cache
from tff_feddst.running import process_memory
from tff_feddst.running import settings as settings_lib
from tff_feddst.running import training_flops
from tff_feddst.running import training_loop

ConfigError = settings_lib.ConfigError


class _RoundHooks:
  """What the loop calls around each round: interrupts, progress, logs.

  Attributes:
    rounds_done_here: Rounds completed by this call (not a resumed run's).
    completed: `[(round, state, cumulative bytes)]` of the last completed
      round, once there is one.
    tensorboard: The `TensorBoardWriter`, once opened.
  """

  def __init__(self, total_rounds: int, resume: bool, progress: bool,
               on_round_end: Optional[Callable[[dict], None]],
               check_interrupt: Optional[Callable[[], None]]):
    self._total_rounds = total_rounds
    self._resume = resume
    self._progress = progress
    self._on_round_end = on_round_end
    self._check_interrupt = check_interrupt
    self.rounds_done_here = 0
    self.completed = []
    self.tensorboard = None
    self.bar = None

  def before_round(self, round_num: int) -> None:
    if self._check_interrupt is not None:
      self._check_interrupt()
    execution.describe_activity(f'round {round_num}')

  def keep_completed(self, round_num: int, state, cumulative: dict) -> None:
    self.completed[:] = [(round_num, state, cumulative)]

  def during_calls(self) -> Optional[Callable[[], None]]:
    """The interrupt check while a TFF call runs, or None."""
    if self._check_interrupt is None:
      return None

    def check():
      # Until the loop has a state to checkpoint (round 0's), a stop waits
      # for it, so a stopped run always leaves a checkpoint to resume from.
      if self.completed:
        self._check_interrupt()
    return check

  def release_managers(self) -> list:
    """The round's release managers beside metrics.csv: TensorBoard, then
    the progress bar (each only when asked for; the bar itself starts in
    `on_start`, at the rounds a resumed run has done)."""
    managers = []
    if self.tensorboard is not None:
      managers.append(
          release_managers_lib.TensorBoardReleaseManager(self.tensorboard))
    if self._progress:
      managers.append(release_managers_lib.ProgressBarReleaseManager(
          _StartedBar(self)))
    return managers

  def on_start(self, rows_done) -> None:
    if self._resume and self.tensorboard is not None:
      self.tensorboard.resume_after(rows_done)
    if self._progress:
      import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm.tqdm(total=self._total_rounds, unit='round',
                           dynamic_ncols=True,
                           initial=rows_done[-1]['round'] if rows_done else 0)

  def after_round(self, row: dict) -> None:
    self.rounds_done_here += 1
    if self._on_round_end is not None:
      self._on_round_end(row)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _StartedBar:
  """The hooks' progress bar, once `on_start` has made it."""

  def __init__(self, hooks: _RoundHooks):
    self._hooks = hooks

  def update(self, num_rounds: int) -> None:
    self._hooks.bar.update(num_rounds)

  def set_postfix(self, postfix: dict) -> None:
    self._hooks.bar.set_postfix(postfix)


def _enter_execution_context(stack: contextlib.ExitStack,
                             settings: settings_lib.ExperimentSettings,
                             check_interrupt: Optional[Callable[[], None]],
                             worker_timeout_seconds: Optional[float]) -> bool:
  """Starts (or connects to) the run's TFF workers inside `stack`.

  Returns:
    Whether every worker runs on this machine (none given by address), so
    that workers can read the clients' examples from local files.
  """
  execution_settings = settings.execution
  worker_settings = dict(check_interrupt=check_interrupt)
  if (execution_settings.num_local_workers or
      execution_settings.worker_addresses):
    if worker_timeout_seconds is not None:
      worker_settings['worker_timeout_seconds'] = worker_timeout_seconds
    stack.enter_context(execution.distributed_execution_context(
        execution_settings.num_local_workers,
        execution_settings.worker_addresses, **worker_settings))
  else:
    stack.enter_context(execution.local_execution_context(**worker_settings))
  return not execution_settings.worker_addresses


def _client_download_bytes(settings: settings_lib.ExperimentSettings,
                           plan: registry.MethodPlan) -> int:
  """A client's broadcast at most (masks that thin, or a shorter Rice code,
  cost less)."""
  initial_model = plan.initial_model
  return encoding.max_payload_num_bytes(
      initial_model.layout.kernel_sizes, initial_model.num_active,
      model_setup.num_dense_parameters(initial_model),
      settings.payload_encodings()[1])


def _build_process(stack: contextlib.ExitStack,
                   settings: settings_lib.ExperimentSettings,
                   plan: registry.MethodPlan,
                   federated_data: federated.FederatedData, element_spec,
                   hooks: _RoundHooks, output_dir: str, resume: bool
                   ) -> tuple[Any, Callable[[], None]]:
  """The method's TFF process, or with --client_runtime=tflite the rounds
  of TFLite clients (`ondevice.tflite_rounds.TFLiteRounds`), which check
  for a stop request between clients and whose client pool, if any, ends
  with `stack`.

  A TFF process is the one the previous run in this Python process built,
  when that run's build was the same (`process_cache`). A resumed TFLite
  run trains with the model kept in `output_dir` when it was converted
  from the same settings and code (`ondevice.kept_model`).

  Returns:
    `(process, keep)`: `keep()` writes what the run keeps of the build
    (the TFLite training model, when it was converted here); call it once
    the start files are written.
  """
  if settings.execution.client_runtime == 'tflite':
    # pylint: disable=g-import-not-at-top
    from tff_feddst.ondevice import kept_model
    from tff_feddst.ondevice import tflite_rounds
    # pylint: enable=g-import-not-at-top
    record = kept_model.conversion_record(settings,
                                          plan.initial_model.weights)
    kept = kept_model.load(output_dir, record) if resume else None
    rounds = stack.enter_context(tflite_rounds.TFLiteRounds(
        settings, plan.model_fn, plan.initial_model, federated_data,
        check_interrupt=hooks.during_calls(), tflite_model=kept))
    if kept is not None:
      return rounds, lambda: None
    return rounds, lambda: kept_model.save(output_dir, rounds.tflite_model,
                                           record)
  key = process_cache.process_key(
      settings.to_flag_lines(), element_spec, federated_data.client_ids,
      [federated_data.num_train_examples(client_id)
       for client_id in federated_data.client_ids],
      plan.initial_model.weights)
  return process_cache.built_process(
      key, lambda: plan.build_process(element_spec)), lambda: None


def _train(stack: contextlib.ExitStack,
           settings: settings_lib.ExperimentSettings,
           plan: registry.MethodPlan, federated_data: federated.FederatedData,
           evaluator: evaluation.Evaluator, output_dir: str,
           tensorboard_dir: str, resume: bool, hooks: _RoundHooks,
           flops_counter: training_flops.RoundFlopsCounter,
           workers_are_local: bool) -> list:
  """Builds the process, writes the start files, runs the rounds and saves.

  With `workers_are_local`, the clients' datasets read their examples from
  files (`client_files`) rather than carry them to the workers.

  Returns:
    The metrics rows.
  """
  run = settings.run
  element_spec = training_loop.client_datasets(
      federated_data, federated_data.client_ids[:1],
      settings.client.client_batch_size, run.seed, 0)[0].element_spec
  process, keep_build = _build_process(stack, settings, plan, federated_data,
                                       element_spec, hooks, output_dir, resume)
  # The run can start: from here on, files are written.
  run_files.write_start_files(settings, output_dir, plan.start_files, resume)
  keep_build()
  files = (stack.enter_context(client_files.ClientFiles(federated_data))
           if workers_are_local else None)
  if tensorboard_dir:
    hooks.tensorboard = stack.enter_context(
        tensorboard_logging.TensorBoardWriter(tensorboard_dir,
                                              plan.initial_model.layout))
  state, rows, stop_reason = training_loop.run_training(
      process, federated_data, evaluator,
      total_rounds=run.total_rounds,
      clients_per_round=run.clients_per_round,
      batch_size=settings.client.client_batch_size, seed=run.seed,
      eval_every=run.eval_every,
      metrics_path=os.path.join(output_dir, 'metrics.csv'),
      checkpoint_dir=os.path.join(output_dir, 'checkpoints'),
      checkpoint_every=run.checkpoint_every,
      keep_checkpoints=run.keep_checkpoints, resume=resume,
      upload_budget_bytes=run.upload_budget_bytes,
      round_upload_bytes=plan.round_upload_bytes,
      dropout_rate=run.dropout_rate,
      sample_with_replacement=run.sample_with_replacement,
      client_download_bytes=_client_download_bytes(settings, plan),
      on_start=hooks.on_start,
      release_managers=hooks.release_managers(),
      on_round_end=hooks.after_round,
      on_round_start=hooks.before_round,
      on_round_state=hooks.keep_completed,
      max_failed_rounds=settings.server.max_failed_rounds,
      flops_counter=flops_counter, client_inputs=plan.client_inputs,
      personal_evaluation=None if plan.personal_evaluation is None else (
          lambda state, weights: plan.personal_evaluation(evaluator, state,
                                                          weights)),
      client_files=files)
  # The model first, the summary last: summary.json marks a finished run. A
  # resumed run rewrites the model of its own last round.
  run_files.save_model_weights(os.path.join(output_dir, 'global_model.npz'),
                               process.get_model_weights(state),
                               exclusive=not resume)
  run_files.write_summary(os.path.join(output_dir, 'summary.json'), settings,
                          rows, stop_reason,
                          client_state_bytes=plan.client_state_bytes,
                          peak_rss_mib=process_memory.run_peak_rss_mib())
  return rows


def _handle_failure(error: BaseException, output_dir: str, resume: bool,
                    hooks: _RoundHooks,
                    new_files: Optional[run_files.NewFiles]) -> None:
  """Keeps a stopped run resumable, or removes what a fresh run wrote.

  A run stopped from outside keeps its last completed round (round 0's
  state included, so a stop during set-up is resumable too); any other
  failure before a round finished removes what this run wrote. Then raises
  the error as the caller should see it (or returns to re-raise it as is).
  """
  is_stop = isinstance(error, (interruptions.Interrupted, KeyboardInterrupt))
  is_kept = resume or hooks.rounds_done_here > 0 or (
      bool(hooks.completed) and isinstance(error, interruptions.Interrupted))
  if is_stop and is_kept and hooks.completed:
    round_num, state, cumulative = hooks.completed[-1]
    path = checkpoints.save_checkpoint(
        os.path.join(output_dir, 'checkpoints'), round_num, state,
        cumulative['upload'], cumulative['download'])
    if isinstance(error, interruptions.Interrupted):
      error.completed_round, error.checkpoint_path = round_num, path
  removed = [] if is_kept else new_files.remove()
  if isinstance(error, KeyboardInterrupt):
    if is_kept:
      what_now = 'rerun with --resume to continue from the last checkpoint'
    elif removed:
      what_now = 'nothing was kept (no round had finished)'
    else:
      what_now = 'nothing was written'
    raise KeyboardInterrupt(what_now) from None
  if isinstance(error, training_loop.FailedRoundsError):
    kept_in = (f'checkpoint {error.checkpoint_path}'
               if error.checkpoint_path else 'no checkpoint')
    raise errors.RunError(
        f'--max_failed_rounds={len(error.rounds)}: {error} ({kept_in}); '
        'find the cause (e.g. hostile or broken clients: see '
        'rejected_clients and server_update_failed in metrics.csv), then '
        'rerun with --resume') from error
  if isinstance(error, checkpoints.CheckpointError):
    raise ConfigError(f'--resume: {error}') from error
  if isinstance(error, training_loop.MetricsFileError):
    raise ConfigError(f'--resume: {error}; fix or remove that line') from error
  if isinstance(error, FileExistsError):
    raise ConfigError(
        f'--output_dir={output_dir} already holds results '
        f'({error.filename}); choose a new directory.') from error
  if isinstance(error, atomic_files.WriteError):
    raise run_files.OutputError.from_os_error(error, is_kept,
                                              output_dir) from error


def run_rounds(settings: settings_lib.ExperimentSettings,
               plan: registry.MethodPlan,
               federated_data: federated.FederatedData, output_dir: str,
               tensorboard_dir: str, *, resume: bool, progress: bool,
               on_round_end: Optional[Callable[[dict], None]],
               check_interrupt: Optional[Callable[[], None]],
               worker_timeout_seconds: Optional[float]) -> list:
  """Runs a prepared experiment's rounds and writes its outputs.

  Args:
    settings: The resolved, validated settings.
    plan: The method's `MethodPlan`.
    federated_data: The partitioned data.
    output_dir: Where results go.
    tensorboard_dir: Where TensorBoard logs go ('' for none).
    resume: Continue the run in `output_dir`.
    progress: Show a progress bar.
    on_round_end: Called with each metrics row.
    check_interrupt: Called between rounds and while a TFF call runs.
    worker_timeout_seconds: See `experiment.run_experiment`.

  Returns:
    The metrics rows.

  Raises:
    As `experiment.run_experiment`.
  """
  # Keras models are built before the TFF process (see evaluation.py).
  evaluator = evaluation.Evaluator(plan.model_fn, federated_data)
  flops_counter = training_flops.build_counter(
      plan.model_fn(), plan.initial_model.layout,
      model_setup.build_client_config(settings, plan.initial_model),
      settings.client.client_batch_size)
  new_files = (None if resume
               else run_files.NewFiles((output_dir, tensorboard_dir)))
  hooks = _RoundHooks(settings.run.total_rounds, resume, progress,
                      on_round_end, check_interrupt)
  try:
    with contextlib.ExitStack() as stack:
      # Workers first: a worker that cannot be started or reached fails the
      # run before anything is written.
      workers_are_local = _enter_execution_context(
          stack, settings, hooks.during_calls(), worker_timeout_seconds)
      return _train(stack, settings, plan, federated_data, evaluator,
                    output_dir, tensorboard_dir, resume, hooks,
                    flops_counter, workers_are_local)
  except BaseException as error:  # pylint: disable=broad-except
    _handle_failure(error, output_dir, resume, hooks, new_files)
    raise
  finally:
    hooks.close()
