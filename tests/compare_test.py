"""Tests for bin/compare.py: two methods on a real data slice; bad input."""

import csv
import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import flagsaver
import tensorflow as tf

from tests import comparison_test
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bin'))

import compare  # pylint: disable=g-import-not-at-top,wrong-import-position
import experiment_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,g-bad-import-order
from tff_feddst.methods import registry  # pylint: disable=g-import-not-at-top
from tff_feddst.running import errors  # pylint: disable=g-import-not-at-top


class CompareTest(fixtures.FashionMnistSliceTestCase):

  def test_two_methods_at_equal_budget(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'cmp')
    # Dense round: 2 clients x (4 * 261840 + 4) bytes = 2094728 (float32
    # values); a budget of 2.5 dense rounds runs 2 dense rounds and more
    # sparse ones (capped at 4).
    with flagsaver.flagsaver(
        data_dir=self.data_dir, total_clients=6, clients_per_round=2,
        total_rounds=4, eval_every=2, methods=['fedavg', 'feddst'],
        upload_budget_bytes=5_236_820, upload_encoding='float32+bitmap',
        output_dir=output_dir,
        target_accuracy=0.05, progress=False):
      compare.main(['compare.py'])
    with open(os.path.join(output_dir, 'summary.csv')) as f:
      rows = {r['method']: r for r in csv.DictReader(f)}
    self.assertEqual(rows['fedavg']['rounds_completed'], '2')
    self.assertEqual(rows['feddst']['rounds_completed'], '4')
    for row in rows.values():
      self.assertLessEqual(int(row['upload_bytes_cumulative']), 5_236_820)
    self.assertTrue(os.path.exists(os.path.join(output_dir, 'accuracy.png')))
    self.assertTrue(os.path.exists(os.path.join(output_dir, 'summary.md')))

  def test_unknown_method_is_one_line(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'bin', 'compare.py'),
         '--methods=fedavg,scaffold', f'--output_dir={output_dir}'],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    self.assertEqual(result.returncode, 1)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    self.assertLen(lines, 1, result.stderr)
    self.assertIn('--methods=', lines[0])
    self.assertFalse(os.path.exists(output_dir))

  def test_repeated_method_and_bad_target_accuracy_are_refused(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    cases = [(dict(methods=['fedavg', 'feddst', 'fedavg']),
              'expected each method once (fedavg repeats)'),
             (dict(target_accuracy=float('nan')), '--target_accuracy=nan'),
             (dict(target_accuracy=float('inf')), '--target_accuracy=inf'),
             (dict(target_accuracy=1.5), '--target_accuracy=1.5'),
             (dict(target_accuracy=0.0), '--target_accuracy=0.0')]
    for overrides, expected in cases:
      with flagsaver.flagsaver(output_dir=output_dir, **overrides):
        with self.assertRaises(SystemExit) as raised:
          compare.main(['compare.py'])
      message = raised.exception.code
      self.assertStartsWith(message, 'compare.py: error: ')
      self.assertIn(expected, message)
      self.assertNotIn('\n', message)
    self.assertFalse(os.path.exists(output_dir))


def fake_run_experiment(config, run_dir, progress):
  """Writes a fixture run whose accuracy depends on method and seed."""
  del progress
  bonus = {'fedavg': 0.0, 'feddst': 0.05}[config.method]
  final = 0.5 + 0.1 * config.run.seed + bonus
  comparison_test.write_run(run_dir, [0.1, None, 0.2, 0.3, final], 100,
                            method=config.method)


class CompareSeedsTest(tf.test.TestCase):

  def test_seeds_pair_methods_on_each_seed(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'cmp')
    with mock.patch.object(compare.experiment, 'run_experiment',
                           side_effect=fake_run_experiment) as run:
      with flagsaver.flagsaver(methods=['fedavg', 'feddst'], seeds=['0', '2'],
                               baseline_method='fedavg',
                               output_dir=output_dir, progress=False):
        compare.main(['compare.py'])
    # Seed by seed, every method on the seed's split.
    self.assertEqual(
        [(c.args[0].method, c.args[0].run.seed, c.args[1])
         for c in run.call_args_list],
        [('fedavg', 0, os.path.join(output_dir, 'fedavg', 'seed_0')),
         ('feddst', 0, os.path.join(output_dir, 'feddst', 'seed_0')),
         ('fedavg', 2, os.path.join(output_dir, 'fedavg', 'seed_2')),
         ('feddst', 2, os.path.join(output_dir, 'feddst', 'seed_2'))])
    with open(os.path.join(output_dir, 'paired.csv')) as f:
      paired = list(csv.DictReader(f))
    # Headline: the last of 4 evaluations; feddst - fedavg = 0.05 on both
    # seeds, so std 0 and the interval is the point.
    self.assertLen(paired, 1)
    self.assertAlmostEqual(float(paired[0]['difference_mean']), 0.05)
    self.assertAlmostEqual(float(paired[0]['interval_low']), 0.05)
    self.assertEqual(paired[0]['wins'], '2')
    with open(os.path.join(output_dir, 'summary.csv')) as f:
      summary = {r['method']: r for r in csv.DictReader(f)}
    # fedavg: 0.5 and 0.7.
    self.assertAlmostEqual(
        float(summary['fedavg']['late_mean_test_accuracy_mean']), 0.6)
    with open(os.path.join(output_dir, 'statistics.json')) as f:
      self.assertEqual(json.load(f)['seeds'], [0, 2])
    for name in ('runs.csv', 'summary.md', 'accuracy.png', 'accuracy.svg'):
      self.assertTrue(os.path.exists(os.path.join(output_dir, name)), name)

  def test_one_seed_keeps_the_single_run_layout(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'cmp')
    with mock.patch.object(compare.experiment, 'run_experiment',
                           side_effect=fake_run_experiment) as run:
      with flagsaver.flagsaver(methods=['fedavg', 'feddst'], seeds=['1'],
                               output_dir=output_dir, progress=False):
        compare.main(['compare.py'])
    self.assertEqual([(c.args[0].run.seed, c.args[1])
                      for c in run.call_args_list],
                     [(1, os.path.join(output_dir, 'fedavg')),
                      (1, os.path.join(output_dir, 'feddst'))])
    self.assertEqual(sorted(os.listdir(output_dir)),
                     ['accuracy.png', 'accuracy.svg', 'fedavg', 'feddst',
                      'summary.csv', 'summary.md'])

  def test_bad_seeds_and_baseline_are_refused(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    cases = [(dict(seeds=['0', 'x']), '--seeds=0,x'),
             (dict(seeds=['0', '00']), '--seeds=0,00'),
             (dict(seeds=['-1']), '--seeds=-1'),
             (dict(seeds=[str(2**32)]), f'--seeds={2**32}'),
             (dict(seeds=[]), '--seeds='),
             (dict(methods=['fedavg', 'feddst'], baseline_method='prunefl'),
              '--baseline_method=prunefl')]
    for overrides, expected in cases:
      with flagsaver.flagsaver(output_dir=output_dir, **overrides):
        with self.assertRaises(SystemExit) as raised:
          compare.main(['compare.py'])
      message = raised.exception.code
      self.assertStartsWith(message, 'compare.py: error: ')
      self.assertIn(expected, message)
      self.assertNotIn('\n', message)
    self.assertFalse(os.path.exists(output_dir))


class ShippedFlagfilesTest(tf.test.TestCase):

  def test_every_flagfile_is_a_valid_config_for_every_method(self):
    config_dir = os.path.join(ROOT, 'configs')
    names = sorted(n for n in os.listdir(config_dir) if n.endswith('.cfg'))
    self.assertIn('fashion_mnist_compare_s95.cfg', names)
    for name in names:
      with self.subTest(name), flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(['compare.py',
                     f'--flagfile={os.path.join(config_dir, name)}'])
        base = experiment_flags.config_from_flags()
        counter = base.readjustment.readjust_counter
        for method in registry.method_names():
          settings = base.replace(method=method)
          if counter not in registry.get(method).readjust_counters:
            # reference.cfg's lifetime epoch count is FedDST's: the methods
            # without FedDST readjustments refuse it in one line, and take
            # the flagfile with the round's counter.
            with self.assertRaisesRegex(errors.ConfigError,
                                        f'^--readjust_counter={counter!r} '
                                        'is invalid: [^\n]*$'):
              settings.validate()
            settings = settings.replace(readjust_counter='round')
          settings.validate()
        self.assertEqual(base.network.target_sparsity,
                         flags.FLAGS.target_sparsity)


if __name__ == '__main__':
  tf.test.main()
