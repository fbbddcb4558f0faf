"""Tests for bin/benchmark.py and tff_feddst.benchmarking on a tiny config."""

import json
import os
import shutil
import sys
import tempfile

from absl.testing import flagsaver
import tensorflow as tf

from tff_feddst import benchmarking
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bin'))

import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(total_clients=6, examples_per_client=16, clients_per_round=2,
            client_epochs_per_round=1, client_batch_size=8, warmup_rounds=1,
            timed_rounds=2, sweep_clients_per_round=['1', '2'],
            sweep_rounds=1)


class BenchmarkTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='fmnist_slice_')
    fixtures.write_fashion_mnist_slice(cls.data_dir, num_train=200,
                                       num_test=50)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    super().tearDownClass()

  def test_main_writes_a_report_and_json_with_all_fields(self):
    path = os.path.join(self.create_tempdir().full_path, 'result.json')
    with flagsaver.flagsaver(data_dir=self.data_dir, json_output=path,
                             **TINY):
      benchmark.main(['benchmark.py'])
    with open(path) as f:
      result = json.load(f)
    for key in ('config', 'num_active', 'tff', 'plain', 'tff_to_plain_ratio',
                'tff_to_plain_cpu_ratio', 'tff_build_seconds', 'breakdown',
                'breakdown_cpu', 'sweep', 'traces', 'message_bytes',
                'agreement', 'rounds', 'peak_rss_mb'):
      self.assertIn(key, result)
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
                     list(benchmarking.BenchmarkConfig().report_encodings))
    bitmap = result['message_bytes'][0]
    # MNIST net at S = 0.8: the README's 242,475 bytes plus the weight.
    self.assertEqual(bitmap['upload_bytes'], 242479)
    self.assertEqual(bitmap['mask_bytes'], 32719)
    for sizes in result['message_bytes']:
      self.assertGreater(sizes['ratio_to_bound'], 1.0)
      self.assertLessEqual(sizes['upload_bytes_masks_unchanged'],
                           sizes['upload_bytes'])
    self.assertGreater(result['peak_rss_mb']['self'], 0)

  def test_bad_settings_exit_with_one_line(self):
    with flagsaver.flagsaver(upload_encoding='float32+gzip'):
      with self.assertRaisesRegex(SystemExit, 'unknown encoding token'):
        benchmark.main(['benchmark.py'])
    with flagsaver.flagsaver(clients_per_round=7, total_clients=6):
      with self.assertRaisesRegex(SystemExit, 'clients per round'):
        benchmark.main(['benchmark.py'])


if __name__ == '__main__':
  tf.test.main()
