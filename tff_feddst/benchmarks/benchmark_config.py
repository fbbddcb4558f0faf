"""What `benchmarking` measures: the settings of a benchmark, without
TensorFlow.

`bin/benchmark.py` defines its flags from these and checks them before it
loads TensorFlow (seconds), so that a bad flag is refused at once.
"""

import dataclasses
from typing import Any

from tff_feddst.process import payload_encoding
from tff_feddst.running import setting_checks
from tff_feddst.running import settings as settings_lib


# The benchmark's defaults where they differ from a training run's: the
# paper's MNIST setting, readjusting every other round with a constant ratio
# (`bin/benchmark.py` uses them as its flag defaults).
BENCHMARK_DEFAULTS = {
    'model': 'mnist_net',
    'data_distribution': 'iid',
    'clients_per_round': 20,
    'client_epochs_per_round': 5,
    'drop_fraction': 0.3,
    'rounds_between_readjustments': 2,
    'annealing': 'constant',
    # Readjust every R rounds for as long as the benchmark runs.
    'annealing_end_round': 10**6,
    'upload_encoding': 'float32+bitmap',
    'download_encoding': 'float32+bitmap',
}


@dataclasses.dataclass(frozen=True)
class TimingSettings:
  """How the benchmark times rounds (besides the experiment's settings)."""
  warmup_rounds: int = settings_lib.setting(
      1, 'Untimed rounds before the timed ones (tracing, first-call costs).')
  timed_rounds: int = settings_lib.setting(4, 'Timed rounds.')
  sweep_clients_per_round: tuple[int, ...] = settings_lib.setting(
      (5, 10, 20, 40), 'Clients per round of the sweep (empty: no sweep).')
  sweep_rounds: int = settings_lib.setting(
      2, 'Timed rounds per sweep point (from the initial model).')
  sparse_dense_rounds: int = settings_lib.setting(
      2, 'Timed plain rounds of FedDST and of dense FedAvg (S=0) each, '
      'alternating after --warmup_rounds, for sparse_to_dense_round_ratio '
      '(0: not measured).')
  max_concurrent_computation_calls: int = settings_lib.setting(
      0, 'TFF worker concurrency limit (0: one call per CPU, as bin/train.py '
      'runs; < 0: none).')
  report_encodings: tuple[str, ...] = settings_lib.setting(
      ('float32+bitmap', 'float16+bitmap', 'float32+bitmap+changed_masks_only',
       'float32+rice', 'float16+rice', 'float32+rice+changed_masks_only',
       'float16+rice+changed_masks_only'),
      'Encodings whose upload sizes are reported, measured on a real client '
      'upload after the timed rounds.')


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """What to benchmark: an experiment's settings plus timing settings.

  The TFF path runs FedDST (`fed_dst.build_fed_dst`) with the experiment's
  model, client, readjustment and encoding settings on an iid (by default)
  split; both paths start from the model training builds
  (`model_setup.build_model`).

  Attributes:
    experiment: The run's settings (`benchmark_settings` gives the
      benchmark's defaults).
    timing: What to time.
  """
  experiment: settings_lib.ExperimentSettings
  timing: TimingSettings = dataclasses.field(default_factory=TimingSettings)

  def __post_init__(self):
    timing, run = self.timing, self.experiment.run
    if timing.warmup_rounds < 0 or timing.timed_rounds < 1:
      raise ValueError('warmup_rounds must be >= 0 and timed_rounds >= 1.')
    if timing.sparse_dense_rounds < 0:
      raise ValueError('sparse_dense_rounds must be >= 0, got '
                       f'{timing.sparse_dense_rounds}.')
    if timing.sweep_rounds < 1:
      raise ValueError(f'sweep_rounds must be >= 1, got {timing.sweep_rounds}.')
    total_clients = self.experiment.data.total_clients
    for count in (run.clients_per_round,) + tuple(
        timing.sweep_clients_per_round):
      if not 1 <= count <= total_clients:
        raise ValueError(f'clients per round must be in [1, total_clients='
                         f'{total_clients}], got {count}.')
    for name in timing.report_encodings:
      payload_encoding.PayloadEncoding.parse(name)  # ValueError if bad.
    # As a run checks them: a ConfigError naming the flag.
    self.experiment.validate()
    # Timed against the plain loop, which has only some server settings.
    unsupported = setting_checks.unsupported_plain_server_setting(
        self.experiment.server)
    if unsupported:
      name, value, supported = unsupported
      raise ValueError(f'--{name}={value} is not benchmarked; expected '
                       f'{supported}.')

  def flat(self) -> dict[str, Any]:
    """Every setting by flag name (the result's `config`)."""
    return {**self.experiment.flat(), **dataclasses.asdict(self.timing)}
