"""One FedDST experiment from a plain config: data, process, loop, outputs.

`ExperimentConfig` holds every hyper-parameter (its field names are the
`bin/train.py` flag names); `run_experiment` validates it, loads and splits
the data, builds the evaluator and the `LearningProcess`, runs the rounds
under an owned TFF execution context and writes, in `output_dir`:

  flags.txt         the config as `--name=value` lines (usable as --flagfile)
  metrics.csv       one row per round (see `training_loop.METRICS_COLUMNS`)
  global_model.npz  the final global `ModelWeights`
  summary.json      why and where the run stopped (total rounds, or the
                    upload budget), final and best accuracy, bytes, seconds
  tensorboard/      TensorBoard event files (`tensorboard_logging`), unless
                    `tensorboard_dir` puts them elsewhere or is ''

Nothing is written until the config and the data have been checked, the
workers answer and the process is built, and an `output_dir` that already
holds results is refused. Every file is written atomically (`atomic_files`):
a kill or a full disk leaves each file old or new, never torn. If a fresh run
fails before its first round is done, what it wrote is removed again, so the
directory can be reused. summary.json, written last, marks a finished run;
`resume=True` finishes any other run (from its newest checkpoint, or, when
only summary.json is missing, by writing it).
"""

import contextlib
import dataclasses
import errno
import io
import ipaddress
import json
import logging
import math
import numbers
import os
import re
import shutil
import tempfile
import typing
from typing import Any, Callable, Optional

import numpy as np

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.data import partitions
from tff_feddst.outputs import atomic_files
from tff_feddst.running import errors
from tff_feddst.sparse import sparsity_distribution as sparsity_distribution_lib

# Data set -> the paper's model for it (LEAF's CNN for EMNIST).
DATASET_MODELS = {
    'fashion_mnist': 'mnist_net',
    'mnist': 'mnist_net',
    'cifar10': 'cifar10_net',
    'cifar100': 'cifar100_net',
    'emnist': 'emnist_conv2',
}
# 'natural' (each client is one of the data's own clients) needs a data set
# listed in `datasets.NATURAL_DATASET_NAMES`.
DISTRIBUTIONS = partitions.DISTRIBUTIONS
SPARSITY_DISTRIBUTIONS = sparsity_distribution_lib.NUM_ACTIVE_DISTRIBUTIONS
SCHEDULES = ('paper', 'reference')
RESULT_FILES = ('metrics.csv', 'flags.txt', 'global_model.npz',
                'summary.json')
# Settings that say where the rounds run, not what they compute: a resumed
# run may change them (e.g. replace a lost --workers worker by local ones).
EXECUTION_SETTINGS = ('num_local_workers', 'workers')

# Every method runs through the same FedDST process; a method fixes the
# settings that define it (see `ExperimentConfig.resolved`).
METHODS = ('feddst', 'feddst_fedprox', 'fedavg', 'fedavgm', 'fedprox',
           'randommask', 'prunefl')
DEFAULT_PROX_MU = 0.01
DEFAULT_SERVER_MOMENTUM = 0.9
# --seed feeds numpy's SeedSequence, Keras initializers and stateless TF
# seeds (`seed * 1009 + layer`, int64): 32 bits keep every use in range.
SEED_LIMIT = 2**32
MAX_PORT = 65535
MIN_DIRICHLET_BETA = 1e-4


def setting_choices() -> dict[str, tuple[str, ...]]:
  """The accepted values of each choice setting (flag), by name.

  Taken from the modules that implement the choices, so that flags
  (`bin/experiment_flags.py` defines them as enums) and `validate` agree
  with the library. Imports TF, not TFF.

  Returns:
    `{setting name: accepted values}` for every setting with a fixed set
    of values (`model` may also be None: the data set's model).
  """
  # pylint: disable=g-import-not-at-top
  from tff_feddst.networks import models
  from tff_feddst.process import encoding
  from tff_feddst.sparse import masks
  from tff_feddst.sparse import schedules
  # pylint: enable=g-import-not-at-top
  return {
      'dataset': tuple(DATASET_MODELS),
      'data_distribution': DISTRIBUTIONS,
      'model': tuple(models.MODEL_BUILDERS),
      'sparsity_distribution': SPARSITY_DISTRIBUTIONS,
      'initial_mask': masks.INITIAL_MASKS,
      'annealing': schedules.ANNEALINGS,
      'grow_score': masks.GROW_SCORES,
      'readjust_rule': masks.READJUST_RULES,
      'readjustment_schedule': SCHEDULES,
      'upload_value_dtype': encoding.VALUE_DTYPES,
      'method': METHODS,
  }


def usable_cpu_count() -> int:
  """CPUs this process may run on (its affinity set where the OS has one)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


class ConfigError(ValueError):
  """A bad experiment setting; the message is one line naming the flag."""


class OutputError(errors.RunError):
  """An output file could not be written; says how to go on.

  Attributes:
    problem: What failed, e.g. 'writing runs/x/metrics.csv failed: [Errno
      28] No space left on device'.
    fix: What to do about it, e.g. 'free space'.
    is_resumable: Whether the run's output directory was kept, so that
      `resume=True` continues it; otherwise nothing of the run was kept.
    output_dir: The run's output directory.
  """

  def __init__(self, problem: str, fix: str, is_resumable: bool,
               output_dir: str):
    self.problem = problem
    self.fix = fix
    self.is_resumable = is_resumable
    self.output_dir = output_dir
    super().__init__(problem, fix, is_resumable, output_dir)

  def __str__(self) -> str:
    if self.is_resumable:
      return f'{self.problem}; {self.fix} and rerun with --resume'
    return f'{self.problem}; nothing was kept: {self.fix} and rerun'

  @classmethod
  def from_os_error(cls, error: OSError, is_resumable: bool,
                    output_dir: str) -> 'OutputError':
    """Words an OSError of a write, with the fix its errno calls for."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
      fix = 'free space'
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
      fix = 'make it writable'
    else:
      fix = 'fix that'
    problem = (str(error) if isinstance(error, atomic_files.WriteError)
               else f'writing {error.filename or output_dir} failed: '
               f'[Errno {error.errno}] {error.strerror}')
    return cls(problem, fix, is_resumable, output_dir)


@dataclasses.dataclass
class ExperimentConfig:
  """Every setting of a run; field names double as flag names."""
  # Data.
  dataset: str = 'fashion_mnist'
  data_dir: Optional[str] = None
  data_distribution: str = 'dirichlet'
  total_clients: int = 100
  dirichlet_beta: float = 0.1
  classes_per_client: int = 2
  examples_per_class: int = 20
  examples_per_client: Optional[int] = None
  # Model.
  model: Optional[str] = None
  # Rounds and local training.
  total_rounds: int = 30
  clients_per_round: int = 10
  client_epochs_per_round: int = 1
  client_batch_size: int = 32
  client_learning_rate: float = 0.01
  client_momentum: float = 0.9
  client_weight_decay: float = 0.001
  prox_mu: float = 0.0
  # Sparsity and readjustment.
  target_sparsity: float = 0.8
  initial_sparsity: Optional[float] = None
  sparsity_distribution: str = 'erk'
  initial_mask: str = 'random'
  drop_fraction: float = 0.05
  annealing: str = 'cosine'
  annealing_end_round: int = 0
  rounds_between_readjustments: int = 5
  readjust_after_epochs: Optional[float] = None
  grow_score: str = 'accumulated'
  readjust_rule: str = 'feddst'
  readjustment_schedule: str = 'paper'
  upload_value_dtype: str = 'float32'
  # Payload encodings (`encoding.PayloadEncoding.parse` names).
  upload_encoding: str = 'bitmap'
  download_encoding: str = 'bitmap'
  # Server.
  server_learning_rate: float = 1.0
  server_momentum: float = 0.0
  min_votes: int = 0
  remember_old: bool = False
  max_payload_norm: float = 0.0
  # Method and budget.
  method: str = 'feddst'
  upload_budget_bytes: Optional[int] = None
  dropout_rate: float = 0.0
  checkpoint_every: int = 10
  # PruneFL (--method=prunefl; see tff_feddst/methods/prunefl.py).
  prunefl_initial_rounds: int = 5
  prunefl_initial_steps: int = 50
  prunefl_reconfigure_every: int = 5
  prunefl_round_cost: float = 0.14
  prunefl_max_remove_fraction: float = 0.3
  prunefl_layer_times: str = 'uniform'
  # Execution.
  num_local_workers: int = 0
  workers: Optional[str] = None
  # Run.
  seed: int = 0
  eval_every: int = 5
  # Output (besides run_experiment's output_dir).
  tensorboard_dir: Optional[str] = None

  @property
  def model_name(self) -> str:
    return self.model or DATASET_MODELS.get(self.dataset, '')

  @property
  def worker_addresses(self) -> tuple[str, ...]:
    """The --workers addresses as a tuple (empty when unset)."""
    return tuple(a.strip() for a in (self.workers or '').split(',')
                 if a.strip())

  @property
  def effective_initial_sparsity(self) -> float:
    """S_init: `initial_sparsity`, or `target_sparsity` when unset."""
    if self.initial_sparsity is None:
      return self.target_sparsity
    return self.initial_sparsity

  @property
  def is_growing_sparsity(self) -> bool:
    """Whether the target sparsity grows from S_init over the rounds."""
    return self.effective_initial_sparsity != self.target_sparsity

  @property
  def effective_annealing_end_round(self) -> int:
    return self.annealing_end_round or max(self.total_rounds // 2, 1)

  @property
  def may_thin_dense_layers(self) -> bool:
    """Whether a layer of full capacity (dense) can lose ones in this run.

    The server keeps a dense layer dense unless the sparsity grows over the
    rounds, `min_votes` > 1 drops positions, or the 'reference' readjust
    rule thins it; PruneFL chooses its own masks.
    """
    return (self.is_growing_sparsity or self.min_votes > 1 or
            self.readjust_rule == 'reference' or self.method == 'prunefl')

  def payload_encodings(self):
    """The upload and download `encoding.PayloadEncoding`s of the run.

    Rules: `--upload_value_dtype=float16` asks for float16 upload values, as
    does an `--upload_encoding` naming float16; naming float32 there
    together with `--upload_value_dtype=float16` is a conflict. The masks
    of dense layers are left out unless `may_thin_dense_layers` (then they
    are sent, as with the 'dense_masks' token).

    Returns:
      `(upload_encoding, download_encoding)`.

    Raises:
      ConfigError: For an unknown encoding, a download that leaves masks
        out, or the value dtype conflict above.
    """
    from tff_feddst.process import encoding  # Imports TF; keep module import light.
    parsed = []
    for flag in ('upload_encoding', 'download_encoding'):
      name = getattr(self, flag)
      try:
        parsed.append(encoding.PayloadEncoding.parse(name))
      except ValueError as error:
        raise ConfigError(
            f'--{flag}={name!r} is invalid: expected {encoding.GRAMMAR} '
            f'({error})') from error
    upload, download = parsed
    if download.masks_only_when_changed:
      raise ConfigError(
          f'--download_encoding={self.download_encoding!r} is invalid: '
          'expected no changed_masks_only (a broadcast always carries the '
          'masks; it applies to --upload_encoding only).')
    if self.upload_value_dtype == 'float16':
      tokens = {token.strip() for token in self.upload_encoding.split('+')}
      if 'float32' in tokens:
        raise ConfigError(
            f'--upload_encoding={self.upload_encoding!r} is invalid with '
            '--upload_value_dtype=float16: expected float16 or no value '
            'dtype in the encoding (drop one of the two).')
      upload = dataclasses.replace(upload, value_dtype='float16')
    if self.may_thin_dense_layers:
      upload = dataclasses.replace(upload, omit_dense_masks=False)
      download = dataclasses.replace(download, omit_dense_masks=False)
    return upload, download

  def effective_tensorboard_dir(self, output_dir: str) -> str:
    """The TensorBoard directory: `tensorboard_dir`, else output_dir's.

    Args:
      output_dir: The run's output directory.

    Returns:
      `tensorboard_dir`, or `<output_dir>/tensorboard` when it is None; ''
      means no TensorBoard logs.
    """
    if self.tensorboard_dir is None:
      return os.path.join(output_dir, 'tensorboard')
    return self.tensorboard_dir

  def resolved(self) -> 'ExperimentConfig':
    """Returns a copy with the settings that define `method` applied.

    - feddst: as configured.
    - feddst_fedprox: FedDST with FedProx; prox_mu defaults to 0.01.
    - randommask: a fixed random sparse mask (drop_fraction 0).
    - fedavg: dense (target_sparsity 0, no readjustment), no server momentum,
      no proximal term.
    - fedavgm: dense with server momentum (default 0.9) and, unless set, a
      server learning rate of 1 - momentum, which keeps FedAvg's effective
      step (server lr 1 with momentum 0.9 oscillates on non-iid data).
    - fedprox: dense with prox_mu (default 0.01).
    - prunefl: PruneFL (`prunefl.py`): starts dense (target_sparsity 0, no
      readjustment) and chooses its own masks.

    Raises:
      ConfigError: For an unknown method.
    """
    if self.method not in METHODS:
      raise ConfigError(f'--method={self.method!r} is invalid: expected one '
                        f'of {", ".join(METHODS)}.')
    changes = {}
    dense = dict(target_sparsity=0.0, initial_sparsity=None,
                 drop_fraction=0.0)
    if self.method == 'feddst_fedprox':
      changes['prox_mu'] = self.prox_mu or DEFAULT_PROX_MU
    elif self.method == 'randommask':
      changes['drop_fraction'] = 0.0
    elif self.method == 'fedavg':
      changes = dict(dense, prox_mu=0.0, server_momentum=0.0)
    elif self.method == 'fedavgm':
      momentum = self.server_momentum or DEFAULT_SERVER_MOMENTUM
      learning_rate = (self.server_learning_rate
                       if self.server_learning_rate != 1.0 else 1 - momentum)
      changes = dict(dense, prox_mu=0.0, server_momentum=momentum,
                     server_learning_rate=learning_rate)
    elif self.method == 'fedprox':
      changes = dict(dense, prox_mu=self.prox_mu or DEFAULT_PROX_MU,
                     server_momentum=0.0)
    elif self.method == 'prunefl':
      changes = dict(dense)
    return dataclasses.replace(self, **changes)

  def validate(self) -> None:
    """Checks every setting that can be checked without data.

    Raises:
      ConfigError: naming the first bad flag and what it accepts.
    """
    def require(ok: bool, flag: str, accepted: str) -> None:
      if not ok:
        raise ConfigError(f'--{flag}={getattr(self, flag)!r} is invalid: '
                          f'expected {accepted}.')

    for name, hint in typing.get_type_hints(ExperimentConfig).items():
      check_setting_type(name, getattr(self, name), hint)
    for name, accepted in setting_choices().items():
      # None passed the type check only where the setting may be unset.
      require(getattr(self, name) is None or getattr(self, name) in accepted,
              name, f'one of {", ".join(accepted)}')
    require(self.data_dir != '', 'data_dir',
            'a directory, or unset (the data set\'s default location)')
    require(self.data_distribution != 'natural' or
            self.dataset in datasets.NATURAL_DATASET_NAMES,
            'data_distribution',
            f'iid, dirichlet or pathological for --dataset={self.dataset} '
            '(natural needs a data set whose clients come with it: '
            f'{", ".join(datasets.NATURAL_DATASET_NAMES)})')
    require(self.total_clients >= 1, 'total_clients', 'an integer >= 1')
    # Below about 1e-4 every class already goes to one client, and numpy's
    # Dirichlet sampler slows to a halt (1e-30 never returns).
    require(self.dirichlet_beta >= MIN_DIRICHLET_BETA, 'dirichlet_beta',
            f'a number >= {MIN_DIRICHLET_BETA:g}')
    require(self.classes_per_client >= 1, 'classes_per_client',
            'an integer >= 1')
    require(self.examples_per_class >= 1, 'examples_per_class',
            'an integer >= 1')
    require(self.examples_per_client is None or self.examples_per_client >= 1,
            'examples_per_client', 'an integer >= 1 or unset')
    require(self.total_rounds >= 1, 'total_rounds', 'an integer >= 1')
    require(1 <= self.clients_per_round <= self.total_clients,
            'clients_per_round',
            f'an integer in [1, --total_clients={self.total_clients}]')
    require(self.client_epochs_per_round >= 1, 'client_epochs_per_round',
            'an integer >= 1')
    require(self.client_batch_size >= 1, 'client_batch_size',
            'an integer >= 1')
    require(self.client_learning_rate > 0, 'client_learning_rate',
            'a number > 0')
    require(0 <= self.client_momentum < 1, 'client_momentum',
            'a number in [0, 1)')
    require(self.client_weight_decay >= 0, 'client_weight_decay',
            'a number >= 0')
    require(self.prox_mu >= 0, 'prox_mu', 'a number >= 0')
    require(0 <= self.target_sparsity < 1, 'target_sparsity',
            'a fraction of zeros in [0, 1)')
    require(self.initial_sparsity is None or
            0 <= self.initial_sparsity < 1, 'initial_sparsity',
            'a fraction of zeros in [0, 1), or unset (= --target_sparsity)')
    if (self.initial_sparsity is not None and
        self.initial_sparsity > self.target_sparsity):
      raise ConfigError(
          f'--initial_sparsity={self.initial_sparsity} is invalid: expected '
          f'at most --target_sparsity={self.target_sparsity}; only growing '
          'sparsity is supported (the server builds each mask from the '
          'clients\' positions, so it can thin a layer but not grow it).')
    if (self.is_growing_sparsity and self.readjust_rule == 'reference'):
      raise ConfigError(
          f'--initial_sparsity={self.initial_sparsity} is invalid with '
          '--readjust_rule=reference: expected unset (that rule\'s per-layer '
          'keep counts are fixed for the run).')
    require(0 <= self.drop_fraction <= 1, 'drop_fraction',
            'a fraction in [0, 1]')
    require(self.annealing_end_round >= 0, 'annealing_end_round',
            'an integer >= 0 (0: total_rounds // 2)')
    if (self.is_growing_sparsity and
        self.annealing_end_round > self.total_rounds):
      # The per-round counts are tabulated up to T_end, and past the last
      # round the sparsity would never reach its target.
      raise ConfigError(
          f'--annealing_end_round={self.annealing_end_round} is invalid with '
          f'--initial_sparsity={self.initial_sparsity}: expected an integer '
          f'in [0, --total_rounds={self.total_rounds}] (the round at which '
          'the sparsity reaches --target_sparsity).')
    require(self.rounds_between_readjustments >= 1,
            'rounds_between_readjustments', 'an integer >= 1')
    epochs = self.client_epochs_per_round
    require(self.readjust_after_epochs is None or
            -epochs < self.readjust_after_epochs <= epochs,
            'readjust_after_epochs',
            f'a number in (0, --client_epochs_per_round={epochs}], or in '
            f'(-{epochs}, 0] counting back from the last epoch, or unset')
    self.payload_encodings()
    require(self.server_learning_rate > 0, 'server_learning_rate',
            'a number > 0')
    require(0 <= self.server_momentum < 1, 'server_momentum',
            'a number in [0, 1)')
    require(self.eval_every >= 1, 'eval_every', 'an integer >= 1')
    # More votes than sampled clients can never be reached: every position
    # would leave the global mask, for good. With --dropout_rate (or
    # rejected uploads) fewer may report; those rounds thin the mask.
    require(0 <= self.min_votes <= self.clients_per_round, 'min_votes',
            f'an integer in [0, --clients_per_round={self.clients_per_round}] '
            '(a weight stays only if that many of the round\'s clients '
            'hold it)')
    require(math.isfinite(self.max_payload_norm) and
            self.max_payload_norm >= 0, 'max_payload_norm',
            'a finite number >= 0 (0: no bound)')
    require(self.checkpoint_every >= 0, 'checkpoint_every',
            'an integer >= 0 (0: no checkpoints)')
    require(0 <= self.dropout_rate < 1, 'dropout_rate',
            'a probability in [0, 1)')
    cpus = usable_cpu_count()
    require(0 <= self.num_local_workers <= cpus, 'num_local_workers',
            f'an integer in [0, {cpus}], at most the CPUs this process may '
            'use (0: one worker, no client split)')
    if self.workers is not None:
      check_worker_addresses(self.workers)
    require(0 <= self.seed < SEED_LIMIT, 'seed',
            f'an integer in [0, 2**32 = {SEED_LIMIT})')
    require(self.upload_budget_bytes is None or self.upload_budget_bytes > 0,
            'upload_budget_bytes', 'a number of bytes > 0, or unset')
    require(self.prunefl_initial_rounds >= 0, 'prunefl_initial_rounds',
            'an integer >= 0 (0: no initial pruning)')
    require(self.prunefl_initial_steps >= 1, 'prunefl_initial_steps',
            'an integer >= 1')
    require(self.prunefl_reconfigure_every >= 1, 'prunefl_reconfigure_every',
            'an integer >= 1')
    require(self.prunefl_round_cost > 0, 'prunefl_round_cost',
            'a number > 0 (fixed round time / time of all dense kernels)')
    require(0 <= self.prunefl_max_remove_fraction <= 1,
            'prunefl_max_remove_fraction', 'a fraction in [0, 1]')
    require(_is_layer_times(self.prunefl_layer_times), 'prunefl_layer_times',
            'uniform, or comma-separated per-parameter times > 0, one per '
            'prunable layer')

  def to_flag_lines(self) -> list[str]:
    """Returns the config as `--name=value` lines (unset values omitted)."""
    lines = []
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None:
        lines.append(f'--{field.name}={value}')
    return lines


def _is_layer_times(text: str) -> bool:
  """Whether `text` is 'uniform' or positive numbers joined by commas (as
  `prunefl.parse_layer_times` reads it; checked here without importing TF)."""
  if text.strip() in ('', 'uniform'):
    return True
  try:
    return all(0 < float(part) < float('inf') for part in text.split(','))
  except ValueError:
    return False


_TYPE_NAMES = {int: 'an integer', float: 'a number', str: 'a string',
               bool: 'True or False'}
# A host name (RFC 1123 labels; '_' tolerated, as some resolvers do).
_HOST_NAME = re.compile(r'(?!-)[A-Za-z0-9_-]{1,63}(?<!-)'
                        r'(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?')


def _worker_address_problem(address: str) -> Optional[str]:
  """What is wrong with one `host:port` worker address, or None."""
  host, separator, port = address.rpartition(':')
  if not separator:
    return 'no :port'
  if not host:
    return 'no host'
  if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
    return f'port {port!r} is not in [1, {MAX_PORT}]'
  if host.startswith('[') and host.endswith(']'):
    try:
      ipaddress.IPv6Address(host[1:-1])
      return None
    except ValueError:
      return f'{host} is not an IPv6 address'
  if len(host) > 253 or not _HOST_NAME.fullmatch(host):
    return f'host {host!r} is not a host name, an IPv4 address or [IPv6]'
  if all(label.isdigit() for label in host.rstrip('.').split('.')):
    try:
      ipaddress.IPv4Address(host)
    except ValueError:
      return f'{host} is not an IPv4 address'
  return None


def check_worker_addresses(workers: str) -> None:
  """Checks a `--workers` value: comma-separated `host:port`, each once.

  Args:
    workers: The flag's value.

  Raises:
    ConfigError: One line naming the first bad address and what is wrong.
  """
  addresses = [a.strip() for a in workers.split(',')]
  expected = ('comma-separated host:port addresses of running TFF workers '
              f'(host name, IPv4 or [IPv6]; port in [1, {MAX_PORT}])')
  for address in addresses:
    problem = ('an empty address' if not address
               else _worker_address_problem(address))
    if problem:
      raise ConfigError(f'--workers={workers!r} is invalid: expected '
                        f'{expected}; {address!r}: {problem}.')
  duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
  if duplicates:
    raise ConfigError(f'--workers={workers!r} is invalid: expected each '
                      f'worker once; {duplicates[0]!r} is listed twice.')


def check_setting_type(name: str, value: Any, hint: Any) -> None:
  """Checks that a setting has the type its annotation asks for.

  Integers are accepted for floats; booleans are not numbers here; a float
  setting must be finite (inf and nan are refused).

  Args:
    name: The setting (flag) name, for the message.
    value: Its value.
    hint: `int`, `float`, `str`, `bool`, or `Optional` of one of them.

  Raises:
    ConfigError: One line, `--name=value is invalid: expected ...`.
  """
  options = typing.get_args(hint) or (hint,)
  optional = type(None) in options
  kind = next(option for option in options if option is not type(None))
  if value is None:
    ok = optional
  elif kind is bool:
    ok = isinstance(value, bool)
  elif kind is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  elif kind is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and not math.isfinite(value):
      # inf and nan parse as floats but no setting means them.
      raise ConfigError(f'--{name}={value!r} is invalid: expected a finite '
                        'number.')
  else:
    ok = isinstance(value, kind)
  if not ok:
    expected = _TYPE_NAMES.get(kind, kind.__name__)
    if optional:
      expected += ' or None (unset)'
    raise ConfigError(f'--{name}={value!r} is invalid: expected {expected}, '
                      f'got {type(value).__name__}.')


def check_writable_dir(path: str, flag: str) -> None:
  """Checks, without leaving anything behind, that `path` can be written.

  The directory itself or its nearest existing ancestor must be a directory
  in which a (probe) directory can be created.

  Args:
    path: A directory that may not exist yet.
    flag: The flag that set it, for the message.

  Raises:
    ConfigError: One line naming the flag, if `path` is not writable.
  """
  existing = os.path.abspath(path)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--{flag}={path} is not writable: {existing} is not a '
                      'directory.')
  try:
    probe = tempfile.mkdtemp(prefix='.write_probe_', dir=existing)
  except OSError as error:
    raise ConfigError(f'--{flag}={path} is not writable: cannot create '
                      f'anything in {existing} ({error.strerror}).') from None
  os.rmdir(probe)


def check_output_dir(output_dir: str) -> None:
  """Refuses an output directory that already holds results.

  Args:
    output_dir: The run's output directory (may not exist yet).

  Raises:
    ConfigError: If it holds any of `RESULT_FILES`, or is not a directory.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ConfigError(f'--output_dir={output_dir} exists and is not a '
                      'directory.')
  if os.path.isdir(output_dir):
    present = [f for f in RESULT_FILES
               if os.path.exists(os.path.join(output_dir, f))]
    if present:
      raise ConfigError(
          f'--output_dir={output_dir} already holds results ({present[0]}); '
          'choose a new directory, nothing was changed.')


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
        f'{DATASET_MODELS[dataset.name]} (unset --model picks it).')


def load_federated_data(config: ExperimentConfig) -> federated.FederatedData:
  """Loads and partitions the configured data set.

  Args:
    config: A validated config.

  Returns:
    The `FederatedData`.

  Raises:
    file_formats.DataFileError: For missing or corrupt data files.
    ConfigError: If the split cannot be made with these settings, or an
      explicit --model does not fit the data.
  """
  dataset = datasets.load_dataset(config.dataset, config.data_dir)
  if config.model is not None:
    check_model_fits_data(config.model, dataset)
  if config.data_distribution == 'natural':
    try:
      return federated.build_federated_data(
          dataset, 'natural', config.total_clients, config.seed)
    except ValueError as error:
      raise ConfigError(
          f'--total_clients={config.total_clients} is invalid for the natural '
          f'split of {config.dataset}: {error}.') from error
  try:
    return federated.build_federated_data(
        dataset, config.data_distribution, config.total_clients, config.seed,
        beta=config.dirichlet_beta,
        classes_per_client=config.classes_per_client,
        examples_per_class=config.examples_per_class,
        examples_per_client=config.examples_per_client)
  except ValueError as error:
    raise ConfigError(
        f'--data_distribution={config.data_distribution}: cannot split '
        f'{config.dataset} that way: {error}') from error


def build_schedule(config: ExperimentConfig):
  """Returns the configured readjustment schedule."""
  from tff_feddst.sparse import schedules
  schedule_class = (schedules.ReferenceReadjustmentSchedule
                    if config.readjustment_schedule == 'reference'
                    else schedules.ReadjustmentSchedule)
  return schedule_class(
      drop_fraction=config.drop_fraction,
      rounds_between_readjustments=config.rounds_between_readjustments,
      end_round=config.effective_annealing_end_round,
      annealing=config.annealing)


def build_num_active_by_round(config: ExperimentConfig, layout
                              ) -> Optional[np.ndarray]:
  """Per-round, per-layer active counts of a growing sparsity, or None.

  Row t holds the counts of the distribution at S_t = S_init + (S_final -
  S_init) * min(t, T_end) / T_end (T_end = the annealing end round); row 0
  is the initial model's.

  Args:
    config: The run's settings (after `resolved()`).
    layout: The model's `models.ModelLayout`.

  Returns:
    An int32 array [T_end + 1, layers], or None at constant sparsity.
  """
  if not config.is_growing_sparsity:
    return None
  from tff_feddst.sparse import schedules
  from tff_feddst.sparse import sparsity_distribution
  sparsity_schedule = schedules.SparsitySchedule(
      config.effective_initial_sparsity, config.target_sparsity,
      config.effective_annealing_end_round)
  return sparsity_distribution.num_active_by_round(
      layout.kernel_shapes, sparsity_schedule.sparsities(),
      config.sparsity_distribution, bias_sizes=layout.layer_bias_sizes)


def save_model_weights(path: str, weights, *, exclusive: bool = True) -> None:
  """Saves `ModelWeights` as an .npz of `trainable_i`/`non_trainable_i`.

  Args:
    path: The .npz path.
    weights: The `ModelWeights`.
    exclusive: Refuse to replace an existing file (FileExistsError).

  Raises:
    FileExistsError: With `exclusive`, if `path` exists.
    atomic_files.WriteError: If the file cannot be written; nothing (or the
      old file) is left at `path` then.
  """
  arrays = {f'trainable_{i}': np.asarray(v)
            for i, v in enumerate(weights.trainable)}
  arrays.update({f'non_trainable_{i}': np.asarray(v)
                 for i, v in enumerate(weights.non_trainable)})
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_files.write_bytes(path, buffer.getvalue(), exclusive=exclusive)


def _is_complete_npz(path: str) -> bool:
  """Whether `path` is an .npz whose arrays all read back."""
  try:
    with np.load(path) as archive:
      for name in archive.files:
        archive[name]  # pylint: disable=pointless-statement
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def load_model_weights(path: str):
  """Loads `ModelWeights` saved by `save_model_weights`."""
  import tensorflow_federated as tff
  with np.load(path) as archive:
    def collect(prefix):
      count = sum(1 for k in archive.files if k.startswith(prefix + '_'))
      return [archive[f'{prefix}_{i}'] for i in range(count)]
    return tff.learning.models.ModelWeights(
        trainable=collect('trainable'), non_trainable=collect('non_trainable'))


def _num_dense_parameters(initial_model) -> int:
  """Number of parameters sent densely (biases, normalisation state)."""
  layout = initial_model.layout
  weights = initial_model.weights
  return int(sum(np.size(weights.trainable[i])
                 for i in layout.dense_trainable_indices) +
             sum(np.size(weights.non_trainable[i])
                 for i in layout.dense_non_trainable_indices))


def write_summary(path: str, config: ExperimentConfig, rows: list,
                  stop_reason: str) -> None:
  """Writes where and why a run stopped, and its headline figures.

  The file is created atomically and exclusively: it marks a finished run.

  Raises:
    FileExistsError: If `path` exists.
    atomic_files.WriteError: If it cannot be written.
  """
  evaluated = [r for r in rows if r['test_accuracy'] is not None]
  summary = {
      'method': config.method,
      'stop_reason': stop_reason,
      'rounds_completed': rows[-1]['round'] if rows else 0,
      'upload_budget_bytes': config.upload_budget_bytes,
      'upload_bytes_cumulative': rows[-1]['upload_bytes_cumulative']
                                 if rows else 0,
      'download_bytes_cumulative': rows[-1]['download_bytes_cumulative']
                                   if rows else 0,
      'final_test_accuracy': evaluated[-1]['test_accuracy']
                             if evaluated else None,
      'final_client_test_accuracy': evaluated[-1]['client_test_accuracy']
                                    if evaluated else None,
      'best_test_accuracy': max(r['test_accuracy'] for r in evaluated)
                            if evaluated else None,
      'seconds': sum(r['round_seconds'] for r in rows),
  }
  atomic_files.write_text(path, json.dumps(summary, indent=2) + '\n',
                          exclusive=True)


def build_client_config(config: ExperimentConfig, initial_model):
  """The client hyper-parameters of a run (TFF clients and TFLite export).

  Args:
    config: The run's settings (after `resolved()`).
    initial_model: Its `fed_dst.InitialModel` (layer shapes for the reference
      rule's per-layer keep counts).

  Returns:
    The `client_work.ClientConfig`.
  """
  from tff_feddst.process import client_work
  from tff_feddst.sparse import sparsity_distribution
  keep_after_prune = ()
  if config.readjust_rule == 'reference':
    # The authors' clients prune to S + (1 - S) * alpha, then regrow to S.
    prune_sparsity = min(
        config.target_sparsity +
        (1 - config.target_sparsity) * config.drop_fraction, 0.999999)
    keep_after_prune = tuple(sparsity_distribution.compute_layer_num_active(
        initial_model.layout.kernel_shapes, prune_sparsity,
        config.sparsity_distribution,
        bias_sizes=initial_model.layout.layer_bias_sizes))
  return client_work.ClientConfig(
      learning_rate=config.client_learning_rate,
      momentum=config.client_momentum,
      weight_decay=config.client_weight_decay,
      prox_mu=config.prox_mu,
      num_epochs=config.client_epochs_per_round,
      readjust_after_epochs=config.readjust_after_epochs,
      grow_score=config.grow_score,
      readjust_rule=config.readjust_rule,
      reference_keep_after_prune=keep_after_prune,
      # float16 from --upload_value_dtype or --upload_encoding.
      value_dtype=config.payload_encodings()[0].value_dtype)


def _prunefl_initial_stage(config: ExperimentConfig, model_fn, initial_model,
                           federated_data: federated.FederatedData,
                           client_config):
  """PruneFL's settings and its initial pruning on one seeded client.

  Args:
    config: The run's settings (after `resolved()`).
    model_fn: Builds the wrapped Keras model.
    initial_model: The dense `fed_dst.InitialModel`.
    federated_data: The partitioned data.
    client_config: Local training hyper-parameters.

  Returns:
    `(initial_model, prunefl_config, record)`: the model after initial
    pruning, the `prunefl.PruneflConfig`, and a JSON-able record of the
    initial stage (client, densities per reconfiguration, counts).

  Raises:
    ConfigError: If --prunefl_layer_times does not fit the model.
  """
  from tff_feddst.methods import prunefl
  from tff_feddst.running import training_loop
  layout = initial_model.layout
  try:
    prunefl_config = prunefl.PruneflConfig(
        initial_rounds=config.prunefl_initial_rounds,
        initial_steps=config.prunefl_initial_steps,
        reconfigure_every=config.prunefl_reconfigure_every,
        round_cost=config.prunefl_round_cost,
        max_remove_fraction=config.prunefl_max_remove_fraction,
        layer_times=prunefl.parse_layer_times(config.prunefl_layer_times))
    prunefl_config.times_for(layout.num_prunable)
  except ValueError as error:
    raise ConfigError(f'--prunefl_layer_times={config.prunefl_layer_times} '
                      f'is invalid: {error}') from error
  client_id = prunefl.choose_initial_client(federated_data.client_ids,
                                            config.seed)
  dataset = training_loop.client_datasets(
      federated_data, [client_id], config.client_batch_size, config.seed,
      0)[0]
  result = prunefl.run_initial_pruning(
      model_fn, initial_model.weights, layout, dataset, client_config,
      prunefl_config)
  record = {'client_id': str(client_id),
            'densities': list(result.densities),
            'layer_num_active': list(result.layer_num_active),
            'layer_sizes': list(layout.kernel_sizes)}
  return (initial_model._replace(weights=result.weights,
                                 num_active=result.layer_num_active),
          prunefl_config, record)


def check_resumable(config: ExperimentConfig, output_dir: str) -> None:
  """Checks that `output_dir` holds an unfinished run of this very config.

  Args:
    config: The resolved settings of the resumed run.
    output_dir: The run's output directory.

  Raises:
    ConfigError: If there is no run there, it finished already, its
      flags.txt differs from `config` (naming the first differing flag) in
      anything but `EXECUTION_SETTINGS`, or it has no checkpoint to continue
      from.
  """
  flags_path = os.path.join(output_dir, 'flags.txt')
  if not os.path.isfile(flags_path):
    raise ConfigError(f'--resume: {output_dir} holds no run to resume '
                      '(no flags.txt); start it without --resume.')
  if os.path.exists(os.path.join(output_dir, 'summary.json')):
    raise ConfigError(f'--resume: the run in {output_dir} already finished '
                      '(summary.json exists); nothing to resume.')
  execution_prefixes = tuple(f'--{name}=' for name in EXECUTION_SETTINGS)

  def computing(lines):
    return [line for line in lines if not line.startswith(execution_prefixes)]

  with open(flags_path) as f:
    saved = computing(line.strip() for line in f if line.strip())
  wanted = computing(config.to_flag_lines())
  if saved != wanted:
    differing = sorted(set(saved) ^ set(wanted))
    raise ConfigError(
        f'--resume: the run in {output_dir} has a different configuration '
        f'({differing[0]} differs); resume with the same flags.')
  check_has_checkpoint(config, output_dir)


def check_has_checkpoint(config: ExperimentConfig, output_dir: str) -> None:
  """Checks that the run in `output_dir` saved a checkpoint to resume from.

  Without one, `--resume` would silently start over at round 1.

  Args:
    config: The resolved settings of the resumed run.
    output_dir: The run's output directory.

  Raises:
    ConfigError: One line naming --resume and what to do instead.
  """
  from tff_feddst.outputs import checkpoints  # pylint: disable=g-import-not-at-top
  if checkpoints.list_checkpoints(os.path.join(output_dir, 'checkpoints')):
    return
  if config.checkpoint_every == 0:
    why = 'it saves none (--checkpoint_every=0)'
  else:
    why = ('it stopped before its first checkpoint (after round '
           f'{min(config.checkpoint_every, config.total_rounds)})')
  raise ConfigError(
      f'--resume: the run in {output_dir} has no checkpoint to continue '
      f'from: {why}; start it again without --resume in a new '
      f'--output_dir, or remove {output_dir} first.')


def run_experiment(config: ExperimentConfig, output_dir: str, *,
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
    config: The settings.
    output_dir: Where results go; must not hold results already, unless
      resuming.
    resume: Continue the unfinished run in `output_dir` (same config) from
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
    file_formats.DataFileError: For missing or corrupt data files.
    interruptions.Interrupted: If the run was stopped from outside.
    execution.WorkerError: If a TFF worker cannot be started or reached
      (nothing is written then).
    OutputError: If an output file cannot be written (a full disk, no
      permission): each file is left whole, and the run either resumes
      (`OutputError.is_resumable`) or was removed.
    KeyboardInterrupt: On Ctrl-C, with a message that says whether the run
      can be resumed.
  """
  if worker_timeout_seconds is not None and not (
      0 < worker_timeout_seconds < math.inf):
    raise ConfigError(f'--worker_timeout_seconds={worker_timeout_seconds} is '
                      'invalid: expected a number of seconds > 0.')
  config.validate()
  config = config.resolved()
  if resume:
    check_resumable(config, output_dir)
  else:
    check_output_dir(output_dir)
  check_writable_dir(output_dir, 'output_dir')
  tensorboard_dir = config.effective_tensorboard_dir(output_dir)
  if tensorboard_dir:
    check_writable_dir(tensorboard_dir, 'tensorboard_dir')
  if resume:
    try:
      rows = _finish_done_run(config, output_dir)
    except atomic_files.WriteError as error:
      raise OutputError.from_os_error(error, True, output_dir) from error
    if rows is not None:
      return rows
  federated_data = load_federated_data(config)

  # TF/TFF imports are deferred so that bad flags fail fast.
  from tff_feddst.methods import fed_dst
  from tff_feddst.methods import prunefl
  from tff_feddst.networks import models
  from tff_feddst.outputs import checkpoints
  from tff_feddst.outputs import tensorboard_logging
  from tff_feddst.process import aggregation
  from tff_feddst.process import encoding
  from tff_feddst.process import payload_validation
  from tff_feddst.running import evaluation
  from tff_feddst.running import execution
  from tff_feddst.running import interruptions
  from tff_feddst.running import training_loop

  execution.use_bit_exact_kernels()
  model_fn = models.get_model_fn(config.model_name, seed=config.seed)
  initial_model = fed_dst.build_initial_model(
      model_fn, config.effective_initial_sparsity,
      config.sparsity_distribution, seed=config.seed,
      initial_mask=config.initial_mask)
  num_active_by_round = build_num_active_by_round(config,
                                                  initial_model.layout)
  schedule = build_schedule(config)
  client_config = build_client_config(config, initial_model)
  prunefl_config = initial_pruning = None
  if config.method == 'prunefl':
    initial_model, prunefl_config, initial_pruning = _prunefl_initial_stage(
        config, model_fn, initial_model, federated_data, client_config)
  upload_encoding, download_encoding = config.payload_encodings()
  # The worst case of the upload encoding (its mask code at full capacity),
  # so that the budget is never exceeded; metrics.csv counts real bytes.
  if prunefl_config is None:
    round_upload_bytes = config.clients_per_round * (
        encoding.max_payload_num_bytes(
            initial_model.layout.kernel_sizes, initial_model.num_active,
            _num_dense_parameters(initial_model), upload_encoding)
        + aggregation.WEIGHT_BYTES)
    first_round_upload_bytes = round_upload_bytes
  else:
    # PruneFL's upload changes with its mask and with the rounds that carry
    # importance: each round is bounded from the mask it starts from.
    def round_upload_bytes(round_num: int, num_active_total: int) -> int:
      return config.clients_per_round * prunefl.max_upload_num_bytes(
          initial_model.layout.kernel_sizes,
          _num_dense_parameters(initial_model), upload_encoding,
          num_active_total=num_active_total,
          with_importance=prunefl.is_reconfiguration_round(
              round_num, prunefl_config.reconfigure_every))
    first_round_upload_bytes = round_upload_bytes(
        1, sum(initial_model.num_active))
  if (config.upload_budget_bytes is not None and
      config.upload_budget_bytes < first_round_upload_bytes):
    raise ConfigError(
        f'--upload_budget_bytes={config.upload_budget_bytes} is less than one '
        f'round\'s upload ({first_round_upload_bytes} bytes); nothing would '
        'run.')
  evaluator = evaluation.Evaluator(model_fn, federated_data)

  new_files = None if resume else _NewFiles((output_dir, tensorboard_dir))
  rounds_done_here = 0
  bar = None
  tensorboard = None
  # The last completed round: (round, state, cumulative bytes).
  completed = []

  def before_round(round_num: int) -> None:
    if check_interrupt is not None:
      check_interrupt()
    execution.describe_activity(f'round {round_num}')

  def keep_completed(round_num: int, state, cumulative: dict) -> None:
    completed[:] = [(round_num, state, cumulative)]

  def check_interrupt_during_calls() -> None:
    # Until the loop has a state to checkpoint (round 0's), a stop waits for
    # it, so a stopped run always leaves a checkpoint to resume from.
    if completed:
      check_interrupt()

  def on_start(rows_done):
    nonlocal bar
    if resume and tensorboard is not None:
      tensorboard.resume_after(rows_done)
    if progress:
      import tqdm
      bar = tqdm.tqdm(total=config.total_rounds, unit='round',
                      dynamic_ncols=True,
                      initial=rows_done[-1]['round'] if rows_done else 0)

  def after_round(row):
    nonlocal rounds_done_here
    rounds_done_here += 1
    if tensorboard is not None:
      tensorboard.write_metrics(row)
    if bar is not None:
      bar.update(1)
      postfix = {'loss': f'{row["train_loss"]:.3f}',
                 'mask_moved': row['mask_changed_positions']}
      if row['test_accuracy'] is not None:
        postfix['acc'] = f'{row["test_accuracy"]:.4f}'
      bar.set_postfix(postfix)
    if on_round_end is not None:
      on_round_end(row)

  try:
    with contextlib.ExitStack() as stack:
      # Workers first: a worker that cannot be started or reached fails the
      # run before anything is written.
      worker_settings = dict(check_interrupt=(
          check_interrupt_during_calls if check_interrupt else None))
      if config.num_local_workers or config.worker_addresses:
        if worker_timeout_seconds is not None:
          worker_settings['worker_timeout_seconds'] = worker_timeout_seconds
        stack.enter_context(execution.distributed_execution_context(
            config.num_local_workers, config.worker_addresses,
            **worker_settings))
      else:
        stack.enter_context(execution.local_execution_context(
            **worker_settings))
      element_spec = training_loop.client_datasets(
          federated_data, federated_data.client_ids[:1],
          config.client_batch_size, config.seed, 0)[0].element_spec
      if prunefl_config is not None:
        process = prunefl.build_prunefl(
            model_fn, initial_model.layout, initial_model.weights,
            element_spec, client_config, prunefl_config,
            server_learning_rate=config.server_learning_rate,
            server_momentum=config.server_momentum,
            upload_encoding=upload_encoding,
            download_encoding=download_encoding)
        prunefl_round_bytes = round_upload_bytes

        def round_upload_bytes(round_num, state):
          weights = process.get_model_weights(state)
          num_active_total = sum(
              int(np.sum(weights.non_trainable[index]))
              for index in initial_model.layout.mask_indices)
          return prunefl_round_bytes(round_num, num_active_total)
      else:
        process = fed_dst.build_fed_dst(
            model_fn, initial_model, element_spec, schedule, client_config,
            server_learning_rate=config.server_learning_rate,
            server_momentum=config.server_momentum,
            min_votes=config.min_votes,
            remember_old=config.remember_old,
            num_active_by_round=num_active_by_round,
            upload_encoding=upload_encoding,
            download_encoding=download_encoding,
            payload_checks=payload_validation.default_checks(
                client_config.readjust_rule, config.min_votes,
                config.max_payload_norm))

      # The run can start: from here on, files are written.
      _write_start_files(config, output_dir, initial_pruning, resume)
      if tensorboard_dir:
        tensorboard = stack.enter_context(tensorboard_logging.TensorBoardWriter(
            tensorboard_dir, initial_model.layout))
      state, rows, stop_reason = training_loop.run_training(
          process, federated_data, evaluator,
          total_rounds=config.total_rounds,
          clients_per_round=config.clients_per_round,
          batch_size=config.client_batch_size, seed=config.seed,
          eval_every=config.eval_every,
          metrics_path=os.path.join(output_dir, 'metrics.csv'),
          checkpoint_dir=os.path.join(output_dir, 'checkpoints'),
          checkpoint_every=config.checkpoint_every, resume=resume,
          upload_budget_bytes=config.upload_budget_bytes,
          round_upload_bytes=(
              round_upload_bytes if callable(round_upload_bytes) else
              lambda round_num, state, value=round_upload_bytes: value),
          dropout_rate=config.dropout_rate,
          # At most this (masks that thin, or a shorter Rice code, cost
          # less).
          client_download_bytes=encoding.max_payload_num_bytes(
              initial_model.layout.kernel_sizes, initial_model.num_active,
              _num_dense_parameters(initial_model), download_encoding),
          on_start=on_start,
          on_round_end=after_round,
          on_model_weights=(tensorboard.write_model
                            if tensorboard is not None else None),
          on_round_start=before_round,
          on_round_state=keep_completed)
      # The model first, the summary last: summary.json marks a finished
      # run. A resumed run rewrites the model of its own last round.
      save_model_weights(os.path.join(output_dir, 'global_model.npz'),
                         process.get_model_weights(state),
                         exclusive=not resume)
      write_summary(os.path.join(output_dir, 'summary.json'), config, rows,
                    stop_reason)
  except BaseException as error:
    # A run stopped from outside keeps its last completed round (round 0's
    # state included, so a stop during set-up is resumable too); any other
    # failure before a round finished removes what this run wrote.
    is_stop = isinstance(error, (interruptions.Interrupted, KeyboardInterrupt))
    is_kept = resume or rounds_done_here > 0 or (
        bool(completed) and isinstance(error, interruptions.Interrupted))
    if is_stop and is_kept and completed:
      round_num, state, cumulative = completed[-1]
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
    if isinstance(error, checkpoints.CheckpointError):
      raise ConfigError(f'--resume: {error}') from error
    if isinstance(error, training_loop.MetricsFileError):
      raise ConfigError(f'--resume: {error}; fix or remove that line') from error
    if isinstance(error, FileExistsError):
      raise ConfigError(
          f'--output_dir={output_dir} already holds results '
          f'({error.filename}); choose a new directory.') from error
    if isinstance(error, atomic_files.WriteError):
      raise OutputError.from_os_error(error, is_kept, output_dir) from error
    raise
  finally:
    if bar is not None:
      bar.close()
  return rows


class _NewFiles:
  """Remembers what exists in some directories, to remove what is added.

  A fresh run that fails before its first round is done removes the files
  and directories it created (only those), so that its output directory can
  be used again.
  """

  def __init__(self, directories):
    self._before = {}
    for directory in {d for d in directories if d}:
      self._before[directory] = (set(os.listdir(directory))
                                 if os.path.isdir(directory) else None)

  def remove(self) -> list[str]:
    """Removes what was added since construction; errors are logged.

    Returns:
      The paths removed (directories with their content).
    """
    removed = []

    def log(unused_function, path, unused_exc_info):
      logging.warning('Could not remove %s after the failed start.', path)
    for directory, before in self._before.items():
      if before is None:
        if os.path.lexists(directory):
          shutil.rmtree(directory, onerror=log)
          removed.append(directory)
        continue
      if not os.path.isdir(directory):
        continue
      for name in sorted(set(os.listdir(directory)) - before):
        path = os.path.join(directory, name)
        removed.append(path)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, onerror=log)
        else:
          try:
            os.remove(path)
          except OSError:
            log(None, path, None)
    return removed


def _remove_temporaries(output_dir: str) -> None:
  """Removes the temporary files that killed writers left in a run."""
  for directory in (output_dir, os.path.join(output_dir, 'checkpoints')):
    for path in atomic_files.remove_temporaries(directory):
      logging.info('Removed %s, left by a killed writer.', path)


def _write_start_files(config: ExperimentConfig, output_dir: str,
                       initial_pruning: Optional[dict], resume: bool) -> None:
  """Creates output_dir, flags.txt and PruneFL's record (if missing).

  Leftover temporary files of a killed writer are removed first.

  Raises:
    FileExistsError: If a fresh run finds flags.txt.
    atomic_files.WriteError: If a file cannot be written.
  """
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as error:
    raise atomic_files.WriteError(output_dir, error) from error
  _remove_temporaries(output_dir)
  if not resume:
    atomic_files.write_text(os.path.join(output_dir, 'flags.txt'),
                            '\n'.join(config.to_flag_lines()) + '\n',
                            exclusive=True)
  pruning_path = os.path.join(output_dir, 'prunefl_initial_pruning.json')
  if initial_pruning is not None and not os.path.exists(pruning_path):
    atomic_files.write_text(pruning_path,
                            json.dumps(initial_pruning, indent=2) + '\n',
                            exclusive=True)


def _finish_done_run(config: ExperimentConfig,
                     output_dir: str) -> Optional[list]:
  """Resumes a run whose rounds are all done: writes its summary.json.

  global_model.npz is written (atomically) only after the last round, so if
  it is there and whole, only the summary is missing.

  Args:
    config: The resolved settings (checked against flags.txt).
    output_dir: The run's output directory.

  Returns:
    The metrics rows, or None if the rounds are not all done (then the run
    resumes from its checkpoint).
  """
  model_path = os.path.join(output_dir, 'global_model.npz')
  if not os.path.exists(model_path):
    return None
  if not _is_complete_npz(model_path):
    # Only a writer that was not atomic can have left this.
    logging.warning('%s is damaged; recomputing it from the checkpoint.',
                    model_path)
    os.remove(model_path)
    return None
  from tff_feddst.running import training_loop
  _remove_temporaries(output_dir)
  rows = training_loop.truncate_metrics(
      os.path.join(output_dir, 'metrics.csv'), config.total_rounds)
  if not rows:
    return None
  # A run stops early only at the upload budget.
  stop_reason = ('total_rounds' if rows[-1]['round'] == config.total_rounds
                 else 'upload_budget')
  write_summary(os.path.join(output_dir, 'summary.json'), config, rows,
                stop_reason)
  return rows
