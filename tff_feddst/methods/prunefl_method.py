"""PruneFL (`prunefl.py`) as a method: `--method=prunefl`.

Starts dense (target_sparsity 0, no readjustment), prunes on one seeded
client before federated training (its record is written to
prunefl_initial_pruning.json) and then chooses its own masks. Its upload
changes with its mask and with the rounds that carry importance, so each
round is bounded from the mask it starts from.
"""

import json

import numpy as np

from tff_feddst.methods import registry
from tff_feddst.running import settings as settings_lib

INITIAL_PRUNING_FILE = 'prunefl_initial_pruning.json'

Settings = settings_lib.ExperimentSettings


def build_prunefl_config(settings: Settings, layout):
  """The `prunefl.PruneflConfig` of a run, checked against the model.

  Raises:
    settings.ConfigError: If --prunefl_layer_times does not fit the model.
  """
  from tff_feddst.methods import prunefl  # pylint: disable=g-import-not-at-top
  own = settings.prunefl
  try:
    prunefl_config = prunefl.PruneflConfig(
        initial_rounds=own.prunefl_initial_rounds,
        initial_steps=own.prunefl_initial_steps,
        reconfigure_every=own.prunefl_reconfigure_every,
        round_cost=own.prunefl_round_cost,
        max_remove_fraction=own.prunefl_max_remove_fraction,
        layer_times=prunefl.parse_layer_times(own.prunefl_layer_times))
    prunefl_config.times_for(layout.num_prunable)
  except ValueError as error:
    raise settings_lib.ConfigError(
        f'--prunefl_layer_times={own.prunefl_layer_times} is invalid: '
        f'{error}') from error
  return prunefl_config


class PruneflMethod(registry.Method):
  """PruneFL: initial pruning on one client, then its own mask rule."""

  name = 'prunefl'
  chooses_own_masks = True
  leaves_unchanged_masks_out = False

  def resolve(self, settings: Settings) -> Settings:
    return settings.replace(target_sparsity=0.0, initial_sparsity=None,
                            drop_fraction=0.0)

  def prepare(self, settings: Settings,
              federated_data) -> registry.MethodPlan:
    # pylint: disable=g-import-not-at-top
    from tff_feddst.methods import model_setup
    from tff_feddst.methods import prunefl
    from tff_feddst.process import upload_binding
    from tff_feddst.running import training_loop
    # pylint: enable=g-import-not-at-top
    model_fn, initial_model = model_setup.build_model(settings)
    client_config = model_setup.build_client_config(settings, initial_model)
    layout = initial_model.layout
    prunefl_config = build_prunefl_config(settings, layout)
    seed, batch_size = settings.run.seed, settings.client.client_batch_size
    client_id = prunefl.choose_initial_client(federated_data.client_ids, seed)
    dataset = training_loop.client_datasets(
        federated_data, [client_id], batch_size, seed, 0)[0]
    pruned = prunefl.run_initial_pruning(
        model_fn, initial_model.weights, layout, dataset, client_config,
        prunefl_config)
    record = {'client_id': str(client_id),
              'densities': list(pruned.densities),
              'layer_num_active': list(pruned.layer_num_active),
              'layer_sizes': list(layout.kernel_sizes)}
    initial_model = initial_model._replace(
        weights=pruned.weights, num_active=pruned.layer_num_active)
    upload_encoding = settings.payload_encodings()[0]
    num_dense = model_setup.num_dense_parameters(initial_model)
    robust = model_setup.build_robust_aggregation(
        settings, federated_data, model_fn, initial_model, client_config)
    built = {}

    def build_process(element_spec):
      model_setup.warn_if_screening_is_off(settings)
      built['process'] = prunefl.build_prunefl(
          model_fn, layout, initial_model.weights, element_spec,
          client_config, prunefl_config,
          min_new_position_votes=settings.server.min_new_position_votes,
          **model_setup.server_keyword_arguments(settings, robust))
      return built['process']

    def round_upload_bytes(round_num: int, state) -> int:
      if state is None:  # Before the process: the initial model's mask.
        num_active_total = sum(initial_model.num_active)
      else:
        weights = built['process'].get_model_weights(state)
        num_active_total = sum(int(np.sum(weights.non_trainable[index]))
                               for index in layout.mask_indices)
      return settings.run.clients_per_round * (prunefl.max_upload_num_bytes(
          layout.kernel_sizes, num_dense, upload_encoding,
          num_active_total=num_active_total,
          with_importance=prunefl.is_reconfiguration_round(
              round_num, prunefl_config.reconfigure_every))
          + upload_binding.digest_bytes(robust))

    return registry.MethodPlan(
        model_fn=model_fn, initial_model=initial_model,
        build_process=build_process, round_upload_bytes=round_upload_bytes,
        start_files={INITIAL_PRUNING_FILE: json.dumps(record, indent=2) + '\n'})


registry.register(PruneflMethod())
