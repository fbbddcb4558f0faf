"""The measurement contract between a method's process and the round loop.

Every method's `LearningProcess` must report, in the `metrics` of its
`next` output, the measurements in `REQUIRED_MEASUREMENTS` (optional ones
may be left out): the round loop turns them into a metrics.csv row
(`metrics_row`), charges the upload budget with `aggregator/upload_bytes`,
and the plots read that row. A process built with `compose_learning_process`
nests its metrics by part (`distributor`, `client_work`, `aggregator`,
`finalizer`), so each measurement is named by its part and key.

`check_process` checks a process's `next` type signature before any round
runs, and `check_metrics` one round's values; both name a missing
measurement. Every method's test calls them (`tests/process_contract.py`).
"""

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow_federated as tff

from tff_feddst.networks import flops
from tff_feddst.outputs import metrics_csv
from tff_feddst.running import evaluation


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One measurement the round loop reads from a process's metrics.

  Attributes:
    part: The `compose_learning_process` part that reports it
      ('distributor', 'client_work', 'aggregator' or 'finalizer').
    key: Its key in that part's measurements.
    kind: 'int' (an integer count) or 'float'.
    meaning: What it holds, with its unit.
    required: False if a process may leave it out (`default` is used).
    default: The value of an optional measurement that is left out.
  """
  part: str
  key: str
  kind: str
  meaning: str
  required: bool = True
  default: Optional[int] = None

  @property
  def name(self) -> str:
    """'part/key', as error messages name it."""
    return f'{self.part}/{self.key}'


REQUIRED_MEASUREMENTS = (
    Measurement('distributor', 'download_bytes', 'int',
                'bytes sent to the clients this round, as encoded'),
    Measurement('client_work', 'train_loss', 'float',
                'mean training loss of the reporting clients'),
    Measurement('aggregator', 'upload_bytes', 'int',
                'bytes uploaded by the reporting clients, as encoded '
                '(rejected uploads included): the upload budget counts it'),
    Measurement('aggregator', 'num_clients', 'int',
                'uploads aggregated into the model'),
    Measurement('aggregator', 'rejected_clients', 'int',
                'uploads dropped as invalid before aggregation',
                required=False, default=0),
    Measurement('finalizer', 'sparsity', 'float',
                'fraction of zeros in the prunable kernels of the new '
                'global model'),
    Measurement('finalizer', 'mask_changed_positions', 'int',
                'kernel positions whose global mask bit changed this round'),
    Measurement('finalizer', 'server_update_failed', 'int',
                '1 if the server refused the round\'s new model (not all '
                'finite) and kept the old one, else 0',
                required=False, default=0),
    Measurement('client_work', 'num_examples', 'float',
                'examples in one local epoch, summed over the clients that '
                'trained (training FLOPs count them)',
                required=False, default=None),
    Measurement('aggregator', 'clipped_clients', 'int',
                'accepted uploads whose update the server clipped to the '
                'round\'s bound (robust_aggregation)',
                required=False, default=0),
    # The mask's movement (`server_step.mask_movement`); empty for methods
    # without a global mask.
    Measurement('finalizer', 'mask_new_positions_offered', 'int',
                'kernel positions outside the round\'s global mask that '
                'accepted clients hold and the re-prune could choose',
                required=False, default=None),
    Measurement('finalizer', 'mask_new_positions_entered', 'int',
                'of the offered positions, those in the new global mask',
                required=False, default=None),
    Measurement('finalizer', 'mask_entered_weight_mass', 'float',
                'sum of |w| in the new model over the positions that '
                'entered the global mask',
                required=False, default=None),
    Measurement('finalizer', 'mask_left_weight_mass', 'float',
                'sum of |w| in the old model over the positions that left '
                'the global mask',
                required=False, default=None),
    Measurement('client_work', 'clients_readjusted', 'int',
                'reporting clients that readjusted their mask at least once '
                'this round (FedDST); empty for methods without readjustment',
                required=False, default=None),
)
_BY_NAME = {m.name: m for m in REQUIRED_MEASUREMENTS}


class MissingMeasurementError(KeyError):
  """A process does not report a measurement the round loop needs."""

  def __str__(self) -> str:
    return str(self.args[0])


def _missing(measurement: Measurement, found: str) -> MissingMeasurementError:
  return MissingMeasurementError(
      f'the process\'s metrics lack {measurement.name} '
      f'({measurement.meaning}); {found}. See measurements.'
      'REQUIRED_MEASUREMENTS.')


def check_process(process: tff.templates.IterativeProcess) -> None:
  """Checks that `process.next` reports every required measurement.

  Reads only the type signature: no round runs.

  Args:
    process: A `LearningProcess` (or any process whose `next` returns a
      structure with `metrics` placed at the server).

  Raises:
    MissingMeasurementError: Naming the first measurement that is missing.
  """
  metrics_type = process.next.type_signature.result.metrics
  if isinstance(metrics_type, tff.FederatedType):
    metrics_type = metrics_type.member
  parts = dict(tff.structure.to_elements(metrics_type))
  for measurement in REQUIRED_MEASUREMENTS:
    part = parts.get(measurement.part)
    if part is None:
      if measurement.required:
        raise _missing(measurement, f'it has no part {measurement.part!r} '
                       f'(its parts: {sorted(p for p in parts if p)})')
      continue
    keys = [name for name, _ in tff.structure.to_elements(part)]
    if measurement.required and measurement.key not in keys:
      raise _missing(measurement, f'{measurement.part} reports {keys}')


def check_metrics(metrics: Mapping[str, Any]) -> None:
  """Checks one round's metrics: every required measurement, a scalar.

  Args:
    metrics: The `metrics` of a process's `next` output.

  Raises:
    MissingMeasurementError: Naming a missing measurement.
    ValueError: If a measurement is not a scalar of its kind.
  """
  for measurement in REQUIRED_MEASUREMENTS:
    part = metrics.get(measurement.part, {})
    if measurement.key not in part:
      if measurement.required:
        raise _missing(measurement, f'{measurement.part} reports '
                       f'{list(part)}')
      continue
    value = np.asarray(part[measurement.key])
    kinds = (np.integer,) if measurement.kind == 'int' else (np.floating,
                                                             np.integer)
    if value.ndim != 0 or not any(np.issubdtype(value.dtype, k)
                                  for k in kinds):
      raise ValueError(f'{measurement.name} must be a scalar '
                       f'{measurement.kind}, got {value!r}.')


def value(metrics: Mapping[str, Any], name: str):
  """Returns measurement `name` ('part/key') of one round's metrics.

  Args:
    metrics: The `metrics` of a process's `next` output.
    name: A name from `REQUIRED_MEASUREMENTS`.

  Returns:
    The value as a Python int or float; an optional measurement that is
    left out gives its default.

  Raises:
    MissingMeasurementError: If a required measurement is missing.
  """
  measurement = _BY_NAME[name]
  part = metrics.get(measurement.part, {})
  if measurement.key not in part:
    if measurement.required:
      raise _missing(measurement, f'{measurement.part} reports {list(part)}')
    return measurement.default
  convert = int if measurement.kind == 'int' else float
  return convert(part[measurement.key])


def metrics_row(round_num: int, round_metrics: Mapping[str, Any],
                eval_result: Optional[evaluation.EvalResult],
                cumulative: dict, round_seconds: float,
                clients_sampled: int, dropped_download_bytes: int = 0,
                round_flops: Optional[flops.TrainingFlops] = None) -> dict:
  """Turns one round's process metrics into a metrics.csv row.

  Args:
    round_num: 1-based round.
    round_metrics: The `metrics` of the process's `next` output.
    eval_result: Evaluation this round, or None.
    cumulative: Running totals {'upload': int, 'download': int}, updated;
      with `round_flops`, also 'training_flops' and 'training_flops_dense'
      (int, or None once unknown: a resumed run whose older rows lack them;
      missing keys start at 0).
    round_seconds: Wall time of the round (training and evaluation).
    clients_sampled: Clients sampled this round (reported or not).
    dropped_download_bytes: Download of sampled clients that did not report
      (they received the model before failing).
    round_flops: The round's training FLOPs (`training_flops`), or None to
      leave the FLOPs columns empty.

  Returns:
    A dict keyed by `metrics_csv.METRICS_COLUMNS`.

  Raises:
    MissingMeasurementError: If a required measurement is missing.
  """
  upload = value(round_metrics, 'aggregator/upload_bytes')
  download = (value(round_metrics, 'distributor/download_bytes') +
              dropped_download_bytes)
  cumulative['upload'] += upload
  cumulative['download'] += download
  # Uploads the server dropped as invalid (`payload_validation`); 0 for
  # processes whose aggregator does not validate.
  rejected = value(round_metrics, 'aggregator/rejected_clients')
  flops_columns = dict.fromkeys(metrics_csv.FLOPS_COLUMNS)
  if round_flops is not None:
    for key, round_value in (('training_flops', round_flops.sparse),
                             ('training_flops_dense', round_flops.dense)):
      total = cumulative.get(key, 0)
      cumulative[key] = None if total is None else total + round_value
      flops_columns[key] = round_value
      flops_columns[f'{key}_cumulative'] = cumulative[key]
  return {
      'round': round_num,
      'test_accuracy': eval_result.test_accuracy if eval_result else None,
      'client_test_accuracy': (
          eval_result.client_test_accuracy if eval_result else None),
      'train_loss': value(round_metrics, 'client_work/train_loss'),
      'sparsity': value(round_metrics, 'finalizer/sparsity'),
      'mask_changed_positions': value(round_metrics,
                                      'finalizer/mask_changed_positions'),
      'upload_bytes': upload,
      'download_bytes': download,
      'upload_bytes_cumulative': cumulative['upload'],
      'download_bytes_cumulative': cumulative['download'],
      'round_seconds': round_seconds,
      'clients_sampled': clients_sampled,
      # Uploads received: aggregated plus rejected.
      'clients_reported': value(round_metrics, 'aggregator/num_clients') +
                          rejected,
      'rejected_clients': rejected,
      'server_update_failed': value(round_metrics,
                                    'finalizer/server_update_failed'),
      'clipped_clients': value(round_metrics, 'aggregator/clipped_clients'),
      **flops_columns,
      # Methods with personal models (LotteryFL): mean and standard
      # deviation over clients of their own model's local test accuracy.
      'personal_test_accuracy': (
          eval_result.personal_test_accuracy if eval_result else None),
      'personal_test_accuracy_std': (
          eval_result.personal_test_accuracy_std if eval_result else None),
      **{column: value(round_metrics, f'finalizer/{column}')
         for column in metrics_csv.MASK_MOVEMENT_COLUMNS},
      'clients_readjusted': value(round_metrics,
                                  'client_work/clients_readjusted'),
  }
