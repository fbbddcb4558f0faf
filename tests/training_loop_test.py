"""Tests for tff_feddst.running.training_loop: metrics rows and metrics.csv."""

import asyncio
import collections
import csv
import os
import types

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import client_sampling_test
from tff_feddst.outputs import release_managers
from tff_feddst.running import client_sampling
from tff_feddst.running import evaluation
from tff_feddst.running import measurements
from tff_feddst.running import training_loop


def round_metrics(num_clients=3, rejected_clients=None):
  aggregator = collections.OrderedDict(upload_bytes=100,
                                       num_clients=num_clients)
  if rejected_clients is not None:
    aggregator['rejected_clients'] = rejected_clients
  return collections.OrderedDict(
      aggregator=aggregator,
      distributor=collections.OrderedDict(download_bytes=50),
      client_work=collections.OrderedDict(train_loss=0.5),
      finalizer=collections.OrderedDict(sparsity=0.8,
                                        mask_changed_positions=4))


class RunSyncTest(tf.test.TestCase):
  """The loop's coroutines run with or without an event loop in the thread."""

  def test_without_a_running_loop(self):
    async def answer():
      return 42
    self.assertEqual(training_loop._run_sync(answer()), 42)  # pylint: disable=protected-access

  def test_inside_a_running_loop_as_in_jupyter(self):
    async def answer():
      return 42

    async def fails():
      raise ValueError('from the coroutine')

    async def kernel():
      # Synchronous calls from code running under a loop, as in a notebook.
      value = training_loop._run_sync(answer())  # pylint: disable=protected-access
      with self.assertRaisesRegex(ValueError, 'from the coroutine'):
        training_loop._run_sync(fails())  # pylint: disable=protected-access
      return value

    self.assertEqual(asyncio.run(kernel()), 42)


class MetricsRowTest(tf.test.TestCase):

  def test_rejected_clients_count_as_reported(self):
    row = training_loop.metrics_row(
        1, round_metrics(num_clients=3, rejected_clients=1), None,
        {'upload': 0, 'download': 0}, 1.0, clients_sampled=5)
    self.assertEqual(row['rejected_clients'], 1)
    self.assertEqual(row['clients_reported'], 4)  # 3 aggregated + 1.
    self.assertEqual(tuple(row), training_loop.METRICS_COLUMNS)

  def test_aggregator_without_validation_rejects_nobody(self):
    row = training_loop.metrics_row(
        1, round_metrics(), None, {'upload': 0, 'download': 0}, 1.0,
        clients_sampled=3)
    self.assertEqual(row['rejected_clients'], 0)
    self.assertEqual(row['clients_reported'], 3)


class TruncateMetricsTest(tf.test.TestCase):

  def test_file_from_before_rejected_clients_is_rewritten_and_parsed(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    columns = training_loop.METRICS_COLUMNS
    self.assertIn('rejected_clients', columns)
    old_columns = columns[:columns.index('rejected_clients')]
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(old_columns)
      for round_num in (1, 2, 3):
        writer.writerow([round_num, '', '', 0.25, 0.8, 4, 100, 50,
                         100 * round_num, 50 * round_num, 1.5, 3, 3])
    rows = training_loop.truncate_metrics(path, 2)
    self.assertLen(rows, 2)
    self.assertIsNone(rows[0]['rejected_clients'])
    self.assertEqual(rows[1]['upload_bytes_cumulative'], 200)
    # The kept rows now have every column, so a second resume parses them.
    with open(path, newline='') as f:
      records = list(csv.DictReader(f))
    self.assertEqual(list(records[0]), list(training_loop.METRICS_COLUMNS))
    self.assertEqual(records[1]['rejected_clients'], '')
    self.assertEqual(records[1]['train_loss'], '0.25')
    self.assertEqual(training_loop.truncate_metrics(path, 2), rows)

  # Zeros for the columns after rejected_clients (server_update_failed).
  MORE = ',0' * (len(training_loop.METRICS_COLUMNS) - 14)

  def write_rows(self, path: str, last_line: str) -> None:
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(training_loop.METRICS_COLUMNS)
      for round_num in (1, 2, 3):
        writer.writerow([round_num, '', '', 0.25, 0.8, 4, 100, 50,
                         100 * round_num, 50 * round_num, 1.5, 3, 3, 0] +
                        [0] * (len(training_loop.METRICS_COLUMNS) - 14))
      f.write(last_line)

  def test_a_row_torn_by_a_kill_is_dropped(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    # A kill while round 12's row was written: its first characters, '1',
    # would pass for round 1 if the line were parsed.
    for torn in ('1', '12,,,0.25,0.8,4,100,50,1200,600,1.5,3,3,0' +
                 self.MORE + '\r',
                 '12,,,0.25,0.8\r\n'):
      self.write_rows(path, torn)
      rows = training_loop.truncate_metrics(path, 12)
      self.assertEqual([row['round'] for row in rows], [1, 2, 3], torn)
      with open(path, newline='') as f:
        self.assertLen(f.read().splitlines(), 4)
      self.assertEqual(os.listdir(os.path.dirname(path)), ['metrics.csv'])

  def test_a_damaged_row_before_the_last_is_an_error(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    self.write_rows(path, '4,x\r\n5,,,0.25,0.8,4,100,50,500,250,1.5,3,3,0' +
                    self.MORE + '\r\n')
    with self.assertRaisesRegex(training_loop.MetricsFileError,
                                'metrics.csv: line 5 is damaged'):
      training_loop.truncate_metrics(path, 5)


class _Computation:
  """A callable with a type signature, as a process's `next` is."""

  def __init__(self, function, result_type: tff.Type):
    self._function = function
    self.type_signature = types.SimpleNamespace(result=result_type)

  def __call__(self, *args):
    return self._function(*args)


class StandInProcess:
  """A process in plain Python: the state counts examples seen so far.

  Each round uploads 100 bytes per reporting client and downloads 10 per
  client; `next` has a type signature with the measurements it reports
  (less `drop`, a `(part, key)`).
  """

  def __init__(self, drop=None):
    self._drop = drop
    metrics_type = tff.types.to_type(tf.nest.map_structure(
        lambda value: np.asarray(value).dtype.type, self._metrics(1.0, 1)))
    self.next = _Computation(self._next, tff.StructType([
        ('state', tff.FederatedType(np.float64, tff.SERVER)),
        ('metrics', tff.FederatedType(metrics_type, tff.SERVER))]))

  def _metrics(self, state: float, num_clients: int):
    metrics = collections.OrderedDict(
        distributor=collections.OrderedDict(
            download_bytes=np.int64(10 * num_clients)),
        client_work=collections.OrderedDict(
            train_loss=np.float32(1.0 / (1.0 + state))),
        aggregator=collections.OrderedDict(
            upload_bytes=np.int64(100 * num_clients),
            num_clients=np.int32(num_clients)),
        finalizer=collections.OrderedDict(
            sparsity=np.float32(0.5),
            mask_changed_positions=np.int64(int(state) % 7)))
    if self._drop is not None:
      del metrics[self._drop[0]][self._drop[1]]
    return metrics

  def initialize(self):
    return np.float64(0.0)

  def _next(self, state, datasets):
    examples = sum(int(y.shape[0]) for d in datasets for _, y in d)
    new_state = state + examples + 0.125
    return types.SimpleNamespace(
        state=new_state, metrics=self._metrics(new_state, len(datasets)))

  def get_model_weights(self, state):
    return types.SimpleNamespace(trainable=[np.float64(state)],
                                 non_trainable=[])


class FailingProcess(StandInProcess):
  """A `StandInProcess` whose listed rounds fail.

  `failures` maps a round to 'guard' (the server refused a non-finite
  model), 'rejected' (every upload rejected) or 'absent' (every client
  dropped out: no upload, not a failure). A failed round keeps the state.
  """

  def __init__(self, failures):
    self._failures = failures
    self._round = 0
    super().__init__()

  def _metrics(self, state, num_clients, failure=None):
    metrics = super()._metrics(state, num_clients)
    metrics['aggregator']['rejected_clients'] = np.int32(
        num_clients if failure == 'rejected' else 0)
    if failure in ('rejected', 'absent'):
      metrics['aggregator']['num_clients'] = np.int32(0)
    metrics['finalizer']['server_update_failed'] = np.int32(
        failure == 'guard')
    return metrics

  def initialize(self):
    self._round = 0
    return super().initialize()

  def _next(self, state, datasets):
    self._round = round_num = self._round + 1
    failure = self._failures.get(round_num)
    if failure is None:
      return super()._next(state, datasets)
    return types.SimpleNamespace(
        state=state, metrics=self._metrics(state, len(datasets), failure))


class StandInEvaluator:

  def evaluate(self, weights):
    value = float(weights.trainable[0])
    return evaluation.EvalResult(value % 1.0, value % 0.5)


class RunTrainingTest(tf.test.TestCase):
  """The loop itself, with a stand-in process on the sampling test's data."""

  def run_loop(self, output_dir, **kwargs):
    settings = dict(total_rounds=4, clients_per_round=3, batch_size=2,
                    seed=5, eval_every=2,
                    metrics_path=os.path.join(output_dir, 'metrics.csv'),
                    checkpoint_dir=os.path.join(output_dir, 'checkpoints'))
    settings.update(kwargs)
    process = settings.pop('process', None) or StandInProcess()
    return training_loop.run_training(
        process, client_sampling_test.federated_data(), StandInEvaluator(),
        **settings)

  def test_client_ids_reach_the_hook_and_every_release_manager(self):
    hooked, released = [], []

    class Recording(tff.program.ReleaseManager):

      async def release(self, value, key):
        released.append((key, value))

    _, rows, _ = self.run_loop(
        self.create_tempdir().full_path, dropout_rate=0.4,
        on_round_clients=hooked.append, release_managers=[Recording()])
    data = client_sampling_test.federated_data()
    for round_num, (clients, (key, value)) in enumerate(
        zip(hooked, released), start=1):
      sampled = client_sampling.sample_clients(data.client_ids, 3, 5,
                                               round_num)
      self.assertEqual(clients.sampled_ids, tuple(sampled))
      self.assertEqual(clients.client_ids,
                       tuple(client_sampling.drop_out(sampled, 0.4, 5,
                                                      round_num)))
      self.assertEqual(key, round_num)
      self.assertIsInstance(value, release_managers.RoundRelease)
      self.assertEqual((value.sampled_ids, value.client_ids),
                       (clients.sampled_ids, clients.client_ids))
      self.assertIs(value.metrics, rows[round_num - 1])
      self.assertEqual(rows[round_num - 1]['clients_reported'],
                       len(clients.client_ids))
    self.assertLen(hooked, 4)
    self.assertTrue(any(c.num_dropped for c in hooked))

  def test_resume_gives_the_rows_and_state_of_the_uninterrupted_run(self):
    whole_dir, cut_dir = (self.create_tempdir().full_path for _ in range(2))
    state, rows, _ = self.run_loop(whole_dir, checkpoint_every=2)
    # Stopped after round 3, its checkpoint lost: resume from round 2.
    self.run_loop(cut_dir, total_rounds=3, checkpoint_every=2)
    os.remove(os.path.join(cut_dir, 'checkpoints', 'ckpt-000003.npz'))
    kept = []
    resumed_state, resumed_rows, _ = self.run_loop(
        cut_dir, checkpoint_every=2, resume=True, on_start=kept.extend)
    self.assertEqual([r['round'] for r in kept], [1, 2])
    self.assertEqual(np.float64(resumed_state).tobytes(),
                     np.float64(state).tobytes())

    def without_timing(table):
      return [{k: v for k, v in r.items() if k != 'round_seconds'}
              for r in table]
    self.assertEqual(without_timing(resumed_rows), without_timing(rows))
    with open(os.path.join(whole_dir, 'metrics.csv')) as whole, open(
        os.path.join(cut_dir, 'metrics.csv')) as cut:
      self.assertEqual(without_timing(list(csv.DictReader(cut))),
                       without_timing(list(csv.DictReader(whole))))

  def test_budget_stops_before_it_is_exceeded_and_evaluates_the_last(self):
    bounds = []

    def round_upload_bytes(round_num, state):
      bounds.append(round_num)
      return 300  # 3 clients x 100 bytes.

    _, rows, stop_reason = self.run_loop(
        self.create_tempdir().full_path, eval_every=5,
        upload_budget_bytes=700, round_upload_bytes=round_upload_bytes)
    self.assertEqual(stop_reason, 'upload_budget')
    self.assertEqual([r['upload_bytes_cumulative'] for r in rows], [300, 600])
    self.assertIsNone(rows[0]['test_accuracy'])
    self.assertIsNotNone(rows[1]['test_accuracy'])  # The last round.
    self.assertEqual(bounds, [1, 2, 3])  # Once per round.
    with self.assertRaisesRegex(ValueError, 'round_upload_bytes is required'):
      self.run_loop(self.create_tempdir().full_path, upload_budget_bytes=700)

  def test_consecutive_failed_rounds_stop_with_a_checkpoint(self):
    output_dir = self.create_tempdir().full_path
    kept = []
    process = FailingProcess({2: 'guard', 3: 'rejected', 4: 'guard'})
    with self.assertRaisesRegex(
        training_loop.FailedRoundsError,
        r'^rounds 2-4 failed in a row .*the model of round 1 is kept$'
    ) as raised:
      self.run_loop(output_dir, process=process, total_rounds=6,
                    max_failed_rounds=3,
                    on_round_state=lambda r, s, c: kept.append((r, s)))
    error = raised.exception
    self.assertEqual(error.rounds, [2, 3, 4])
    self.assertEqual(error.checkpoint_path,
                     os.path.join(output_dir, 'checkpoints',
                                  'ckpt-000004.npz'))
    self.assertTrue(os.path.exists(error.checkpoint_path))
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r['round'] for r in rows], ['1', '2', '3', '4'])
    self.assertEqual([r['server_update_failed'] for r in rows],
                     ['0', '1', '0', '1'])
    self.assertEqual([r['rejected_clients'] for r in rows],
                     ['0', '0', '3', '0'])
    # Failed rounds kept round 1's state; --resume continues after round 4.
    self.assertEqual(kept[-1], (4, kept[1][1]))
    resumed = []
    state, rows, _ = self.run_loop(
        output_dir, process=FailingProcess({}), total_rounds=6, resume=True,
        max_failed_rounds=3, on_start=resumed.extend)
    self.assertEqual([r['round'] for r in resumed], [1, 2, 3, 4])
    self.assertEqual([r['round'] for r in rows], [1, 2, 3, 4, 5, 6])
    self.assertGreater(state, kept[-1][1])

  def test_failures_that_are_not_consecutive_or_not_failures_go_on(self):
    # 'absent' (every client dropped out) is no failure; 2, 4 and 6 are
    # not consecutive.
    failures = {2: 'guard', 3: 'absent', 4: 'rejected', 6: 'guard'}
    _, rows, stop_reason = self.run_loop(
        self.create_tempdir().full_path, process=FailingProcess(failures),
        total_rounds=6, max_failed_rounds=2)
    self.assertEqual(stop_reason, 'total_rounds')
    self.assertLen(rows, 6)
    # 0: never stop, even when every round fails.
    _, rows, _ = self.run_loop(
        self.create_tempdir().full_path,
        process=FailingProcess({r: 'guard' for r in range(1, 7)}),
        total_rounds=6, max_failed_rounds=0)
    self.assertEqual([r['server_update_failed'] for r in rows], [1] * 6)

  def test_process_missing_a_measurement_fails_before_writing(self):
    output_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(measurements.MissingMeasurementError,
                                'finalizer/sparsity'):
      self.run_loop(output_dir,
                    process=StandInProcess(drop=('finalizer', 'sparsity')))
    self.assertEqual(os.listdir(output_dir), [])


if __name__ == '__main__':
  tf.test.main()
