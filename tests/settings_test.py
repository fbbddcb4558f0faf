"""Tests for tff_feddst.running.settings and bin/experiment_flags.py."""

import dataclasses
import json
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized
import tensorflow as tf

from tff_feddst.data import datasets
from tff_feddst.methods import registry
from tff_feddst.networks import models
from tff_feddst.process import encoding
from tff_feddst.process import server_optimizers
from tff_feddst.running import choices
from tff_feddst.running import setting_checks
from tff_feddst.running import settings as settings_lib
from tff_feddst.sparse import masks
from tff_feddst.sparse import schedules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bin'))
import experiment_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

experiment_flags.define_run_flags()

# One bad value per group and the flag its one-line error names.
BAD_GROUP_VALUES = (
    (settings_lib.DataSettings, 'dirichlet_beta', 0.0),
    (settings_lib.DataSettings, 'data_dir', ''),
    (settings_lib.NetworkSettings, 'target_sparsity', 1.0),
    (settings_lib.NetworkSettings, 'sparsity_distribution', 'foo'),
    (settings_lib.ClientSettings, 'client_momentum', 1.0),
    (settings_lib.ClientSettings, 'client_batch_size', 0),
    (settings_lib.ReadjustmentSettings, 'drop_fraction', 1.5),
    (settings_lib.ReadjustmentSettings, 'grow_score', 'foo'),
    (settings_lib.CommunicationSettings, 'upload_encoding', 'float32+gzip'),
    (settings_lib.CommunicationSettings, 'upload_value_dtype', 'float16'),
    (settings_lib.ServerSettings, 'server_momentum', -0.1),
    (settings_lib.ServerSettings, 'max_payload_norm', -1.0),
    (settings_lib.ServerSettings, 'server_optimizer', 'rmsprop'),
    (settings_lib.ServerSettings, 'server_learning_rate', float('inf')),
    (settings_lib.ServerSettings, 'server_beta_1', float('nan')),
    (settings_lib.ServerSettings, 'server_beta_2', 1.0),
    (settings_lib.ServerSettings, 'server_epsilon', 0.0),
    (settings_lib.ServerSettings, 'server_epsilon', float('inf')),
    (settings_lib.ServerSettings, 'min_new_position_votes', 0),
    (settings_lib.ServerSettings, 'max_failed_rounds', -1),
    (settings_lib.ReadjustmentSettings, 'readjust_counter', 'epoch'),
    (settings_lib.ReadjustmentSettings, 'readjust_counter_begin', -1),
    (settings_lib.ReadjustmentSettings, 'readjust_counter_interval', 0),
    (settings_lib.RunSettings, 'seed', 2**32),
    (settings_lib.RunSettings, 'eval_every', 0),
    (settings_lib.RunSettings, 'method', 'foo'),
    (settings_lib.PruneflSettings, 'prunefl_layer_times', '1,x'),
    (settings_lib.PruneflSettings, 'prunefl_round_cost', 0.0),
    (settings_lib.ExecutionSettings, 'workers', 'localhost'),
    (settings_lib.ExecutionSettings, 'num_local_workers', -1),
)


class GroupValidationTest(parameterized.TestCase):

  def test_every_group_validates_its_defaults(self):
    for group_class in settings_lib.GROUPS.values():
      group_class().validate()
    settings_lib.ExperimentSettings().validate()

  @parameterized.parameters(*BAD_GROUP_VALUES)
  def test_a_group_refuses_its_bad_values_in_one_line(self, group_class,
                                                      name, value):
    group = group_class(**{name: value})
    with self.assertRaises(settings_lib.ConfigError) as raised:
      group.validate()
    message = str(raised.exception)
    self.assertStartsWith(message, f'--{name}={value!r} is invalid: expected')
    self.assertNotIn('\n', message)
    # The whole experiment refuses it the same way.
    with self.assertRaises(settings_lib.ConfigError) as raised:
      settings_lib.ExperimentSettings.from_flat(**{name: value}).validate()
    self.assertEqual(str(raised.exception), message)

  @parameterized.named_parameters(
      ('clients_over_total', dict(total_clients=4, clients_per_round=5),
       '--clients_per_round=5 is invalid: expected an integer in [1, '
       '--total_clients=4]'),
      ('votes_over_clients', dict(clients_per_round=3, min_votes=4),
       '--min_votes=4 is invalid: expected an integer in [0, '
       '--clients_per_round=3]'),
      ('readjust_after_too_many_epochs',
       dict(client_epochs_per_round=2, readjust_after_epochs=3.0),
       '--readjust_after_epochs=3.0 is invalid'),
      ('growing_with_the_reference_rule',
       dict(initial_sparsity=0.5, readjust_rule='reference'),
       '--initial_sparsity=0.5 is invalid with --readjust_rule=reference'),
      ('sgdm_without_momentum', dict(server_optimizer='sgdm'),
       '--server_momentum=0.0 is invalid: expected a number in (0, 1) with '
       '--server_optimizer=sgdm'),
      ('adam_with_momentum',
       dict(server_optimizer='adam', server_momentum=0.5),
       '--server_momentum=0.5 is invalid: expected 0 with '
       '--server_optimizer=adam'),
      ('fedavgm_with_yogi', dict(method='fedavgm', server_optimizer='yogi'),
       "--server_optimizer='yogi' is invalid: expected sgd or sgdm with "
       '--method=fedavgm'),
      ('lifetime_counter_with_a_readjust_epoch',
       dict(readjust_counter='client_lifetime', readjust_after_epochs=0.0),
       '--readjust_after_epochs=0.0 is invalid: expected unset with '
       '--readjust_counter=client_lifetime'),
      ('lifetime_counter_with_prunefl',
       dict(readjust_counter='client_lifetime', method='prunefl'),
       "--readjust_counter='client_lifetime' is invalid: expected one of "
       "('round',) with --method=prunefl"),
      ('lifetime_counter_with_lotteryfl',
       dict(readjust_counter='client_lifetime', method='lotteryfl'),
       "--readjust_counter='client_lifetime' is invalid: expected one of "
       "('round',) with --method=lotteryfl"),
      ('growing_past_the_last_round',
       dict(initial_sparsity=0.5, total_rounds=4, annealing_end_round=5),
       '--annealing_end_round=5 is invalid with --initial_sparsity=0.5'))
  def test_rules_across_groups(self, values, message):
    with self.assertRaises(settings_lib.ConfigError) as raised:
      settings_lib.ExperimentSettings.from_flat(**values).validate()
    self.assertStartsWith(str(raised.exception), message)

  def test_choices_come_from_the_implementing_modules(self):
    choices = settings_lib.setting_choices()
    self.assertEqual(choices['method'], registry.method_names())
    self.assertCountEqual(choices['model'], models.MODEL_BUILDERS)
    self.assertCountEqual(choices['dataset'], datasets.DATASET_NAMES)
    self.assertEqual(choices['grow_score'], masks.GROW_SCORES)
    self.assertEqual(choices['annealing'], schedules.ANNEALINGS)
    self.assertEqual(choices['upload_value_dtype'], encoding.VALUE_DTYPES)
    self.assertEqual(choices['server_optimizer'],
                     server_optimizers.SERVER_OPTIMIZERS)

  def test_every_setting_has_help_and_a_unique_flag_name(self):
    names = []
    for group_class in settings_lib.GROUPS.values():
      for field in dataclasses.fields(group_class):
        self.assertTrue(field.metadata.get('help'), field.name)
        names.append(field.name)
    self.assertLen(set(names), len(names))
    self.assertCountEqual(
        names, settings_lib.ExperimentSettings.setting_fields())

  def test_flat_names_build_replace_and_refuse_unknown_settings(self):
    settings = settings_lib.ExperimentSettings.from_flat(
        dataset='mnist', prox_mu=0.5, prunefl_initial_rounds=2)
    self.assertEqual(settings.data.dataset, 'mnist')
    self.assertEqual(settings.client.prox_mu, 0.5)
    self.assertEqual(settings.prunefl.prunefl_initial_rounds, 2)
    changed = settings.replace(seed=7)
    self.assertEqual(changed.run.seed, 7)
    self.assertEqual(changed.replace(seed=0), settings)
    with self.assertRaisesRegex(TypeError, 'no_such_setting'):
      settings_lib.ExperimentSettings.from_flat(no_such_setting=1)

  def test_bad_flag_lines_name_the_line(self):
    for lines, number, words in (
        (['--seed=1', '--no_such_setting=1'], 2, 'not a known'),
        (['', '--total_rounds=many'], 2, 'is not a int'),
        (['--remember_old=yes'], 1, 'is not a bool')):
      with self.assertRaises(settings_lib.FlagLineError) as raised:
        settings_lib.from_flag_lines(lines)
      self.assertEqual(raised.exception.line_number, number)
      self.assertIn(words, str(raised.exception))


class FlagRoundTripTest(parameterized.TestCase):
  """flags -> settings -> flags.txt -> settings gives the same settings."""

  def settings_of(self, *args: str) -> settings_lib.ExperimentSettings:
    with flagsaver.flagsaver():
      flags.FLAGS.unparse_flags()
      flags.FLAGS(['train.py', *args])
      return experiment_flags.settings_from_flags()

  def test_defaults_are_the_settings_defaults(self):
    self.assertEqual(self.settings_of(), settings_lib.ExperimentSettings())

  @parameterized.parameters(
      sorted(n for n in os.listdir(os.path.join(ROOT, 'configs'))
             if n.endswith('.cfg')))
  def test_every_shipped_flagfile_round_trips(self, name):
    path = os.path.join(ROOT, 'configs', name)
    # The compare flagfiles also set compare.py's own flags. PruneFL refuses
    # reference.cfg's lifetime readjustment counter.
    method = 'feddst' if name == 'reference.cfg' else 'prunefl'
    settings = self.settings_of(f'--flagfile={path}',
                                '--undefok=methods,target_accuracy',
                                f'--method={method}',
                                '--examples_per_client=7', '--remember_old',
                                '--workers=localhost:1')
    settings.validate()
    flag_lines = settings.to_flag_lines()
    self.assertEqual(settings_lib.from_flag_lines(flag_lines), settings)
    # flags.txt is a flagfile of the same settings.
    flags_txt = os.path.join(self.create_tempdir().full_path, 'flags.txt')
    with open(flags_txt, 'w') as f:
      f.write('\n'.join(flag_lines) + '\n')
    self.assertEqual(self.settings_of(f'--flagfile={flags_txt}'), settings)

  def test_benchmark_style_defaults_override_only_the_defaults(self):
    # A settings group of its own (`define_flags` takes any flat dataclass).
    @dataclasses.dataclass(frozen=True)
    class Timing:
      timed_rounds: int = settings_lib.setting(4, 'Timed rounds.')
      sweep: tuple[int, ...] = settings_lib.setting((1, 2), 'Sweep.')

    flag_values = flags.FlagValues()
    experiment_flags.define_flags(defaults={'clients_per_round': 20},
                                  flag_values=flag_values)
    experiment_flags.define_flags(Timing, flag_values=flag_values)
    flag_values(['benchmark.py', '--sweep=3,4'])
    settings = experiment_flags.settings_from_flags(flag_values=flag_values)
    timing = experiment_flags.settings_from_flags(Timing,
                                                  flag_values=flag_values)
    self.assertEqual(settings.run.clients_per_round, 20)
    self.assertEqual(settings.run.total_rounds,
                     settings_lib.RunSettings().total_rounds)
    self.assertEqual(timing, Timing(timed_rounds=4, sweep=(3, 4)))


class UnsupportedServerSettingTest(tf.test.TestCase):

  def test_names_the_first_setting_the_loop_lacks(self):
    settings = settings_lib.ExperimentSettings.from_flat
    self.assertIsNone(setting_checks.unsupported_plain_server_setting(
        settings().server))
    self.assertEqual(
        setting_checks.unsupported_plain_server_setting(
            settings(server_rule='reference').server),
        ('server_rule', 'reference', 'feddst'))
    self.assertEqual(
        setting_checks.unsupported_plain_server_setting(
            settings(server_optimizer='adam', min_votes_unit='weight').server),
        ('server_optimizer', 'adam', 'sgd'))


# Validates settings, lists every setting's choices and refuses one bad value
# per group, then prints the TensorFlow modules that got imported.
_VALIDATE_WITHOUT_TF = '''
import json
import sys
from tff_feddst.data import datasets, federated, file_formats, partitions
from tff_feddst.running import settings
settings.ExperimentSettings().validate()
settings.setting_choices()
for flag, value in json.loads(sys.argv[1]):
  try:
    settings.ExperimentSettings.from_flat(**{flag: value}).validate()
  except settings.ConfigError:
    pass
  else:
    raise AssertionError(flag)
print(sorted(name for name in sys.modules
             if name.split('.')[0] in ('tensorflow', 'tensorflow_federated',
                                       'keras', 'tf_keras')))
'''


class ValidationWithoutTensorflowTest(tf.test.TestCase):

  def test_flags_are_checked_before_tensorflow_loads(self):
    # A bad flag is refused in a fraction of a second: neither validation,
    # nor the choices it checks against (`tff_feddst.choices`), nor the data
    # modules a script imports for their errors load TensorFlow.
    bad_values = [(flag, value) for _, flag, value in BAD_GROUP_VALUES]
    result = subprocess.run(
        [sys.executable, '-c', _VALIDATE_WITHOUT_TF, json.dumps(bad_values)],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout.strip(), '[]')

  def test_the_implementing_modules_take_their_choices_from_choices(self):
    self.assertIs(masks.GROW_SCORES, choices.GROW_SCORES)
    self.assertIs(masks.INITIAL_MASKS, choices.INITIAL_MASKS)
    self.assertIs(masks.READJUST_RULES, choices.READJUST_RULES)
    self.assertIs(masks.SERVER_RULES, choices.SERVER_RULES)
    self.assertIs(masks.MIN_VOTES_UNITS, choices.MIN_VOTES_UNITS)
    self.assertIs(schedules.ANNEALINGS, choices.ANNEALINGS)
    self.assertIs(encoding.VALUE_DTYPES, choices.VALUE_DTYPES)
    self.assertIs(server_optimizers.SERVER_OPTIMIZERS,
                  choices.SERVER_OPTIMIZERS)
    self.assertEqual(tuple(models.MODEL_BUILDERS), choices.MODEL_NAMES)


if __name__ == '__main__':
  tf.test.main()
