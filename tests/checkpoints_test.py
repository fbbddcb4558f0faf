"""Tests for tff_feddst.outputs.checkpoints: atomic save, keep-N, fallback."""

import collections
import os

import numpy as np
import tensorflow as tf

from tff_feddst.outputs import checkpoints


def make_state(value: float):
  return collections.OrderedDict(
      weights=[np.full((2, 3), value, np.float32), np.arange(4.0)],
      round_num=np.int32(int(value)))


class CheckpointsTest(tf.test.TestCase):

  def test_round_trip(self):
    directory = self.create_tempdir().full_path
    checkpoints.save_checkpoint(directory, 4, make_state(4.0), 100, 90)
    loaded = checkpoints.load_latest_checkpoint(directory, make_state(0.0))
    self.assertEqual(loaded.round_num, 4)
    self.assertEqual((loaded.upload_bytes_cumulative,
                      loaded.download_bytes_cumulative), (100, 90))
    tf.nest.map_structure(self.assertAllEqual, loaded.state, make_state(4.0))

  def test_keeps_the_newest_and_leaves_no_temporary_file(self):
    directory = self.create_tempdir().full_path
    for round_num in (2, 4, 6, 8):
      checkpoints.save_checkpoint(directory, round_num,
                                  make_state(round_num), 0, 0, keep=3)
    self.assertEqual([r for r, _ in checkpoints.list_checkpoints(directory)],
                     [8, 6, 4])
    self.assertEqual(sorted(os.listdir(directory)),
                     ['ckpt-000004.npz', 'ckpt-000006.npz', 'ckpt-000008.npz'])

  def test_corrupt_latest_falls_back_to_previous(self):
    directory = self.create_tempdir().full_path
    checkpoints.save_checkpoint(directory, 2, make_state(2.0), 0, 0)
    latest = checkpoints.save_checkpoint(directory, 4, make_state(4.0), 0, 0)
    with open(latest, 'r+b') as f:
      f.truncate(os.path.getsize(latest) // 2)
    with self.assertLogs(level='WARNING') as logs:
      loaded = checkpoints.load_latest_checkpoint(directory, make_state(0.0))
    self.assertEqual(loaded.round_num, 2)
    self.assertIn('ckpt-000004.npz', '\n'.join(logs.output))

  def test_no_usable_checkpoint_is_an_error_not_round_zero(self):
    directory = self.create_tempdir().full_path
    path = checkpoints.save_checkpoint(directory, 2, make_state(2.0), 0, 0)
    with open(path, 'wb') as f:
      f.write(b'not a checkpoint')
    with self.assertRaisesRegex(checkpoints.CheckpointError, 'ckpt-000002'):
      checkpoints.load_latest_checkpoint(directory, make_state(0.0))
    self.assertIsNone(checkpoints.load_latest_checkpoint(
        self.create_tempdir().full_path, make_state(0.0)))

  def test_checkpoint_of_another_process_is_rejected(self):
    directory = self.create_tempdir().full_path
    checkpoints.save_checkpoint(directory, 2, make_state(2.0), 0, 0)
    other = collections.OrderedDict(weights=[np.zeros((5,), np.float32)])
    with self.assertRaises(checkpoints.CheckpointError):
      checkpoints.load_latest_checkpoint(directory, other)


if __name__ == '__main__':
  tf.test.main()
