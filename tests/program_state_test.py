"""Tests for tff_feddst.outputs.program_state: the tff.program state manager."""

import asyncio
import collections
import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.outputs import checkpoints
from tff_feddst.outputs import program_state


def make_program_state(round_num: int, seed: int = 0):
  """A state with leaves whose bits are not round numbers (random floats)."""
  rng = np.random.default_rng(seed)
  state = collections.OrderedDict(
      weights=[rng.normal(size=(2, 3)).astype(np.float32),
               rng.normal(size=4)],
      counter=np.int32(round_num))
  return program_state.ProgramState(round_num, state, 100 * round_num,
                                    90 * round_num)


class CheckpointManagerTest(tf.test.TestCase):

  def test_is_a_tff_file_program_state_manager(self):
    manager = program_state.CheckpointManager(
        self.create_tempdir().full_path)
    self.assertIsInstance(manager, tff.program.FileProgramStateManager)
    self.assertEqual(asyncio.run(manager.load_latest(make_program_state(0))),
                     (None, 0))
    self.assertIsNone(asyncio.run(manager.get_versions()))

  def test_round_trip_is_bit_exact(self):
    manager = program_state.CheckpointManager(
        self.create_tempdir().full_path)
    saved = make_program_state(4, seed=1)
    asyncio.run(manager.save(saved, version=4))
    for loaded in (asyncio.run(manager.load(4, make_program_state(0))),
                   asyncio.run(manager.load_latest(make_program_state(0)))[0]):
      self.assertEqual(
          (loaded.round_num, loaded.upload_bytes_cumulative,
           loaded.download_bytes_cumulative), (4, 400, 360))
      for got, want in zip(tf.nest.flatten(loaded.state),
                           tf.nest.flatten(saved.state)):
        self.assertEqual(got.dtype, np.asarray(want).dtype)
        self.assertEqual(got.tobytes(), np.asarray(want).tobytes())
    with self.assertRaises(tff.program.ProgramStateNotFoundError):
      asyncio.run(manager.load(3, make_program_state(0)))

  def test_keeps_the_newest_versions(self):
    directory = self.create_tempdir().full_path
    manager = program_state.CheckpointManager(directory, keep_total=2)
    for round_num in (1, 2, 3, 4):
      asyncio.run(manager.save(make_program_state(round_num), round_num))
    self.assertEqual(asyncio.run(manager.get_versions()), [3, 4])
    self.assertEqual(sorted(os.listdir(directory)),
                     ['ckpt-000003.npz', 'ckpt-000004.npz'])

  def test_damaged_newest_falls_back_to_the_one_before(self):
    directory = self.create_tempdir().full_path
    manager = program_state.CheckpointManager(directory)
    asyncio.run(manager.save(make_program_state(2), 2))
    asyncio.run(manager.save(make_program_state(3), 3))
    newest = checkpoints.checkpoint_path(directory, 3)
    with open(newest, 'r+b') as f:
      f.truncate(os.path.getsize(newest) // 2)
    with self.assertLogs(level='WARNING') as logs:
      loaded, version = asyncio.run(
          manager.load_latest(make_program_state(0)))
    self.assertEqual((loaded.round_num, version), (2, 2))
    self.assertIn('ckpt-000003.npz', '\n'.join(logs.output))
    # Saving round 3 again replaces the damaged file.
    asyncio.run(manager.save(make_program_state(3), 3))
    self.assertEqual(
        asyncio.run(manager.load_latest(make_program_state(0)))[1], 3)

  def test_nothing_usable_is_an_error_not_round_zero(self):
    directory = self.create_tempdir().full_path
    manager = program_state.CheckpointManager(directory)
    asyncio.run(manager.save(make_program_state(2), 2))
    with open(checkpoints.checkpoint_path(directory, 2), 'wb') as f:
      f.write(b'not a checkpoint')
    with self.assertRaisesRegex(checkpoints.CheckpointError, 'ckpt-000002'):
      asyncio.run(manager.load_latest(make_program_state(0)))

  def test_version_must_be_the_round(self):
    manager = program_state.CheckpointManager(
        self.create_tempdir().full_path)
    with self.assertRaisesRegex(ValueError, 'version 5 is not the program '
                                "state's round 4"):
      asyncio.run(manager.save(make_program_state(4), 5))
    with self.assertRaisesRegex(ValueError, 'keep_total must be >= 1'):
      program_state.CheckpointManager(self.create_tempdir().full_path, 0)

  def test_remove_all(self):
    directory = self.create_tempdir().full_path
    manager = program_state.CheckpointManager(directory)
    for round_num in (1, 2):
      asyncio.run(manager.save(make_program_state(round_num), round_num))
    asyncio.run(manager.remove_all())
    self.assertEqual(os.listdir(directory), [])


if __name__ == '__main__':
  tf.test.main()
