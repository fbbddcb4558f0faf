"""Tests for tff_feddst.outputs.release_managers: each round's releases."""

import asyncio
import os
import types
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import fixtures
from tff_feddst.networks import models
from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import metrics_csv
from tff_feddst.outputs import release_managers
from tff_feddst.outputs import tensorboard_logging

# One prunable 2x2 dense kernel and its bias.
_LAYOUT = models.ModelLayout(
    kernel_indices=(0,), mask_indices=(0,), dense_trainable_indices=(1,),
    dense_non_trainable_indices=(), bookkeeping_indices=(),
    kernel_shapes=((2, 2),), layer_bias_sizes=(2,))
_WEIGHTS = types.SimpleNamespace(
    trainable=[np.array([[1.5, 0.0], [0.0, -2.0]], np.float32),
               np.zeros(2, np.float32)],
    non_trainable=[np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)])


def row(round_num: int, test_accuracy=None) -> dict:
  values = {column: round_num for column in metrics_csv.METRICS_COLUMNS}
  values.update(test_accuracy=test_accuracy, client_test_accuracy=None,
                train_loss=1.0 / round_num, sparsity=0.5, round_seconds=0.25)
  return values


def release_of(round_num: int, test_accuracy=None, weights=_WEIGHTS):
  return release_managers.RoundRelease(row(round_num, test_accuracy),
                                       ('3', '1'), ('3',), weights)


class CountingProcess:
  """Stands in for a LearningProcess: counts `get_model_weights` calls."""

  def __init__(self):
    self.calls = 0
    self.get_model_weights = self._get

  def _get(self, state):
    self.calls += 1
    return ('weights of', state)


class MetricsCsvReleaseManagerTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    self.manager = release_managers.MetricsCsvReleaseManager(self.path)

  def read(self) -> bytes:
    with open(self.path, 'rb') as f:
      return f.read()

  def test_rows_are_appended_in_the_metrics_format(self):
    self.manager.create()
    for round_num in (1, 2):
      asyncio.run(self.manager.release(release_of(round_num, 0.5), round_num))
    header = metrics_csv.csv_line(metrics_csv.METRICS_COLUMNS).encode()
    self.assertEqual(self.read(), header + metrics_csv.row_line(row(1, 0.5))
                     + metrics_csv.row_line(row(2, 0.5)))
    self.assertStartsWith(metrics_csv.row_line(row(2)).decode(),
                          '2,,,0.5,0.5,2,')
    with self.assertRaises(FileExistsError):
      self.manager.create()

  def test_resume_keeps_the_rows_up_to_the_checkpoint_then_appends(self):
    self.manager.create()
    for round_num in (1, 2, 3):
      asyncio.run(self.manager.release(release_of(round_num), round_num))
    with open(self.path, 'ab') as f:
      f.write(b'4,,,0.2')  # Torn by a kill.
    kept = self.manager.resume_after(2)
    self.assertEqual([r['round'] for r in kept], [1, 2])
    self.assertEqual(kept[1]['train_loss'], 0.5)
    asyncio.run(self.manager.release(release_of(3), 3))
    self.assertEqual([r['round'] for r in self.manager.resume_after(9)],
                     [1, 2, 3])

  def test_a_failed_append_leaves_the_file_whole(self):
    self.manager.create()
    asyncio.run(self.manager.release(release_of(1), 1))
    before = self.read()
    with mock.patch.object(os, 'write', fixtures.disk_full_after(5)), \
        self.assertRaisesRegex(atomic_files.WriteError, 'No space left'):
      asyncio.run(self.manager.release(release_of(2), 2))
    self.assertEqual(self.read(), before)

  def test_key_must_be_the_round(self):
    self.manager.create()
    with self.assertRaisesRegex(ValueError, "key 3 is not the row's round 2"):
      asyncio.run(self.manager.release(release_of(2), 3))


class TensorBoardReleaseManagerTest(tf.test.TestCase):

  def test_writes_scalars_and_model_and_resumes(self):
    logdir = self.create_tempdir().full_path
    with tensorboard_logging.TensorBoardWriter(logdir, _LAYOUT) as writer:
      manager = release_managers.TensorBoardReleaseManager(writer)
      for round_num in (1, 2, 3):
        asyncio.run(manager.release(
            release_of(round_num, 0.25 * round_num), round_num))
    scalars = tensorboard_logging.read_scalars(logdir)
    self.assertEqual(scalars['accuracy/test'],
                     [(1, 0.25), (2, 0.5), (3, 0.75)])
    self.assertEqual(scalars['density/0_dense_2x2'],
                     [(1, 0.5), (2, 0.5), (3, 0.5)])
    # A resumed run after round 2 logs round 3 again: once in the files.
    with tensorboard_logging.TensorBoardWriter(logdir, _LAYOUT) as writer:
      manager = release_managers.TensorBoardReleaseManager(writer)
      manager.resume_after([row(1, 0.25), row(2, 0.5)])
      asyncio.run(manager.release(release_of(3, 0.875), 3))
    self.assertEqual(
        tensorboard_logging.read_scalars(logdir, 'accuracy/test'),
        {'accuracy/test': [(1, 0.25), (2, 0.5), (3, 0.875)]})


class ProgressBarReleaseManagerTest(tf.test.TestCase):

  def test_one_step_per_round_with_the_row_in_the_postfix(self):
    bar = mock.Mock()
    manager = release_managers.ProgressBarReleaseManager(bar)
    asyncio.run(manager.release(release_of(2), 2))
    asyncio.run(manager.release(release_of(4, 0.8125), 4))
    self.assertEqual(bar.update.call_args_list, [mock.call(1)] * 2)
    self.assertEqual(bar.set_postfix.call_args_list, [
        mock.call({'loss': '0.500', 'mask_moved': 2}),
        mock.call({'loss': '0.250', 'mask_moved': 4, 'acc': '0.8125'})])


class CallbackReleaseManagerTest(tf.test.TestCase):

  def test_model_then_row_and_weights_fetched_once_only_if_asked(self):
    process = CountingProcess()
    calls = []
    manager = release_managers.CallbackReleaseManager(
        on_round_end=lambda r: calls.append(('row', r['round'])),
        on_model_weights=lambda n, w: calls.append(('model', n, w)))
    reference = release_managers.ModelWeightsReference(process, 'state-5')
    asyncio.run(manager.release(release_of(5, weights=reference), 5))
    asyncio.run(manager.release(release_of(5, weights=reference), 5))
    self.assertEqual(calls[:2], [('model', 5, ('weights of', 'state-5')),
                                 ('row', 5)])
    self.assertEqual(process.calls, 1)
    # Without `on_model_weights`, nothing is fetched.
    fresh = release_managers.ModelWeightsReference(process, 'state-6')
    asyncio.run(release_managers.CallbackReleaseManager(
        on_round_end=lambda r: None).release(release_of(6, weights=fresh), 6))
    self.assertEqual(process.calls, 1)
    # Weights fetched already (for evaluation) are not fetched again.
    known = release_managers.ModelWeightsReference(process, 'state-7',
                                                   weights='known')
    self.assertEqual(asyncio.run(tff.program.materialize_value(known)),
                     'known')
    self.assertEqual(process.calls, 1)


class SequentialReleaseManagerTest(tf.test.TestCase):

  def test_in_order_and_the_first_failure_stops_the_rest(self):
    order = []

    class Recording(tff.program.ReleaseManager):

      def __init__(self, name, fails=False):
        self.name, self.fails = name, fails

      async def release(self, value, key):
        order.append((self.name, value, key))
        if self.fails:
          raise OSError('full')

    manager = release_managers.SequentialReleaseManager(
        [Recording('a'), Recording('b')])
    asyncio.run(manager.release('v', 1))
    self.assertEqual(order, [('a', 'v', 1), ('b', 'v', 1)])
    order.clear()
    failing = release_managers.SequentialReleaseManager(
        [Recording('a', fails=True), Recording('b')])
    with self.assertRaisesRegex(OSError, 'full'):
      asyncio.run(failing.release('v', 2))
    self.assertEqual(order, [('a', 'v', 2)])


if __name__ == '__main__':
  tf.test.main()
