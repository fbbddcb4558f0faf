"""Tests for --client_runtime=tflite (ondevice/tflite_rounds.py) through
bin/train.py: the same rounds as the TF clients', a pool of client processes
that gives the serial run's bits, stopped runs (serial and pooled) that
resume bit for bit, no pool process left behind, and the settings the
TFLite runtime refuses."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from absl.testing import parameterized
import numpy as np

from tff_feddst.ondevice import kept_model
from tff_feddst.outputs import run_files
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'bin', 'train.py')
NUM_ROUNDS = 4
# Round 1 readjusts (drop fraction 0.3 * cosine decay to round 4), round 3
# too; two local epochs, so regrown weights train before the upload.
RUN_FLAGS = ('--total_clients=6', '--clients_per_round=3',
             f'--total_rounds={NUM_ROUNDS}', '--client_epochs_per_round=2',
             '--client_batch_size=32', '--rounds_between_readjustments=2',
             '--annealing_end_round=4', '--drop_fraction=0.3',
             '--target_sparsity=0.8', '--eval_every=2', '--checkpoint_every=1',
             '--seed=3', '--tensorboard_dir=')
TIMING = 'round_seconds'
POOL = '--tflite_client_processes=2'


def read_metrics(output_dir: str) -> list[dict[str, str]]:
  with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
    return list(csv.DictReader(f))


def metrics_without_timing(output_dir: str) -> list[list[str]]:
  with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
    rows = list(csv.reader(f))
  timing = rows[0].index(TIMING)
  return [row[:timing] + row[timing + 1:] for row in rows]


def load_weights(output_dir: str):
  return run_files.load_model_weights(os.path.join(output_dir,
                                                   'global_model.npz'))


def kept_model_file(output_dir: str) -> tuple[int, bytes]:
  """The inode and the bytes of a run's kept `training.tflite`."""
  path = os.path.join(output_dir, kept_model.MODEL_NAME)
  with open(path, 'rb') as f:
    return os.stat(path).st_ino, f.read()


def session_processes(session_id: int, seconds: float = 10.0) -> list[int]:
  """The ids of the processes left in a session (a train.py run started in
  a new session, its pool processes and their helpers, e.g.
  multiprocessing's resource tracker, which ends when it sees its parent
  gone) after waiting up to `seconds` for them to end."""
  deadline = time.monotonic() + seconds
  while True:
    found = []
    for name in os.listdir('/proc'):
      if name.isdigit():
        try:
          if os.getsid(int(name)) == session_id:
            found.append(int(name))
        except (ProcessLookupError, PermissionError):
          pass
    if not found or time.monotonic() > deadline:
      return found
    time.sleep(0.1)


class TFLiteRoundsTest(fixtures.FashionMnistSliceTestCase):
  """One TF run and TFLite runs (whole, stopped and resumed) of 4 rounds."""

  @classmethod
  def train_args(cls, runtime: str, output_dir: str, *more: str) -> list[str]:
    return [sys.executable, TRAIN, '--noprogress',
            f'--data_dir={cls.data_dir}', *RUN_FLAGS,
            f'--client_runtime={runtime}', f'--output_dir={output_dir}',
            *more]

  @classmethod
  def run_train(cls, runtime: str, output_dir: str, *more: str) -> None:
    """Runs train.py in a new session; fails if it fails or leaves a
    process of that session behind."""
    process = subprocess.Popen(
        cls.train_args(runtime, output_dir, *more), env=cls.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, stderr = process.communicate(timeout=900)
    if process.returncode != 0:
      raise AssertionError(f'train.py {runtime} failed: {stderr}')
    cls.left_behind[output_dir] = session_processes(process.pid)

  @classmethod
  def run_stopped(cls, output_dir: str, *more: str) -> tuple[int, str, int]:
    """A TFLite run stopped by SIGTERM once round 2's row is written:
    mid-round 3 (a TFLite round checks for a stop between clients, and with
    a pool while it awaits an upload) or right after it. Returns its exit
    code, its stderr and how many processes of its session remain."""
    process = subprocess.Popen(
        cls.train_args('tflite', output_dir, *more), env=cls.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics_path = os.path.join(output_dir, 'metrics.csv')
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
      if os.path.exists(metrics_path):
        with open(metrics_path) as f:
          if len(f.read().splitlines()) >= 3:
            break
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    return (process.returncode, stderr,
            len(session_processes(process.pid)))

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    cls.left_behind = {}
    cls.root = os.path.join(cls.data_dir, 'runs')
    (cls.tf_dir, cls.tflite_dir, cls.stopped_dir, cls.stopped_pool_dir) = (
        os.path.join(cls.root, name)
        for name in ('tf', 'tflite', 'stopped', 'stopped_pool'))
    cls.run_train('tf', cls.tf_dir)
    cls.run_train('tflite', cls.tflite_dir)
    cls.stopped = cls.run_stopped(cls.stopped_dir)
    cls.stopped_rows = len(read_metrics(cls.stopped_dir))
    # The kept training model's file before each resume, to tell whether
    # the resume wrote it again: (inode, bytes).
    cls.kept_before = {cls.stopped_dir: kept_model_file(cls.stopped_dir)}
    # Resumed with a pool: the pool's size may change on --resume.
    cls.run_train('tflite', cls.stopped_dir, '--resume', POOL)
    # Pooled from round 1 (so no separate whole pooled run is needed).
    cls.stopped_pool = cls.run_stopped(cls.stopped_pool_dir, POOL)
    cls.stopped_pool_rows = len(read_metrics(cls.stopped_pool_dir))
    cls.kept_before[cls.stopped_pool_dir] = kept_model_file(
        cls.stopped_pool_dir)
    cls.run_train('tflite', cls.stopped_pool_dir, '--resume', POOL)

  def assert_same_run(self, got_dir: str, want_dir: str) -> None:
    """metrics.csv (timing aside) and global_model.npz bit for bit."""
    self.assertEqual(metrics_without_timing(got_dir),
                     metrics_without_timing(want_dir))
    got, want = load_weights(got_dir), load_weights(want_dir)
    for got_array, want_array in zip(got.trainable + got.non_trainable,
                                     want.trainable + want.non_trainable):
      self.assertEqual(got_array.dtype, want_array.dtype)
      self.assertEqual(got_array.tobytes(), want_array.tobytes())

  def test_same_columns_bytes_and_clients_as_the_tf_clients(self):
    tf_rows, tflite_rows = (read_metrics(self.tf_dir),
                            read_metrics(self.tflite_dir))
    self.assertEqual(list(tf_rows[0]), list(tflite_rows[0]))
    self.assertLen(tflite_rows, NUM_ROUNDS)
    for tf_row, tflite_row in zip(tf_rows, tflite_rows):
      for column in ('round', 'upload_bytes', 'download_bytes',
                     'upload_bytes_cumulative', 'download_bytes_cumulative',
                     'clients_sampled', 'clients_reported',
                     'rejected_clients', 'server_update_failed', 'sparsity'):
        self.assertEqual(tf_row[column], tflite_row[column], column)
      self.assertEqual(tflite_row['rejected_clients'], '0')
      self.assertEqual(tflite_row['clients_reported'], '3')
    # Float differences between the TFLite and TF kernels start small.
    self.assertAllClose(float(tflite_rows[0]['train_loss']),
                        float(tf_rows[0]['train_loss']), atol=1e-4, rtol=0)
    # Evaluated on the rounds the TF run evaluates.
    self.assertEqual([row['test_accuracy'] == '' for row in tflite_rows],
                     [row['test_accuracy'] == '' for row in tf_rows])
    self.assertNotEqual(tflite_rows[-1]['test_accuracy'], '')

  def test_masks_are_exact_and_move_on_a_readjustment_round(self):
    tf_weights, tflite_weights = (load_weights(self.tf_dir),
                                  load_weights(self.tflite_dir))
    masks = [(i, v) for i, v in enumerate(tflite_weights.non_trainable)
             if v.ndim >= 2]
    self.assertLen(masks, 4)
    for (index, mask), kernel in zip(
        masks, [v for v in tflite_weights.trainable if v.ndim >= 2]):
      self.assertEqual(kernel.shape, mask.shape)
      self.assertTrue(np.all(kernel[mask == 0] == 0))
      # Each layer keeps the exact count of the TF run's (the target).
      self.assertEqual(int(mask.sum()),
                       int(tf_weights.non_trainable[index].sum()))
    rows = read_metrics(self.tflite_dir)
    self.assertGreater(int(rows[0]['mask_changed_positions']), 0)
    self.assertGreater(int(rows[0]['mask_new_positions_entered']), 0)

  def test_a_pool_gives_the_serial_runs_bits(self):
    # Pooled from round 1 to its stop, and pooled again after --resume.
    self.assert_same_run(self.stopped_pool_dir, self.tflite_dir)

  def test_a_stopped_run_resumes_bit_for_bit(self):
    for (code, stderr, _), rows, stopped_dir in (
        (self.stopped, self.stopped_rows, self.stopped_dir),
        (self.stopped_pool, self.stopped_pool_rows, self.stopped_pool_dir)):
      self.assertEqual(code, 143, stderr)
      self.assertIn('stopped by SIGTERM', stderr)
      self.assertLess(rows, NUM_ROUNDS)
      self.assert_same_run(stopped_dir, self.tflite_dir)

  def test_a_resume_trains_with_the_kept_training_model(self):
    # Each TFLite run keeps the model it converted; a resume took the kept
    # one (the pool's size is no part of its record) and wrote nothing.
    # The resumed runs' bits are the whole run's (test above).
    for output_dir in (self.tflite_dir, *self.kept_before):
      _, model = kept_model_file(output_dir)
      self.assertEqual(model[4:8], b'TFL3')
      with open(os.path.join(output_dir, kept_model.RECORD_NAME)) as f:
        record = json.load(f)
      self.assertEqual(record['sha256'], hashlib.sha256(model).hexdigest())
    for stopped_dir, before in self.kept_before.items():
      self.assertEqual(kept_model_file(stopped_dir), before)
    self.assertNotIn(kept_model.MODEL_NAME, os.listdir(self.tf_dir))

  def test_no_process_is_left_behind(self):
    # After a normal end (each run), and after SIGTERM (serial, pooled).
    self.assertLen(self.left_behind, 4)
    self.assertEqual(
        {path: pids for path, pids in self.left_behind.items() if pids}, {})
    self.assertEqual(self.stopped[2], 0)
    self.assertEqual(self.stopped_pool[2], 0)


class TFLiteRefusalsTest(parameterized.TestCase):
  """What --client_runtime=tflite cannot run is one line naming the flag."""

  def test_defaults_are_accepted(self):
    settings_lib.ExperimentSettings.from_flat(
        client_runtime='tflite').validate()
    for method in ('feddst', 'randommask', 'fedavg', 'fedavgm', 'fedprox',
                   'feddst_fedprox'):
      settings_lib.ExperimentSettings.from_flat(
          client_runtime='tflite', method=method).validate()

  @parameterized.named_parameters(
      ('prunefl', dict(method='prunefl'), '--method=prunefl'),
      ('lotteryfl', dict(method='lotteryfl'), '--method=lotteryfl'),
      ('local_workers', dict(num_local_workers=1), '--num_local_workers=1'),
      ('workers', dict(workers='127.0.0.1:8000'), '--workers='),
      ('robust_mean', dict(robust_mean='median'), '--robust_mean=median'),
      ('server_optimizer', dict(server_optimizer='adam'),
       '--server_optimizer=adam'),
      ('server_rule', dict(server_rule='reference'),
       '--server_rule=reference'),
      ('min_votes_unit', dict(min_votes_unit='weight'),
       '--min_votes_unit=weight'),
      ('growing_sparsity', dict(initial_sparsity=0.5, total_rounds=10),
       '--initial_sparsity=0.5'),
      ('grow_score', dict(grow_score='last_batch_after_step'),
       '--grow_score=last_batch_after_step'),
      ('readjust_counter', dict(readjust_counter='client_lifetime'),
       '--readjust_counter=client_lifetime'),
  )
  def test_refused(self, values, flag):
    settings = settings_lib.ExperimentSettings.from_flat(
        client_runtime='tflite', **values)
    with self.assertRaises(errors.ConfigError) as raised:
      settings.validate()
    message = str(raised.exception)
    self.assertNotIn('\n', message)
    self.assertStartsWith(message, '--client_runtime=tflite: ' + flag)
    # The same settings with the TF clients are fine (workers aside, whose
    # count is bounded by the CPUs).
    settings_lib.ExperimentSettings.from_flat(**values).validate()

  def test_client_processes(self):
    for processes in (1, 2, 3):
      settings_lib.ExperimentSettings.from_flat(
          client_runtime='tflite',
          tflite_client_processes=processes).validate()
    with self.assertRaisesRegex(
        errors.ConfigError, r'^--tflite_client_processes=0 is invalid: '
        r'expected an integer >= 1 \(1: clients train one after another in '
        r'the training process\)\.$'):
      settings_lib.ExperimentSettings.from_flat(
          client_runtime='tflite', tflite_client_processes=0).validate()
    with self.assertRaisesRegex(
        errors.ConfigError, r'^--tflite_client_processes=2 is invalid with '
        r'--client_runtime=tf: expected 1 \(a pool of processes is for '
        r'TFLite clients\)\.$'):
      settings_lib.ExperimentSettings.from_flat(
          tflite_client_processes=2).validate()

  def test_unknown_runtime_names_the_choices(self):
    with self.assertRaisesRegex(errors.ConfigError,
                                '--client_runtime=.gpu. is invalid: expected '
                                'one of tf, tflite'):
      settings_lib.ExperimentSettings.from_flat(
          client_runtime='gpu').validate()
