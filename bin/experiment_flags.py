"""Flags shared by the bin/ scripts: one per `ExperimentConfig` field.

Only bin/ reads flags; `config_from_flags` turns them into the plain
`ExperimentConfig` the library takes. Choice flags are enums over
`experiment.setting_choices()`, so absl refuses an unknown value while
parsing; `ExperimentConfig.validate` checks everything else.
"""

import dataclasses

from absl import flags

from tff_feddst.running import experiment

_DEFAULTS = experiment.ExperimentConfig()
_CHOICES = experiment.setting_choices()

# Data.
flags.DEFINE_enum('dataset', _DEFAULTS.dataset, _CHOICES['dataset'],
                  'Data set.')
flags.DEFINE_string('data_dir', None, 'Directory with the data set files '
                    '(default: the Debian package path for Fashion-MNIST, the '
                    'Keras cache for MNIST, CIFAR-10 and CIFAR-100, TFF\'s '
                    'cache ~/.tff for EMNIST); see data/README.md.')
flags.DEFINE_enum('data_distribution', _DEFAULTS.data_distribution,
                  _CHOICES['data_distribution'],
                  'How examples are split over clients (natural, EMNIST '
                  'only: one client per writer, with the writer\'s own test '
                  'examples).')
flags.DEFINE_integer('total_clients', _DEFAULTS.total_clients,
                     'Number of clients the data is split over (natural: '
                     'how many writers to use, a seeded random subset when '
                     'fewer than all).')
flags.DEFINE_float('dirichlet_beta', _DEFAULTS.dirichlet_beta,
                   'Dirichlet concentration (smaller: more skewed).')
flags.DEFINE_integer('classes_per_client', _DEFAULTS.classes_per_client,
                     'Pathological split: classes per client.')
flags.DEFINE_integer('examples_per_class', _DEFAULTS.examples_per_class,
                     'Pathological split: examples per class per client.')
flags.DEFINE_integer('examples_per_client', None,
                     'IID split: examples per client (default: all, evenly).')
# Model.
flags.DEFINE_enum('model', None, _CHOICES['model'],
                  'Model (default: the paper\'s model for the data set).')
# Rounds and local training.
flags.DEFINE_integer('total_rounds', _DEFAULTS.total_rounds, 'Server rounds.')
flags.DEFINE_integer('clients_per_round', _DEFAULTS.clients_per_round,
                     'Clients sampled (without replacement) per round.')
flags.DEFINE_integer('client_epochs_per_round',
                     _DEFAULTS.client_epochs_per_round, 'Local epochs E.')
flags.DEFINE_integer('client_batch_size', _DEFAULTS.client_batch_size,
                     'Client minibatch size.')
flags.DEFINE_float('client_learning_rate', _DEFAULTS.client_learning_rate,
                   'Client SGD learning rate.')
flags.DEFINE_float('client_momentum', _DEFAULTS.client_momentum,
                   'Client SGD momentum.')
flags.DEFINE_float('client_weight_decay', _DEFAULTS.client_weight_decay,
                   'Client L2 coefficient (added to gradients).')
flags.DEFINE_float('prox_mu', _DEFAULTS.prox_mu,
                   'FedProx mu (0: plain local SGD).')
# Sparsity and readjustment.
flags.DEFINE_float('target_sparsity', _DEFAULTS.target_sparsity,
                   'S: fraction of zeros in prunable kernels, in [0, 1); '
                   '0 is dense FedAvg.')
flags.DEFINE_float('initial_sparsity', None,
                   'S_init: growing sparsity, the sparsity of the initial '
                   'model, in [0, --target_sparsity]; round t targets S_init '
                   '+ (S - S_init) * min(t, T_end) / T_end (T_end: '
                   '--annealing_end_round) and the server re-prunes to it. '
                   'Unset: constant --target_sparsity.')
flags.DEFINE_enum('sparsity_distribution', _DEFAULTS.sparsity_distribution,
                  _CHOICES['sparsity_distribution'],
                  'Per-layer densities: uniform, er, erk (RigL) or '
                  'erk_reference (the authors\' variant).')
flags.DEFINE_enum('initial_mask', _DEFAULTS.initial_mask,
                  _CHOICES['initial_mask'],
                  'Initial mask: random (paper) or magnitude (reference).')
flags.DEFINE_float('drop_fraction', _DEFAULTS.drop_fraction,
                   'Readjustment ratio alpha: share of active weights pruned '
                   'and regrown at a readjustment (0: RandomMask).')
flags.DEFINE_enum('annealing', _DEFAULTS.annealing, _CHOICES['annealing'],
                  'Decay of alpha over rounds.')
flags.DEFINE_integer('annealing_end_round', _DEFAULTS.annealing_end_round,
                     'T_end: last round that readjusts (0: total_rounds/2).')
flags.DEFINE_integer('rounds_between_readjustments',
                     _DEFAULTS.rounds_between_readjustments,
                     'R_adj: readjust on rounds t with (t-1) % R_adj == 0.')
flags.DEFINE_float('readjust_after_epochs', None,
                   'Readjust after this many local epochs, in (0, E]; values '
                   'in (-E, 0] count back from the end (0: after the last '
                   'epoch, the reference). Default: E-1, or 0.5 when E=1.')
flags.DEFINE_enum('grow_score', _DEFAULTS.grow_score, _CHOICES['grow_score'],
                  'Regrow by |gradient| accumulated over the steps before '
                  'readjusting (accumulated) or of the last minibatch '
                  '(last_batch, reference).')
flags.DEFINE_enum('readjust_rule', _DEFAULTS.readjust_rule,
                  _CHOICES['readjust_rule'],
                  'feddst (paper) or reference (authors\' prune-then-grow '
                  'over all positions).')
flags.DEFINE_enum('readjustment_schedule', _DEFAULTS.readjustment_schedule,
                  _CHOICES['readjustment_schedule'],
                  'paper or reference (authors\' round counting and '
                  'doubly-decayed ratio).')
flags.DEFINE_enum('upload_value_dtype', _DEFAULTS.upload_value_dtype,
                  _CHOICES['upload_value_dtype'],
                  'dtype of uploaded weight values (float16 combines with an '
                  '--upload_encoding that names no value dtype).')
flags.DEFINE_string('upload_encoding', _DEFAULTS.upload_encoding,
                    'How clients encode uploads: "+"-joined float32|float16 '
                    '(values), bitmap|rice (mask code), optionally '
                    'changed_masks_only (masks sent only when a readjustment '
                    'changed them) and dense_masks (send dense layers\' '
                    'all-ones masks too), e.g. float16+rice+changed_masks_only.')
flags.DEFINE_string('download_encoding', _DEFAULTS.download_encoding,
                    'How the server encodes the broadcast: as '
                    '--upload_encoding, without changed_masks_only.')
# Server.
flags.DEFINE_float('server_learning_rate', _DEFAULTS.server_learning_rate,
                   'Server step size on the averaged update (1: FedAvg).')
flags.DEFINE_float('server_momentum', _DEFAULTS.server_momentum,
                   'Server momentum (> 0: FedAvgM; tune the server lr).')
flags.DEFINE_integer('min_votes', _DEFAULTS.min_votes,
                     'A weight must be held by at least this many of the '
                     'round\'s clients to stay in the global mask; at most '
                     '--clients_per_round.')
flags.DEFINE_bool('remember_old', _DEFAULTS.remember_old,
                  'A client lacking a position of the global mask counts as '
                  'having sent the old global weight there, in the averages '
                  'and the mask choice (the authors\' --remember-old).')
flags.DEFINE_float('max_payload_norm', _DEFAULTS.max_payload_norm,
                   'The server drops a client upload whose L2 norm (active '
                   'values and dense parameters: the client\'s model, not '
                   'its update) exceeds this, >= 0; 0: no bound. Malformed, '
                   'non-finite or mis-counted uploads are always dropped; '
                   'metrics.csv counts them in rejected_clients.')
# Method and budget.
flags.DEFINE_enum('method', _DEFAULTS.method, _CHOICES['method'],
                  'Method, all from one code path. A method fixes what '
                  'defines it (e.g. fedavg: target_sparsity 0).')
flags.DEFINE_integer('upload_budget_bytes', None,
                     'Stop before the cumulative client upload would exceed '
                     'this many bytes (compare methods at equal upload).')
# Run.
flags.DEFINE_integer('seed', _DEFAULTS.seed,
                     'Seed of the split, model, masks, sampling, shuffling; '
                     'in [0, 2**32).')
flags.DEFINE_integer('eval_every', _DEFAULTS.eval_every,
                     'Evaluate every this many rounds (and after the last).')
flags.DEFINE_float('dropout_rate', _DEFAULTS.dropout_rate,
                   'Probability that a sampled client fails to report (it '
                   'downloaded the model; its upload never arrives).')
flags.DEFINE_integer('checkpoint_every', _DEFAULTS.checkpoint_every,
                     'Save the full run state every this many rounds (and '
                     'after the last) under output_dir/checkpoints; 0: never.')
# PruneFL (--method=prunefl).
flags.DEFINE_integer('prunefl_initial_rounds', _DEFAULTS.prunefl_initial_rounds,
                     'PruneFL: reconfigurations of the initial pruning on one '
                     'seeded client (0: start federated training dense).')
flags.DEFINE_integer('prunefl_initial_steps', _DEFAULTS.prunefl_initial_steps,
                     'PruneFL: local SGD steps before each initial '
                     'reconfiguration.')
flags.DEFINE_integer('prunefl_reconfigure_every',
                     _DEFAULTS.prunefl_reconfigure_every,
                     'PruneFL: rounds t with t % this == 0 upload importance '
                     'and reconfigure the global mask.')
flags.DEFINE_float('prunefl_round_cost', _DEFAULTS.prunefl_round_cost,
                   'PruneFL: fixed time c of a round, as a fraction of the '
                   'time of all prunable parameters of the dense model '
                   '(larger: denser models).')
flags.DEFINE_float('prunefl_max_remove_fraction',
                   _DEFAULTS.prunefl_max_remove_fraction,
                   'PruneFL: share of each layer\'s active weights (the '
                   'smallest) a reconfiguration may remove, in [0, 1].')
flags.DEFINE_string('prunefl_layer_times', _DEFAULTS.prunefl_layer_times,
                    'PruneFL: per-parameter time of each prunable layer, '
                    'comma-separated (e.g. measured on a device), or uniform.')
# Execution.
flags.DEFINE_integer('num_local_workers', _DEFAULTS.num_local_workers,
                     'Start this many TFF workers on 127.0.0.1 and split each '
                     'round\'s clients across them (0: one worker, no split), '
                     'at most the CPU count. They are ended when the run '
                     'ends.')
flags.DEFINE_string('workers', None, 'Comma-separated host:port of TFF '
                    'workers started elsewhere, to split clients across (with '
                    'or without --num_local_workers).')
# Output.
flags.DEFINE_string('output_dir', None, 'Where results are written: a new '
                    'directory, or one without results (nothing is '
                    'overwritten).')
flags.DEFINE_string('tensorboard_dir', None, 'TensorBoard log directory '
                    '(default: <output_dir>/tensorboard; empty: no '
                    'TensorBoard logs). Per round: metrics, per-layer mask '
                    'densities and weight histograms.')
flags.DEFINE_bool('progress', True, 'Show a progress bar (per run).')

FLAGS = flags.FLAGS


def config_from_flags() -> experiment.ExperimentConfig:
  """Builds the `ExperimentConfig` from the parsed flags."""
  return experiment.ExperimentConfig(**{
      field.name: getattr(FLAGS, field.name)
      for field in dataclasses.fields(experiment.ExperimentConfig)})
