"""LotteryFL (`lotteryfl.py`) as a method: `--method=lotteryfl`.

The global model is dense (S = 0, no readjustment); each client prunes its
own mask down to --target_sparsity, by --lotteryfl_prune_rate per step,
whenever its personal model's local accuracy is above
--lotteryfl_accuracy_threshold. The masks live in a per-client store in the
process state (`process.client_states`), so every round's client data is
built from the state it starts from, and evaluation also scores each
client's personal model on its local test split.
"""

import logging

import numpy as np

from tff_feddst.methods import registry
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib

Settings = settings_lib.ExperimentSettings


def build_lotteryfl_config(settings: Settings):
  """The `lotteryfl.LotteryflConfig` of a run."""
  from tff_feddst.methods import lotteryfl  # pylint: disable=g-import-not-at-top
  return lotteryfl.LotteryflConfig(
      accuracy_threshold=settings.lotteryfl.lotteryfl_accuracy_threshold,
      prune_rate=settings.lotteryfl.lotteryfl_prune_rate,
      target_sparsity=settings.network.target_sparsity)


def client_positions(federated_data, client_ids) -> list[int]:
  """The store rows (positions in `federated_data.client_ids`) of ids."""
  positions = {client_id: position for position, client_id in
               enumerate(federated_data.client_ids)}
  return [positions[client_id] for client_id in client_ids]


class LotteryflMethod(registry.Method):
  """LotteryFL: per-client masks pruned by local accuracy; dense server."""

  name = 'lotteryfl'
  chooses_own_masks = True
  leaves_unchanged_masks_out = False

  def resolve(self, settings: Settings) -> Settings:
    # --target_sparsity is the clients' target; the global model is dense.
    return settings.replace(initial_sparsity=None, drop_fraction=0.0)

  def prepare(self, settings: Settings,
              federated_data) -> registry.MethodPlan:
    # pylint: disable=g-import-not-at-top
    from tff_feddst.methods import lotteryfl
    from tff_feddst.methods import model_setup
    from tff_feddst.process import client_states
    from tff_feddst.process import upload_binding
    # pylint: enable=g-import-not-at-top
    if settings.run.sample_with_replacement:
      raise errors.ConfigError(
          '--sample_with_replacement is invalid with --method=lotteryfl: a '
          'client keeps one state, so sample without replacement.')
    model_fn, initial_model = model_setup.build_model(settings, sparsity=0.0)
    client_config = model_setup.build_client_config(settings, initial_model)
    layout = initial_model.layout
    config = build_lotteryfl_config(settings)
    upload_encoding = settings.payload_encodings()[0]
    num_dense = model_setup.num_dense_parameters(initial_model)
    robust = model_setup.build_robust_aggregation(
        settings, federated_data, model_fn, initial_model, client_config)
    clients_per_round = settings.run.clients_per_round
    state_bytes = client_states.bytes_per_client(layout.kernel_sizes)
    logging.info('LotteryFL client store: %d bytes per client, %d clients.',
                 state_bytes, federated_data.num_clients)

    def build_process(element_spec):
      model_setup.warn_if_screening_is_off(settings)
      return lotteryfl.build_lotteryfl(
          model_fn, layout, initial_model.weights, element_spec,
          client_config, config, num_clients=federated_data.num_clients,
          clients_per_round=clients_per_round,
          **model_setup.server_keyword_arguments(settings, robust))

    round_bytes = clients_per_round * (
        lotteryfl.max_upload_num_bytes(layout.kernel_sizes, num_dense,
                                       upload_encoding)
        + upload_binding.digest_bytes(robust))

    def client_inputs(state, round_clients) -> list:
      return client_states.client_inputs(
          state.client_work,
          client_positions(federated_data, round_clients.client_ids),
          round_clients.datasets)

    def personal_evaluation(evaluator, state, weights):
      mask_bits = np.asarray(state.client_work.mask_bits)
      return evaluator.evaluate_personalised(
          weights, layout, lambda position: client_states.unpack_masks_numpy(
              mask_bits[position], layout.kernel_shapes))

    return registry.MethodPlan(
        model_fn=model_fn, initial_model=initial_model,
        build_process=build_process,
        round_upload_bytes=lambda round_num, state: round_bytes,
        client_inputs=client_inputs,
        personal_evaluation=personal_evaluation,
        client_state_bytes=state_bytes)


registry.register(LotteryflMethod())
