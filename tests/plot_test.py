"""Tests for bin/plot.py: figures, and one-line errors for bad input."""

import os
import subprocess
import sys

import tensorflow as tf

from tests import comparison_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT = os.path.join(ROOT, 'bin', 'plot.py')


def run_plot(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, PLOT, *args], capture_output=True,
                        text=True, timeout=120, stdin=subprocess.DEVNULL)


class PlotBinaryTest(tf.test.TestCase):

  def test_writes_the_figures(self):
    root = self.create_tempdir().full_path
    run_dir = os.path.join(root, 'run')
    comparison_test.write_run(run_dir, [0.3, 0.5], 100)
    result = run_plot(f'--run_dirs={run_dir}',
                      f'--output={os.path.join(root, "fig")}')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertTrue(os.path.exists(os.path.join(root, 'fig.png')))

  def test_directory_without_metrics_is_one_line(self):
    root = self.create_tempdir().full_path
    result = run_plot(f'--run_dirs={root}',
                      f'--output={os.path.join(root, "fig")}')
    self.assertEqual(result.returncode, 1)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    self.assertLen(lines, 1, result.stderr)
    self.assertIn('no metrics.csv', lines[0])
    self.assertFalse(os.path.exists(os.path.join(root, 'fig.png')))


if __name__ == '__main__':
  tf.test.main()
