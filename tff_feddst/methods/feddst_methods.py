"""FedDST and the baselines that are FedDST with settings, as methods.

All of them run `fed_dst.build_fed_dst`; a method only fixes the settings
that define it (`resolve`):
- feddst: as configured.
- feddst_fedprox: FedDST with FedProx; prox_mu defaults to 0.01.
- randommask: a fixed random sparse mask (drop_fraction 0).
- fedavg: dense (target_sparsity 0, no readjustment), no server momentum,
  no proximal term.
- fedavgm: dense with server momentum (default 0.9) and, unless set, a
  server learning rate of 1 - momentum, which keeps FedAvg's effective step
  (server lr 1 with momentum 0.9 oscillates on non-iid data).
- fedprox: dense with prox_mu (default 0.01).
"""

from typing import Any, Callable, Optional

import numpy as np

from tff_feddst.methods import registry
from tff_feddst.running import settings as settings_lib

DEFAULT_PROX_MU = 0.01
DEFAULT_SERVER_MOMENTUM = 0.9
# What makes a run dense: no sparsity, no readjustment.
DENSE = dict(target_sparsity=0.0, initial_sparsity=None, drop_fraction=0.0)

Settings = settings_lib.ExperimentSettings


def _feddst(settings: Settings) -> dict[str, Any]:
  del settings  # As configured.
  return {}


def _feddst_fedprox(settings: Settings) -> dict[str, Any]:
  return dict(prox_mu=settings.client.prox_mu or DEFAULT_PROX_MU)


def _randommask(settings: Settings) -> dict[str, Any]:
  del settings
  return dict(drop_fraction=0.0)


def _fedavg(settings: Settings) -> dict[str, Any]:
  del settings
  return dict(DENSE, prox_mu=0.0, server_momentum=0.0)


def _fedavgm(settings: Settings) -> dict[str, Any]:
  server = settings.server
  momentum = server.server_momentum or DEFAULT_SERVER_MOMENTUM
  learning_rate = (server.server_learning_rate
                   if server.server_learning_rate != 1.0 else 1 - momentum)
  return dict(DENSE, prox_mu=0.0, server_momentum=momentum,
              server_learning_rate=learning_rate)


def _fedprox(settings: Settings) -> dict[str, Any]:
  return dict(DENSE, prox_mu=settings.client.prox_mu or DEFAULT_PROX_MU,
              server_momentum=0.0)


def build_schedule(settings: Settings):
  """The run's readjustment schedule (`schedules`)."""
  from tff_feddst.sparse import schedules  # pylint: disable=g-import-not-at-top
  readjustment = settings.readjustment
  schedule_class = (schedules.ReferenceReadjustmentSchedule
                    if readjustment.readjustment_schedule == 'reference'
                    else schedules.ReadjustmentSchedule)
  return schedule_class(
      drop_fraction=readjustment.drop_fraction,
      rounds_between_readjustments=readjustment.rounds_between_readjustments,
      end_round=settings.effective_annealing_end_round,
      annealing=readjustment.annealing)


def build_num_active_by_round(settings: Settings,
                              layout) -> Optional[np.ndarray]:
  """Per-round, per-layer active counts of a growing sparsity, or None.

  Row t holds the counts of the distribution at S_t = S_init + (S_final -
  S_init) * min(t, T_end) / T_end (T_end = the annealing end round); row 0
  is the initial model's.

  Args:
    settings: The run's settings (resolved).
    layout: The model's `models.ModelLayout`.

  Returns:
    An int32 array [T_end + 1, layers], or None at constant sparsity.
  """
  network = settings.network
  if not network.is_growing_sparsity:
    return None
  # pylint: disable=g-import-not-at-top
  from tff_feddst.sparse import schedules
  from tff_feddst.sparse import sparsity_distribution
  # pylint: enable=g-import-not-at-top
  sparsity_schedule = schedules.SparsitySchedule(
      network.effective_initial_sparsity, network.target_sparsity,
      settings.effective_annealing_end_round)
  return sparsity_distribution.num_active_by_round(
      layout.kernel_shapes, sparsity_schedule.sparsities(),
      network.sparsity_distribution, bias_sizes=layout.layer_bias_sizes)


# Bytes of the int32 lifetime epoch count kept per client.
LIFETIME_COUNT_BYTES = 4


def lifetime_client_inputs(federated_data, client_config
                           ) -> Callable[[Any, Any], list]:
  """`(state, RoundClients) -> client data` with lifetime epoch counts.

  Each reporter gets its dataset and its count from the process state's
  client work (`lifetime_work.LifetimeWorkState`), by its position in
  `federated_data.client_ids` (`client_states.epoch_count_inputs`).

  Args:
    federated_data: The run's `data.FederatedData`.
    client_config: The run's `client_work.ClientConfig` (epochs per round).

  Returns:
    The `MethodPlan.client_inputs` function.
  """
  # pylint: disable=g-import-not-at-top
  from tff_feddst.process import client_states
  # pylint: enable=g-import-not-at-top
  positions = {client_id: position for position, client_id in
               enumerate(federated_data.client_ids)}

  def client_inputs(state, round_clients) -> list:
    return client_states.epoch_count_inputs(
        state.client_work.epochs_done,
        [positions[client_id] for client_id in round_clients.client_ids],
        round_clients.datasets, client_config.num_epochs)

  return client_inputs


class FeddstMethod(registry.Method):
  """A method run by `fed_dst.build_fed_dst`, defined by its settings."""
  # Its client is the exported training model's; its server, PlainServer.
  runs_on_tflite = True

  readjust_counters = ('round', 'client_lifetime')

  def __init__(self, name: str,
               defining_settings: Callable[[Settings], dict[str, Any]]):
    """Args: name: the --method value; defining_settings: settings ->
    the flag values the method fixes."""
    self.name = name
    self._defining_settings = defining_settings

  def resolve(self, settings: Settings) -> Settings:
    return settings.replace(**self._defining_settings(settings))

  def prepare(self, settings: Settings,
              federated_data) -> registry.MethodPlan:
    # pylint: disable=g-import-not-at-top
    from tff_feddst.methods import fed_dst
    from tff_feddst.methods import model_setup
    from tff_feddst.process import aggregation
    from tff_feddst.process import encoding
    from tff_feddst.process import payload_validation
    from tff_feddst.process import upload_binding
    # pylint: enable=g-import-not-at-top
    model_fn, initial_model = model_setup.build_model(settings)
    client_config = model_setup.build_client_config(settings, initial_model)
    robust = model_setup.build_robust_aggregation(
        settings, federated_data, model_fn, initial_model, client_config)
    upload_encoding, download_encoding = settings.payload_encodings()
    server = settings.server
    # The worst case of the upload encoding (its mask code at full
    # capacity), so that the budget is never exceeded; metrics.csv counts
    # real bytes. Each upload also carries its weight and, when bound to
    # its round, its model digest.
    round_bytes = settings.run.clients_per_round * (
        encoding.max_payload_num_bytes(
            initial_model.layout.kernel_sizes, initial_model.num_active,
            model_setup.num_dense_parameters(initial_model), upload_encoding)
        + aggregation.WEIGHT_BYTES + upload_binding.digest_bytes(robust))

    def build_process(element_spec):
      model_setup.warn_if_screening_is_off(settings)
      return fed_dst.build_fed_dst(
          model_fn, initial_model, element_spec, build_schedule(settings),
          client_config,
          server_learning_rate=server.server_learning_rate,
          server_momentum=server.server_momentum,
          min_votes=server.min_votes,
          remember_old=server.remember_old,
          num_active_by_round=build_num_active_by_round(
              settings, initial_model.layout),
          upload_encoding=upload_encoding,
          download_encoding=download_encoding,
          payload_checks=payload_validation.default_checks(
              client_config.readjust_rule, server.min_votes,
              server.max_payload_norm, server_rule=server.server_rule,
              min_votes_unit=server.min_votes_unit),
          robust=robust,
          min_new_position_votes=server.min_new_position_votes,
          server_optimizer=model_setup.build_server_optimizer(settings),
          server_rule=server.server_rule,
          min_votes_unit=server.min_votes_unit,
          num_clients=federated_data.num_clients,
          clients_per_round=settings.run.clients_per_round)

    return registry.MethodPlan(
        model_fn=model_fn, initial_model=initial_model,
        build_process=build_process,
        round_upload_bytes=lambda round_num, state: round_bytes,
        client_inputs=(lifetime_client_inputs(federated_data, client_config)
                       if client_config.counts_lifetime_epochs else None),
        client_state_bytes=(
            LIFETIME_COUNT_BYTES if client_config.counts_lifetime_epochs
            else 0))


for _name, _defining_settings in (
    ('feddst', _feddst), ('feddst_fedprox', _feddst_fedprox),
    ('fedavg', _fedavg), ('fedavgm', _fedavgm), ('fedprox', _fedprox),
    ('randommask', _randommask)):
  registry.register(FeddstMethod(_name, _defining_settings))
