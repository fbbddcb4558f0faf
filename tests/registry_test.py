"""Tests for tff_feddst.methods.registry and the registered methods."""

import json

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import registry
from tff_feddst.running import experiment
from tff_feddst.running import settings as settings_lib
from tff_feddst.running import training_loop
from tests import fixtures

METHODS = ('feddst', 'feddst_fedprox', 'fedavg', 'fedavgm', 'fedprox',
           'randommask', 'lotteryfl', 'prunefl')


class RegistryTest(tf.test.TestCase):

  def test_method_modules_register_every_method_once(self):
    self.assertEqual(registry.method_names(), METHODS)
    for name in METHODS:
      self.assertEqual(registry.get(name).name, name)
    with self.assertRaisesRegex(ValueError, 'registered twice'):
      registry.register(type(registry.get('feddst'))(
          'feddst', lambda settings: {}))

  def test_unknown_method_is_a_one_line_error_with_the_choices(self):
    with self.assertRaises(settings_lib.ConfigError) as raised:
      registry.get('scaffold')
    self.assertEqual(str(raised.exception),
                     "--method='scaffold' is invalid: expected one of "
                     f'{", ".join(METHODS)}.')

  def test_only_lotteryfl_and_prunefl_choose_their_own_masks(self):
    self.assertEqual([m for m in METHODS if registry.get(m).chooses_own_masks],
                     ['lotteryfl', 'prunefl'])


class MethodBuildTest(fixtures.FashionMnistSliceTestCase):
  """Every registered method resolves, prepares and builds its process."""

  NUM_TRAIN = 120
  NUM_TEST = 30

  def test_every_method_builds_a_process_with_a_consistent_upload_bound(self):
    base = settings_lib.ExperimentSettings.from_flat(
        data_dir=self.data_dir, total_clients=4, clients_per_round=2,
        total_rounds=2, target_sparsity=0.8, prunefl_initial_rounds=1,
        prunefl_initial_steps=1, prunefl_reconfigure_every=2)
    federated_data = None
    for name in METHODS:
      with self.subTest(name):
        settings = base.replace(method=name)
        settings.validate()
        settings = settings.resolved()
        if federated_data is None:
          federated_data = experiment.load_federated_data(settings)
        plan = registry.get(name).prepare(settings, federated_data)
        element_spec = training_loop.client_datasets(
            federated_data, federated_data.client_ids[:1], 32, 0,
            0)[0].element_spec
        process = plan.build_process(element_spec)
        self.assertIsInstance(process, tff.learning.templates.LearningProcess)
        state = process.initialize()
        before = plan.round_upload_bytes(1, None)
        self.assertIsInstance(before, int)
        self.assertGreater(before, 0)
        # Before the process and from its initial state: the same bound.
        self.assertEqual(plan.round_upload_bytes(1, state), before)
        weights = process.get_model_weights(state)
        tf.nest.map_structure(self.assertAllEqual, weights,
                              plan.initial_model.weights)
        if name == 'prunefl':
          record = json.loads(
              plan.start_files['prunefl_initial_pruning.json'])
          self.assertLen(record['densities'], 1)
          # Round 2 reconfigures: its upload carries the importance.
          self.assertGreater(plan.round_upload_bytes(2, state), before)
        else:
          self.assertEmpty(plan.start_files)


if __name__ == '__main__':
  tf.test.main()
