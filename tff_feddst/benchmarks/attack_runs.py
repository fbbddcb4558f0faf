"""Runs with one hostile client per round, and the table of their damage.

Each run trains a FedDST-family configuration with the plain-TF loop
(`plain_loop.PlainFedDst`: real client training, and the server's own
payload checks, exact-sum aggregation and finalizer, client by client); in
every round the client at `hostile_index` among the sampled ones trains
honestly and then sends what its attack (`attacks.ATTACKS`) makes of its
upload instead. A clean run (no hostile client) is the yardstick. Every
run of one seed and defence setting starts from the same initial model and
sees the same clients and data.

Defences are switched by setting overrides kept in ONE place,
`DEFENCE_SETTINGS`: 'off' is what main had before the defences of issue 13
(no clipping, no weight cap, one vote admits a new position, no stop after
failed rounds), 'on' the defences with their defaults. A setting this
version does not have is skipped under 'off' (its absence is the old
behaviour) and refused under 'on' (`apply_defences`).

A run records, per round, whether the global model is all finite, and
evaluates it every `eval_every` rounds and after the last; a non-finite
model is evaluated as it is (its accuracy is whatever its predictions
give) and the round loop goes on.
"""

import csv
import io
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tff_feddst.benchmarks import attack_names
from tff_feddst.benchmarks import attacks
from tff_feddst.benchmarks import plain_loop
from tff_feddst.methods import feddst_methods
from tff_feddst.methods import model_setup
from tff_feddst.methods import registry
from tff_feddst.outputs import atomic_files
from tff_feddst.process import payload_validation
from tff_feddst.running import client_sampling
from tff_feddst.running import errors
from tff_feddst.running import evaluation
from tff_feddst.running import experiment
from tff_feddst.running import setting_checks
from tff_feddst.running import settings as settings_lib

CLEAN = 'clean'  # The run without a hostile client.
DEFENCE_MODES = attack_names.DEFENCE_MODES


class _SettingDefault:
  """Marks an 'on' setting that keeps its own default (it must exist)."""

  def __repr__(self) -> str:
    return 'SETTING_DEFAULT'


SETTING_DEFAULT = _SettingDefault()

# THE defence switch: setting (flag) name -> value, per mode. A setting
# switches a defence in these runs only once
# `model_setup.plain_server_arguments` passes it on to the plain loop (as
# `FeddstMethod.prepare` does to the TFF one).
DEFENCE_SETTINGS: dict[str, dict[str, Any]] = {
    'off': {
        'clip_updates': False,
        'max_client_weight': 0,  # 0: no cap.
        'client_weighting': 'num_examples',
        'reject_replayed_uploads': False,
        'reject_stale_uploads': False,
        'max_client_weight_multiple': 0,  # 0: no cap by the round's median.
        'min_new_position_votes': 1,
        'max_failed_rounds': 0,  # 0: never stop.
        'robust_mean': 'mean',  # The weighted mean.
        'reject_opposed_updates': False,
    },
    'on': {
        'clip_updates': True,
        'clip_norm_quantile': SETTING_DEFAULT,
        'clip_norm_multiplier': SETTING_DEFAULT,
        'clip_zeroing_multiple': SETTING_DEFAULT,
        'max_client_weight': None,  # Unset: the largest client's count.
        'client_weighting': 'num_examples',
        'reject_replayed_uploads': True,
        'reject_stale_uploads': True,
        'max_client_weight_multiple': SETTING_DEFAULT,
        'min_new_position_votes': SETTING_DEFAULT,
        'max_failed_rounds': SETTING_DEFAULT,
        'robust_mean': SETTING_DEFAULT,  # As given (--robust_mean).
        'reject_opposed_updates': SETTING_DEFAULT,
        'min_update_cosine': SETTING_DEFAULT,
    },
}

COLUMNS = (('attack', 'defences', 'seed', 'final_test_accuracy',
            'mean_test_accuracy', 'mean_vs_clean_points', 'rejected_clients')
           + tuple(f'rejected_{kind}'
                   for kind in payload_validation.REJECTION_KINDS)
           + ('hostile_uploads', 'final_max_abs_weight', 'always_finite',
              'first_nonfinite_round', 'seconds'))
CSV_NAME = 'attack_table.csv'
MARKDOWN_NAME = 'attack_table.md'


def apply_defences(settings: settings_lib.ExperimentSettings,
                   mode: str) -> settings_lib.ExperimentSettings:
  """The settings with `DEFENCE_SETTINGS[mode]` applied.

  Args:
    settings: The run's settings.
    mode: 'on' or 'off'.

  Returns:
    A copy with every named setting this version has set (those marked
    `SETTING_DEFAULT` keep their values).

  Raises:
    errors.ConfigError: Under 'on', for a named setting this version does
      not have (one line).
  """
  known = settings.flat()
  overrides = {}
  for name, value in DEFENCE_SETTINGS[mode].items():
    if name not in known:
      if mode == 'on':
        raise errors.ConfigError(
            f'--defences=on needs the setting --{name}, which this version '
            'does not have; run with --defences=off.')
      continue
    if value is not SETTING_DEFAULT:
      overrides[name] = value
  return settings.replace(**overrides)


def check_settings(settings: settings_lib.ExperimentSettings) -> None:
  """Refuses settings the plain loop cannot run (one-line `ConfigError`)."""
  settings.validate()
  method = registry.get(settings.method)
  if not isinstance(method, feddst_methods.FeddstMethod):
    raise errors.ConfigError(
        f'--method={settings.method} is not run by the plain loop; expected '
        'one of the FedDST family (feddst, fedavg, fedavgm, fedprox, '
        'feddst_fedprox, randommask).')
  if settings.resolved().network.is_growing_sparsity:
    raise errors.ConfigError(
        f'--initial_sparsity={settings.network.initial_sparsity} is not run '
        'by the plain loop; expected unset (constant sparsity).')
  if settings.run.dropout_rate:
    raise errors.ConfigError(
        f'--dropout_rate={settings.run.dropout_rate} is invalid here: '
        'expected 0 (every sampled client reports).')
  if settings.readjustment.readjust_counter != 'round':
    raise errors.ConfigError(
        f'--readjust_counter={settings.readjustment.readjust_counter} is not '
        'run by the plain loop (its clients keep no lifetime epoch count); '
        'expected round.')
  unsupported = setting_checks.unsupported_plain_server_setting(
      settings.server)
  if unsupported:
    name, value, supported = unsupported
    hint = (' (with --server_momentum for momentum)'
            if name == 'server_optimizer' else '')
    raise errors.ConfigError(
        f'--{name}={value} is not run by the plain loop; expected '
        f'{supported}{hint}.')


class _Setup:
  """Data, plain loop and evaluator of one seed and defence setting."""

  def __init__(self, settings: settings_lib.ExperimentSettings):
    settings = settings.resolved()
    self.settings = settings
    self.data = experiment.load_federated_data(settings)
    model_fn, initial = model_setup.build_model(settings)
    # The evaluator's Keras model first (see evaluation.py).
    self.evaluator = evaluation.Evaluator(model_fn, self.data)
    client_config = model_setup.build_client_config(settings, initial)
    self.loop = plain_loop.PlainFedDst(
        model_fn, initial, self.datasets(1)[0].element_spec,
        feddst_methods.build_schedule(settings), client_config,
        **model_setup.plain_server_arguments(settings, client_config,
                                             self.data, model_fn, initial))
    self.payload_format = attacks.PayloadFormat(
        initial.layout, tuple(int(n) for n in initial.num_active),
        self.loop.trainer.upload_encoding)

  def datasets(self, round_num: int) -> list:
    run = self.settings.run
    sampled = client_sampling.sample_clients(
        self.data.client_ids, run.clients_per_round, run.seed, round_num)
    return client_sampling.client_datasets(
        self.data, sampled, self.settings.client.client_batch_size, run.seed,
        round_num)


def is_finite(weights: Any) -> bool:
  """Whether every float tensor of a `ModelWeights` is all finite."""
  return all(np.all(np.isfinite(np.asarray(v, np.float64)))
             for v in list(weights.trainable) + list(weights.non_trainable)
             if np.issubdtype(np.asarray(v).dtype, np.floating))


def max_abs_weight(weights: Any) -> float:
  """The largest |value| of a `ModelWeights`' trainable tensors (NaN-free
  maximum; NaN only when every value is NaN)."""
  values = [np.abs(np.asarray(v, np.float64)).reshape(-1)
            for v in weights.trainable]
  values = np.concatenate(values) if values else np.zeros([0])
  if not values.size or np.all(np.isnan(values)):
    return float('nan')
  return float(np.nanmax(values))


def run_one(setup: _Setup, attack_name: str, defences: str,
            hostile_index: int = 0) -> dict[str, Any]:
  """Runs one configuration with one hostile client (or none: `CLEAN`).

  Args:
    setup: The seed's and defence setting's `_Setup`.
    attack_name: A name of `attacks.ATTACKS`, or `CLEAN`.
    defences: 'on' or 'off' (recorded in the row).
    hostile_index: Index among each round's sampled clients of the hostile
      one.

  Returns:
    A table row (`COLUMNS`); `mean_vs_clean_points` is left None.
  """
  start = time.perf_counter()
  settings, loop = setup.settings, setup.loop
  hook = None
  if attack_name != CLEAN:
    hook = attacks.hostile_hook(attacks.ATTACKS[attack_name],
                                setup.payload_format, hostile_index)
  total_rounds, eval_every = settings.run.total_rounds, settings.run.eval_every
  rejected = {f'rejected_{kind}': 0
              for kind in payload_validation.REJECTION_KINDS}
  accuracies, first_nonfinite = [], None
  state = loop.initialize()
  for round_num in range(1, total_rounds + 1):
    state, metrics = loop.next(state, setup.datasets(round_num),
                               upload_hook=hook)
    for key in rejected:
      rejected[key] += metrics[key]
    weights = loop.get_model_weights(state)
    if first_nonfinite is None and not is_finite(weights):
      first_nonfinite = round_num
    if round_num % eval_every == 0 or round_num == total_rounds:
      accuracies.append(setup.evaluator.evaluate(weights).test_accuracy)
  return dict(
      attack=attack_name, defences=defences, seed=settings.run.seed,
      final_test_accuracy=accuracies[-1],
      mean_test_accuracy=float(np.mean(accuracies)),
      mean_vs_clean_points=None,
      rejected_clients=sum(rejected.values()), **rejected,
      hostile_uploads=hook.sent if hook else 0,
      final_max_abs_weight=max_abs_weight(weights),
      always_finite='yes' if first_nonfinite is None else 'no',
      first_nonfinite_round=first_nonfinite,
      seconds=round(time.perf_counter() - start, 1))


def run_table(settings: settings_lib.ExperimentSettings,
              attack_names: Sequence[str], defence_modes: Sequence[str],
              seeds: Sequence[int], hostile_index: int = 0,
              log: Optional[Callable[[str], None]] = None
              ) -> list[dict[str, Any]]:
  """The clean run and every attack, per defence setting and seed.

  Args:
    settings: The base settings (e.g. from a flagfile).
    attack_names: Names from `attacks.ATTACKS`.
    defence_modes: From `parse_defences`.
    seeds: Run seeds (each replaces --seed).
    hostile_index: See `run_one`.
    log: Called with one line per finished run.

  Returns:
    Rows (`COLUMNS`), clean first within each (defences, seed), with
    `mean_vs_clean_points` = 100 x (mean test accuracy - the clean run's).

  Raises:
    errors.ConfigError: For settings the tool cannot run (checked for every
      defence setting and seed before anything runs).
  """
  log = log or (lambda line: None)
  if not 0 <= hostile_index < settings.run.clients_per_round:
    raise errors.ConfigError(
        f'--hostile_index={hostile_index} is invalid: expected an integer in '
        f'[0, --clients_per_round={settings.run.clients_per_round}).')
  plans = []
  for mode in defence_modes:
    for seed in seeds:
      run_settings = apply_defences(settings.replace(seed=seed), mode)
      check_settings(run_settings)
      plans.append((mode, run_settings))
  rows = []
  for mode, run_settings in plans:
    setup = _Setup(run_settings)
    clean = None
    for name in [CLEAN] + list(attack_names):
      row = run_one(setup, name, mode, hostile_index)
      clean = clean or row
      row['mean_vs_clean_points'] = 100.0 * (
          row['mean_test_accuracy'] - clean['mean_test_accuracy'])
      rows.append(row)
      log(' '.join(f'{key}={_cell(row[key], key)}' for key in (
          'attack', 'defences', 'seed', 'final_test_accuracy',
          'mean_test_accuracy', 'rejected_clients', 'always_finite',
          'seconds')))
  return rows


def _cell(value: Any, column: str = '') -> str:
  """A table cell: accuracies to 4 decimals, points and seconds to 1,
  weights to 3 significant digits."""
  if value is None:
    return ''
  if column == 'mean_vs_clean_points':
    return f'{value:+.1f}'
  if column == 'final_max_abs_weight':
    return f'{value:.3g}'
  if isinstance(value, float):
    return f'{value:.1f}' if column == 'seconds' else f'{value:.4f}'
  return str(value)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as CSV text (header `COLUMNS`; None as empty cells)."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({c: '' if row[c] is None else row[c] for c in COLUMNS})
  return buffer.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a Markdown table (accuracies to 4 decimals, points vs
  clean with a sign and seconds to 1)."""
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(row[c], c) for c in COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def write_table(rows: Sequence[dict[str, Any]], output_dir: str) -> list[str]:
  """Writes `attack_table.csv` and `attack_table.md` into `output_dir`.

  Args:
    rows: From `run_table`.
    output_dir: Created if missing; the table files must not exist.

  Returns:
    The two paths written.

  Raises:
    FileExistsError: If a table file exists already (nothing overwritten).
  """
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, CSV_NAME),
           os.path.join(output_dir, MARKDOWN_NAME)]
  for path, text in zip(paths, (to_csv(rows), to_markdown(rows))):
    atomic_files.write_text(path, text, exclusive=True)
  return paths


def check_output_dir(output_dir: str) -> None:
  """Refuses an --output_dir that already holds a table (one line)."""
  for name in (CSV_NAME, MARKDOWN_NAME):
    path = os.path.join(output_dir, name)
    if os.path.exists(path):
      raise errors.ConfigError(f'--output_dir={output_dir} already holds '
                               f'{name}; choose a new directory.')

