"""One experiment from its settings: data, method, round loop, outputs.

`run_experiment` checks the settings (`settings.ExperimentSettings`), loads
and splits the data, asks the method registry (`methods.registry`) for the
method's initial model, process and upload bound, runs the rounds under an
owned TFF execution context (`training_loop.run_training`) and writes, in
`output_dir` (`outputs.run_files`): flags.txt, metrics.csv,
global_model.npz, summary.json and, unless `tensorboard_dir` puts them
elsewhere or is '', tensorboard/ (`tensorboard_logging`).

Nothing is written until the settings and the data have been checked, the
workers answer and the process is built, and an `output_dir` that already
holds results is refused. If a fresh run fails before its first round is
done, what it wrote is removed again, so the directory can be reused.
summary.json, written last, marks a finished run; `resume=True` finishes
any other run (from its newest checkpoint, or, when only summary.json is
missing, by writing it).
"""

import contextlib
import math
import os
from typing import Callable, Optional

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.methods import registry
from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import run_files
from tff_feddst.running import resumption
from tff_feddst.running import settings as settings_lib

ConfigError = settings_lib.ConfigError
OutputError = run_files.OutputError
ExperimentSettings = settings_lib.ExperimentSettings


def check_model_fits_data(model_name: str, dataset: datasets.Dataset) -> None:
  """Checks that a model takes the data set's images and has its classes.

  Args:
    model_name: One of `models.MODEL_BUILDERS` (from --model).
    dataset: The loaded data set.

  Raises:
    ConfigError: One line naming --model, if its input shape differs from
      the images' or it has fewer outputs than the data has classes (a
      mismatch would otherwise fail deep inside Keras).
  """
  from tff_feddst.networks import models  # pylint: disable=g-import-not-at-top
  model = models.MODEL_BUILDERS[model_name](seed=0)
  input_shape = tuple(model.input_shape[1:])
  num_outputs = model.output_shape[-1]
  image_shape = tuple(dataset.x_train.shape[1:])
  if input_shape != image_shape or num_outputs < dataset.num_classes:
    raise ConfigError(
        f'--model={model_name} does not fit --dataset={dataset.name}: it '
        f'takes {input_shape} images and {num_outputs} classes, the data has '
        f'{image_shape} and {dataset.num_classes}; expected a model such as '
        f'{settings_lib.DATASET_MODELS[dataset.name]} (unset --model picks '
        'it).')


def load_federated_data(settings: ExperimentSettings
                        ) -> federated.FederatedData:
  """Loads and partitions the configured data set.

  Args:
    settings: Validated settings.

  Returns:
    The `FederatedData`.

  Raises:
    data.DataFileError: For missing or corrupt data files.
    ConfigError: If the split cannot be made with these settings, or an
      explicit --model does not fit the data.
  """
  data, seed = settings.data, settings.run.seed
  dataset = datasets.load_dataset(data.dataset, data.data_dir)
  if settings.network.model is not None:
    check_model_fits_data(settings.network.model, dataset)
  if data.data_distribution == 'natural':
    try:
      return federated.build_federated_data(
          dataset, 'natural', data.total_clients, seed)
    except ValueError as error:
      raise ConfigError(
          f'--total_clients={data.total_clients} is invalid for the natural '
          f'split of {data.dataset}: {error}.') from error
  try:
    return federated.build_federated_data(
        dataset, data.data_distribution, data.total_clients, seed,
        beta=data.dirichlet_beta,
        classes_per_client=data.classes_per_client,
        examples_per_class=data.examples_per_class,
        examples_per_client=data.examples_per_client)
  except ValueError as error:
    raise ConfigError(
        f'--data_distribution={data.data_distribution}: cannot split '
        f'{data.dataset} that way: {error}') from error


def _check_settings(settings: ExperimentSettings, output_dir: str,
                    resume: bool,
                    worker_timeout_seconds: Optional[float]
                    ) -> ExperimentSettings:
  """Validates and resolves the settings and checks the output directories.

  Returns:
    The resolved settings.

  Raises:
    ConfigError: For a bad setting or a used or unwritable directory.
  """
  if worker_timeout_seconds is not None and not (
      0 < worker_timeout_seconds < math.inf):
    raise ConfigError(f'--worker_timeout_seconds={worker_timeout_seconds} is '
                      'invalid: expected a number of seconds > 0.')
  settings.validate()
  settings = settings.resolved()
  if resume:
    resumption.check_resumable(settings, output_dir)
  else:
    run_files.check_output_dir(output_dir)
  run_files.check_writable_dir(output_dir, 'output_dir')
  tensorboard_dir = settings.effective_tensorboard_dir(output_dir)
  if tensorboard_dir:
    run_files.check_writable_dir(tensorboard_dir, 'tensorboard_dir')
  return settings


def _check_budget(settings: ExperimentSettings,
                  plan: registry.MethodPlan) -> None:
  """Refuses an upload budget below the first round's upload bound."""
  budget = settings.run.upload_budget_bytes
  first_round_upload_bytes = plan.round_upload_bytes(1, None)
  if budget is not None and budget < first_round_upload_bytes:
    raise ConfigError(
        f'--upload_budget_bytes={budget} is less than one round\'s upload '
        f'({first_round_upload_bytes} bytes); nothing would run.')


def run_experiment(settings: ExperimentSettings, output_dir: str, *,
                   resume: bool = False,
                   progress: bool = False,
                   on_round_end: Optional[Callable[[dict], None]] = None,
                   check_interrupt: Optional[Callable[[], None]] = None,
                   worker_timeout_seconds: Optional[float] = None):
  """Runs a whole experiment and writes its outputs to `output_dir`.

  A run stopped from outside (`interruptions.Interrupted`: a stop request
  raised by `check_interrupt`, a lost TFF worker; or KeyboardInterrupt)
  abandons the round in progress, saves a checkpoint of the last completed
  round in `output_dir/checkpoints` (whatever `checkpoint_every` says), ends
  its own workers and re-raises, with the exception's `completed_round` and
  `checkpoint_path` set; `resume=True` then continues exactly. An owned
  worker that dies is restarted and its call re-run (`execution`).

  Args:
    settings: The settings.
    output_dir: Where results go; must not hold results already, unless
      resuming.
    resume: Continue the unfinished run in `output_dir` (same settings) from
      its newest usable checkpoint.
    progress: Show a progress bar on stderr.
    on_round_end: Called with each metrics row.
    check_interrupt: Called between rounds and while a TFF call runs; what
      it raises (e.g. `interruptions.StopRequested`) stops the run as above.
    worker_timeout_seconds: How long a worker given by `--workers` may go
      without answering before the run stops with
      `execution.WorkerLostError`; None: `execution`'s default (60 s).

  Returns:
    The list of metrics rows (dicts keyed by `METRICS_COLUMNS`).

  Raises:
    ConfigError: For a bad setting, or a used or unwritable output or
      TensorBoard directory.
    data.DataFileError: For missing or corrupt data files.
    interruptions.Interrupted: If the run was stopped from outside.
    execution.WorkerError: If a TFF worker cannot be started or reached
      (nothing is written then).
    OutputError: If an output file cannot be written (a full disk, no
      permission): each file is left whole, and the run either resumes
      (`OutputError.is_resumable`) or was removed.
    KeyboardInterrupt: On Ctrl-C, with a message that says whether the run
      can be resumed.
  """
  settings = _check_settings(settings, output_dir, resume,
                             worker_timeout_seconds)
  if resume:
    try:
      rows = resumption.finish_done_run(settings, output_dir)
    except atomic_files.WriteError as error:
      raise OutputError.from_os_error(error, True, output_dir) from error
    if rows is not None:
      return rows
  federated_data = load_federated_data(settings)
  # TF/TFF are imported from here on, so that bad flags fail fast.
  from tff_feddst.running import experiment_rounds  # pylint: disable=g-import-not-at-top
  from tff_feddst.running import kernel_settings  # pylint: disable=g-import-not-at-top
  kernel_settings.use_bit_exact_kernels()
  plan = registry.get(settings.method).prepare(settings, federated_data)
  _check_budget(settings, plan)
  return experiment_rounds.run_rounds(
      settings, plan, federated_data, output_dir,
      settings.effective_tensorboard_dir(output_dir), resume=resume,
      progress=progress, on_round_end=on_round_end,
      check_interrupt=check_interrupt,
      worker_timeout_seconds=worker_timeout_seconds)
