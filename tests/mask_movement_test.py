"""Tests for outputs/mask_movement.py and bin/mask_history.py: rows worked
out by hand on a two-layer history, checkpoint reading and its refusals,
and the script on a real run kept whole by --keep_checkpoints."""

import csv
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from tff_feddst.outputs import mask_movement
from tff_feddst.running import experiment
from tff_feddst.running import settings as settings_lib
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'bin', 'mask_history.py')


def snapshot(round_num, layer_a_mask, layer_a_kernel):
  """Layer A (4 positions) moves; layer B (2x2) keeps one weight of 1.0."""
  return mask_movement.MaskSnapshot(
      round_num=round_num,
      masks=(np.array(layer_a_mask, bool), np.array([[1, 0], [0, 0]], bool)),
      kernels=(np.array(layer_a_kernel, np.float32),
               np.array([[1.0, 0], [0, 0]], np.float32)))


class HistoryRowsTest(absltest.TestCase):

  def test_rows_by_hand(self):
    rows = mask_movement.history_rows([
        snapshot(0, [1, 1, 0, 0], [0.5, -0.2, 0, 0]),
        snapshot(10, [1, 0, 1, 0], [0.4, 0, -0.3, 0]),
        snapshot(20, [0, 0, 1, 1], [0, 0, 0.6, 0.2]),
        snapshot(30, [0, 0, 1, 1], [0, 0, 0.5, 0.1]),
    ])
    self.assertEqual([row['round'] for row in rows], [10, 20, 30])
    self.assertEqual([row['active'] for row in rows], [3, 3, 3])
    # Round 10: position 2 entered, 1 left; 0 of A and B's weight stayed.
    # Round 20: 3 entered, 0 left. Round 30: nothing moved.
    for row, from_initial in zip(rows, (2 / 3, 1 / 3, 1 / 3)):
      self.assertAlmostEqual(row['from_initial'], from_initial)
    self.assertEqual([row['entered'] for row in rows], [1, 1, 0])
    self.assertEqual([row['left'] for row in rows], [1, 1, 0])
    self.assertEqual([row['entered_still_active_next'] for row in rows],
                     [1.0, 1.0, ''])
    self.assertEqual([row['entered_still_active_last'] for row in rows],
                     [1.0, 1.0, ''])
    self.assertAlmostEqual(rows[0]['magnitude_entered'], 0.3, places=6)
    self.assertAlmostEqual(rows[1]['magnitude_entered'], 0.2, places=6)
    self.assertTrue(np.isnan(rows[2]['magnitude_entered']))
    for row, stayed in zip(rows, ((0.4 + 1) / 2, (0.6 + 1) / 2,
                                  (0.5 + 0.1 + 1) / 3)):
      self.assertAlmostEqual(row['magnitude_stayed'], stayed, places=6)
    self.assertAlmostEqual(rows[0]['magnitude_left_before'], 0.2, places=6)
    self.assertAlmostEqual(rows[1]['magnitude_left_before'], 0.4, places=6)
    self.assertTrue(np.isnan(rows[2]['magnitude_left_before']))

  def test_an_entered_position_that_leaves_again(self):
    rows = mask_movement.history_rows([
        snapshot(0, [1, 1, 0, 0], [0.5, 0.2, 0, 0]),
        snapshot(1, [1, 0, 1, 0], [0.5, 0, 0.3, 0]),
        snapshot(2, [1, 0, 0, 1], [0.5, 0, 0, 0.3]),
        snapshot(3, [1, 0, 1, 0], [0.5, 0, 0.3, 0]),
    ])
    # Position 2 entered at 1, left at 2, came back at 3: not active at the
    # next snapshot, active at the last.
    self.assertEqual(rows[0]['entered_still_active_next'], 0.0)
    self.assertEqual(rows[0]['entered_still_active_last'], 1.0)
    self.assertEqual(rows[1]['entered_still_active_last'], 0.0)


class LoadSnapshotTest(absltest.TestCase):

  def write(self, kernel, mask, round_num=4, extra_leaves=1):
    path = os.path.join(self.create_tempdir().full_path, 'ckpt-000004.npz')
    leaves = [kernel, np.zeros(2, np.float32), mask]
    leaves += [np.zeros(3, np.int32)] * extra_leaves  # Other state.
    np.savez(path, round_num=np.int64(round_num),
             **{f'leaf_{i}': leaf for i, leaf in enumerate(leaves)})
    return path

  def load(self, path, num_active=2):
    like_kernel = np.zeros((2, 2), np.float32)
    return mask_movement.load_snapshot(
        path, [like_kernel, np.zeros(2, np.float32)], [like_kernel],
        kernel_indices=[0], mask_indices=[0], num_active=[num_active])

  def test_reads_the_model_leaves(self):
    kernel = np.array([[0.5, 0], [0, -1]], np.float32)
    mask = np.array([[1, 0], [0, 1]], np.float32)
    loaded = self.load(self.write(kernel, mask))
    self.assertEqual(loaded.round_num, 4)
    np.testing.assert_array_equal(loaded.masks[0], mask == 1)
    np.testing.assert_array_equal(loaded.kernels[0], kernel)

  def test_refusals_name_the_file(self):
    good_kernel = np.array([[0.5, 0], [0, -1]], np.float32)
    cases = (
        (good_kernel, np.array([[1, 0], [0, 0.5]], np.float32), 2, 'not 0/1'),
        (good_kernel, np.array([[1, 1], [1, 0]], np.float32), 2,
         'at most 2 ones'),
        (np.array([[0.5, 0.1], [0, -1]], np.float32),
         np.array([[1, 0], [0, 1]], np.float32), 2, 'not zero off its mask'),
        (np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32), 2,
         'leaf_0 is float32'),
    )
    for kernel, mask, num_active, message in cases:
      path = self.write(kernel, mask)
      with self.assertRaisesRegex(mask_movement.MaskHistoryError,
                                  f'{path}: .*{message}'):
        self.load(path, num_active)


class MaskHistoryScriptTest(fixtures.FashionMnistSliceTestCase):
  """A 4-round run kept whole (a checkpoint a round), then the script."""

  def test_run_history_and_bad_input(self):
    run_dir = os.path.join(self.create_tempdir().full_path, 'run')
    config = settings_lib.ExperimentSettings.from_flat(
        data_dir=self.data_dir, data_distribution='dirichlet',
        dirichlet_beta=0.5, total_clients=6, clients_per_round=3,
        total_rounds=4, eval_every=4, client_epochs_per_round=1,
        target_sparsity=0.8, drop_fraction=0.3,
        rounds_between_readjustments=1, annealing='constant', seed=0,
        checkpoint_every=1, keep_checkpoints=10, tensorboard_dir='')
    rows = experiment.run_experiment(config, run_dir)
    self.assertEqual(sorted(os.listdir(os.path.join(run_dir, 'checkpoints'))),
                     [f'ckpt-00000{r}.npz' for r in range(1, 5)])
    output = os.path.join(self.create_tempdir().full_path, 'history.csv')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    result = subprocess.run(
        [sys.executable, SCRIPT, f'--run_dir={run_dir}', f'--output={output}'],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(output, newline='') as f:
      history = list(csv.DictReader(f))
    self.assertEqual([int(row['round']) for row in history], [1, 2, 3, 4])
    # A checkpoint a round sees every move (metrics.csv counts each swap
    # twice), and the mask keeps its size.
    for row, metrics in zip(history, rows):
      self.assertEqual(int(row['entered']), int(row['left']))
      self.assertEqual(2 * int(row['entered']),
                       int(metrics['mask_changed_positions']))
    self.assertGreater(sum(int(row['entered']) for row in history), 0)
    self.assertLen({row['active'] for row in history}, 1)
    self.assertLess(float(history[-1]['from_initial']), 1.0)
    self.assertIn('| round | active |', result.stdout)
    # The output is never overwritten; a directory without a run is refused.
    for args, message in (
        ([f'--run_dir={run_dir}', f'--output={output}'], 'exists'),
        ([f'--run_dir={self.data_dir}'], 'flags.txt and checkpoints/')):
      bad = subprocess.run([sys.executable, SCRIPT, *args],
                           capture_output=True, text=True, env=env,
                           timeout=600, check=False)
      self.assertEqual(bad.returncode, 1)
      lines = [line for line in bad.stderr.splitlines() if line.strip()]
      self.assertLen(lines, 1, bad.stderr)
      self.assertIn(message, lines[0])


class KeepCheckpointsSettingTest(absltest.TestCase):

  def test_must_be_at_least_one(self):
    with self.assertRaisesRegex(settings_lib.ConfigError, 'keep_checkpoints'):
      settings_lib.ExperimentSettings.from_flat(keep_checkpoints=0).validate()


if __name__ == '__main__':
  absltest.main()
