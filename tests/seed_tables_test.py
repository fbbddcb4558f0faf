"""Tests for bin/seed_tables.py: variants from separate directories paired."""

import csv
import os
import subprocess
import sys

import tensorflow as tf

from tests import comparison_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_TABLES = os.path.join(ROOT, 'bin', 'seed_tables.py')


def run_seed_tables(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, SEED_TABLES, *args],
                        capture_output=True, text=True, timeout=120,
                        stdin=subprocess.DEVNULL)


class SeedTablesBinaryTest(tf.test.TestCase):

  def _write_variants(self, root: str) -> dict[str, str]:
    """Two variants in separate compare.py-like directories, seeds 0 and 3."""
    # 4 evaluations per run: the headline is the last one.
    finals = {'base': {0: 0.50, 3: 0.70}, 'moved': {0: 0.58, 3: 0.74}}
    directories = {'base': os.path.join(root, 'cmp_a', 'randommask'),
                   'moved': os.path.join(root, 'cmp_b', 'feddst')}
    for label, by_seed in finals.items():
      for seed, final in by_seed.items():
        comparison_test.write_run(
            os.path.join(directories[label], f'seed_{seed}'),
            [0.1, 0.2, 0.3, final], 100)
    return directories

  def test_pairs_variants_from_separate_directories(self):
    root = self.create_tempdir().full_path
    directories = self._write_variants(root)
    output_dir = os.path.join(root, 'paired')
    result = run_seed_tables(
        f'--runs=moved={directories["moved"]},base={directories["base"]}',
        '--seeds=0,3', '--baseline_method=base', f'--output_dir={output_dir}')
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(os.path.join(output_dir, 'paired.csv')) as f:
      paired = list(csv.DictReader(f))
    # moved - base: 0.08 on seed 0, 0.04 on seed 3; mean 0.06, std
    # sqrt(2 * 0.02^2 / 1) = 0.028284; half width 12.706205 * 0.028284 /
    # sqrt(2) = 0.254124.
    self.assertLen(paired, 1)
    self.assertEqual((paired[0]['method'], paired[0]['baseline']),
                     ('moved', 'base'))
    self.assertAlmostEqual(float(paired[0]['difference_mean']), 0.06)
    self.assertAlmostEqual(float(paired[0]['interval_low']), 0.06 - 0.254124,
                           5)
    self.assertEqual(paired[0]['wins'], '2')
    with open(os.path.join(output_dir, 'runs.csv')) as f:
      runs = [(r['seed'], r['final_test_accuracy'])
              for r in csv.DictReader(f)]
    self.assertEqual(runs, [('0', '0.58'), ('3', '0.74'), ('0', '0.5'),
                            ('3', '0.7')])
    for name in ('summary.csv', 'summary.md', 'statistics.json',
                 'accuracy.png', 'accuracy.svg'):
      self.assertTrue(os.path.exists(os.path.join(output_dir, name)), name)
    # A second call does not overwrite the tables.
    again = run_seed_tables(
        f'--runs=base={directories["base"]}', '--seeds=0,3',
        f'--output_dir={output_dir}')
    self.assertEqual(again.returncode, 1)
    self.assertIn('not empty', again.stderr)

  def test_bad_input_is_one_line(self):
    root = self.create_tempdir().full_path
    directories = self._write_variants(root)
    output_dir = os.path.join(root, 'out')
    cases = {
        'label=directory': [f'--runs={directories["base"]}', '--seeds=0,3'],
        '--seeds=0': [f'--runs=base={directories["base"]}', '--seeds=0'],
        '--baseline_method=other': [f'--runs=base={directories["base"]}',
                                    '--seeds=0,3', '--baseline_method=other'],
        'no metrics.csv': [f'--runs=base={directories["base"]}',
                           '--seeds=0,1'],
    }
    for expected, args in cases.items():
      result = run_seed_tables(*args, f'--output_dir={output_dir}')
      self.assertEqual(result.returncode, 1, expected)
      lines = [l for l in result.stderr.splitlines() if l.strip()]
      self.assertLen(lines, 1, result.stderr)
      self.assertIn(expected, lines[0])
      self.assertFalse(os.path.exists(output_dir), expected)


if __name__ == '__main__':
  tf.test.main()
