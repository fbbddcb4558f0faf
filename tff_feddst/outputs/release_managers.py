"""Where each round's results go: `tff.program` release managers.

After each round the loop releases one `RoundRelease` (its metrics row, its
client ids and a reference to the new global model) with the round number
as the key, as `tff.learning.programs.train_model` releases its metrics to
a `tff.program.ReleaseManager`. Ours:

* `MetricsCsvReleaseManager`: one metrics.csv row, appended whole;
* `TensorBoardReleaseManager`: scalars and model summaries
  (`tensorboard_logging`);
* `ProgressBarReleaseManager`: advances a progress bar (tqdm);
* `CallbackReleaseManager`: hands the row and the model to callbacks;
* `SequentialReleaseManager`: several of these, one after the other.

`tff.program.GroupingReleaseManager` is not used to combine them: it runs
its managers concurrently (`asyncio.gather`), and a manager that fails does
not stop the others. Ours must run in order and stop at the first failure,
so that a progress bar or a callback never sees a row that is not on disk.

The global model is released as a `ModelWeightsReference`, a
`tff.program.MaterializableValueReference`: it is fetched from the process
state only if a manager materializes it, at most once per round.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import tensorflow_federated as tff

from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import metrics_csv
from tff_feddst.outputs import tensorboard_logging


class ModelWeightsReference(tff.program.MaterializableValueReference):
  """The global `ModelWeights` of a process state, fetched on demand."""

  def __init__(self, process: tff.learning.templates.LearningProcess,
               state: Any, weights: Optional[Any] = None):
    """References `process.get_model_weights(state)`.

    Args:
      process: The `LearningProcess`.
      state: Its state after the round.
      weights: The weights if they were fetched already (then they are not
        fetched again).
    """
    self._process = process
    self._state = state
    self._weights = weights

  @property
  def type_signature(self) -> tff.Type:
    return self._process.get_model_weights.type_signature.result

  async def get_value(self) -> Any:
    if self._weights is None:
      self._weights = self._process.get_model_weights(self._state)
    return self._weights


class RoundRelease(NamedTuple):
  """What the round loop releases after a round (the key: its number).

  Attributes:
    metrics: The round's metrics.csv row (`measurements.metrics_row`).
    sampled_ids: The sampled clients, in sampling order.
    client_ids: Those that reported (their datasets went into the round).
    model_weights: The new global model (a `ModelWeightsReference`, or
      `ModelWeights`).
  """
  metrics: dict
  sampled_ids: tuple[str, ...]
  client_ids: tuple[str, ...]
  model_weights: Any


def _check_key(value: RoundRelease, key: int) -> None:
  if key != value.metrics['round']:
    raise ValueError(f'release key {key} is not the row\'s round '
                     f'{value.metrics["round"]}.')


class MetricsCsvReleaseManager(tff.program.ReleaseManager[RoundRelease,
                                                          int]):
  """Appends each released round's row to metrics.csv.

  Like `tff.program.CSVFileReleaseManager` keyed by round, with our file
  format (`metrics_csv`): a fixed header, each row appended whole and
  synced (`atomic_files.append_record`; a failed write leaves the file as it
  was). Rows of rounds after a resumed checkpoint are removed once, by
  `resume_after`, before the first release, rather than at each release.
  """

  def __init__(self, metrics_path: str):
    """Manages `metrics_path`; nothing is written yet.

    Args:
      metrics_path: Where metrics.csv is.
    """
    self._path = metrics_path

  def create(self) -> None:
    """Starts a new metrics.csv (the header only); see `create_metrics_file`.

    Raises:
      FileExistsError: If the file exists.
      atomic_files.WriteError: If it cannot be written.
    """
    metrics_csv.create_metrics_file(self._path)

  def resume_after(self, last_round: int) -> list[dict]:
    """Keeps the rows up to `last_round` for a resumed run and returns them.

    See `metrics_csv.truncate_metrics` (which also raises its errors).
    """
    return metrics_csv.truncate_metrics(self._path, last_round)

  async def release(self, value: RoundRelease, key: int) -> None:
    """Appends `value.metrics` as one row.

    Raises:
      ValueError: If `key` is not the row's round.
      atomic_files.WriteError: If the row cannot be written.
    """
    _check_key(value, key)
    with open(self._path, 'ab') as metrics_file:
      atomic_files.append_record(metrics_file, self._path,
                                 metrics_csv.row_line(value.metrics))


class TensorBoardReleaseManager(tff.program.ReleaseManager[RoundRelease,
                                                           int]):
  """Logs each released round to TensorBoard with the round as the step.

  First the model (per-layer mask densities, active-weight histograms),
  then the row's scalars (`tensorboard_logging.TensorBoardWriter`).
  """

  def __init__(self, writer: tensorboard_logging.TensorBoardWriter):
    """Releases to `writer` (the caller closes it).

    Args:
      writer: An open writer.
    """
    self._writer = writer

  def resume_after(self, rows: Sequence[dict]) -> None:
    """Drops logged rounds after `rows`; see `TensorBoardWriter.resume_after`.
    """
    self._writer.resume_after(rows)

  async def release(self, value: RoundRelease, key: int) -> None:
    """Writes the round's model summaries and scalars.

    Raises:
      atomic_files.WriteError: If the event file cannot be written.
    """
    _check_key(value, key)
    weights = await tff.program.materialize_value(value.model_weights)
    self._writer.write_model(key, weights)
    self._writer.write_metrics(value.metrics)


class ProgressBarReleaseManager(tff.program.ReleaseManager[RoundRelease,
                                                           int]):
  """Advances a progress bar by one round per release.

  The bar's postfix shows the round's loss, how many mask positions moved
  and, on evaluated rounds, the test accuracy.
  """

  def __init__(self, bar: Any):
    """Releases to `bar`, e.g. a `tqdm.tqdm` (`update`, `set_postfix`)."""
    self._bar = bar

  async def release(self, value: RoundRelease, key: int) -> None:
    """Adds one round to the bar and shows its row in the postfix."""
    row = value.metrics
    self._bar.update(1)
    postfix = {'loss': f'{row["train_loss"]:.3f}',
               'mask_moved': row['mask_changed_positions']}
    if row['test_accuracy'] is not None:
      postfix['acc'] = f'{row["test_accuracy"]:.4f}'
    self._bar.set_postfix(postfix)


class CallbackReleaseManager(tff.program.ReleaseManager[RoundRelease, int]):
  """Hands each released round to callbacks: the model first, then the row.
  """

  def __init__(self, on_round_end: Optional[Callable[[dict], None]] = None,
               on_model_weights: Optional[Callable[[int, Any], None]] = None):
    """Calls the given callbacks at each release.

    Args:
      on_round_end: Called with the round's metrics row.
      on_model_weights: Called with the round number and the global
        `ModelWeights` (fetched only if this is given).
    """
    self._on_round_end = on_round_end
    self._on_model_weights = on_model_weights

  async def release(self, value: RoundRelease, key: int) -> None:
    """Calls `on_model_weights(key, weights)`, then `on_round_end(row)`."""
    if self._on_model_weights is not None:
      self._on_model_weights(
          key, await tff.program.materialize_value(value.model_weights))
    if self._on_round_end is not None:
      self._on_round_end(value.metrics)


class SequentialReleaseManager(tff.program.ReleaseManager):
  """Releases each value to several managers in order; the first failure
  stops the release (see the module docstring for why not
  `tff.program.GroupingReleaseManager`)."""

  def __init__(self, release_managers: Sequence[tff.program.ReleaseManager]):
    """Releases to `release_managers`, in that order.

    Args:
      release_managers: The managers (may be empty).
    """
    self._release_managers = tuple(release_managers)

  async def release(self, value: Any, key: Any) -> None:
    """Awaits each manager's `release(value, key)` in turn."""
    for release_manager in self._release_managers:
      await release_manager.release(value, key=key)
