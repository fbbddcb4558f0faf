"""Tests for bin/train.py: a smoke run through main(), and bad input."""

import csv
import os
import signal
import subprocess
import sys
import time

from absl.testing import flagsaver
import psutil
import tensorflow as tf

from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'bin', 'train.py')
sys.path.insert(0, os.path.join(ROOT, 'bin'))

import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_train(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, TRAIN, '--noprogress', *args], capture_output=True,
      text=True, timeout=300, stdin=subprocess.DEVNULL,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


class TrainMainTest(fixtures.FashionMnistSliceTestCase):

  def test_main_runs_two_rounds(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'out')
    with flagsaver.flagsaver(
        data_dir=self.data_dir, total_clients=6, clients_per_round=2,
        total_rounds=2, eval_every=1, output_dir=output_dir, progress=False):
      train.main(['train.py'])
    for name in ('metrics.csv', 'flags.txt', 'global_model.npz'):
      self.assertTrue(os.path.exists(os.path.join(output_dir, name)), name)
    with open(os.path.join(output_dir, 'flags.txt')) as f:
      self.assertIn(f'--data_dir={self.data_dir}', f.read())


class KillAndResumeTest(fixtures.FashionMnistSliceTestCase):

  def run_args(self, output_dir: str) -> list[str]:
    return [sys.executable, TRAIN, '--noprogress', f'--data_dir={self.data_dir}',
            '--total_clients=6', '--clients_per_round=2', '--total_rounds=6',
            '--eval_every=2', '--checkpoint_every=2', '--rounds_between_'
            'readjustments=1', '--tensorboard_dir=', f'--output_dir={output_dir}']

  def metrics_without_timing(self, output_dir: str) -> list[list[str]]:
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      rows = list(csv.reader(f))
    timing = rows[0].index('round_seconds')
    return [row[:timing] + row[timing + 1:] for row in rows]

  def test_killed_run_resumes_to_the_same_metrics(self):
    root = self.create_tempdir().full_path
    whole, killed = os.path.join(root, 'whole'), os.path.join(root, 'killed')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    subprocess.run(self.run_args(whole), check=True, timeout=600, env=env,
                   stdin=subprocess.DEVNULL, capture_output=True)

    process = subprocess.Popen(self.run_args(killed), env=env,
                               stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    metrics_path = os.path.join(killed, 'metrics.csv')
    deadline = time.monotonic() + 600
    # Kill after round 3 is written: the round-2 checkpoint exists and round
    # 3's row must be dropped and recomputed on resume.
    while time.monotonic() < deadline:
      if os.path.exists(metrics_path):
        with open(metrics_path) as f:
          if len(f.read().splitlines()) >= 4:
            break
      time.sleep(0.05)
    workers = [c for c in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(workers, timeout=30)
    self.assertFalse(any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                         for w in workers), 'worker outlived its killed run')
    self.assertFalse(os.path.exists(os.path.join(killed, 'summary.json')))

    resumed = subprocess.run(self.run_args(killed) + ['--resume'],
                             timeout=600, env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertEqual(self.metrics_without_timing(killed),
                     self.metrics_without_timing(whole))

  def test_resume_with_other_flags_is_refused(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    os.makedirs(output_dir)
    with open(os.path.join(output_dir, 'flags.txt'), 'w') as f:
      f.write('--seed=5\n')
    result = run_train(f'--output_dir={output_dir}', '--resume')
    self.assert_one_line_error(result, 'different configuration')

  def assert_one_line_error(self, result, *expected_words):
    fixtures.assert_one_line_error(self, result, *expected_words)


class TrainRunTimeErrorTest(fixtures.FashionMnistSliceTestCase):
  """Failures at run time: one line, exit code 1, the directory reusable."""

  def test_unreachable_worker_is_one_line_and_writes_nothing(self):
    root = self.create_tempdir().full_path
    output_dir = os.path.join(root, 'never')
    tensorboard_dir = os.path.join(root, 'tensorboard')
    result = run_train(
        f'--data_dir={self.data_dir}', '--total_clients=6',
        '--clients_per_round=2', '--total_rounds=1',
        '--workers=127.0.0.1:1', f'--output_dir={output_dir}',
        f'--tensorboard_dir={tensorboard_dir}')
    fixtures.assert_one_line_error(
        self, result, 'train.py: error: TFF worker at 127.0.0.1:1 did not '
        'answer within 10 s; start it or fix --workers.')
    self.assertEqual(os.listdir(root), [])


class TrainBadInputTest(tf.test.TestCase):
  """Each bad input: exit code 1, one line on stderr, no traceback."""

  def assert_one_line_error(self, result, *expected_words):
    fixtures.assert_one_line_error(self, result, *expected_words)

  def test_bad_values_are_refused_before_anything_is_written(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    cases = [
        (['--target_sparsity=1.5'], '--target_sparsity'),
        (['--total_clients=5', '--clients_per_round=6'],
         '--clients_per_round'),
        (['--data_distribution=zipf'], '--data_distribution'),
        (['--data_dir=/nonexistent/fmnist'], '/nonexistent/fmnist'),
    ]
    for args, expected in cases:
      result = run_train(f'--output_dir={output_dir}', *args)
      self.assert_one_line_error(result, expected)
      self.assertFalse(os.path.exists(output_dir), args)

  def test_unknown_dataset_names_the_accepted_ones(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    result = run_train('--dataset=imagenet', f'--output_dir={output_dir}')
    self.assert_one_line_error(result, '--dataset=', 'fashion_mnist')
    self.assertFalse(os.path.exists(output_dir))

  def test_unknown_flag_in_a_flagfile_is_one_line(self):
    root = self.create_tempdir().full_path
    flagfile = os.path.join(root, 'bad.cfg')
    with open(flagfile, 'w') as f:
      f.write('--total_rounds=2\n--not_a_flag=3\n')
    output_dir = os.path.join(root, 'never')
    result = run_train(f'--flagfile={flagfile}', f'--output_dir={output_dir}')
    self.assert_one_line_error(result, 'not_a_flag')
    self.assertFalse(os.path.exists(output_dir))
    result = run_train(f'--flagfile={root}/missing.cfg',
                       f'--output_dir={output_dir}')
    self.assert_one_line_error(result, 'missing.cfg')

  def test_corrupt_idx_file_names_the_file(self):
    data_dir = self.create_tempdir().full_path
    fixtures.write_fashion_mnist_slice(data_dir, 50, 20)
    broken = os.path.join(data_dir, 'train-images-idx3-ubyte.gz')
    with open(broken, 'rb') as f:
      content = f.read()
    with open(broken, 'wb') as f:
      f.write(content[:len(content) // 2])
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    result = run_train(f'--data_dir={data_dir}', f'--output_dir={output_dir}')
    self.assert_one_line_error(result, broken)
    self.assertFalse(os.path.exists(output_dir))

  def test_used_output_dir_is_refused(self):
    output_dir = self.create_tempdir().full_path
    with open(os.path.join(output_dir, 'metrics.csv'), 'w') as f:
      f.write('keep me')
    result = run_train(f'--output_dir={output_dir}')
    self.assert_one_line_error(result, 'already holds results')
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      self.assertEqual(f.read(), 'keep me')


if __name__ == '__main__':
  tf.test.main()
