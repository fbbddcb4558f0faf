"""Tests for bin/benchmark.py and tff_feddst.benchmarks.benchmarking on a tiny config."""

import json
import os
import subprocess
import sys

import tensorflow as tf

from tff_feddst.benchmarks import benchmark_config
from tff_feddst.benchmarks import benchmarking
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(ROOT, 'bin', 'benchmark.py')

TINY = dict(total_clients=6, examples_per_client=16, clients_per_round=2,
            client_epochs_per_round=1, client_batch_size=8, warmup_rounds=1,
            timed_rounds=2, sweep_clients_per_round='1,2', sweep_rounds=1)


def run_benchmark(**flag_values) -> subprocess.CompletedProcess:
  """Runs bin/benchmark.py in its own process (its flags would clash with
  bin/experiment_flags.py's in the test process)."""
  args = [f'--{name}={value}' for name, value in flag_values.items()]
  return subprocess.run(
      [sys.executable, BENCHMARK, *args], capture_output=True, text=True,
      timeout=900, stdin=subprocess.DEVNULL,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


class BenchmarkTest(fixtures.FashionMnistSliceTestCase):

  NUM_TRAIN = 200
  NUM_TEST = 50

  def test_main_writes_a_report_and_json_with_all_fields(self):
    path = os.path.join(self.create_tempdir().full_path, 'result.json')
    result = run_benchmark(data_dir=self.data_dir, json_output=path, **TINY)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(path) as f:
      result = json.load(f)
    for key in ('config', 'num_active', 'tff', 'plain', 'tff_to_plain_ratio',
                'tff_to_plain_cpu_ratio', 'tff_build_seconds', 'breakdown',
                'breakdown_cpu', 'sweep', 'traces', 'message_bytes',
                'agreement', 'rounds', 'peak_rss_mb', 'sparse_to_dense',
                'sparse_to_dense_round_ratio', 'arithmetic'):
      self.assertIn(key, result)
    # The MNIST net's dense training FLOPs an example (arithmetic_rate_test),
    # and each path's rate from the timed rounds' own figures.
    arithmetic = result['arithmetic']
    self.assertEqual(arithmetic['dense_training_flops_per_example'],
                     12_123_000)
    timed = [r for r in result['rounds'] if r['timed']]
    for path_name in ('tff', 'plain'):
      self.assertAlmostEqual(
          arithmetic[path_name]['dense_gflops_per_cpu_second'],
          sum(r['examples'] for r in timed) * 12_123_000 / 1e9 /
          sum(r[f'{path_name}_cpu_seconds'] for r in timed))
      self.assertAlmostEqual(
          arithmetic[path_name]['speedup_bound'],
          arithmetic['matmul_gflops_per_cpu_second'] /
          arithmetic[path_name]['dense_gflops_per_cpu_second'])
    # Plain FedDST and dense FedAvg rounds after the warm-up round.
    sparse_to_dense = result['sparse_to_dense']
    self.assertEqual(sparse_to_dense['rounds'], [2, 3])
    self.assertGreater(result['sparse_to_dense_round_ratio'], 0)
    self.assertAlmostEqual(
        result['sparse_to_dense_round_ratio'],
        sparse_to_dense['sparse_seconds_per_round'] /
        sparse_to_dense['dense_seconds_per_round'])
    self.assertGreater(sparse_to_dense['sparse_to_dense_cpu_ratio'], 0)
    for path_name in ('tff', 'plain'):
      self.assertCountEqual(
          result[path_name],
          ['seconds_per_round', 'seconds_per_round_readjust',
           'seconds_per_round_no_readjust', 'cpu_seconds_per_round',
           'python_cpu_seconds_per_round', 'examples_per_second'])
    self.assertCountEqual(
        result['breakdown']['seconds_per_round'],
        ['data_input', 'client_training', 'readjustment', 'broadcast',
         'aggregation', 'server_update', 'evaluation'])
    self.assertEqual([p['clients_per_round'] for p in result['sweep']], [1, 2])
    self.assertLen(result['rounds'], 3)
    self.assertEqual([r['should_readjust'] for r in result['rounds']],
                     [True, False, True])
    # One trace of the client update in each path, none while rounds run.
    self.assertEqual(result['traces'], {
        'plain_build': 1, 'tff_build': 1, 'during_rounds': 0,
        'plain_tf_function': 1})
    self.assertTrue(result['agreement']['upload_bytes_equal'])
    self.assertIn('mask_positions_differing', result['agreement'])
    self.assertEqual([m['encoding'] for m in result['message_bytes']],
                     list(benchmark_config.TimingSettings().report_encodings))
    bitmap = result['message_bytes'][0]
    # MNIST net at S = 0.8: the README's 242,413 bytes plus the weight (the
    # dense last layer's 500 positions carry no mask bits).
    self.assertEqual(bitmap['upload_bytes'], 242417)
    self.assertEqual(bitmap['mask_bytes'], 32657)
    for sizes in result['message_bytes']:
      self.assertGreater(sizes['ratio_to_bound'], 1.0)
      self.assertLessEqual(sizes['upload_bytes_masks_unchanged'],
                           sizes['upload_bytes'])
    self.assertGreater(result['peak_rss_mb']['self'], 0)

  def test_message_bytes_only_measures_sizes_without_timing(self):
    path = os.path.join(self.create_tempdir().full_path, 'result.json')
    result = run_benchmark(
        data_dir=self.data_dir, json_output=path, message_bytes_only=True,
        report_encodings='float32+bitmap,float16+rice+changed_masks_only',
        **TINY)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('float16+rice+changed_masks_only', result.stdout)
    with open(path) as f:
      result = json.load(f)
    self.assertCountEqual(result, ['config', 'num_active', 'message_bytes'])
    bitmap, rice = result['message_bytes']
    self.assertEqual(bitmap['upload_bytes'], 242417)
    # Masks left out: 52349 float16 values, 90 float32 biases, the 4-byte
    # code length and the 4-byte weight.
    self.assertEqual(rice['upload_bytes_masks_unchanged'],
                     2 * 52349 + 4 * 90 + 4 + 4)
    self.assertLess(rice['upload_bytes'], 2 * 52349 + 4 * 90 + 4 + 32657)

  def test_bad_settings_exit_with_one_line(self):
    for flag_values, message in (
        (dict(upload_encoding='float32+gzip'), 'unknown encoding token'),
        (dict(clients_per_round=7, total_clients=6), 'clients per round'),
        (dict(target_sparsity='inf'), '--target_sparsity=inf is invalid'),
        (dict(model='foo'), 'flag --model=foo: value should be one of'),
        (dict(server_optimizer='adam'),
         '--server_optimizer=adam is not benchmarked; expected sgd')):
      result = run_benchmark(**flag_values)
      self.assertEqual(result.returncode, 1, result.stderr[-3000:])
      lines = [l for l in result.stderr.splitlines() if l.strip()]
      self.assertLen(lines, 1, result.stderr)
      self.assertIn(message, lines[0])


if __name__ == '__main__':
  tf.test.main()
