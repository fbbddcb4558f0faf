"""Tests for tff_feddst.outputs.seed_statistics: numbers worked by hand."""

import csv
import json
import math
import os

import tensorflow as tf

from tests import comparison_test
from tff_feddst.outputs import comparison
from tff_feddst.outputs import seed_statistics


class StatisticsTest(tf.test.TestCase):

  def test_late_mean_is_the_last_quarter_of_evaluations(self):
    row = lambda a: {'test_accuracy': a}
    # 5 evaluations (None is a round without one): ceil(5 / 4) = 2, the
    # mean of 0.4 and 0.5.
    rows = [row(0.1), row(None), row(0.2), row(0.3), row(0.4), row(0.5)]
    self.assertAlmostEqual(seed_statistics.late_mean_test_accuracy(rows),
                           0.45)
    # 8 evaluations: the last 2; 3 evaluations: the last 1.
    rows = [row(a / 10) for a in range(1, 9)]
    self.assertAlmostEqual(seed_statistics.late_mean_test_accuracy(rows),
                           0.75)
    self.assertAlmostEqual(seed_statistics.late_mean_test_accuracy(
        [row(0.2), row(0.9), row(0.3)]), 0.3)
    self.assertIsNone(seed_statistics.late_mean_test_accuracy([row(None)]))

  def test_spread_uses_the_sample_standard_deviation(self):
    # Mean 4; squared deviations 4 + 0 + 4 = 8; 8 / (3 - 1) = 4; std 2.
    described = seed_statistics.spread([2.0, 4.0, 6.0])
    self.assertEqual(described, seed_statistics.Spread(3, 4.0, 2.0, 2.0, 6.0))
    self.assertIsNone(seed_statistics.spread([0.5]).std)
    with self.assertRaises(ValueError):
      seed_statistics.spread([])

  def test_t_quantiles_of_the_table(self):
    # Student's t, two-sided 95 %: 12.706 (1), 4.303 (2), 2.776 (4).
    self.assertAlmostEqual(seed_statistics.t_quantile(0.975, 1), 12.7062, 4)
    self.assertAlmostEqual(seed_statistics.t_quantile(0.975, 2), 4.3027, 4)
    self.assertAlmostEqual(seed_statistics.t_quantile(0.975, 4), 2.7764, 4)

  def test_paired_difference_by_hand(self):
    # Differences 0.02, 0.04, 0.04: mean 0.1 / 3 = 0.033333; squared
    # deviations (0.013333^2 + 2 * 0.006667^2) = 0.00026667, / 2 =
    # 0.00013333, std 0.011547; half width t_{0.975, 2} * std / sqrt(3) =
    # 4.302653 * 0.0066667 = 0.028684. Three wins: p = 2 / 2^3 = 0.25.
    paired = seed_statistics.paired_difference([0.70, 0.74, 0.75],
                                               [0.68, 0.70, 0.71])
    self.assertEqual(paired.count, 3)
    self.assertAlmostEqual(paired.mean, 0.033333, 6)
    self.assertAlmostEqual(paired.std, 0.011547, 6)
    self.assertAlmostEqual(paired.low, 0.033333 - 0.028684, 5)
    self.assertAlmostEqual(paired.high, 0.033333 + 0.028684, 5)
    self.assertEqual((paired.wins, paired.losses, paired.ties), (3, 0, 0))
    self.assertAlmostEqual(paired.sign_test_p, 0.25)

  def test_sign_test_drops_ties(self):
    # Differences +, -, 0, +, +: 3 wins, 1 loss, 1 tie; n = 4,
    # P(X <= 1) = (1 + 4) / 16, two-sided 10 / 16 = 0.625.
    paired = seed_statistics.paired_difference(
        [0.6, 0.3, 0.5, 0.8, 0.9], [0.5, 0.5, 0.5, 0.5, 0.5])
    self.assertEqual((paired.wins, paired.losses, paired.ties), (3, 1, 1))
    self.assertAlmostEqual(paired.sign_test_p, 0.625)
    self.assertEqual(seed_statistics.sign_test_p(0, 0), 1.0)
    self.assertEqual(seed_statistics.sign_test_p(2, 2), 1.0)

  def test_one_seed_has_no_interval(self):
    paired = seed_statistics.paired_difference([0.7], [0.6])
    self.assertAlmostEqual(paired.mean, 0.1)
    self.assertIsNone(paired.std)
    self.assertIsNone(paired.low)
    self.assertIsNone(paired.high)

  def test_bad_pairs_raise(self):
    with self.assertRaises(ValueError):
      seed_statistics.paired_difference([0.1, 0.2], [0.1])
    with self.assertRaises(ValueError):
      seed_statistics.paired_difference([0.1], [0.1], confidence=1.0)


class SeedTablesTest(tf.test.TestCase):

  def test_tables_from_fixture_runs(self):
    root = self.create_tempdir().full_path
    # Each run: 4 evaluations, the last (ceil(4 / 4) = 1) is the headline.
    finals = {'fedavg': [0.60, 0.50, 0.70], 'feddst': [0.70, 0.54, 0.75]}
    runs_by_method = {}
    for method, accuracies in finals.items():
      runs_by_method[method] = []
      for seed, final in enumerate(accuracies):
        run_dir = os.path.join(root, method, f'seed_{seed}')
        comparison_test.write_run(run_dir, [0.1, 0.2, 0.3, final], 100,
                                  method=method)
        summary = comparison.summarize_run(run_dir)
        summary[seed_statistics.HEADLINE] = (
            seed_statistics.late_mean_test_accuracy(
                comparison.read_metrics(run_dir)))
        runs_by_method[method].append(summary)
    paths = {key: os.path.join(root, key) for key in (
        'summary_csv', 'paired_csv', 'runs_csv', 'markdown', 'json')}
    seed_statistics.write_seed_tables(runs_by_method, [0, 1, 2], 'fedavg',
                                      paths)
    with open(paths['summary_csv']) as f:
      summary = {r['method']: r for r in csv.DictReader(f)}
    # fedavg: mean 0.6, deviations 0, -0.1, 0.1: std sqrt(0.02 / 2) = 0.1.
    self.assertAlmostEqual(
        float(summary['fedavg']['late_mean_test_accuracy_mean']), 0.6)
    self.assertAlmostEqual(
        float(summary['fedavg']['late_mean_test_accuracy_std']), 0.1)
    self.assertEqual(summary['fedavg']['seeds'], '3')
    self.assertEqual(summary['feddst']['rounds_completed_mean'], '4.0')
    with open(paths['paired_csv']) as f:
      paired = list(csv.DictReader(f))
    # Differences 0.10, 0.04, 0.05: mean 0.19 / 3 = 0.063333; squared
    # deviations 0.0013444 + 0.0005444 + 0.0001778 = 0.0020667, / 2,
    # std 0.032146; half width 4.302653 * 0.032146 / sqrt(3) = 0.079855.
    self.assertLen(paired, 1)
    self.assertEqual(paired[0]['method'], 'feddst')
    self.assertEqual(paired[0]['baseline'], 'fedavg')
    self.assertAlmostEqual(float(paired[0]['difference_mean']), 0.063333, 5)
    self.assertAlmostEqual(float(paired[0]['difference_std']), 0.032146, 5)
    self.assertAlmostEqual(float(paired[0]['interval_low']),
                           0.063333 - 0.079855, 4)
    self.assertAlmostEqual(float(paired[0]['interval_high']),
                           0.063333 + 0.079855, 4)
    self.assertEqual(paired[0]['wins'], '3')
    with open(paths['runs_csv']) as f:
      runs = list(csv.DictReader(f))
    self.assertEqual([(r['method'], r['seed']) for r in runs],
                     [('fedavg', '0'), ('fedavg', '1'), ('fedavg', '2'),
                      ('feddst', '0'), ('feddst', '1'), ('feddst', '2')])
    with open(paths['json']) as f:
      everything = json.load(f)
    self.assertEqual(everything['seeds'], [0, 1, 2])
    self.assertEqual(everything['headline'], 'late_mean_test_accuracy')
    self.assertTrue(math.isclose(everything['paired'][0]['sign_test_p'],
                                 0.25))
    with open(paths['markdown']) as f:
      markdown = f.read()
    self.assertIn('Paired by seed against fedavg', markdown)
    self.assertIn('| feddst | fedavg | 3 | 0.0633 |', markdown)
    with self.assertRaises(FileExistsError):
      seed_statistics.write_seed_tables(runs_by_method, [0, 1, 2], 'fedavg',
                                        paths)

  def test_summarize_seed_runs_adds_the_headline_in_seed_order(self):
    root = self.create_tempdir().full_path
    dirs = {'a': [os.path.join(root, 'a', 's0'), os.path.join(root, 'a', 's1')]}
    # 8 evaluations each: the headline is the mean of the last 2.
    comparison_test.write_run(dirs['a'][0], [0.1] * 6 + [0.4, 0.6], 100)
    comparison_test.write_run(dirs['a'][1], [0.1] * 6 + [0.2, 0.3], 100)
    runs = seed_statistics.summarize_seed_runs(dirs)
    self.assertEqual(list(runs), ['a'])
    self.assertAlmostEqual(runs['a'][0][seed_statistics.HEADLINE], 0.5)
    self.assertAlmostEqual(runs['a'][1][seed_statistics.HEADLINE], 0.25)
    self.assertAlmostEqual(runs['a'][1]['final_test_accuracy'], 0.3)
    with self.assertRaises(comparison.RunDirError):
      seed_statistics.summarize_seed_runs({'b': [os.path.join(root, 'none')]})


if __name__ == '__main__':
  tf.test.main()
