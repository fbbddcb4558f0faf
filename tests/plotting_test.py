"""Tests for tff_feddst.outputs.plotting: figures from fixture metrics files."""

import os

import tensorflow as tf

from tests import comparison_test
from tff_feddst.outputs import comparison
from tff_feddst.outputs import plotting


class PlottingTest(tf.test.TestCase):

  def test_png_and_svg_from_fixture_runs(self):
    root = self.create_tempdir().full_path
    comparison_test.write_run(os.path.join(root, 'dense'), [None, 0.4, 0.6],
                              1_000_000, method='fedavg')
    comparison_test.write_run(os.path.join(root, 'sparse'), [None, 0.5, 0.7],
                              250_000, method='feddst')
    paths = plotting.plot_runs(
        [os.path.join(root, 'dense'), os.path.join(root, 'sparse')],
        os.path.join(root, 'figure'), title='fixture')
    self.assertEqual(paths, [os.path.join(root, 'figure.png'),
                             os.path.join(root, 'figure.svg')])
    with open(paths[0], 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    with open(paths[1]) as f:
      svg = f.read()
    self.assertIn('<svg', svg)
    self.assertIn('feddst', svg)  # Legend text.
    with self.assertRaises(FileExistsError):
      plotting.plot_runs([os.path.join(root, 'dense')],
                         os.path.join(root, 'figure'))

  def test_personalised_accuracy_gets_its_own_line(self):
    root = self.create_tempdir().full_path
    comparison_test.write_run(os.path.join(root, 'lottery'), [None, 0.4, 0.6],
                              500_000, method='lotteryfl',
                              personal_offset=0.2)
    paths = plotting.plot_runs([os.path.join(root, 'lottery')],
                               os.path.join(root, 'figure'))
    with open(paths[1]) as f:
      svg = f.read()
    self.assertIn('lotteryfl (personalised, local test)', svg)

  def test_seed_bands_from_fixture_runs(self):
    root = self.create_tempdir().full_path
    run_dirs = {'fedavg': [], 'feddst': []}
    for seed, shift in enumerate((0.0, 0.1)):
      for method in run_dirs:
        run_dir = os.path.join(root, method, f'seed_{seed}')
        comparison_test.write_run(run_dir, [None, 0.4 + shift, 0.6 + shift],
                                  1000, method=method)
        run_dirs[method].append(run_dir)
    paths = plotting.plot_seed_bands(run_dirs, os.path.join(root, 'bands'),
                                     title='fixture')
    with open(paths[0], 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    with open(paths[1]) as f:
      svg = f.read()
    self.assertIn('feddst (n=2)', svg)  # Legend text.
    with self.assertRaises(FileExistsError):
      plotting.plot_seed_bands(run_dirs, os.path.join(root, 'bands'))

  def test_run_without_metrics_raises(self):
    root = self.create_tempdir().full_path
    with self.assertRaises(comparison.RunDirError):
      plotting.plot_runs([root], os.path.join(root, 'figure'))


if __name__ == '__main__':
  tf.test.main()
