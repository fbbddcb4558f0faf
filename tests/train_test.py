"""Tests for bin/train.py: a smoke run through main(), and bad input."""

import csv
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
from typing import Optional

from absl.testing import flagsaver
from absl.testing import parameterized
import psutil
import tensorflow as tf

from tff_feddst.running import experiment
from tff_feddst.running import settings as settings_lib
from tests import execution_test
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'bin', 'train.py')
sys.path.insert(0, os.path.join(ROOT, 'bin'))

import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def metrics_without_timing(output_dir: str) -> list[list[str]]:
  """metrics.csv's lines as fields, without the round_seconds column."""
  with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
    rows = list(csv.reader(f))
  timing = rows[0].index('round_seconds')
  return [row[:timing] + row[timing + 1:] for row in rows]


def run_train(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, TRAIN, '--noprogress', *args], capture_output=True,
      text=True, timeout=300, stdin=subprocess.DEVNULL,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


def main_error(*args: str) -> str:
  """Parses `args` as bin/train.py does and runs its main; returns the error.

  Flags are restored afterwards. A setting that slips through validation
  meets a data directory that does not exist, so it fails fast too (with a
  message that names no flag).

  Returns:
    The message main (or the flag parser) exits with.
  """
  with flagsaver.flagsaver():
    try:
      train.main(cli.one_line_flags_parser(
          ['train.py', '--noprogress', '--data_dir=/nonexistent/fmnist',
           *args]))
    except SystemExit as exit_:
      return exit_.code
  raise AssertionError(f'train.py {args} did not exit')


def _float_settings() -> list[str]:
  return [name for name, (group, _) in
          settings_lib.ExperimentSettings.setting_fields().items()
          if typing.get_type_hints(settings_lib.GROUPS[group])[name] in (
              float, Optional[float])]


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


class StopAndResumeTest(fixtures.FashionMnistSliceTestCase):
  """SIGTERM, and a --workers worker killed: one line, a checkpoint, resume.

  The runs checkpoint only when stopped (--checkpoint_every=0).
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='stop_and_resume_')
    cls.whole = os.path.join(cls.root, 'whole')
    subprocess.run(cls.run_args(cls.whole), check=True, timeout=600,
                   env=cls.env(), stdin=subprocess.DEVNULL,
                   capture_output=True)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  @classmethod
  def run_args(cls, output_dir: str, *extra: str) -> list[str]:
    # Without the server's first pass, which runs without workers but not
    # with them (model_setup.build_robust_aggregation): a run that moves
    # from workers to a local one must give the same rounds.
    return [sys.executable, TRAIN, '--noprogress', f'--data_dir={cls.data_dir}',
            '--total_clients=6', '--clients_per_round=2', '--total_rounds=3',
            '--eval_every=1', '--checkpoint_every=0', '--tensorboard_dir=',
            '--noclip_updates', '--noreject_replayed_uploads',
            '--max_client_weight_multiple=0', f'--output_dir={output_dir}',
            *extra]

  @staticmethod
  def env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')

  def start_and_wait_for_round_1(self, output_dir: str, *extra: str):
    """Starts a run; returns it and its workers once round 1's row exists."""
    process = subprocess.Popen(
        self.run_args(output_dir, *extra), env=self.env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    metrics_path = os.path.join(output_dir, 'metrics.csv')
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
      if os.path.exists(metrics_path):
        with open(metrics_path) as f:
          if len(f.read().splitlines()) >= 2:
            break
      time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    return process, workers

  def resume_and_compare(self, output_dir: str):
    resumed = subprocess.run(self.run_args(output_dir, '--resume'),
                             timeout=600, env=self.env(),
                             stdin=subprocess.DEVNULL, capture_output=True,
                             text=True)
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertEqual(metrics_without_timing(output_dir),
                     metrics_without_timing(self.whole))

  def test_sigterm_saves_a_checkpoint_and_resume_gives_the_same_run(self):
    stopped = os.path.join(self.create_tempdir().full_path, 'stopped')
    process, workers = self.start_and_wait_for_round_1(stopped)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    self.assertEqual(process.returncode, 143, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    self.assertLen(lines, 1, stderr)
    self.assertRegex(lines[0], r'^train\.py: stopped by SIGTERM after round '
                     r'[12]; checkpoint saved; continue with --resume$')
    psutil.wait_procs(workers, timeout=30)
    self.assertFalse(any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                         for w in workers), 'a worker outlived the run')
    self.assertNotEmpty(os.listdir(os.path.join(stopped, 'checkpoints')))
    self.assertFalse(os.path.exists(os.path.join(stopped, 'summary.json')))
    self.resume_and_compare(stopped)

  def test_lost_remote_worker_is_named_and_resume_on_a_local_one(self):
    outside, address = execution_test.start_plain_worker()
    try:
      lost = os.path.join(self.create_tempdir().full_path, 'lost')
      process, _ = self.start_and_wait_for_round_1(
          lost, f'--workers={address}', '--worker_timeout_seconds=3')
      outside.kill()
      _, stderr = process.communicate(timeout=600)
    finally:
      outside.kill()
      outside.wait()
    self.assertEqual(process.returncode, 1, stderr)
    self.assertNotIn('Traceback', stderr)
    # TFF's compiler for split clients notes Grappler fallbacks at INFO level
    # (absl's 'I<date>' lines) in any run with --workers, and the run warns
    # once that the server's first pass is off with workers (model_setup);
    # the error is one line of its own.
    lines = [line for line in stderr.splitlines()
             if line.strip() and not re.match(r'I\d{4} ', line) and
             not re.match(r'W\d{4} .*cannot screen a round', line)]
    self.assertLen(lines, 1, stderr)
    self.assertRegex(
        lines[0], f'^train\\.py: error: TFF worker {address} did not '
        r'answer for \d+ s during round [23] .*; checkpoint of round [12] '
        r'saved; continue with --resume$')
    # The same run, resumed on a worker of its own.
    self.resume_and_compare(lost)


class TrainRunTimeErrorTest(fixtures.FashionMnistSliceTestCase):

  def test_failed_rounds_stop_the_run_resumably(self):
    # A norm bound no model meets: every upload is rejected, so every round
    # fails; after 2 the run stops with one error line (after a warning per
    # failed round) and a checkpoint of round 2 for --resume.
    output_dir = os.path.join(self.create_tempdir().full_path, 'out')
    result = run_train(
        f'--data_dir={self.data_dir}', '--total_clients=6',
        '--clients_per_round=2', '--total_rounds=4', '--eval_every=4',
        '--max_payload_norm=1e-9', '--max_failed_rounds=2',
        '--tensorboard_dir=', f'--output_dir={output_dir}')
    self.assertEqual(result.returncode, 1, result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    self.assertStartsWith(lines[-1], 'train.py: error: --max_failed_rounds=2: '
                          'rounds 1-2 failed in a row')
    for word in ('the model of round 0 is kept', 'ckpt-000002.npz',
                 '--resume'):
      self.assertIn(word, lines[-1])
    self.assertLen([l for l in lines
                    if 'failed (every upload was rejected)' in l], 2)
    self.assertEqual(os.listdir(os.path.join(output_dir, 'checkpoints')),
                     ['ckpt-000002.npz'])
    rows = metrics_without_timing(output_dir)
    self.assertEqual([row[0] for row in rows[1:]], ['1', '2'])
    self.assertFalse(os.path.exists(os.path.join(output_dir,
                                                 'summary.json')))
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


class TrainRefusesNonsenseTest(tf.test.TestCase, parameterized.TestCase):
  """Each bad flag: one line naming it, exit code 1, nothing written."""

  def assert_refused(self, args: list[str], *expected_words: str) -> None:
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    message = main_error(f'--output_dir={output_dir}', *args)
    # sys.exit with a string prints it to stderr and exits with code 1.
    self.assertIsInstance(message, str)
    self.assertNotIn('\n', message)
    self.assertStartsWith(message, 'train.py: error: ')
    for word in expected_words:
      self.assertIn(word, message)
    self.assertFalse(os.path.exists(output_dir), args)

  @parameterized.parameters(
      (f'--{name}={value}',) for name in _float_settings()
      for value in ('inf', '-inf', 'nan'))
  def test_every_float_must_be_finite(self, arg):
    self.assert_refused([arg], f'{arg} is invalid: expected a finite number')

  @parameterized.parameters(
      (name,) for name in settings_lib.setting_choices())
  def test_choice_flags_are_enums(self, name):
    self.assert_refused([f'--{name}=foo'],
                        f'flag --{name}=foo: value should be one of')

  @parameterized.named_parameters(
      ('seed_negative', ['--seed=-1'], '--seed=-1', '2**32'),
      ('seed_too_large', [f'--seed={2**32}'], f'--seed={2**32}', '2**32'),
      ('seed_huge', [f'--seed={2**70}'], '--seed=', '2**32'),
      ('min_votes_above_clients', ['--clients_per_round=3', '--min_votes=4'],
       '--min_votes=4', '--clients_per_round=3'),
      ('no_votes_for_new_positions', ['--min_new_position_votes=0'],
       '--min_new_position_votes=0', '>= 1'),
      ('negative_max_failed_rounds', ['--max_failed_rounds=-1'],
       '--max_failed_rounds=-1', '>= 0'),
      ('trim_fraction_half', ['--trim_fraction=0.5'], '--trim_fraction=0.5',
       '[0, 0.5)'),
      ('trim_fraction_negative', ['--trim_fraction=-0.1'],
       '--trim_fraction=-0.1', '[0, 0.5)'),
      ('robust_mean_with_remember_old',
       ['--robust_mean=median', '--remember_old'], "--robust_mean='median'",
       '--remember_old'),
      ('robust_mean_without_global_masks',
       ['--robust_mean=trimmed_mean', '--noclip_updates',
        '--upload_encoding=float32+rice+changed_masks_only'],
       "--robust_mean='trimmed_mean'", '--noclip_updates'),
      ('prunefl_leaves_masks_out',
       ['--method=prunefl', '--upload_encoding=float16+rice+changed_masks_only'],
       "--upload_encoding='float16+rice+changed_masks_only'",
       '--method=prunefl'),
      ('lotteryfl_leaves_masks_out',
       ['--method=lotteryfl', '--upload_encoding=changed_masks_only'],
       "--upload_encoding='changed_masks_only'", '--method=lotteryfl'),
      ('port_too_large', ['--workers=localhost:99999'], '--workers=',
       '[1, 65535]'),
      ('port_zero', ['--workers=localhost:0'], '--workers=', '[1, 65535]'),
      ('port_missing', ['--workers=localhost:'], '--workers=', 'port'),
      ('no_port', ['--workers=localhost'], '--workers=', 'no :port'),
      ('no_host', ['--workers=:8000'], '--workers=', 'no host'),
      ('bad_host', ['--workers=a/b:8000'], '--workers=', "'a/b'"),
      ('bad_ipv4', ['--workers=300.1.1.1:8000'], '--workers=', 'IPv4'),
      ('bad_ipv6', ['--workers=[::g]:8000'], '--workers=', 'IPv6'),
      ('worker_twice', ['--workers=a:1,b:2,a:1'], '--workers=', 'twice'),
      ('empty_worker', ['--workers=a:1,'], '--workers=', 'empty'),
      ('local_workers_negative', ['--num_local_workers=-1'],
       '--num_local_workers=-1'),
      ('local_workers_above_cpus',
       [f'--num_local_workers={settings_lib.usable_cpu_count() + 1}'],
       '--num_local_workers=', 'CPUs'),
      ('no_clients', ['--total_clients=0'], '--total_clients=0'),
      ('no_rounds', ['--total_rounds=0'], '--total_rounds=0'),
      ('no_clients_per_round', ['--clients_per_round=0'],
       '--clients_per_round=0'),
      ('no_epochs', ['--client_epochs_per_round=0'],
       '--client_epochs_per_round=0'),
      ('empty_batches', ['--client_batch_size=0'], '--client_batch_size=0'),
      ('no_evaluation', ['--eval_every=0'], '--eval_every=0'),
      ('negative_checkpoint_every', ['--checkpoint_every=-1'],
       '--checkpoint_every=-1'),
      ('readjust_every_zero_rounds', ['--rounds_between_readjustments=0'],
       '--rounds_between_readjustments=0'),
      ('negative_annealing_end', ['--annealing_end_round=-1'],
       '--annealing_end_round=-1'),
      ('growing_sparsity_past_the_last_round',
       ['--initial_sparsity=0.5', '--total_rounds=10',
        '--annealing_end_round=1000000000'],
       '--annealing_end_round=1000000000', '--total_rounds=10'),
      ('beta_that_hangs_numpy', ['--dirichlet_beta=1e-30'],
       '--dirichlet_beta=1e-30'),
      ('zero_budget', ['--upload_budget_bytes=0'], '--upload_budget_bytes=0'),
      ('empty_data_dir', ['--data_dir='], "--data_dir=''"),
      ('empty_upload_encoding', ['--upload_encoding='],
       "--upload_encoding=''"),
      ('no_prunefl_steps', ['--prunefl_initial_steps=0'],
       '--prunefl_initial_steps=0'),
      ('negative_momentum', ['--client_momentum=-0.5'],
       '--client_momentum=-0.5'),
  )
  def test_bad_value_is_refused(self, args, *expected_words):
    self.assert_refused(args, *expected_words)

  @parameterized.named_parameters(
      ('before_first_checkpoint', 2, 'after round 2'),
      ('no_checkpoints_at_all', 0, '--checkpoint_every=0'))
  def test_resume_without_a_checkpoint_is_refused(self, checkpoint_every,
                                                   why):
    # A run killed in round 2 before its first checkpoint: flags.txt and one
    # metrics row, no checkpoint. --resume would start over at round 1.
    output_dir = self.create_tempdir().full_path
    config = settings_lib.ExperimentSettings.from_flat(
        data_dir='/nonexistent/fmnist', total_rounds=4,
        checkpoint_every=checkpoint_every)
    files = {'flags.txt': '\n'.join(config.resolved().to_flag_lines()) + '\n',
             'metrics.csv': 'round,train_loss\n1,2.3\n'}
    for name, content in files.items():
      with open(os.path.join(output_dir, name), 'w') as f:
        f.write(content)
    os.makedirs(os.path.join(output_dir, 'checkpoints'))
    message = main_error(f'--output_dir={output_dir}', '--resume',
                         '--total_rounds=4',
                         f'--checkpoint_every={checkpoint_every}')
    self.assertStartsWith(message, f'train.py: error: --resume: the run in '
                          f'{output_dir} has no checkpoint to continue from')
    self.assertNotIn('\n', message)
    for word in (why, 'without --resume', f'remove {output_dir}'):
      self.assertIn(word, message)
    self.assertCountEqual(os.listdir(output_dir), [*files, 'checkpoints'])
    self.assertEmpty(os.listdir(os.path.join(output_dir, 'checkpoints')))
    for name, content in files.items():
      with open(os.path.join(output_dir, name)) as f:
        self.assertEqual(f.read(), content)

  # One check that fails in ExperimentSettings.validate, one in absl's parser.
  @parameterized.parameters((['--seed=-1'], '--seed=-1'),
                            (['--method=foo'], '--method=foo'))
  def test_bad_flag_through_the_script(self, args, expected):
    output_dir = os.path.join(self.create_tempdir().full_path, 'never')
    result = run_train(f'--output_dir={output_dir}', *args)
    fixtures.assert_one_line_error(self, result, expected)
    self.assertFalse(os.path.exists(output_dir))


if __name__ == '__main__':
  tf.test.main()
