"""End-to-end: a few rounds on a slice of the real Fashion-MNIST files."""

import collections
import csv
import json
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import types
import typing
from typing import Optional
from unittest import mock

from absl import flags
import numpy as np
import psutil
import tensorflow as tf
import tqdm

from tests import data_files
from tests import execution_test
from tff_feddst.data import datasets
from tff_feddst.data import file_formats
from tff_feddst.data import partitions
from tff_feddst.methods import feddst_methods
from tff_feddst.networks import models
from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import run_files
from tff_feddst.outputs import tensorboard_logging
from tff_feddst.process import client_work
from tff_feddst.running import client_sampling
from tff_feddst.running import experiment
from tff_feddst.running import interruptions
from tff_feddst.running import settings as settings_lib
from tff_feddst.running import training_loop
from tff_feddst.sparse import sparsity_distribution
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bin'))
import experiment_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

def small_config(data_dir: str,
                 **overrides) -> settings_lib.ExperimentSettings:
  settings = dict(
      data_dir=data_dir, data_distribution='dirichlet', dirichlet_beta=0.5,
      total_clients=8, clients_per_round=3, total_rounds=3, eval_every=2,
      client_epochs_per_round=1, target_sparsity=0.8, drop_fraction=0.2,
      rounds_between_readjustments=1, annealing='constant', seed=0)
  settings.update(overrides)
  return settings_lib.ExperimentSettings.from_flat(**settings)


def setting_hints() -> dict[str, object]:
  """`{flag name: type hint}` of every setting."""
  return {name: typing.get_type_hints(settings_lib.GROUPS[group])[name]
          for name, (group, _) in
          settings_lib.ExperimentSettings.setting_fields().items()}


def metrics_without_timing(output_dir: str) -> list[list[str]]:
  """metrics.csv's lines as fields, without the round_seconds column."""
  with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
    rows = list(csv.reader(f))
  timing = rows[0].index('round_seconds')
  return [row[:timing] + row[timing + 1:] for row in rows]


class ExperimentTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='fmnist_slice_')
    fixtures.write_fashion_mnist_slice(cls.data_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    if '_whole_two_rounds' in vars(cls):
      del cls._whole_two_rounds
    super().tearDownClass()

  def test_run_writes_metrics_flags_and_model(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    config = small_config(self.data_dir)
    rows = experiment.run_experiment(config, output_dir)
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      reader = csv.DictReader(f)
      self.assertEqual(tuple(reader.fieldnames),
                       training_loop.METRICS_COLUMNS)
      written = list(reader)
    self.assertLen(written, 3)
    self.assertEqual([r['round'] for r in written], ['1', '2', '3'])
    # Evaluated on round 2 (eval_every) and the last round only.
    self.assertEqual(written[0]['test_accuracy'], '')
    self.assertNotEqual(written[1]['test_accuracy'], '')
    self.assertNotEqual(written[2]['client_test_accuracy'], '')
    for row in rows:
      self.assertAlmostEqual(row['sparsity'], 0.8, places=4)
      self.assertGreater(row['upload_bytes'], 0)
      self.assertGreater(row['round_seconds'], 0)
    self.assertEqual(rows[-1]['upload_bytes_cumulative'],
                     sum(r['upload_bytes'] for r in rows))
    self.assertGreater(sum(r['mask_changed_positions'] for r in rows), 0)
    for row in rows:
      # Constant sparsity and FedDST's re-prune: every change is one
      # position entering (held, hence offered) or one leaving.
      self.assertEqual(2 * row['mask_new_positions_entered'],
                       row['mask_changed_positions'])
      self.assertLessEqual(row['mask_new_positions_entered'],
                           row['mask_new_positions_offered'])
      self.assertEqual(row['mask_entered_weight_mass'] > 0,
                       row['mask_new_positions_entered'] > 0)
    with open(os.path.join(output_dir, 'flags.txt')) as f:
      flag_lines = f.read().splitlines()
    self.assertIn('--target_sparsity=0.8', flag_lines)
    weights = run_files.load_model_weights(
        os.path.join(output_dir, 'global_model.npz'))
    self.assertLen(weights.trainable, 8)
    # TensorBoard, by default in output_dir/tensorboard: the rows' values.
    scalars = tensorboard_logging.read_scalars(
        os.path.join(output_dir, 'tensorboard'))
    for column, tag in tensorboard_logging.SCALAR_TAGS.items():
      expected = [(r['round'], r[column]) for r in rows
                  if r[column] is not None]
      self.assertLen(scalars[tag], len(expected), tag)
      for (step, value), (round_num, column_value) in zip(scalars[tag],
                                                          expected):
        self.assertEqual(step, round_num)
        self.assertAlmostEqual(value, column_value, delta=1e-6 *
                               max(1.0, abs(column_value)))
    # Every round, each of the MNIST net's 4 layers: the final densities.
    densities = {tag: values for tag, values in scalars.items()
                 if tag.startswith('density/')}
    self.assertLen(densities, 4)
    layout = models.model_layout(models.mnist_net())
    names = tensorboard_logging.layer_names(layout)
    final = tensorboard_logging.layer_densities(layout, weights)
    for name, density in zip(names, final):
      values = densities[f'density/{name}']
      self.assertEqual([step for step, _ in values], [1, 2, 3])
      self.assertAlmostEqual(values[-1][1], density, places=6)

  def test_identical_seeds_give_identical_metrics(self):
    root = self.create_tempdir().full_path
    # The first run is the class's shared one (made once for the resume
    # tests too); the second repeats it in this process.
    config, first_dir = self.whole_two_rounds()
    experiment.run_experiment(config, os.path.join(root, 'b'))
    experiment.run_experiment(config.replace(seed=1),
                              os.path.join(root, 'c'))
    first, second, other = (metrics_without_timing(path) for path in (
        first_dir, os.path.join(root, 'b'), os.path.join(root, 'c')))
    self.assertEqual(first, second)
    self.assertNotEqual(first, other)
    with open(os.path.join(first_dir, 'global_model.npz'), 'rb') as f:
      first_model = f.read()
    with open(os.path.join(root, 'b', 'global_model.npz'), 'rb') as f:
      self.assertEqual(f.read(), first_model)

  def test_upload_budget_stops_before_it_is_exceeded(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    # One round: 3 clients x (4 * 52349 values + 32657 mask bytes (the
    # dense last layer's 500 positions carry none) + 4 * 90 bias bytes + 4
    # weight bytes + 4 model digest bytes) = 3 x 242421 = 727263 bytes
    # (float32 values with bitmap masks). A budget of 2.5 rounds allows
    # exactly 2.
    budget = int(2.5 * 727263)
    rows = experiment.run_experiment(
        small_config(self.data_dir, total_rounds=5, eval_every=5,
                     upload_budget_bytes=budget,
                     upload_encoding='float32+bitmap'), output_dir)
    self.assertLen(rows, 2)
    self.assertEqual(rows[-1]['upload_bytes_cumulative'], 2 * 727263)
    self.assertIsNotNone(rows[-1]['test_accuracy'])  # Last round evaluated.
    with open(os.path.join(output_dir, 'summary.json')) as f:
      summary = json.load(f)
    self.assertEqual(summary['stop_reason'], 'upload_budget')
    self.assertEqual(summary['rounds_completed'], 2)
    # Read from /proc while the run's local worker lives: it and this
    # process hold the TensorFlow runtime, so each peak is above 100 MiB
    # (the test process may own an idle worker too; see conftest).
    memory = summary['peak_rss_mib']
    self.assertGreater(memory['training_process'], 100)
    self.assertGreater(max(memory['workers']), 100)

  def test_compact_upload_bytes_match_the_analytic_count(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    # A fixed mask: every upload leaves its masks out. Per client: 52349
    # float16 values + 4 * 90 bias bytes + the 4-byte code length + the
    # 4-byte weight + the 4-byte model digest = 105070 bytes.
    config = small_config(
        self.data_dir, method='randommask', total_rounds=2, eval_every=2,
        upload_encoding='float16+rice+changed_masks_only',
        download_encoding='float16+rice')
    rows = experiment.run_experiment(config, output_dir)
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      written = list(csv.DictReader(f))
    self.assertEqual([int(r['upload_bytes']) for r in written],
                     [3 * 105070] * 2)
    # Downloads: the same values and biases plus the Rice code of the three
    # sparse layers' masks, below their bitmap (32657 bytes).
    for row in rows:
      per_client = row['download_bytes'] / 3
      self.assertBetween(per_client - 2 * 52349 - 4 * 90, 20000, 32657)

  def test_encoding_flags_are_one_line_errors(self):
    cases = {
        'upload_encoding': dict(upload_encoding='float16+gzip'),
        'download_encoding': dict(
            download_encoding='float16+rice+changed_masks_only'),
    }
    for flag, overrides in cases.items():
      with self.assertRaisesRegex(experiment.ConfigError,
                                  f'^--{flag}=[^\n]*expected[^\n]*$'):
        small_config(self.data_dir, **overrides).validate()
    # One way to ask for float16 values: --upload_encoding; the old second
    # way is a one-line error that names the first.
    for upload_encoding in ('float32+rice', 'rice', 'float16+rice'):
      with self.assertRaisesRegex(
          experiment.ConfigError, "^--upload_value_dtype='float16' is "
          'invalid: expected float32 [^\n]*--upload_encoding=float16[^\n]*$'):
        small_config(self.data_dir, upload_encoding=upload_encoding,
                     upload_value_dtype='float16').validate()

  def test_payload_encodings_name_the_value_dtype_and_keep_dense_masks(self):
    upload, download = small_config(
        self.data_dir, upload_encoding='float16+rice').payload_encodings()
    self.assertEqual(upload.name, 'float16+rice')
    self.assertEqual(download.name, 'float32+bitmap')
    # Runs that can thin a dense layer send its mask.
    for overrides in (dict(min_votes=2), dict(readjust_rule='reference'),
                      dict(initial_sparsity=0.5)):
      upload, download = small_config(
          self.data_dir, **overrides).payload_encodings()
      self.assertFalse(upload.omit_dense_masks, overrides)
      self.assertFalse(download.omit_dense_masks, overrides)

  def test_budget_below_one_round_is_refused(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    with self.assertRaisesRegex(experiment.ConfigError,
                                'less than one round.s upload'):
      experiment.run_experiment(
          small_config(self.data_dir, upload_budget_bytes=1000), output_dir)
    self.assertFalse(os.path.exists(output_dir))

  def test_clients_split_over_two_workers_give_the_same_run(self):
    if settings_lib.usable_cpu_count() < 2:
      self.skipTest('--num_local_workers is at most the CPU count.')
    root = self.create_tempdir().full_path
    # 4 clients: two workers sum 2 + 2, one worker 4 in a row; in float32
    # the groupings would round differently, exact sums agree bit for bit.
    # With workers the server's first pass (clipping, the median weight
    # cap, replays) is off (model_setup.build_robust_aggregation), so the
    # one-worker run goes without it too.
    config = small_config(self.data_dir, total_rounds=2, eval_every=1,
                          clients_per_round=4, tensorboard_dir='',
                          clip_updates=False, reject_replayed_uploads=False,
                          max_client_weight_multiple=0)
    single = experiment.run_experiment(config, os.path.join(root, 'one'))
    split = experiment.run_experiment(
        config.replace(num_local_workers=2),
        os.path.join(root, 'two'))
    drop_time = lambda rows: [{k: v for k, v in r.items()
                               if k != 'round_seconds'} for r in rows]
    self.assertEqual(drop_time(split), drop_time(single))
    with open(os.path.join(root, 'one', 'global_model.npz'), 'rb') as f:
      single_model = f.read()
    with open(os.path.join(root, 'two', 'global_model.npz'), 'rb') as f:
      self.assertEqual(f.read(), single_model)

  def whole_two_rounds(self) -> tuple[settings_lib.ExperimentSettings, str]:
    """A small uninterrupted run (made once): its config and output dir."""
    config = small_config(self.data_dir, total_rounds=2, eval_every=1,
                          tensorboard_dir='')
    if not hasattr(ExperimentTest, '_whole_two_rounds'):
      whole = os.path.join(self.data_dir, 'whole_two_rounds')
      experiment.run_experiment(config, whole)
      ExperimentTest._whole_two_rounds = whole
    return config, ExperimentTest._whole_two_rounds

  def test_stop_before_round_1_leaves_round_0_to_resume_from(self):
    config, whole = self.whole_two_rounds()
    stopped = os.path.join(self.create_tempdir().full_path, 'stopped')

    def stop_at_once():  # As if SIGTERM came while the run was set up.
      raise interruptions.StopRequested(signal.SIGTERM)

    with self.assertRaises(interruptions.StopRequested) as raised:
      experiment.run_experiment(config, stopped,
                                check_interrupt=stop_at_once)
    self.assertEqual(raised.exception.completed_round, 0)
    self.assertEqual(raised.exception.checkpoint_path,
                     os.path.join(stopped, 'checkpoints', 'ckpt-000000.npz'))
    self.assertTrue(os.path.exists(raised.exception.checkpoint_path))
    # The resume in this Python process uses the process the stopped run
    # built (process_cache): it traces no client update again.
    traces = client_work.update_trace_count()
    experiment.run_experiment(config, stopped, resume=True)
    self.assertEqual(client_work.update_trace_count(), traces)
    self.assertEqual(metrics_without_timing(stopped),
                     metrics_without_timing(whole))

  def test_worker_killed_mid_round_is_restarted_and_the_run_unchanged(self):
    root = self.create_tempdir().full_path
    config, whole = self.whole_two_rounds()

    def workers():
      # The worker_binary processes themselves (not their forwarders).
      return {p.pid for p in psutil.Process().children(recursive=True)
              if p.cmdline()[:1] and p.cmdline()[0].endswith('worker_binary')}

    before = workers()  # The test session's own worker.
    done = threading.Event()
    killers = []

    def kill_in_round_2(row):
      if row['round'] == 1:  # The worker's next work is round 2's.
        (pid,) = workers() - before
        killers.append(execution_test.when_busy(
            pid, execution_test.sigkill(pid), done, cpu_seconds=0.05))

    killed = os.path.join(root, 'killed')
    with self.assertLogs(level='WARNING') as logs:
      experiment.run_experiment(config, killed, on_round_end=kill_in_round_2)
    done.set()
    killers[0].join()
    warnings = [line for line in logs.output if 'TFF worker' in line]
    self.assertLen(warnings, 1)
    self.assertRegex(warnings[0], r'died \(killed by SIGKILL\) during round '
                     r'2; restarted it on port \d+ and re-running round 2')
    self.assertEqual(workers(), before)  # The new worker is gone too.
    self.assertEqual(metrics_without_timing(killed),
                     metrics_without_timing(whole))
    for name in ('global_model.npz', 'summary.json'):
      with open(os.path.join(whole, name), 'rb') as f:
        expected = f.read()
      with open(os.path.join(killed, name), 'rb') as f:
        if name == 'summary.json':  # Seconds and memory aside.
          expected = json.loads(expected)
          got = json.loads(f.read())
          for measured in ('seconds', 'peak_rss_mib'):
            expected.pop(measured)
            got.pop(measured)
          self.assertEqual(got, expected)
        else:
          self.assertEqual(f.read(), expected, name)

  def test_dropout_aggregates_reporters_and_survives_empty_rounds(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    # 3 sampled clients per round; with dropout 0.85 (seed 0) rounds 1-3 have
    # no reporter and round 4 has one.
    config = small_config(self.data_dir, total_rounds=4, eval_every=4,
                          dropout_rate=0.85, tensorboard_dir='',
                          upload_encoding='float32+bitmap')
    expected = [training_loop.drop_out(
        training_loop.sample_clients([str(i) for i in range(8)], 3, 0, r),
        0.85, 0, r) for r in range(1, 5)]
    self.assertEqual([len(r) for r in expected], [0, 0, 0, 1])
    rows = experiment.run_experiment(config, output_dir)
    # One client message, float32 values with bitmap masks: 4 x 52349
    # values + 32657 mask bytes (none for the dense last layer) + 4 x 90
    # bias.
    message = 242413
    for row, reporting in zip(rows, expected):
      self.assertEqual(row['clients_sampled'], 3)
      self.assertEqual(row['clients_reported'], len(reporting))
      # Each upload adds its weight and its model digest, 4 bytes each.
      self.assertEqual(row['upload_bytes'], len(reporting) * (message + 8))
      # Every sampled client downloaded the model, reporting or not.
      self.assertEqual(row['download_bytes'], 3 * message)
      if not reporting:
        self.assertEqual(row['mask_changed_positions'], 0)
        self.assertTrue(math.isnan(row['train_loss']))  # Nobody trained.
    self.assertAlmostEqual(rows[-1]['sparsity'], 0.8, places=4)

  def test_bad_worker_settings_name_the_flag(self):
    for overrides, flag in ((dict(num_local_workers=-1), 'num_local_workers'),
                            (dict(workers='localhost'), 'workers'),
                            (dict(workers='a:1,,b'), 'workers')):
      with self.assertRaisesRegex(experiment.ConfigError, f'--{flag}='):
        small_config(self.data_dir, **overrides).validate()

  def test_worker_addresses_accept_names_ipv4_and_ipv6(self):
    for workers in ('localhost:8000', '127.0.0.1:1, 10.0.0.2:65535',
                    '[::1]:8000', 'worker-1.example.org:80', 'node_7:9'):
      settings_lib.check_worker_addresses(workers)
      small_config(self.data_dir, workers=workers).validate()
    for workers in ('localhost:65536', 'localhost:-1', 'local host:80',
                    '-a:80', 'a:80:90', '1.2.3:80', '[1.2.3.4]:80',
                    'a:1,,b:2', 'a:+80', 'a:８０'):
      with self.assertRaisesRegex(experiment.ConfigError,
                                  '^--workers=[^\n]*$'):
        settings_lib.check_worker_addresses(workers)

  def test_choices_are_the_library_constants(self):
    from tff_feddst.methods import fed_dst  # pylint: disable=g-import-not-at-top
    from tff_feddst.process import client_work  # pylint: disable=g-import-not-at-top
    from tff_feddst.sparse import schedules  # pylint: disable=g-import-not-at-top
    from tff_feddst.sparse import sparsity_distribution  # pylint: disable=g-import-not-at-top
    choices = settings_lib.setting_choices()
    self.assertEqual(choices['grow_score'], client_work.GROW_SCORES)
    self.assertEqual(choices['readjust_rule'], client_work.READJUST_RULES)
    self.assertEqual(choices['initial_mask'], fed_dst.INITIAL_MASKS)
    self.assertEqual(choices['annealing'], schedules.ANNEALINGS)
    self.assertEqual(choices['sparsity_distribution'],
                     sparsity_distribution.NUM_ACTIVE_DISTRIBUTIONS)
    self.assertCountEqual(choices['model'], models.MODEL_BUILDERS)
    self.assertCountEqual(choices['dataset'], datasets.DATASET_NAMES)
    self.assertCountEqual(choices['data_distribution'], partitions.DISTRIBUTIONS)
    defaults = settings_lib.ExperimentSettings().flat()
    for name, accepted in choices.items():
      self.assertIn(defaults[name] or accepted[0], accepted, name)
      # Without flags (the notebook), validate refuses the same values.
      with self.assertRaisesRegex(experiment.ConfigError,
                                  f"^--{name}='foo' is invalid: expected one "
                                  f'of {", ".join(accepted)}.$'):
        small_config(self.data_dir, **{name: 'foo'}).validate()

  def test_float_settings_must_be_finite(self):
    for name, hint in setting_hints().items():
      if hint not in (float, Optional[float]):
        continue
      for value in (math.inf, -math.inf, math.nan):
        with self.assertRaises(experiment.ConfigError) as raised:
          small_config(self.data_dir, **{name: value}).validate()
        self.assertEqual(str(raised.exception),
                         f'--{name}={value!r} is invalid: expected a finite '
                         'number.')

  def test_resume_needs_a_checkpoint_and_changes_nothing(self):
    config, whole = self.whole_two_rounds()
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(whole, output_dir)
    # As if killed before its first checkpoint (--checkpoint_every=10: the
    # last round's, round 2's): no summary, no checkpoint.
    os.remove(os.path.join(output_dir, 'summary.json'))
    os.remove(os.path.join(output_dir, 'global_model.npz'))
    shutil.rmtree(os.path.join(output_dir, 'checkpoints'))
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      metrics = f.read()
    with self.assertRaisesRegex(
        experiment.ConfigError,
        f'^--resume: the run in {output_dir} has no checkpoint to continue '
        r'from: it stopped before its first checkpoint \(after round 2\); '
        'start it again without --resume'):
      experiment.run_experiment(config, output_dir, resume=True)
    self.assertCountEqual(os.listdir(output_dir), ['flags.txt', 'metrics.csv'])
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      self.assertEqual(f.read(), metrics)

  def test_model_that_does_not_fit_the_data_is_refused(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    with self.assertRaises(experiment.ConfigError) as raised:
      experiment.run_experiment(
          small_config(self.data_dir, model='cifar10_net'), output_dir)
    self.assertEqual(
        str(raised.exception),
        '--model=cifar10_net does not fit --dataset=fashion_mnist: it takes '
        '(32, 32, 3) images and 10 classes, the data has (28, 28, 1) and 10; '
        'expected a model such as mnist_net (unset --model picks it).')
    self.assertFalse(os.path.exists(output_dir))
    # More outputs than classes fit (EMNIST's 62-class net on 10 classes).
    experiment.load_federated_data(
        small_config(self.data_dir, model='emnist_conv2'))

  def test_used_output_dir_is_refused_and_left_alone(self):
    output_dir = self.create_tempdir().full_path
    metrics_path = os.path.join(output_dir, 'metrics.csv')
    with open(metrics_path, 'w') as f:
      f.write('precious')
    with self.assertRaisesRegex(experiment.ConfigError,
                                'already holds results'):
      experiment.run_experiment(small_config(self.data_dir), output_dir)
    with open(metrics_path) as f:
      self.assertEqual(f.read(), 'precious')
    self.assertFalse(os.path.exists(os.path.join(output_dir, 'flags.txt')))

  def test_bad_settings_name_the_flag(self):
    cases = {
        'target_sparsity': dict(target_sparsity=1.0),
        'clients_per_round': dict(clients_per_round=9),
        'dataset': dict(dataset='imagenet'),
        'data_distribution': dict(data_distribution='zipf'),
        'readjust_after_epochs': dict(readjust_after_epochs=-1.0),
        'max_payload_norm': dict(max_payload_norm=-1.0),
    }
    for flag, overrides in cases.items():
      with self.assertRaisesRegex(experiment.ConfigError, f'--{flag}='):
        small_config(self.data_dir, **overrides).validate()

  def test_unwritable_tensorboard_dir_is_refused_before_writing(self):
    root = self.create_tempdir().full_path
    not_a_dir = os.path.join(root, 'file')
    with open(not_a_dir, 'w') as f:
      f.write('x')
    bad_dirs = [os.path.join(not_a_dir, 'tb')]
    if os.path.isdir('/proc'):
      bad_dirs.append('/proc/feddst_tensorboard')  # Even root cannot write.
    for bad_dir in bad_dirs:
      output_dir = os.path.join(root, 'run')
      with self.assertRaises(experiment.ConfigError) as raised:
        experiment.run_experiment(
            small_config(self.data_dir, tensorboard_dir=bad_dir), output_dir)
      message = str(raised.exception)
      self.assertStartsWith(message,
                            f'--tensorboard_dir={bad_dir} is not writable')
      self.assertNotIn('\n', message)
      self.assertFalse(os.path.exists(output_dir))
    self.assertFalse(os.path.exists('/proc/feddst_tensorboard'))

  def test_empty_tensorboard_dir_writes_no_logs(self):
    config, output_dir = self.whole_two_rounds()
    self.assertEqual(config.run.tensorboard_dir, '')
    self.assertCountEqual(os.listdir(output_dir),
                          run_files.RESULT_FILES + ('checkpoints',))
    self.assertFalse(os.path.exists(os.path.join(output_dir, 'tensorboard')))

  def test_settings_of_the_wrong_type_are_one_line_errors(self):
    cases = {
        'total_rounds': '3', 'target_sparsity': '0.8', 'dataset': 3,
        'data_dir': 1.5, 'seed': True, 'tensorboard_dir': ['a'],
        'client_learning_rate': None,
    }
    for flag, value in cases.items():
      with self.assertRaises(experiment.ConfigError) as raised:
        small_config(self.data_dir).replace(**{flag: value}).validate()
      message = str(raised.exception)
      self.assertStartsWith(message, f'--{flag}={value!r} is invalid: '
                            'expected ')
      self.assertNotIn('\n', message)
    # Integers are numbers; numpy integers are integers.
    small_config(self.data_dir, client_learning_rate=1,
                 total_rounds=np.int64(2)).validate()

  def test_natural_split_needs_a_data_set_with_natural_clients(self):
    with self.assertRaisesRegex(
        experiment.ConfigError, "--data_distribution='natural' is invalid: "
        'expected iid, dirichlet or pathological for --dataset=fashion_mnist'):
      small_config(self.data_dir, data_distribution='natural').validate()

  def test_split_that_cannot_be_made_is_a_config_error(self):
    config = small_config(self.data_dir, data_distribution='pathological',
                          examples_per_class=500)
    with self.assertRaisesRegex(experiment.ConfigError, 'data_distribution'):
      experiment.load_federated_data(config)


class NewDataSetsTest(tf.test.TestCase):
  """CIFAR-100 and EMNIST through the experiment's data path."""

  def test_datasets_map_to_the_paper_models(self):
    self.assertEqual(settings_lib.DATASET_MODELS['cifar100'], 'cifar100_net')
    self.assertEqual(settings_lib.DATASET_MODELS['emnist'], 'emnist_conv2')
    self.assertEqual(settings_lib.ExperimentSettings.from_flat(
        dataset='emnist').model_name,
                     'emnist_conv2')

  def test_cifar100_dirichlet_split(self):
    folder = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    for name, count in (('train', 400), ('test', 100)):
      with open(os.path.join(folder, name), 'wb') as f:
        pickle.dump({b'data': rng.integers(0, 256, (count, 3072), np.uint8),
                     b'fine_labels': list(np.arange(count) % 100),
                     b'coarse_labels': [0] * count}, f)
    config = settings_lib.ExperimentSettings.from_flat(
        dataset='cifar100', data_dir=folder, total_clients=4,
        clients_per_round=2, dirichlet_beta=0.1)
    config.validate()

    federated = experiment.load_federated_data(config)

    self.assertEqual(federated.num_clients, 4)
    self.assertEqual(federated.dataset.num_classes, 100)
    self.assertEqual(sum(federated.num_train_examples(c)
                         for c in federated.client_ids), 400)

  def test_emnist_natural_split_and_too_many_writers(self):
    directory = self.create_tempdir().full_path
    pixels = np.full((2, 28, 28), 0.5, np.float32)
    data_files.write_emnist_sqlite(
        os.path.join(directory, file_formats.EMNIST_FILE),
        train={f'w{i}': (pixels, [i, 61]) for i in range(3)},
        test={f'w{i}': (pixels[:1], [i]) for i in range(3)})
    config = settings_lib.ExperimentSettings.from_flat(
        dataset='emnist', data_dir=directory, data_distribution='natural',
        total_clients=3, clients_per_round=2)
    config.validate()

    federated = experiment.load_federated_data(config)

    self.assertEqual(federated.num_clients, 3)
    self.assertEqual([federated.num_test_examples(c)
                      for c in federated.client_ids], [1, 1, 1])
    with self.assertRaisesRegex(
        experiment.ConfigError, '^--total_clients=5 is invalid for the '
        'natural split of emnist: 5 clients requested but the data has only '
        '3 natural clients'):
      experiment.load_federated_data(
          config.replace(total_clients=5))


class TrainingLoopTest(tf.test.TestCase):

  def test_sampling_is_seeded_and_without_replacement(self):
    ids = [str(i) for i in range(20)]
    first = training_loop.sample_clients(ids, 10, seed=1, round_num=4)
    self.assertLen(set(first), 10)
    self.assertEqual(first, training_loop.sample_clients(ids, 10, 1, 4))
    self.assertNotEqual(first, training_loop.sample_clients(ids, 10, 1, 5))

  def test_too_many_clients_raises(self):
    with self.assertRaisesRegex(ValueError, 'clients_per_round'):
      training_loop.sample_clients(['a', 'b'], 3, seed=0, round_num=1)



class MethodTest(tf.test.TestCase):

  def test_methods_fix_their_defining_settings(self):
    base = settings_lib.ExperimentSettings.from_flat(target_sparsity=0.8,
                                                     drop_fraction=0.1)
    resolve = lambda method, **kw: types.SimpleNamespace(**base.replace(
        method=method, **kw).resolved().flat())
    self.assertEqual(resolve('feddst'), types.SimpleNamespace(**base.flat()))
    fedavg = resolve('fedavg')
    self.assertEqual((fedavg.target_sparsity, fedavg.drop_fraction,
                      fedavg.server_momentum), (0.0, 0.0, 0.0))
    fedavgm = resolve('fedavgm')
    # Momentum 0.9 with server lr 1 - 0.9 keeps FedAvg's effective step.
    self.assertEqual(fedavgm.server_momentum, 0.9)
    self.assertAlmostEqual(fedavgm.server_learning_rate, 0.1)
    self.assertEqual(resolve('fedavgm', server_momentum=0.5,
                             server_learning_rate=0.3).server_learning_rate,
                     0.3)
    random_mask = resolve('randommask')
    self.assertEqual((random_mask.target_sparsity, random_mask.drop_fraction),
                     (0.8, 0.0))
    self.assertEqual(resolve('fedprox').prox_mu, 0.01)
    self.assertEqual(resolve('fedprox', prox_mu=0.1).prox_mu, 0.1)
    self.assertEqual(resolve('feddst_fedprox').target_sparsity, 0.8)
    self.assertEqual(resolve('feddst_fedprox').prox_mu, 0.01)

  def test_unknown_method_and_bad_budget_name_the_flag(self):
    with self.assertRaisesRegex(experiment.ConfigError, '--method='):
      settings_lib.ExperimentSettings.from_flat(method='scaffold').validate()
    for budget in (0, -5):
      with self.assertRaisesRegex(experiment.ConfigError,
                                  '--upload_budget_bytes='):
        settings_lib.ExperimentSettings.from_flat(
            upload_budget_bytes=budget).validate()


class GrowingSparsityExperimentTest(fixtures.FashionMnistSliceTestCase):
  """--initial_sparsity end to end, and --remember_old as a setting."""

  def csv_without_timing(self, output_dir: str) -> list[list[str]]:
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      rows = list(csv.reader(f))
    timing = rows[0].index('round_seconds')
    return [row[:timing] + row[timing + 1:] for row in rows]

  def test_sparsity_grows_to_the_target_and_resumes_identically(self):
    root = self.create_tempdir().full_path
    # S_t = 0.5, 0.65, 0.8 for t = 0, 1, 2 (T_end = 2), then 0.8.
    config = small_config(self.data_dir, total_rounds=4, eval_every=4,
                          initial_sparsity=0.5, annealing_end_round=2,
                          checkpoint_every=2, tensorboard_dir='',
                          remember_old=True)
    whole = os.path.join(root, 'whole')
    rows = experiment.run_experiment(config, whole)
    layout = models.model_layout(models.mnist_net())
    table = feddst_methods.build_num_active_by_round(config.resolved(),
                                                     layout)
    self.assertEqual(table.shape, (3, 4))
    num_positions = sum(layout.kernel_sizes)
    expected = [1 - table[min(t, 2)].sum() / num_positions for t in (1, 2, 3, 4)]
    sparsities = [row['sparsity'] for row in rows]
    self.assertAllClose(sparsities, expected, atol=1e-6)
    self.assertLess(sparsities[0], sparsities[1])
    self.assertAlmostEqual(sparsities[1], 0.8, places=3)
    self.assertEqual(sparsities[1:], [sparsities[1]] * 3)
    with open(os.path.join(whole, 'flags.txt')) as f:
      flag_lines = f.read().splitlines()
    self.assertIn('--initial_sparsity=0.5', flag_lines)
    self.assertIn('--remember_old=True', flag_lines)
    weights = run_files.load_model_weights(
        os.path.join(whole, 'global_model.npz'))
    self.assertEqual([int(weights.non_trainable[i].sum())
                      for i in layout.mask_indices], list(table[2]))

    # A copy killed after round 3 (its last checkpoint is round 2's)
    # resumes with the finalizer's round counter from the checkpoint.
    killed = os.path.join(root, 'killed')
    fixtures.copy_killed_before_round_4(whole, killed)
    experiment.run_experiment(config, killed, resume=True)
    self.assertEqual(self.csv_without_timing(killed),
                     self.csv_without_timing(whole))

  def test_shrinking_sparsity_is_a_one_line_error(self):
    with self.assertRaises(experiment.ConfigError) as raised:
      small_config(self.data_dir, initial_sparsity=0.9).validate()
    message = str(raised.exception)
    self.assertStartsWith(message, '--initial_sparsity=0.9 is invalid: '
                          'expected at most --target_sparsity=0.8')
    self.assertIn('only growing sparsity', message)
    self.assertNotIn('\n', message)
    with self.assertRaisesRegex(experiment.ConfigError,
                                '--readjust_rule=reference'):
      small_config(self.data_dir, initial_sparsity=0.5,
                   readjust_rule='reference').validate()
    # Dense methods drop it with the sparsity.
    self.assertIsNone(small_config(self.data_dir, initial_sparsity=0.5,
                                   method='fedavg').resolved(
                                   ).network.initial_sparsity)


def _files(directory: str) -> list[str]:
  """Every file under `directory`, relative to it, sorted."""
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


class AtomicOutputsTest(fixtures.FashionMnistSliceTestCase):
  """A full disk or a kill at any moment: resume finishes the same run."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='atomic_outputs_')
    cls.config = small_config(cls.data_dir, total_rounds=3, eval_every=2,
                              checkpoint_every=1)
    cls.whole = os.path.join(cls.root, 'whole')
    experiment.run_experiment(cls.config, cls.whole)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def assert_same_run(self, output_dir: str) -> None:
    """Asserts `output_dir` holds the results of `self.whole`."""
    def metrics(directory):
      with open(os.path.join(directory, 'metrics.csv'), newline='') as f:
        rows = list(csv.reader(f))
      timing = rows[0].index('round_seconds')
      return [row[:timing] + row[timing + 1:] for row in rows]
    self.assertEqual(metrics(output_dir), metrics(self.whole))
    weights, expected = (
        run_files.load_model_weights(os.path.join(d, 'global_model.npz'))
        for d in (output_dir, self.whole))
    tf.nest.map_structure(self.assertAllEqual, weights, expected)
    summaries = []
    for directory in (output_dir, self.whole):
      with open(os.path.join(directory, 'summary.json')) as f:
        summaries.append(json.load(f))
        del summaries[-1]['seconds']
        summaries[-1].pop('peak_rss_mib', None)  # Resume-only runs lack it.
    self.assertEqual(summaries[0], summaries[1])
    self.assertFalse([name for name in _files(output_dir)
                      if atomic_files.is_temporary(os.path.basename(name))])

  def test_disk_full_then_resume_gives_the_uninterrupted_run(self):
    output_dir = os.path.join(self.root, 'disk_full')
    os.makedirs(output_dir)
    real_append = atomic_files.append_record

    def fill_disk_at_row(row_num, bytes_that_fit):
      calls = []

      def append(file, path, record):
        calls.append(path)
        if len(calls) != row_num:
          return real_append(file, path, record)
        with mock.patch.object(os, 'write', fixtures.disk_full_after(bytes_that_fit)):
          return real_append(file, path, record)
      return mock.patch.object(atomic_files, 'append_record', append)

    # Ctrl-C in round 1: nothing was kept, the directory is as it was.
    with mock.patch.object(atomic_files, 'append_record',
                           side_effect=KeyboardInterrupt), self.assertRaises(
                               KeyboardInterrupt) as raised:
      experiment.run_experiment(self.config, output_dir)
    self.assertEqual(str(raised.exception),
                     'nothing was kept (no round had finished)')
    self.assertEqual(os.listdir(output_dir), [])

    # A full disk in round 1: the same.
    with fill_disk_at_row(1, 0), self.assertRaises(
        experiment.OutputError) as raised:
      experiment.run_experiment(self.config, output_dir)
    self.assertEqual(
        str(raised.exception),
        f'writing {output_dir}/metrics.csv failed: [Errno 28] No space left '
        'on device; nothing was kept: free space and rerun')
    self.assertEqual(os.listdir(output_dir), [])

    # The same directory again; the disk fills in round 3's row, 5 bytes in.
    with fill_disk_at_row(3, 5), self.assertRaises(
        experiment.OutputError) as raised:
      experiment.run_experiment(self.config, output_dir)
    self.assertEqual(
        str(raised.exception),
        f'writing {output_dir}/metrics.csv failed: [Errno 28] No space left '
        'on device; free space and rerun with --resume')
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      lines = f.read().splitlines(keepends=True)
    self.assertEqual([line[:2] for line in lines], ['ro', '1,', '2,'])
    self.assertTrue(all(line.endswith('\r\n') for line in lines))
    self.assertFalse(os.path.exists(os.path.join(output_dir, 'summary.json')))

    with mock.patch.object(tqdm, 'tqdm', wraps=tqdm.tqdm) as bar:
      rows = experiment.run_experiment(self.config, output_dir, resume=True,
                                       progress=True)
    self.assertEqual(bar.call_args.kwargs['initial'], 2)  # Resumed at 3.
    self.assertEqual([row['round'] for row in rows], [1, 2, 3])
    self.assert_same_run(output_dir)
    # TensorBoard: round 3 logged once, as in the uninterrupted run.
    scalars, expected = (
        tensorboard_logging.read_scalars(os.path.join(d, 'tensorboard'))
        for d in (output_dir, self.whole))
    del scalars['time/round_seconds'], expected['time/round_seconds']
    self.assertEqual(scalars, expected)

  def test_kill_or_disk_full_in_the_final_writes_resumes_to_the_end(self):
    def copy_without(name, *removed):
      copy = os.path.join(self.root, name)
      shutil.copytree(self.whole, copy)
      for path in removed:
        os.remove(os.path.join(copy, path))
      return copy

    # Killed between the model and the summary, with temporary files of
    # killed writers around: resume only writes summary.json.
    killed = copy_without('killed_before_summary', 'summary.json')
    for leftover in ('.summary.json.tmp-0a1b2c', 'metrics.csv.tmp',
                     'checkpoints/.ckpt-000003.npz.tmp-3d4e5f'):
      with open(os.path.join(killed, leftover), 'w') as f:
        f.write('torn')
    with mock.patch.object(experiment, 'load_federated_data') as load:
      experiment.run_experiment(self.config, killed, resume=True)
    load.assert_not_called()
    self.assert_same_run(killed)
    with self.assertRaisesRegex(experiment.ConfigError, 'already finished'):
      experiment.run_experiment(self.config, killed, resume=True)

    # The disk fills while the model is written: no model, no summary; the
    # next resume writes both from the last round's checkpoint.
    full = copy_without('full_at_model', 'summary.json', 'global_model.npz')
    real_write_bytes = atomic_files.write_bytes

    def write_bytes(path, content, **kwargs):
      if not path.endswith('global_model.npz'):
        return real_write_bytes(path, content, **kwargs)
      with mock.patch.object(os, 'write', fixtures.disk_full_after(1000)):
        return real_write_bytes(path, content, **kwargs)
    with mock.patch.object(atomic_files, 'write_bytes',
                           write_bytes), self.assertRaisesRegex(
        experiment.OutputError,
        '^writing .*global_model.npz failed: .Errno 28. No space left on '
        'device; free space and rerun with --resume$'):
      experiment.run_experiment(self.config, full, resume=True)
    self.assertFalse(os.path.exists(os.path.join(full, 'global_model.npz')))
    self.assertFalse(os.path.exists(os.path.join(full, 'summary.json')))
    experiment.run_experiment(self.config, full, resume=True)
    self.assert_same_run(full)

    # A model torn by an older, non-atomic writer is recomputed.
    torn = copy_without('torn_model', 'summary.json')
    model_path = os.path.join(torn, 'global_model.npz')
    with open(model_path, 'rb') as f:
      content = f.read()
    with open(model_path, 'wb') as f:
      f.write(content[:len(content) // 2])
    experiment.run_experiment(self.config, torn, resume=True)
    self.assert_same_run(torn)



class DropoutTest(tf.test.TestCase):

  def test_drop_out_is_seeded_and_keeps_sampling_order(self):
    sampled = [str(i) for i in range(200)]
    reporting = training_loop.drop_out(sampled, 0.25, seed=3, round_num=2)
    self.assertEqual(reporting,
                     training_loop.drop_out(sampled, 0.25, seed=3, round_num=2))
    self.assertEqual(reporting, sorted(reporting, key=int))
    self.assertBetween(len(reporting), 120, 180)  # About 150 of 200.
    self.assertEqual(training_loop.drop_out(sampled, 0.0, 3, 2), sampled)


class ReferenceFlagfileTest(fixtures.FashionMnistSliceTestCase):
  """configs/reference.cfg end to end through the TFF process, 3 rounds.

  Its clients readjust after a local epoch's end, by their lifetime epoch
  count (the authors' `curr_epoch`), so regrown weights are uploaded as 0;
  the authors' server rule then only clears mask bits. When only some
  clients readjust the global mask does not move; when all do it only
  shrinks. Ours moves the mask.
  """

  def settings_of(self, *extra_flags: str) -> settings_lib.ExperimentSettings:
    flag_values = flags.FlagValues()
    experiment_flags.define_flags(flag_values=flag_values)
    flag_values(['train.py', '--flagfile=' + os.path.join(
        ROOT, 'configs', 'reference.cfg'), *extra_flags])
    settings = experiment_flags.settings_from_flags(flag_values=flag_values)
    # Every round readjusts (R = 1, ratio > 0 up to T_end = 3).
    return settings.replace(
        data_dir=self.data_dir, dirichlet_beta=0.5, total_clients=8,
        clients_per_round=4, total_rounds=3, eval_every=3,
        client_epochs_per_round=1, target_sparsity=0.8, drop_fraction=0.5,
        rounds_between_readjustments=1, annealing_end_round=3,
        checkpoint_every=0, tensorboard_dir='', seed=0)

  def active_counts(self, rows) -> tuple[list[int], list[int]]:
    """Active prunable weights before and after each round (`sparsity`)."""
    layout = models.model_layout(models.mnist_net())
    size = sum(layout.kernel_sizes)
    initial = sum(sparsity_distribution.compute_layer_num_active(
        layout.kernel_shapes, 0.8, 'erk_reference',
        bias_sizes=layout.layer_bias_sizes))
    after = [int(round(size * (1 - row['sparsity']))) for row in rows]
    return [initial] + after[:-1], after

  def odd_draws_per_round(self, num_rounds: int) -> list[int]:
    """Per round, the draws of a client drawn an odd number of times before
    (its earlier draws in the round included): with one local epoch and
    begin 1, interval 2, the draws that readjust."""
    draws = collections.Counter()
    counts = []
    for round_num in range(1, num_rounds + 1):
      sampled = client_sampling.sample_clients(
          [str(i) for i in range(8)], 4, 0, round_num, with_replacement=True)
      readjusting = 0
      for client in sampled:
        readjusting += draws[client] % 2
        draws[client] += 1
      counts.append(readjusting)
    return counts

  def test_lifetime_counts_survive_resume_bit_exact(self):
    root = self.create_tempdir().full_path
    settings = self.settings_of().replace(
        readjust_counter_begin=1, readjust_counter_interval=2,
        total_rounds=4, eval_every=4, annealing_end_round=4,
        checkpoint_every=2)
    whole = os.path.join(root, 'whole')
    rows = experiment.run_experiment(settings, whole)
    self.assertEqual([row['clients_readjusted'] for row in rows],
                     self.odd_draws_per_round(4))
    # Rounds 3 and 4 depend on the counts of rounds 1 and 2.
    self.assertGreater(rows[2]['clients_readjusted'] +
                       rows[3]['clients_readjusted'], 0)
    killed = os.path.join(root, 'killed')
    fixtures.copy_killed_before_round_4(whole, killed)
    experiment.run_experiment(settings, killed, resume=True)
    self.assertEqual(
        GrowingSparsityExperimentTest.csv_without_timing(self, killed),
        GrowingSparsityExperimentTest.csv_without_timing(self, whole))
    for name in ('whole', 'killed'):
      with np.load(os.path.join(root, name, 'global_model.npz')) as f:
        if name == 'whole':
          want = {key: f[key] for key in f.files}
        else:
          self.assertEqual(sorted(f.files), sorted(want))
          for key in f.files:
            self.assertAllEqual(f[key], want[key])

  def test_mask_holds_when_some_readjust_and_shrinks_when_all_do(self):
    root = self.create_tempdir().full_path
    settings = self.settings_of()
    self.assertEqual(settings.server.server_rule, 'reference')
    self.assertEqual(settings.readjustment.readjust_counter, 'client_lifetime')
    self.assertEqual((settings.readjustment.readjust_counter_begin,
                      settings.readjustment.readjust_counter_interval),
                     (9, 10))
    schedule = feddst_methods.build_schedule(settings)
    # The process counts rounds from 1, the schedule from `first_round`.
    self.assertEqual(
        [bool(schedule.should_readjust(t - 1 + schedule.first_round))
         for t in (1, 2, 3)], [True, True, True])
    # One local epoch per round, readjusting when the count is odd: a draw
    # readjusts iff the client was drawn an odd number of times before (its
    # earlier draws of the same round included).
    some = experiment.run_experiment(
        settings.replace(readjust_counter_begin=1,
                         readjust_counter_interval=2),
        os.path.join(root, 'some'))
    expected = self.odd_draws_per_round(3)
    self.assertEqual([row['clients_readjusted'] for row in some], expected)
    self.assertEqual([row['clients_reported'] for row in some], [4, 4, 4])
    partial = [row for row in some if 0 < row['clients_readjusted'] < 4]
    self.assertNotEmpty(partial)
    for row in some:
      if row['clients_readjusted'] < row['clients_reported']:
        self.assertEqual(row['mask_changed_positions'], 0, row)
    before, after = self.active_counts(some)
    self.assertEqual(before, after)
    # Every draw readjusts after every epoch: the mask only shrinks.
    every = experiment.run_experiment(
        settings.replace(readjust_counter_begin=0,
                         readjust_counter_interval=1),
        os.path.join(root, 'all'))
    self.assertEqual([row['clients_readjusted'] for row in every], [4, 4, 4])
    before, after = self.active_counts(every)
    for row, start, end in zip(every, before, after):
      # Every change is a removal: the count falls by the changes.
      self.assertEqual(start - end, row['mask_changed_positions'])
    self.assertGreater(sum(row['mask_changed_positions'] for row in every),
                       0)
    # Our server rule on the same clients moves the mask: it refills each
    # layer to its count, taking regrown zeros in place of pruned positions.
    ours = experiment.run_experiment(
        self.settings_of('--server_rule=feddst').replace(
            readjust_counter_begin=0, readjust_counter_interval=1,
            total_rounds=1),
        os.path.join(root, 'ours'))
    self.assertGreater(ours[0]['mask_changed_positions'], 0)


if __name__ == '__main__':
  tf.test.main()
