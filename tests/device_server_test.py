"""Tests for tff_feddst.ondevice.device_server, device_client and
bin/device_server.py: three rounds of devices through files, driven by TFLite
interpreters as an app drives them."""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tff_feddst.ondevice import device_client
from tff_feddst.ondevice import device_server
from tff_feddst.ondevice import tflite_export
from tff_feddst.outputs import run_files
from tff_feddst.running import settings as settings_lib
from tests import fixtures

NUM_ROUNDS = 3
NUM_CLIENTS = 3
SETTINGS = dict(
    dataset='mnist', target_sparsity=0.8, sparsity_distribution='erk',
    client_epochs_per_round=2, client_batch_size=8, client_learning_rate=0.05,
    drop_fraction=0.3, annealing='constant', rounds_between_readjustments=2,
    total_rounds=6, clients_per_round=NUM_CLIENTS, max_client_weight=0,
    seed=0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def client_epochs(client: int, round_num: int, num_epochs: int) -> list:
  """A client's minibatches per epoch: a learnable pattern per class."""
  patterns = np.random.default_rng(0).normal(size=(10, 28, 28, 1))
  rng = np.random.default_rng(100 * round_num + client)
  labels = rng.choice([client, client + 3, client + 6], size=12 + 4 * client)
  images = (patterns[labels] + 0.5 * rng.normal(
      size=(len(labels), 28, 28, 1))).astype(np.float32)
  labels = labels.astype(np.int32)
  epochs = []
  for _ in range(num_epochs):
    order = rng.permutation(len(labels))
    epochs.append([(images[order[i:i + 8]], labels[order[i:i + 8]])
                   for i in range(0, len(labels), 8)])
  return epochs


def drive_rounds(server: device_server.DeviceServer, state_dir: str,
                 work_dir: str, tflite_model: bytes,
                 num_rounds: int) -> list[dict]:
  """Rounds of the library calls, each device a fresh interpreter."""
  all_metrics = []
  for round_num in range(1, num_rounds + 1):
    broadcast_dir = os.path.join(work_dir, f'broadcast_{round_num}')
    uploads_dir = os.path.join(work_dir, f'uploads_{round_num}')
    server.write_broadcast(state_dir, broadcast_dir)
    os.makedirs(uploads_dir)
    broadcast, instructions = device_server.read_broadcast(broadcast_dir)
    for client in range(NUM_CLIENTS):
      upload = device_client.DeviceClient(tflite_model).train_round(
          broadcast, instructions,
          client_epochs(client, round_num, instructions['num_epochs']))
      device_server.write_upload(
          os.path.join(uploads_dir, f'device_{client}.npz'), upload)
    all_metrics.append(server.aggregate_uploads(state_dir, uploads_dir))
  return all_metrics


class DeviceRoundTest(tf.test.TestCase):
  """Three rounds, twice from the same start; then bad uploads."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='device_server_test_')
    cls.settings = settings_lib.ExperimentSettings.from_flat(**SETTINGS)
    first, second = (os.path.join(cls.tmp, name) for name in ('a', 'b'))
    device_server.init_state(cls.settings, first)
    device_server.init_state(cls.settings, second, export_model=False)
    with open(os.path.join(first, device_server.MODEL_DIR,
                           tflite_export.TRAINING_FILE), 'rb') as f:
      cls.tflite_model = f.read()
    cls.first, cls.second = first, second
    # The server keeps nothing between calls but its files: one serves both.
    cls.server = device_server.DeviceServer(device_server.load_settings(first))
    cls.first_metrics = drive_rounds(cls.server, first,
                                     os.path.join(cls.tmp, 'work_a'),
                                     cls.tflite_model, NUM_ROUNDS)
    cls.second_metrics = drive_rounds(cls.server, second,
                                      os.path.join(cls.tmp, 'work_b'),
                                      cls.tflite_model, NUM_ROUNDS)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def weights(self, state_dir: str, round_num: int):
    return run_files.load_model_weights(os.path.join(
        device_server.round_dir(state_dir, round_num),
        device_server.MODEL_FILE))

  def test_every_round_accepts_every_device_and_keeps_exact_counts(self):
    layout, num_active = self.server.layout, self.server.initial.num_active
    previous_masks = None
    for round_num, metrics in enumerate(self.first_metrics, start=1):
      self.assertEqual(metrics['round_num'], round_num)
      self.assertEqual(metrics['received_uploads'], NUM_CLIENTS)
      self.assertEqual(metrics['rejected_clients'], 0, metrics['rejections'])
      self.assertEqual(metrics['should_readjust'], round_num != 2)
      self.assertTrue(np.isfinite(metrics['train_loss']))
      weights = self.weights(self.first, round_num)
      masks = []
      for position, (kernel_index, mask_index) in enumerate(
          zip(layout.kernel_indices, layout.mask_indices)):
        mask = weights.non_trainable[mask_index]
        kernel = weights.trainable[kernel_index]
        self.assertEqual(int(mask.sum()), num_active[position])
        self.assertTrue(np.all(kernel[mask == 0] == 0))
        masks.append(mask)
      if previous_masks is not None and metrics['should_readjust']:
        changed = sum(int(np.sum(a != b))
                      for a, b in zip(masks, previous_masks))
        self.assertEqual(changed, metrics['mask_changed_positions'])
      previous_masks = masks
    # Readjusting devices moved the global mask.
    self.assertGreater(self.first_metrics[0]['mask_changed_positions'], 0)

  def test_the_same_calls_give_the_same_bits(self):
    for first, second in zip(self.first_metrics, self.second_metrics):
      self.assertEqual(first, second)
    first = self.weights(self.first, NUM_ROUNDS)
    second = self.weights(self.second, NUM_ROUNDS)
    for got, want in zip(first.trainable + first.non_trainable,
                         second.trainable + second.non_trainable):
      self.assertEqual(got.tobytes(), want.tobytes())

  def test_bad_uploads_are_counted_and_the_round_goes_on(self):
    state_dir = os.path.join(self.tmp, 'bad')
    shutil.copytree(self.second, state_dir)
    work_dir = os.path.join(self.tmp, 'work_bad')
    broadcast_dir = os.path.join(work_dir, 'broadcast')
    uploads_dir = os.path.join(work_dir, 'uploads')
    os.makedirs(uploads_dir)
    server = self.server
    server.write_broadcast(state_dir, broadcast_dir)
    broadcast, instructions = device_server.read_broadcast(broadcast_dir)
    good = device_client.DeviceClient(self.tflite_model).train_round(
        broadcast, instructions, client_epochs(0, 4, 2))
    device_server.write_upload(os.path.join(uploads_dir, 'good.npz'), good)
    # An upload of round 3, replayed: another model digest.
    shutil.copy(os.path.join(self.tmp, 'work_b', 'uploads_3', 'device_1.npz'),
                os.path.join(uploads_dir, 'replayed.npz'))
    missing = {k: v for k, v in good.items() if k != 'dense_0'}
    device_server.write_upload(os.path.join(uploads_dir, 'missing.npz'),
                              missing)
    with open(os.path.join(uploads_dir, 'garbage.npz'), 'wb') as f:
      f.write(b'not an archive')
    metrics = server.aggregate_uploads(state_dir, uploads_dir)
    self.assertEqual(metrics['received_uploads'], 4)
    self.assertEqual(metrics['rejected_clients'], 3)
    self.assertEqual(metrics['rejected_stale'], 1)
    self.assertEqual(metrics['rejected_shape'], 1)
    self.assertEqual(metrics['rejected_unreadable'], 1)
    self.assertEqual(
        sorted((r['file'], r['kind']) for r in metrics['rejections']),
        [('garbage.npz', 'unreadable'), ('missing.npz', 'shape')])
    self.assertEqual(device_server.completed_rounds(state_dir), 4)
    # Nothing is overwritten.
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                'broadcast.npz: already exists'):
      server.write_broadcast(state_dir, broadcast_dir)

  def test_bad_state_and_settings_are_one_line_errors(self):
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                'not an empty directory'):
      device_server.init_state(self.settings, self.first)
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                '^--max_client_weight is unset'):
      device_server.check_settings(self.settings.replace(
          max_client_weight=None))
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                '^--download_encoding=float16'):
      device_server.check_settings(self.settings.replace(
          download_encoding='float16'))
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                '^--readjust_counter=client_lifetime is not '
                                'run by the plain loop'):
      device_server.check_settings(self.settings.replace(
          readjust_counter='client_lifetime'))
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                '^--direction_reference=server_root is not '
                                'run with devices: .*; expected '
                                'round_others\\.$'):
      device_server.check_settings(self.settings.replace(
          reject_opposed_updates=True, direction_reference='server_root'))
    with self.assertRaisesRegex(device_server.DeviceRoundError,
                                'no device-round state'):
      device_server.completed_rounds(os.path.join(self.tmp, 'nowhere'))


class DeviceRoundCliTest(tf.test.TestCase):

  def run_cli(self, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'bin', 'device_round.py'),
         *args], capture_output=True, text=True, cwd=ROOT, check=False,
        timeout=300)

  def test_init_broadcast_aggregate_and_a_bad_command(self):
    tmp = self.create_tempdir().full_path
    state_dir = os.path.join(tmp, 'server')
    flag_args = [f'--{k}={v}' for k, v in SETTINGS.items()]
    result = self.run_cli('init', *flag_args, f'--state_dir={state_dir}',
                          '--noexport_model')
    self.assertEqual(result.returncode, 0, result.stderr)
    result = self.run_cli('broadcast', f'--state_dir={state_dir}',
                          f'--output_dir={tmp}/out')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('round 1: broadcast', result.stdout)
    os.makedirs(os.path.join(tmp, 'in'))
    result = self.run_cli('aggregate', f'--state_dir={state_dir}',
                          f'--uploads_dir={tmp}/in')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('"received_uploads": 0', result.stdout)
    fixtures.assert_one_line_error(
        self, self.run_cli('train', f'--state_dir={state_dir}'),
        'expected one command')


if __name__ == '__main__':
  tf.test.main()
