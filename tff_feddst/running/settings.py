"""An experiment's settings, by concern, each group checking itself.

Every field of a group is one flag of the bin/ scripts, under the same name;
its help text and, for a choice setting, its accepted values sit on the
field (`dataclasses.field(metadata=...)`), taken from the modules that
implement the choices. `ExperimentSettings` composes the groups;
`bin/experiment_flags.py` turns its fields into absl flags and back. A
group's `validate` checks its own fields; `ExperimentSettings.validate`
checks the rules that join groups. What the components check themselves
when they are built (e.g. a model's layer count against
--prunefl_layer_times) is left to them.

Importing this module imports no TF: choice lists are read when first asked
for (`choices_of`).
"""

import dataclasses
import math
import os
import typing
from typing import Any, Callable, Optional, Union

from tff_feddst.process import payload_encoding
from tff_feddst.running import choices
from tff_feddst.running import errors
from tff_feddst.running import setting_checks

# Data set -> the paper's model for it (LEAF's CNN for EMNIST).
DATASET_MODELS = {
    'fashion_mnist': 'mnist_net',
    'mnist': 'mnist_net',
    'cifar10': 'cifar10_net',
    'cifar100': 'cifar100_net',
    'emnist': 'emnist_conv2',
}
SCHEDULES = ('paper', 'reference')
# Which clients of a readjustment round readjust (`client_work`).
READJUST_COUNTERS = ('round', 'client_lifetime')
# --seed feeds numpy's SeedSequence, Keras initializers and stateless TF
# seeds (`seed * 1009 + layer`, int64): 32 bits keep every use in range.
SEED_LIMIT = 2**32
MIN_DIRICHLET_BETA = 1e-4
# Settings that say where the rounds run, not what they compute: a resumed
# run may change them (e.g. replace a lost --workers worker by local ones).
EXECUTION_SETTINGS = ('num_local_workers', 'workers',
                      'tflite_client_processes')
# --client_runtime: clients train in the TFF process (tf) or through the
# exported TFLite training model (tflite). Not an execution setting: a
# resumed run keeps its runtime (the two states differ).
CLIENT_RUNTIMES = ('tf', 'tflite')


ConfigError = errors.ConfigError
check_setting_type = setting_checks.check_setting_type
check_worker_addresses = setting_checks.check_worker_addresses
usable_cpu_count = setting_checks.usable_cpu_count


Choices = Union[tuple[str, ...], Callable[[], tuple[str, ...]]]


def setting(default: Any, help_text: str, choices: Optional[Choices] = None):
  """A settings field: its default, its flag help, its accepted values.

  Args:
    default: The default value (also the flag's default).
    help_text: The flag's help.
    choices: The accepted values, or a function returning them (called
      when first needed, so that TF is imported only then); None for a
      setting without a fixed set of values.

  Returns:
    A `dataclasses.field`.
  """
  return dataclasses.field(default=default,
                           metadata={'help': help_text, 'choices': choices})


def choices_of(field: dataclasses.Field) -> Optional[tuple[str, ...]]:
  """The accepted values of a settings field, or None if it takes any."""
  choices = field.metadata.get('choices')
  return choices() if callable(choices) else choices


def _dataset_names() -> tuple[str, ...]:
  return tuple(DATASET_MODELS)


def _data_distributions() -> tuple[str, ...]:
  from tff_feddst.data import partitions  # pylint: disable=g-import-not-at-top
  return partitions.DISTRIBUTIONS


def _sparsity_distributions() -> tuple[str, ...]:
  from tff_feddst.sparse import sparsity_distribution  # pylint: disable=g-import-not-at-top
  return sparsity_distribution.NUM_ACTIVE_DISTRIBUTIONS


def _method_names() -> tuple[str, ...]:
  from tff_feddst.methods import registry  # pylint: disable=g-import-not-at-top
  return registry.method_names()


class _Group:
  """Type and choice checks shared by the settings groups."""

  def _require(self, ok: bool, name: str, accepted: str) -> None:
    if not ok:
      raise ConfigError(f'--{name}={getattr(self, name)!r} is invalid: '
                        f'expected {accepted}.')

  def _check_types_and_choices(self) -> None:
    hints = typing.get_type_hints(type(self))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      setting_checks.check_setting_type(field.name, value,
                                        hints[field.name])
      accepted = choices_of(field)
      # None passed the type check only where the setting may be unset.
      if accepted is not None:
        self._require(value is None or value in accepted, field.name,
                      f'one of {", ".join(accepted)}')

  def validate(self) -> None:
    """Checks this group's settings.

    Raises:
      ConfigError: naming the first bad flag and what it accepts.
    """
    self._check_types_and_choices()


@dataclasses.dataclass(frozen=True)
class DataSettings(_Group):
  """Which data, and how it is split over clients."""
  dataset: str = setting('fashion_mnist', 'Data set.', _dataset_names)
  data_dir: Optional[str] = setting(
      None, 'Directory with the data set files (default: the Debian package '
      'path for Fashion-MNIST, the Keras cache for MNIST, CIFAR-10 and '
      'CIFAR-100, TFF\'s cache ~/.tff for EMNIST); see data/README.md.')
  data_distribution: str = setting(
      'dirichlet', 'How examples are split over clients (natural, EMNIST '
      'only: one client per writer, with the writer\'s own test examples).',
      _data_distributions)
  total_clients: int = setting(
      100, 'Number of clients the data is split over (natural: how many '
      'writers to use, a seeded random subset when fewer than all).')
  dirichlet_beta: float = setting(
      0.1, 'Dirichlet concentration (smaller: more skewed).')
  classes_per_client: int = setting(
      2, 'Pathological split: classes per client.')
  examples_per_class: int = setting(
      20, 'Pathological split: examples per class per client.')
  examples_per_client: Optional[int] = setting(
      None, 'IID split: examples per client (default: all, evenly).')

  def validate(self) -> None:
    super().validate()
    from tff_feddst.data import datasets  # pylint: disable=g-import-not-at-top
    self._require(self.data_dir != '', 'data_dir',
                  'a directory, or unset (the data set\'s default location)')
    self._require(
        self.data_distribution != 'natural' or
        self.dataset in datasets.NATURAL_DATASET_NAMES, 'data_distribution',
        f'iid, dirichlet or pathological for --dataset={self.dataset} '
        '(natural needs a data set whose clients come with it: '
        f'{", ".join(datasets.NATURAL_DATASET_NAMES)})')
    self._require(self.total_clients >= 1, 'total_clients', 'an integer >= 1')
    # Below about 1e-4 every class already goes to one client, and numpy's
    # Dirichlet sampler slows to a halt (1e-30 never returns).
    self._require(self.dirichlet_beta >= MIN_DIRICHLET_BETA, 'dirichlet_beta',
                  f'a number >= {MIN_DIRICHLET_BETA:g}')
    self._require(self.classes_per_client >= 1, 'classes_per_client',
                  'an integer >= 1')
    self._require(self.examples_per_class >= 1, 'examples_per_class',
                  'an integer >= 1')
    self._require(
        self.examples_per_client is None or self.examples_per_client >= 1,
        'examples_per_client', 'an integer >= 1 or unset')


@dataclasses.dataclass(frozen=True)
class NetworkSettings(_Group):
  """The model and its sparsity."""
  model: Optional[str] = setting(
      None, 'Model (default: the paper\'s model for the data set).',
      choices.MODEL_NAMES)
  target_sparsity: float = setting(
      0.8, 'S: fraction of zeros in prunable kernels, in [0, 1); 0 is dense '
      'FedAvg.')
  initial_sparsity: Optional[float] = setting(
      None, 'S_init: growing sparsity, the sparsity of the initial model, in '
      '[0, --target_sparsity]; round t targets S_init + (S - S_init) * '
      'min(t, T_end) / T_end (T_end: --annealing_end_round) and the server '
      're-prunes to it. Unset: constant --target_sparsity.')
  sparsity_distribution: str = setting(
      'erk', 'Per-layer densities: uniform, er, erk (RigL) or erk_reference '
      '(the authors\' variant).', _sparsity_distributions)
  initial_mask: str = setting(
      'random', 'Initial mask: random (paper) or magnitude (reference).',
      choices.INITIAL_MASKS)

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

  def validate(self) -> None:
    super().validate()
    self._require(0 <= self.target_sparsity < 1, 'target_sparsity',
                  'a fraction of zeros in [0, 1)')
    self._require(
        self.initial_sparsity is None or 0 <= self.initial_sparsity < 1,
        'initial_sparsity',
        'a fraction of zeros in [0, 1), or unset (= --target_sparsity)')
    if (self.initial_sparsity is not None and
        self.initial_sparsity > self.target_sparsity):
      raise ConfigError(
          f'--initial_sparsity={self.initial_sparsity} is invalid: expected '
          f'at most --target_sparsity={self.target_sparsity}; only growing '
          'sparsity is supported (the server builds each mask from the '
          'clients\' positions, so it can thin a layer but not grow it).')


@dataclasses.dataclass(frozen=True)
class ClientSettings(_Group):
  """Local training on each client."""
  client_epochs_per_round: int = setting(1, 'Local epochs E.')
  client_batch_size: int = setting(32, 'Client minibatch size.')
  client_learning_rate: float = setting(0.01, 'Client SGD learning rate.')
  client_momentum: float = setting(0.9, 'Client SGD momentum.')
  client_weight_decay: float = setting(
      0.001, 'Client L2 coefficient (added to gradients).')
  prox_mu: float = setting(0.0, 'FedProx mu (0: plain local SGD).')

  def validate(self) -> None:
    super().validate()
    self._require(self.client_epochs_per_round >= 1,
                  'client_epochs_per_round', 'an integer >= 1')
    self._require(self.client_batch_size >= 1, 'client_batch_size',
                  'an integer >= 1')
    self._require(self.client_learning_rate > 0, 'client_learning_rate',
                  'a number > 0')
    self._require(0 <= self.client_momentum < 1, 'client_momentum',
                  'a number in [0, 1)')
    self._require(self.client_weight_decay >= 0, 'client_weight_decay',
                  'a number >= 0')
    self._require(self.prox_mu >= 0, 'prox_mu', 'a number >= 0')


@dataclasses.dataclass(frozen=True)
class ReadjustmentSettings(_Group):
  """FedDST's mask readjustment: when, how much, and by which rule."""
  drop_fraction: float = setting(
      0.05, 'Readjustment ratio alpha: share of active weights pruned and '
      'regrown at a readjustment (0: RandomMask).')
  annealing: str = setting('cosine', 'Decay of alpha over rounds.',
                           choices.ANNEALINGS)
  annealing_end_round: int = setting(
      0, 'T_end: last round that readjusts (0: total_rounds/2).')
  rounds_between_readjustments: int = setting(
      5, 'R_adj: readjust on rounds t with (t-1) % R_adj == 0.')
  readjust_after_epochs: Optional[float] = setting(
      None, 'Readjust after this many local epochs, in (0, E]; values in '
      '(-E, 0] count back from the end (0: after the last epoch, the '
      'reference). Default: E-1, or 0.5 when E=1.')
  grow_score: str = setting(
      'accumulated', 'Regrow by |gradient| accumulated over the steps before '
      'readjusting (accumulated), of the last minibatch before its step '
      '(last_batch), or of the last minibatch recomputed after its step '
      '(last_batch_after_step, the reference).', choices.GROW_SCORES)
  readjust_rule: str = setting(
      'feddst', 'feddst (paper) or reference (authors\' prune-then-grow over '
      'all positions).', choices.READJUST_RULES)
  readjustment_schedule: str = setting(
      'paper', 'paper or reference (authors\' round counting and '
      'doubly-decayed ratio).', SCHEDULES)
  readjust_counter: str = setting(
      'round', 'Who readjusts on a readjustment round: every client, once '
      '(round), or, as the authors\' clients, a client after each local '
      'epoch whose lifetime epoch count c (over all rounds it was sampled '
      'in) has (c - --readjust_counter_begin) % '
      '--readjust_counter_interval == 0 (client_lifetime; '
      '--readjust_after_epochs is then not used).', READJUST_COUNTERS)
  readjust_counter_begin: int = setting(
      9, 'With --readjust_counter=client_lifetime: the first lifetime epoch '
      'count that readjusts (the authors\' --pruning-begin).')
  readjust_counter_interval: int = setting(
      10, 'With --readjust_counter=client_lifetime: lifetime epochs between '
      'readjustments (the authors\' --pruning-interval).')

  def validate(self) -> None:
    super().validate()
    self._require(0 <= self.drop_fraction <= 1, 'drop_fraction',
                  'a fraction in [0, 1]')
    self._require(self.readjust_counter_begin >= 0, 'readjust_counter_begin',
                  'an integer >= 0')
    self._require(self.readjust_counter_interval >= 1,
                  'readjust_counter_interval', 'an integer >= 1')
    if self.readjust_counter == 'client_lifetime':
      self._require(self.readjust_after_epochs is None,
                    'readjust_after_epochs',
                    'unset with --readjust_counter=client_lifetime (the '
                    'lifetime epoch count picks the epochs after which a '
                    'client readjusts)')
    self._require(self.annealing_end_round >= 0, 'annealing_end_round',
                  'an integer >= 0 (0: total_rounds // 2)')
    self._require(self.rounds_between_readjustments >= 1,
                  'rounds_between_readjustments', 'an integer >= 1')


@dataclasses.dataclass(frozen=True)
class CommunicationSettings(_Group):
  """How uploads and the broadcast are encoded."""
  upload_value_dtype: str = setting(
      'float32', 'No longer used: only float32 (its default) is accepted. '
      'Ask for float16 uploads in --upload_encoding (e.g. float16+bitmap).',
      choices.VALUE_DTYPES)
  upload_encoding: str = setting(
      'float16+rice', 'How clients encode uploads: "+"-joined float32|float16 '
      '(values), bitmap|rice (mask code), optionally changed_masks_only '
      '(masks sent only when a readjustment changed them; not PruneFL or '
      'LotteryFL) and '
      'dense_masks (send dense layers\' all-ones masks too), e.g. '
      'float16+rice+changed_masks_only. The default halves float32+bitmap '
      '(the paper\'s count) within seed noise in accuracy (README).')
  download_encoding: str = setting(
      'bitmap', 'How the server encodes the broadcast: as --upload_encoding, '
      'without changed_masks_only.')

  def validate(self) -> None:
    super().validate()
    if self.upload_value_dtype != 'float32':
      # One way to ask for float16 values: the upload encoding.
      raise ConfigError(
          f'--upload_value_dtype={self.upload_value_dtype!r} is invalid: '
          'expected float32 (unset); ask for float16 uploads with '
          f'--upload_encoding=float16+... (e.g. float16+bitmap).')
    self.payload_encodings(may_thin_dense_layers=False)

  def payload_encodings(self, may_thin_dense_layers: bool):
    """The upload and download `encoding.PayloadEncoding`s of a run.

    The masks of dense layers are left out unless `may_thin_dense_layers`
    (then they are sent, as with the 'dense_masks' token).

    Args:
      may_thin_dense_layers: Whether a dense layer can lose ones in the run.

    Returns:
      `(upload_encoding, download_encoding)`.

    Raises:
      ConfigError: For an unknown encoding or a download that leaves masks
        out.
    """
    parsed = []
    for flag in ('upload_encoding', 'download_encoding'):
      name = getattr(self, flag)
      try:
        parsed.append(payload_encoding.PayloadEncoding.parse(name))
      except ValueError as error:
        raise ConfigError(
            f'--{flag}={name!r} is invalid: expected '
            f'{payload_encoding.GRAMMAR} ({error})') from error
    upload, download = parsed
    if download.masks_only_when_changed:
      raise ConfigError(
          f'--download_encoding={self.download_encoding!r} is invalid: '
          'expected no changed_masks_only (a broadcast always carries the '
          'masks; it applies to --upload_encoding only).')
    if may_thin_dense_layers:
      upload = dataclasses.replace(upload, omit_dense_masks=False)
      download = dataclasses.replace(download, omit_dense_masks=False)
    return upload, download


@dataclasses.dataclass(frozen=True)
class ServerSettings(_Group):
  """The server's update, mask choice and upload checks."""
  server_learning_rate: float = setting(
      1.0, 'Server step size on the averaged update (1: FedAvg).')
  server_momentum: float = setting(
      0.0, 'Server momentum (> 0: FedAvgM; tune the server lr).')
  server_optimizer: str = setting(
      'sgd', 'Server optimizer on the pseudo-gradient (global model minus '
      'the average), on the global mask\'s positions only: sgd and sgdm are '
      'server SGD with --server_momentum (sgdm: > 0); adam, yogi and adagrad '
      'are tff.learning.optimizers\' (FedOpt; tune --server_learning_rate, '
      'e.g. 0.01). Their state is reset off each new mask and starts from '
      'the initial one where a weight enters (server_optimizers).',
      choices.SERVER_OPTIMIZERS)
  server_beta_1: float = setting(
      0.9, 'Adam/Yogi server optimizer: first-moment decay, in [0, 1).')
  server_beta_2: float = setting(
      0.99, 'Adam/Yogi server optimizer: second-moment decay, in [0, 1).')
  server_epsilon: float = setting(
      1e-3, 'Adam/Yogi/Adagrad server optimizer: added to the denominator, '
      '> 0 (FedOpt\'s tau).')
  min_votes: int = setting(
      0, 'Vote threshold to stay in the global mask, in --min_votes_unit: '
      'with clients (default), a weight must be held by at least this many '
      'of the round\'s clients, at most --clients_per_round; with weight '
      '(the reference\'s --min-votes), its holders\' summed aggregation '
      'weights must exceed it (strict >), >= 0.')
  min_votes_unit: str = setting(
      'clients', 'What --min_votes counts: clients (holders, >=; ours) or '
      'weight (holders\' summed aggregation weights, >; the reference, whose '
      'weights are 2 x minibatches, see --client_weighting).',
      choices.MIN_VOTES_UNITS)
  server_rule: str = setting(
      'feddst', 'Next global mask: feddst (re-prune each layer to its count '
      'among held positions, ties to more votes) or reference (the '
      'authors\': re-prune the union by |w| over all positions, clearing '
      'bits only, and only when it is denser than the round\'s counts). '
      'PruneFL keeps its own mask rule.',
      choices.SERVER_RULES)
  min_new_position_votes: int = setting(
      2, 'A weight outside the round\'s global mask enters the next mask '
      'only if at least this many of the round\'s clients (all of them, if '
      'fewer reported) hold it, >= 1 (1: any holder); weights inside it '
      'follow --min_votes alone.')
  remember_old: bool = setting(
      False, 'A client lacking a position of the global mask counts as having '
      'sent the old global weight there, in the averages and the mask choice '
      '(the authors\' --remember-old).')
  max_payload_norm: float = setting(
      0.0, 'The server drops a client upload whose L2 norm (active values and '
      'dense parameters: the client\'s model, not its update) exceeds this, '
      '>= 0; 0: no bound. Malformed, non-finite or mis-counted uploads are '
      'always dropped; metrics.csv counts them in rejected_clients.')
  clip_updates: bool = setting(
      True, 'Clip each client\'s update (its delta from the broadcast model '
      'on its own mask) to the round\'s adaptive bound, and drop uploads far '
      'beyond it (robust_aggregation).')
  clip_norm_quantile: float = setting(
      0.5, 'The clip bound follows this quantile of the round\'s update '
      'norms, in (0, 1) (0.5: the median, which fewer than half of the '
      'clients cannot move).')
  clip_norm_multiplier: float = setting(
      2.0, 'The clip bound is this (>= 1) times that quantile.')
  clip_zeroing_multiple: float = setting(
      10.0, 'Uploads whose update norm exceeds this (>= 1) times the clip '
      'bound are dropped (rejected_update_norm).')
  max_client_weight: Optional[float] = setting(
      None, 'Cap on the example count a client states (its aggregation '
      'weight), > 0; unset: the largest local data set of the partition; '
      '0: no cap.')
  max_client_weight_multiple: float = setting(
      2.0, 'Also cap each stated example count at this (>= 1) times the '
      'median of the round\'s accepted counts; 0: no such cap.')
  reject_replayed_uploads: bool = setting(
      True, 'Drop every copy of an upload that arrives more than once in a '
      'round (rejected_replay).')
  reject_stale_uploads: bool = setting(
      True, 'Clients send a digest of the model they trained from with '
      'their upload (4 bytes); drop an upload whose digest is not that of '
      'the model the round broadcast (rejected_stale).')
  reject_opposed_updates: bool = setting(
      False, 'Drop an upload whose update points against the round\'s other '
      'clients\' updates: its cosine, on its own mask, with the sum of their '
      'unit-norm updates is below --min_update_cosine (rejected_direction; '
      'update_direction). Needs --clip_updates; off with TFF workers (no '
      'first pass).')
  min_update_cosine: float = setting(
      -0.1, 'With --reject_opposed_updates: the lowest cosine accepted, in '
      '[-1, 1).')
  direction_reference: str = setting(
      'round_others', 'With --reject_opposed_updates: what each update is '
      'compared with: the sum of the round\'s other clients\' unit-norm '
      'updates (round_others), or the server\'s own step on '
      '--server_root_examples training examples drawn iid (server_root, as '
      'FLTrust; server_root_step).', ('round_others', 'server_root'))
  server_root_examples: int = setting(
      500, 'With --direction_reference=server_root: the size of the '
      'server\'s root set, >= 1 and at most the training examples.')
  client_weighting: str = setting(
      'num_examples', 'Aggregation weight of an accepted client: its '
      '(capped) example count, 1 for every client (uniform), or 2 x its '
      'number of minibatches of --client_batch_size (minibatches_x2, the '
      'reference\'s train_size).',
      ('num_examples', 'uniform', 'minibatches_x2'))
  robust_mean: str = setting(
      'mean', 'Value of each weight from its holders\' (clipped) values: '
      'their example-weighted mean, or their unweighted coordinate-wise '
      'trimmed mean (--trim_fraction) or median (robust_means).',
      choices.ROBUST_MEANS)
  trim_fraction: float = setting(
      0.2, 'With --robust_mean=trimmed_mean: the share of a weight\'s '
      'holders dropped at each end, floor(fraction * holders), in [0, 0.5).')
  max_failed_rounds: int = setting(
      3, 'Stop the run with an error (checkpoint kept for --resume) after '
      'this many consecutive rounds that failed (the new model was not '
      'finite, so the old one was kept) or whose uploads were all rejected, '
      '>= 0; 0: never stop.')

  def validate(self) -> None:
    super().validate()
    self._require(0 < self.server_learning_rate < math.inf,
                  'server_learning_rate', 'a finite number > 0')
    self._require(0 <= self.server_beta_1 < 1, 'server_beta_1',
                  'a number in [0, 1)')
    self._require(0 <= self.server_beta_2 < 1, 'server_beta_2',
                  'a number in [0, 1)')
    self._require(0 < self.server_epsilon < math.inf, 'server_epsilon',
                  'a finite number > 0')
    if self.server_optimizer == 'sgdm':
      self._require(0 < self.server_momentum < 1, 'server_momentum',
                    'a number in (0, 1) with --server_optimizer=sgdm')
    elif self.server_optimizer != 'sgd':
      self._require(self.server_momentum == 0, 'server_momentum',
                    f'0 with --server_optimizer={self.server_optimizer} (its '
                    'momentum is --server_beta_1; --method=fedavgm is server '
                    'sgdm)')
    self._require(0 < self.clip_norm_quantile < 1, 'clip_norm_quantile',
                  'a number in (0, 1)')
    self._require(self.clip_norm_multiplier >= 1, 'clip_norm_multiplier',
                  'a finite number >= 1')
    self._require(self.clip_zeroing_multiple >= 1, 'clip_zeroing_multiple',
                  'a finite number >= 1')
    self._require(self.max_client_weight_multiple == 0 or
                  self.max_client_weight_multiple >= 1,
                  'max_client_weight_multiple',
                  'a finite number >= 1 (0: no cap by the round\'s median)')
    self._require(self.max_client_weight is None or
                  self.max_client_weight >= 0, 'max_client_weight',
                  'a finite number > 0 (0: no cap; unset: the largest local '
                  'data set)')
    self._require(0 <= self.server_momentum < 1, 'server_momentum',
                  'a number in [0, 1)')
    self._require(self.max_payload_norm >= 0, 'max_payload_norm',
                  'a finite number >= 0 (0: no bound)')
    self._require(self.min_new_position_votes >= 1,
                  'min_new_position_votes',
                  'an integer >= 1 (1: any holder may bring a weight in)')
    self._require(self.max_failed_rounds >= 0, 'max_failed_rounds',
                  'an integer >= 0 (0: never stop)')
    self._require(-1 <= self.min_update_cosine < 1, 'min_update_cosine',
                  'a number in [-1, 1)')
    self._require(self.server_root_examples >= 1, 'server_root_examples',
                  'an integer >= 1')
    self._require(self.direction_reference == 'round_others' or
                  self.reject_opposed_updates, 'direction_reference',
                  'round_others without --reject_opposed_updates (the root '
                  'step is the direction check\'s reference)')
    self._require(0 <= self.trim_fraction < 0.5, 'trim_fraction',
                  'a number in [0, 0.5)')
    self._require(self.robust_mean == 'mean' or not self.remember_old,
                  'robust_mean', 'mean with --remember_old (a robust mean '
                  'has no weighted sums to remember old weights in)')


@dataclasses.dataclass(frozen=True)
class RunSettings(_Group):
  """The method, the rounds and what a run records."""
  method: str = setting(
      'feddst', 'Method, all from one code path. A method fixes what defines '
      'it (e.g. fedavg: target_sparsity 0).', _method_names)
  total_rounds: int = setting(30, 'Server rounds.')
  clients_per_round: int = setting(
      10, 'Clients sampled per round (without replacement unless '
      '--sample_with_replacement).')
  sample_with_replacement: bool = setting(
      False, 'Sample each round\'s clients with replacement (the '
      'reference): a client drawn twice trains and reports twice, on two '
      'shuffles of its data.')
  upload_budget_bytes: Optional[int] = setting(
      None, 'Stop before the cumulative client upload would exceed this many '
      'bytes (compare methods at equal upload).')
  dropout_rate: float = setting(
      0.0, 'Probability that a sampled client fails to report (it downloaded '
      'the model; its upload never arrives).')
  checkpoint_every: int = setting(
      10, 'Save the full run state every this many rounds (and after the '
      'last) under output_dir/checkpoints; 0: never.')
  keep_checkpoints: int = setting(
      3, 'How many of the newest checkpoints to keep, >= 1 (older ones are '
      'deleted; e.g. 1000 keeps a whole run\'s mask history for '
      'bin/mask_history.py).')
  seed: int = setting(
      0, 'Seed of the split, model, masks, sampling, shuffling; in '
      '[0, 2**32).')
  eval_every: int = setting(
      5, 'Evaluate every this many rounds (and after the last).')
  tensorboard_dir: Optional[str] = setting(
      None, 'TensorBoard log directory (default: <output_dir>/tensorboard; '
      'empty: no TensorBoard logs). Per round: metrics, per-layer mask '
      'densities and weight histograms.')

  def validate(self) -> None:
    super().validate()
    self._require(self.total_rounds >= 1, 'total_rounds', 'an integer >= 1')
    self._require(self.eval_every >= 1, 'eval_every', 'an integer >= 1')
    self._require(self.checkpoint_every >= 0, 'checkpoint_every',
                  'an integer >= 0 (0: no checkpoints)')
    self._require(self.keep_checkpoints >= 1, 'keep_checkpoints',
                  'an integer >= 1')
    self._require(0 <= self.dropout_rate < 1, 'dropout_rate',
                  'a probability in [0, 1)')
    self._require(0 <= self.seed < SEED_LIMIT, 'seed',
                  f'an integer in [0, 2**32 = {SEED_LIMIT})')
    self._require(
        self.upload_budget_bytes is None or self.upload_budget_bytes > 0,
        'upload_budget_bytes', 'a number of bytes > 0, or unset')


@dataclasses.dataclass(frozen=True)
class PruneflSettings(_Group):
  """PruneFL's own settings (--method=prunefl; see methods/prunefl.py)."""
  prunefl_initial_rounds: int = setting(
      5, 'PruneFL: reconfigurations of the initial pruning on one seeded '
      'client (0: start federated training dense).')
  prunefl_initial_steps: int = setting(
      50, 'PruneFL: local SGD steps before each initial reconfiguration.')
  prunefl_reconfigure_every: int = setting(
      5, 'PruneFL: rounds t with t % this == 0 upload importance and '
      'reconfigure the global mask.')
  prunefl_round_cost: float = setting(
      0.14, 'PruneFL: fixed time c of a round, as a fraction of the time of '
      'all prunable parameters of the dense model (larger: denser models).')
  prunefl_max_remove_fraction: float = setting(
      0.3, 'PruneFL: share of each layer\'s active weights (the smallest) a '
      'reconfiguration may remove, in [0, 1].')
  prunefl_layer_times: str = setting(
      'uniform', 'PruneFL: per-parameter time of each prunable layer, '
      'comma-separated (e.g. measured on a device), or uniform.')

  def validate(self) -> None:
    super().validate()
    self._require(self.prunefl_initial_rounds >= 0, 'prunefl_initial_rounds',
                  'an integer >= 0 (0: no initial pruning)')
    self._require(self.prunefl_initial_steps >= 1, 'prunefl_initial_steps',
                  'an integer >= 1')
    self._require(self.prunefl_reconfigure_every >= 1,
                  'prunefl_reconfigure_every', 'an integer >= 1')
    self._require(self.prunefl_round_cost > 0, 'prunefl_round_cost',
                  'a number > 0 (fixed round time / time of all dense '
                  'kernels)')
    self._require(0 <= self.prunefl_max_remove_fraction <= 1,
                  'prunefl_max_remove_fraction', 'a fraction in [0, 1]')
    self._require(setting_checks.is_layer_times(self.prunefl_layer_times),
                  'prunefl_layer_times', 'uniform, or comma-separated '
                  'per-parameter times > 0, one per prunable layer')


@dataclasses.dataclass(frozen=True)
class LotteryflSettings(_Group):
  """LotteryFL's own settings (--method=lotteryfl; see methods/lotteryfl.py;
  its target is --target_sparsity)."""
  lotteryfl_accuracy_threshold: float = setting(
      0.5, 'LotteryFL: a client prunes its personal mask when the local '
      'accuracy of its personal model is above this, in [0, 1].')
  lotteryfl_prune_rate: float = setting(
      0.2, 'LotteryFL: share of each layer\'s surviving weights a prune step '
      'removes (the smallest), in (0, 1).')

  def validate(self) -> None:
    super().validate()
    self._require(0 <= self.lotteryfl_accuracy_threshold <= 1,
                  'lotteryfl_accuracy_threshold', 'an accuracy in [0, 1]')
    self._require(0 < self.lotteryfl_prune_rate < 1, 'lotteryfl_prune_rate',
                  'a fraction in (0, 1)')


@dataclasses.dataclass(frozen=True)
class ExecutionSettings(_Group):
  """Where the rounds run (may change when a run is resumed)."""
  num_local_workers: int = setting(
      0, 'Start this many TFF workers on 127.0.0.1 and split each round\'s '
      'clients across them (0: one worker, no split), at most the CPU count. '
      'They are ended when the run ends.')
  workers: Optional[str] = setting(
      None, 'Comma-separated host:port of TFF workers started elsewhere, to '
      'split clients across (with or without --num_local_workers).')
  client_runtime: str = setting(
      'tf', 'Where each sampled client trains: tf (the TFF process\'s '
      'client work) or tflite (the exported training model in a TFLite '
      'interpreter, called as an app calls it; its upload goes through the '
      'server\'s device-upload check into the same aggregator and finalizer: '
      'ondevice/tflite_rounds.py). tflite runs the FedDST family without '
      'workers, robust means or growing sparsity.', CLIENT_RUNTIMES)
  tflite_client_processes: int = setting(
      1, 'With --client_runtime=tflite: train this many clients at once, '
      'each in one of a pool of processes (1: one after another in the '
      'training process). The server takes the uploads in client order, so '
      'the results are the same bit for bit.')

  @property
  def worker_addresses(self) -> tuple[str, ...]:
    """The --workers addresses as a tuple (empty when unset)."""
    return tuple(a.strip() for a in (self.workers or '').split(',')
                 if a.strip())

  def validate(self) -> None:
    super().validate()
    cpus = setting_checks.usable_cpu_count()
    self._require(0 <= self.num_local_workers <= cpus, 'num_local_workers',
                  f'an integer in [0, {cpus}], at most the CPUs this process '
                  'may use (0: one worker, no client split)')
    if self.workers is not None:
      setting_checks.check_worker_addresses(self.workers)
    self._require(self.tflite_client_processes >= 1,
                  'tflite_client_processes',
                  'an integer >= 1 (1: clients train one after another in '
                  'the training process)')


# The groups of `ExperimentSettings`, by attribute name.
GROUPS = {
    'data': DataSettings,
    'network': NetworkSettings,
    'client': ClientSettings,
    'readjustment': ReadjustmentSettings,
    'communication': CommunicationSettings,
    'server': ServerSettings,
    'run': RunSettings,
    'prunefl': PruneflSettings,
    'lotteryfl': LotteryflSettings,
    'execution': ExecutionSettings,
}


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
  """Every setting of a run, by concern; field names are flag names.

  Build one from flag names with `from_flat` (unset names keep their
  defaults), change some with `replace`; `flat()` and `to_flag_lines()` go
  the other way.
  """
  data: DataSettings = dataclasses.field(default_factory=DataSettings)
  network: NetworkSettings = dataclasses.field(
      default_factory=NetworkSettings)
  client: ClientSettings = dataclasses.field(default_factory=ClientSettings)
  readjustment: ReadjustmentSettings = dataclasses.field(
      default_factory=ReadjustmentSettings)
  communication: CommunicationSettings = dataclasses.field(
      default_factory=CommunicationSettings)
  server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
  run: RunSettings = dataclasses.field(default_factory=RunSettings)
  prunefl: PruneflSettings = dataclasses.field(
      default_factory=PruneflSettings)
  lotteryfl: LotteryflSettings = dataclasses.field(
      default_factory=LotteryflSettings)
  execution: ExecutionSettings = dataclasses.field(
      default_factory=ExecutionSettings)

  @staticmethod
  def setting_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """`{flag name: (group attribute, field)}` of every setting, in order."""
    return {field.name: (group, field)
            for group, group_class in GROUPS.items()
            for field in dataclasses.fields(group_class)}

  @classmethod
  def from_flat(cls, **values: Any) -> 'ExperimentSettings':
    """Settings from flag names and values; the rest keep their defaults.

    Raises:
      TypeError: For a name that is no setting.
    """
    fields = cls.setting_fields()
    unknown = sorted(set(values) - set(fields))
    if unknown:
      raise TypeError(f'no setting named {unknown[0]!r}')
    by_group = {group: {} for group in GROUPS}
    for name, value in values.items():
      by_group[fields[name][0]][name] = value
    return cls(**{group: GROUPS[group](**group_values)
                  for group, group_values in by_group.items()})

  def flat(self) -> dict[str, Any]:
    """`{flag name: value}` of every setting."""
    return {name: getattr(getattr(self, group), name)
            for name, (group, _) in self.setting_fields().items()}

  def replace(self, **values: Any) -> 'ExperimentSettings':
    """A copy with the named settings (flag names) changed."""
    return ExperimentSettings.from_flat(**{**self.flat(), **values})

  def to_flag_lines(self) -> list[str]:
    """Returns the settings as `--name=value` lines (unset values omitted)."""
    return [f'--{name}={value}' for name, value in self.flat().items()
            if value is not None]

  @property
  def method(self) -> str:
    return self.run.method

  @property
  def model_name(self) -> str:
    """--model, or the paper's model for the data set when unset."""
    return self.network.model or DATASET_MODELS.get(self.data.dataset, '')

  @property
  def effective_annealing_end_round(self) -> int:
    return (self.readjustment.annealing_end_round or
            max(self.run.total_rounds // 2, 1))

  @property
  def may_thin_dense_layers(self) -> bool:
    """Whether a layer of full capacity (dense) can lose ones in this run.

    The server keeps a dense layer dense unless the sparsity grows over the
    rounds, the vote threshold drops positions, the 'reference' readjust
    or server rule thins it, or the method chooses its own masks (PruneFL).
    """
    from tff_feddst.methods import registry  # pylint: disable=g-import-not-at-top
    vote_threshold = 0 if self.server.min_votes_unit == 'weight' else 1
    return (self.network.is_growing_sparsity or
            self.server.min_votes > vote_threshold or
            self.server.server_rule == 'reference' or
            self.readjustment.readjust_rule == 'reference' or
            registry.get(self.method).chooses_own_masks)

  def payload_encodings(self):
    """The run's upload and download `encoding.PayloadEncoding`s.

    See `CommunicationSettings.payload_encodings`; dense layers' masks are
    sent when `may_thin_dense_layers`.
    """
    return self.communication.payload_encodings(self.may_thin_dense_layers)

  def effective_tensorboard_dir(self, output_dir: str) -> str:
    """The TensorBoard directory: `tensorboard_dir`, else output_dir's.

    Args:
      output_dir: The run's output directory.

    Returns:
      `tensorboard_dir`, or `<output_dir>/tensorboard` when it is None; ''
      means no TensorBoard logs.
    """
    if self.run.tensorboard_dir is None:
      return os.path.join(output_dir, 'tensorboard')
    return self.run.tensorboard_dir

  def resolved(self) -> 'ExperimentSettings':
    """A copy with the settings that define the method applied.

    Raises:
      ConfigError: For an unknown method (naming --method and the choices).
    """
    from tff_feddst.methods import registry  # pylint: disable=g-import-not-at-top
    return registry.get(self.method).resolve(self)

  def validate(self) -> None:
    """Checks every setting that can be checked without data.

    Raises:
      ConfigError: naming the first bad flag and what it accepts.
    """
    for group in GROUPS:
      getattr(self, group).validate()
    self._validate_across_groups()

  def _validate_across_groups(self) -> None:
    """The rules that join settings of different groups."""
    def require(ok: bool, name: str, accepted: str) -> None:
      if not ok:
        raise ConfigError(f'--{name}={self.flat()[name]!r} is invalid: '
                          f'expected {accepted}.')

    data, network, run = self.data, self.network, self.run
    if self.execution.client_runtime == 'tflite':
      setting_checks.check_tflite_runtime(self)
    elif self.execution.tflite_client_processes != 1:
      raise ConfigError(
          '--tflite_client_processes='
          f'{self.execution.tflite_client_processes} is invalid with '
          f'--client_runtime={self.execution.client_runtime}: expected 1 '
          '(a pool of processes is for TFLite clients).')
    require(1 <= run.clients_per_round <= data.total_clients, 'clients_per_round',
            f'an integer in [1, --total_clients={data.total_clients}]')
    if (network.is_growing_sparsity and
        self.readjustment.readjust_rule == 'reference'):
      raise ConfigError(
          f'--initial_sparsity={network.initial_sparsity} is invalid with '
          '--readjust_rule=reference: expected unset (that rule\'s per-layer '
          'keep counts are fixed for the run).')
    if (network.is_growing_sparsity and
        self.readjustment.annealing_end_round > run.total_rounds):
      # The per-round counts are tabulated up to T_end, and past the last
      # round the sparsity would never reach its target.
      raise ConfigError(
          '--annealing_end_round='
          f'{self.readjustment.annealing_end_round} is invalid with '
          f'--initial_sparsity={network.initial_sparsity}: expected an '
          f'integer in [0, --total_rounds={run.total_rounds}] (the round at '
          'which the sparsity reaches --target_sparsity).')
    epochs = self.client.client_epochs_per_round
    after = self.readjustment.readjust_after_epochs
    require(after is None or -epochs < after <= epochs,
            'readjust_after_epochs',
            f'a number in (0, --client_epochs_per_round={epochs}], or in '
            f'(-{epochs}, 0] counting back from the last epoch, or unset')
    from tff_feddst.methods import registry  # pylint: disable=g-import-not-at-top
    method = registry.get(run.method)
    require(self.readjustment.readjust_counter in
            method.readjust_counters, 'readjust_counter',
            f'one of {method.readjust_counters} with '
            f'--method={run.method} (its clients make no FedDST '
            'readjustments)')
    upload, _ = self.payload_encodings()
    require(method.leaves_unchanged_masks_out or
            not upload.masks_only_when_changed, 'upload_encoding',
            f'an encoding without changed_masks_only with --method='
            f'{run.method} (its uploads always carry their masks)')
    require(self.server.robust_mean == 'mean' or self.server.clip_updates or
            not upload.masks_only_when_changed, 'robust_mean',
            'mean with --noclip_updates and an --upload_encoding that leaves '
            'masks out (the server then lacks the global masks to place '
            'values)')
    require(self.server.server_optimizer in ('sgd', 'sgdm') or
            run.method != 'fedavgm', 'server_optimizer',
            'sgd or sgdm with --method=fedavgm (FedAvg with server momentum)')
    # More votes than sampled clients can never be reached: every position
    # would leave the global mask, for good. With --dropout_rate (or
    # rejected uploads) fewer may report; those rounds thin the mask.
    if self.server.min_votes_unit == 'weight':
      require(self.server.min_votes >= 0, 'min_votes',
              'an integer >= 0 (with --min_votes_unit=weight: the summed '
              'aggregation weights a position\'s holders must exceed)')
    else:
      require(0 <= self.server.min_votes <= run.clients_per_round,
              'min_votes',
              f'an integer in [0, --clients_per_round='
              f'{run.clients_per_round}] (a weight stays only if that many '
              'of the round\'s clients hold it)')


def setting_choices() -> dict[str, tuple[str, ...]]:
  """The accepted values of each choice setting (flag), by name.

  Returns:
    `{setting name: accepted values}` for every setting with a fixed set
    of values (`model` may also be None: the data set's model).
  """
  return {name: choices_of(field)
          for name, (_, field) in ExperimentSettings.setting_fields().items()
          if choices_of(field) is not None}


class FlagLineError(ConfigError):
  """A `--name=value` line that names no setting or has a bad value.

  Attributes:
    line_number: The 1-based number of the line.
  """

  def __init__(self, line_number: int, message: str):
    super().__init__(message)
    self.line_number = line_number


def _parse_value(kind: type, text: str) -> Any:
  if kind is bool:
    if text not in ('True', 'False'):
      raise ValueError(text)
    return text == 'True'
  return kind(text)


def from_flag_lines(lines) -> ExperimentSettings:
  """Reads `--name=value` lines (a run's flags.txt) back into settings.

  Blank lines and lines starting with '#' are skipped; unnamed settings keep
  their defaults. Not validated.

  Args:
    lines: The lines, e.g. `ExperimentSettings.to_flag_lines()`.

  Returns:
    The `ExperimentSettings`.

  Raises:
    FlagLineError: For a line that is no known setting or whose value does
      not parse as the setting's type.
  """
  hints = {}
  for group_class in GROUPS.values():
    for name, hint in typing.get_type_hints(group_class).items():
      options = [a for a in typing.get_args(hint) if a is not type(None)]
      hints[name] = options[0] if options else hint
  values = {}
  for number, line in enumerate(lines, start=1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    name, equals, text = line.partition('=')
    name = name[2:] if name.startswith('--') else None
    if not equals or name not in hints:
      raise FlagLineError(number, 'not a known --name=value setting: '
                          f'{line[:80]!r}.')
    kind = hints[name]
    try:
      values[name] = _parse_value(kind, text)
    except ValueError as error:
      raise FlagLineError(number, f'--{name}={text!r} is not a '
                          f'{kind.__name__}.') from error
  return ExperimentSettings.from_flat(**values)
