"""The model and client hyper-parameters of a run, from its settings.

Training (every method), the TFLite export and the benchmark build the
model through `build_model`, so that they start from the same seeded
weights and masks.
"""

import logging
from typing import Any, Optional

import numpy as np

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import robust_means
from tff_feddst.process import server_optimizers
from tff_feddst.process import server_root_step
from tff_feddst.running import settings as settings_lib
from tff_feddst.sparse import sparsity_distribution


def build_model(settings: settings_lib.ExperimentSettings, *,
                sparsity: Optional[float] = None
                ) -> tuple[models.ModelFn, fed_dst.InitialModel]:
  """The model function and the seeded initial model of a run.

  Args:
    settings: The run's settings (resolved: a method's defining settings
      applied).
    sparsity: The initial model's sparsity; None: S_init (the run's first
      round). An export of a finished run's weights passes the target.

  Returns:
    `(model_fn, initial model)`.
  """
  network, seed = settings.network, settings.run.seed
  if sparsity is None:
    sparsity = network.effective_initial_sparsity
  model_fn = models.get_model_fn(settings.model_name, seed=seed)
  initial_model = fed_dst.build_initial_model(
      model_fn, sparsity, network.sparsity_distribution, seed=seed,
      initial_mask=network.initial_mask)
  return model_fn, initial_model


def build_client_config(settings: settings_lib.ExperimentSettings,
                        initial_model: fed_dst.InitialModel
                        ) -> client_work.ClientConfig:
  """The client hyper-parameters of a run (TFF clients and TFLite export).

  Args:
    settings: The run's settings (resolved).
    initial_model: Its initial model (layer shapes for the reference rule's
      per-layer keep counts).

  Returns:
    The `client_work.ClientConfig`.
  """
  client, readjustment = settings.client, settings.readjustment
  target_sparsity = settings.network.target_sparsity
  keep_after_prune = ()
  if readjustment.readjust_rule == 'reference':
    # The authors' clients prune to S + (1 - S) * alpha, then regrow to S.
    prune_sparsity = min(
        target_sparsity + (1 - target_sparsity) * readjustment.drop_fraction,
        0.999999)
    keep_after_prune = tuple(sparsity_distribution.compute_layer_num_active(
        initial_model.layout.kernel_shapes, prune_sparsity,
        settings.network.sparsity_distribution,
        bias_sizes=initial_model.layout.layer_bias_sizes))
  return client_work.ClientConfig(
      learning_rate=client.client_learning_rate,
      momentum=client.client_momentum,
      weight_decay=client.client_weight_decay,
      prox_mu=client.prox_mu,
      num_epochs=client.client_epochs_per_round,
      readjust_after_epochs=readjustment.readjust_after_epochs,
      grow_score=readjustment.grow_score,
      readjust_rule=readjustment.readjust_rule,
      reference_keep_after_prune=keep_after_prune,
      value_dtype=settings.payload_encodings()[0].value_dtype,
      readjust_counter=readjustment.readjust_counter,
      readjust_counter_begin=readjustment.readjust_counter_begin,
      readjust_counter_interval=readjustment.readjust_counter_interval)


def num_dense_parameters(initial_model: fed_dst.InitialModel) -> int:
  """Number of parameters sent densely (biases, normalisation state)."""
  layout = initial_model.layout
  weights = initial_model.weights
  return int(sum(np.size(weights.trainable[i])
                 for i in layout.dense_trainable_indices) +
             sum(np.size(weights.non_trainable[i])
                 for i in layout.dense_non_trainable_indices))


def build_server_optimizer(settings: settings_lib.ExperimentSettings):
  """The run's adaptive server optimizer (`server_optimizers`), or None.

  Args:
    settings: The run's settings.

  Returns:
    A `tff.learning.optimizers.Optimizer` for --server_optimizer adam, yogi
    or adagrad; None for sgd and sgdm (the finalizer's momentum buffers).
  """
  server = settings.server
  return server_optimizers.build_server_optimizer(
      server.server_optimizer, server.server_learning_rate,
      server.server_beta_1, server.server_beta_2, server.server_epsilon)


def server_keyword_arguments(settings: settings_lib.ExperimentSettings,
                             robust: robust_aggregation.RobustAggregation
                             ) -> dict[str, Any]:
  """The server settings PruneFL's and LotteryFL's builders take alike.

  Args:
    settings: The run's settings.
    robust: From `build_robust_aggregation`.

  Returns:
    Keyword arguments: server step size and momentum, the upload and
    download encodings, the default payload checks (with
    --max_payload_norm), `robust` and the adaptive server optimizer.
  """
  upload_encoding, download_encoding = settings.payload_encodings()
  return dict(
      server_learning_rate=settings.server.server_learning_rate,
      server_momentum=settings.server.server_momentum,
      upload_encoding=upload_encoding,
      download_encoding=download_encoding,
      payload_checks=payload_validation.default_checks(
          max_norm=settings.server.max_payload_norm),
      robust=robust,
      server_optimizer=build_server_optimizer(settings))


def plain_server_arguments(settings: settings_lib.ExperimentSettings,
                           client_config: Any,
                           federated_data: Any,
                           model_fn: Optional[models.ModelFn] = None,
                           initial_model: Optional[Any] = None
                           ) -> dict[str, Any]:
  """The server settings of `plain_loop.PlainServer`, from a run's settings.

  As `feddst_methods.FeddstMethod.prepare` passes them to
  `fed_dst.build_fed_dst`; a new server setting (a defence) that the plain
  loop takes is passed here.

  Args:
    settings: The run's settings (resolved).
    client_config: Its `client_work.ClientConfig`.
    federated_data: Its `data.FederatedData` (the default weight cap).
    model_fn: Its model function (needed for --direction_reference=
      server_root).
    initial_model: Its `fed_dst.InitialModel` (likewise).

  Returns:
    Keyword arguments of `PlainServer` (and `PlainFedDst`) beyond the
    model, data, schedule and client config.
  """
  upload_encoding, download_encoding = settings.payload_encodings()
  server = settings.server
  return dict(
      server_learning_rate=server.server_learning_rate,
      server_momentum=server.server_momentum,
      min_votes=server.min_votes, remember_old=server.remember_old,
      upload_encoding=upload_encoding, download_encoding=download_encoding,
      payload_checks=payload_validation.default_checks(
          client_config.readjust_rule, server.min_votes,
          server.max_payload_norm),
      robust=build_robust_aggregation(settings, federated_data, model_fn,
                                      initial_model, client_config),
      min_new_position_votes=server.min_new_position_votes)


def build_robust_aggregation(settings: settings_lib.ExperimentSettings,
                             federated_data,
                             model_fn: Optional[models.ModelFn] = None,
                             initial_model: Optional[Any] = None,
                             client_config: Optional[Any] = None
                             ) -> robust_aggregation.RobustAggregation:
  """How the run's server bounds each client (`robust_aggregation`).

  Args:
    settings: The run's settings.
    federated_data: Its `data.FederatedData` (for the default weight cap,
      and the root set of --direction_reference=server_root).
    model_fn: The run's model function (needed for the server's root
      step).
    initial_model: Its `fed_dst.InitialModel` (the root step's layout).
    client_config: Its `client_work.ClientConfig` (the root step trains as
      the clients do).

  Returns:
    The `RobustAggregation`: with --max_client_weight unset, the cap is the
    largest local data set of the partition (no honest client states more);
    0 means no cap. With workers (--num_local_workers > 0 or --workers),
    whose TFF execution (the mergeable form) cannot run an aggregate that
    depends on another, there is no first pass: clipping and the cap by
    the median use the previous round's bounds (none in round 1) and
    replays within a round are not checked; `warn_if_screening_is_off`
    says so once the run has its workers. --robust_mean other than 'mean'
    adds a `robust_means.RobustMean` sized for --clients_per_round.
  """
  server = settings.server
  screening = dict(
      clip_updates=server.clip_updates,
      reject_replays=server.reject_replayed_uploads,
      reject_stale=server.reject_stale_uploads,
      max_weight_multiple=server.max_client_weight_multiple or None)
  # The state keeps its reference either way, so a run started with
  # workers resumes without them, and the other way round.
  screening['first_pass'] = not _screening_is_off(settings)
  cap = server.max_client_weight
  if cap is None:
    cap = float(max(federated_data.num_train_examples(client_id)
                    for client_id in federated_data.client_ids))
  robust_mean = None
  if server.robust_mean != 'mean':
    robust_mean = robust_means.RobustMean(
        kind=server.robust_mean, trim_fraction=server.trim_fraction,
        clients_per_round=settings.run.clients_per_round)
  return robust_aggregation.RobustAggregation(
      server_root_step=build_server_root_step(
          settings, federated_data, model_fn, initial_model, client_config),
      robust_mean=robust_mean,
      clip_norm_quantile=server.clip_norm_quantile,
      clip_norm_multiplier=server.clip_norm_multiplier,
      clip_zeroing_multiple=server.clip_zeroing_multiple,
      min_update_cosine=(server.min_update_cosine
                         if server.reject_opposed_updates else None),
      max_client_weight=float(cap) if cap else None,
      client_weighting=server.client_weighting,
      client_batch_size=settings.client.client_batch_size, **screening)


def build_server_root_step(settings: settings_lib.ExperimentSettings,
                           federated_data, model_fn: Optional[models.ModelFn],
                           initial_model: Optional[Any],
                           client_config: Optional[Any]
                           ) -> Optional[server_root_step.ServerRootStep]:
  """The server's root step (--direction_reference=server_root), or None.

  Args:
    settings: The run's settings.
    federated_data: Its `data.FederatedData` (the root set is drawn from
      its training examples).
    model_fn: The run's model function.
    initial_model: Its `fed_dst.InitialModel`.
    client_config: Its `client_work.ClientConfig`.

  Returns:
    A `server_root_step.ServerRootStep` when the direction check compares
    with the server's root step; None otherwise.

  Raises:
    settings_lib.ConfigError: If --server_root_examples exceeds the
      training examples.
    ValueError: If the model pieces are missing for a root step.
  """
  server = settings.server
  if not (server.reject_opposed_updates and
          server.direction_reference == 'server_root'):
    return None
  if federated_data is None:
    raise settings_lib.ConfigError(
        '--direction_reference=server_root is invalid here: the root set is '
        'drawn from the training data, which this server does not hold; '
        'expected round_others.')
  if model_fn is None or initial_model is None or client_config is None:
    raise ValueError('a server root step needs the model function, the '
                     'initial model and the client config.')
  num_train = sum(federated_data.num_train_examples(client_id)
                  for client_id in federated_data.client_ids)
  if server.server_root_examples > num_train:
    raise settings_lib.ConfigError(
        f'--server_root_examples={server.server_root_examples} is invalid: '
        f'expected an integer in [1, {num_train}] (the training examples).')
  root_x, root_y = server_root_step.draw_root_set(
      federated_data, server.server_root_examples, settings.run.seed)
  return server_root_step.ServerRootStep(
      model_fn=model_fn, layout=initial_model.layout, config=client_config,
      root_x=root_x, root_y=root_y,
      batch_size=settings.client.client_batch_size)


def _screening_is_off(settings: settings_lib.ExperimentSettings) -> bool:
  """Whether workers turn the server's asked-for first pass off."""
  server, execution = settings.server, settings.execution
  return bool((execution.num_local_workers > 0 or execution.worker_addresses)
              and (server.clip_updates or server.reject_replayed_uploads or
                   server.max_client_weight_multiple))


def warn_if_screening_is_off(settings: settings_lib.ExperimentSettings
                             ) -> None:
  """Logs a warning when workers turned the server's first pass off.

  Called when the process is built, that is once the run's workers answer
  (a run that cannot start prints only its error).
  """
  if _screening_is_off(settings):
    logging.warning(
        'With TFF workers (--num_local_workers/--workers) the server cannot '
        'screen a round before summing it: --clip_updates and '
        '--max_client_weight_multiple use the previous round\'s bounds (none '
        'in round 1) and --reject_replayed_uploads and '
        '--reject_opposed_updates are off for this run (see README, Robust '
        'aggregation).')
