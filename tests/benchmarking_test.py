"""Tests for the pure helpers of tff_feddst.benchmarks.benchmarking.

They turn timings, CPU seconds, peak memory and payload sizes into the
report's figures and ratios; each is checked on numbers worked out by hand.
`run_benchmark` itself runs in tests/benchmark_test.py.
"""

import json
import math
import os
import resource

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.benchmarks import benchmarking
from tff_feddst.benchmarks import plain_loop
from tff_feddst.networks import models
from tff_feddst.process import encoding


def timed_record(clients, should_readjust, examples, seconds, cpu_seconds,
                 phases, python_cpu_seconds=None):
  """A timed round record as `run_benchmark` stores it (both paths equal)."""
  record = {'clients': clients, 'should_readjust': should_readjust,
            'examples': examples, 'phases': phases, 'phases_cpu': phases}
  for path in ('tff', 'plain'):
    record[f'{path}_seconds'] = seconds
    record[f'{path}_cpu_seconds'] = cpu_seconds
  if python_cpu_seconds is not None:
    record['tff_python_cpu_seconds'] = python_cpu_seconds
  return record


def phases(client_update, readjust_call=None):
  values = {'data_input': 0.1, 'data_iteration': 0.2,
            plain_loop.CLIENT_UPDATE: client_update,
            plain_loop.BROADCAST: 0.05, plain_loop.AGGREGATION: 0.15,
            plain_loop.SERVER_UPDATE: 0.1, 'evaluation': 0.3}
  if readjust_call is not None:
    values['readjust_call'] = readjust_call
  return values


class FiguresTest(tf.test.TestCase):

  def test_mean_ratio_and_format(self):
    self.assertEqual(benchmarking._mean([1.0, 2.0]), 1.5)
    self.assertIsNone(benchmarking._mean([]))
    self.assertEqual(benchmarking._ratio(3.0, 1.5), 2.0)
    # A missing or zero denominator, or a missing numerator: no ratio.
    self.assertIsNone(benchmarking._ratio(3.0, 0.0))
    self.assertIsNone(benchmarking._ratio(3.0, None))
    self.assertIsNone(benchmarking._ratio(None, 1.0))
    self.assertEqual(benchmarking._fmt(1.23456), '1.235')
    self.assertEqual(benchmarking._fmt(1234.5, 0), '1234')
    self.assertEqual(benchmarking._fmt(None), '-')

  def test_path_summary_by_hand(self):
    timed = [
        timed_record(2, True, 100, 2.0, 3.0, {}, python_cpu_seconds=0.5),
        timed_record(2, False, 100, 4.0, 5.0, {}),
        timed_record(2, True, 200, 3.0, 4.0, {}, python_cpu_seconds=1.5),
    ]
    summary = benchmarking._path_summary(timed, 'tff')
    self.assertAlmostEqual(summary['seconds_per_round'], 3.0)  # 9 / 3.
    self.assertAlmostEqual(summary['seconds_per_round_readjust'], 2.5)
    self.assertAlmostEqual(summary['seconds_per_round_no_readjust'], 4.0)
    self.assertAlmostEqual(summary['cpu_seconds_per_round'], 4.0)  # 12 / 3.
    # Only the rounds that measured it: (0.5 + 1.5) / 2.
    self.assertAlmostEqual(summary['python_cpu_seconds_per_round'], 1.0)
    # 400 examples in 9 seconds.
    self.assertAlmostEqual(summary['examples_per_second'], 400 / 9)
    plain = benchmarking._path_summary(timed[:1], 'plain')
    self.assertIsNone(plain['seconds_per_round_no_readjust'])
    self.assertIsNone(plain['python_cpu_seconds_per_round'])

  def test_breakdown_by_hand(self):
    # Two rounds of 2 clients; the first readjusts, one call took 0.1 s.
    timed = [timed_record(2, True, 100, 0, 0, phases(1.0, 0.1)),
             timed_record(2, False, 100, 0, 0, phases(0.6))]
    breakdown = benchmarking._breakdown(timed, 'phases')
    # Readjustment: 0.1 s x 2 readjusting clients / 2 rounds = 0.1 s a round.
    # Client update 0.8 s a round, less data iteration 0.2 and readjustment
    # 0.1: training 0.5. Data input: building 0.1 + iterating 0.2.
    expected = {'data_input': 0.3, 'client_training': 0.5,
                'readjustment': 0.1, 'broadcast': 0.05, 'aggregation': 0.15,
                'server_update': 0.1, 'evaluation': 0.3}
    self.assertCountEqual(breakdown['seconds_per_round'], expected)
    for name, seconds in expected.items():
      self.assertAlmostEqual(breakdown['seconds_per_round'][name], seconds,
                             msg=name)
    self.assertAlmostEqual(breakdown['total_seconds_per_round'], 1.5)
    per_client = breakdown['client_update_seconds_per_client']
    self.assertAlmostEqual(per_client['readjust_rounds'], 0.5)  # 1.0 / 2.
    self.assertAlmostEqual(per_client['other_rounds'], 0.3)  # 0.6 / 2.
    self.assertAlmostEqual(breakdown['readjust_seconds_per_call'], 0.1)
    self.assertAlmostEqual(breakdown['dataset_build_seconds_per_round'], 0.1)
    self.assertAlmostEqual(breakdown['data_iteration_seconds_per_round'], 0.2)

  def test_breakdown_without_readjustment(self):
    breakdown = benchmarking._breakdown(
        [timed_record(2, False, 100, 0, 0, phases(0.6))], 'phases_cpu')
    self.assertIsNone(breakdown['readjust_seconds_per_call'])
    self.assertEqual(breakdown['seconds_per_round']['readjustment'], 0.0)
    self.assertAlmostEqual(
        breakdown['seconds_per_round']['client_training'], 0.4)
    self.assertIsNone(
        breakdown['client_update_seconds_per_client']['readjust_rounds'])

  def test_compare_weights_by_hand(self):
    layout = models.ModelLayout(
        kernel_indices=(0,), mask_indices=(0,), dense_trainable_indices=(1,),
        dense_non_trainable_indices=(), bookkeeping_indices=(1,),
        kernel_shapes=((2, 2),), layer_bias_sizes=(2,))
    first = tff.learning.models.ModelWeights(
        trainable=[np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, 0.5])],
        non_trainable=[np.array([[1.0, 0.0], [1.0, 0.0]]), np.array(0.0)])
    second = tff.learning.models.ModelWeights(
        trainable=[np.array([[1.0, 2.25], [3.0, 4.0]]),
                   np.array([0.5, -0.5])],
        non_trainable=[np.array([[0.0, 1.0], [1.0, 0.0]]), np.array(0.0)])
    result = benchmarking.compare_weights(first, second, layout)
    # Largest |difference|: the bias, 0.5 - (-0.5) = 1.0 (kernel: 0.25;
    # mask: 1). Two mask positions differ.
    self.assertEqual(result, {'max_abs_weight_difference': 1.0,
                              'mask_positions_differing': 2})
    self.assertEqual(
        benchmarking.compare_weights(first, first, layout),
        {'max_abs_weight_difference': 0.0, 'mask_positions_differing': 0})


class EncodingSizesTest(tf.test.TestCase):
  """One client's upload: a 4x3 kernel with 5 of 12 positions active, a dense
  3x2 kernel (6 of 6: no mask bits) and 5 biases."""

  def setUp(self):
    super().setUp()
    sparse_mask = np.zeros(12, np.float32)
    sparse_mask[[0, 2, 5, 6, 11]] = 1.0
    self.masks = [sparse_mask.reshape(4, 3), np.ones((3, 2), np.float32)]
    self.kernels = [np.linspace(1, 2, 12, dtype=np.float32).reshape(4, 3) *
                    self.masks[0], np.full((3, 2), 0.5, np.float32)]
    self.dense = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
    self.num_active = [5, 6]
    # log2 C(12, 5) = log2 792 bits for the sparse layer's mask; the dense
    # layer has one possible mask.
    self.mask_bound_bits = math.log2(792)

  def sizes(self, name):
    return benchmarking.encoding_sizes(
        self.kernels, self.masks, self.dense, self.num_active,
        encoding.PayloadEncoding.parse(name))

  def test_bitmap_by_hand(self):
    sizes = self.sizes('float32+bitmap')
    # 11 values x 4 + ceil(12 / 8) mask bytes + 5 biases x 4 + the 4-byte
    # example count = 44 + 2 + 20 + 4 = 70.
    bound = (11 * 32 + self.mask_bound_bits) / 8
    self.assertEqual(sizes['encoding'], 'float32+bitmap')
    self.assertEqual(sizes['upload_bytes'], 70)
    self.assertEqual(sizes['upload_bytes_masks_unchanged'], 70)
    self.assertEqual(sizes['mask_bytes'], 2)
    self.assertAlmostEqual(sizes['bound_bytes'], bound)
    self.assertAlmostEqual(sizes['bound_bytes_per_layer'], bound)
    self.assertEqual(sizes['known_mask_bound_bytes'], 44)
    self.assertAlmostEqual(sizes['ratio_to_bound'], 70 / bound)
    self.assertAlmostEqual(sizes['ratio_to_bound_per_layer'], 70 / bound)
    self.assertAlmostEqual(
        sizes['ratio_masks_unchanged_to_known_mask_bound'], 70 / 44)

  def test_rice_with_masks_left_out_by_hand(self):
    sizes = self.sizes('float16+rice+changed_masks_only')
    # Values 11 x 2 = 22. The Rice code of positions 0, 2, 5, 6, 11 of 12
    # (k = 0, count in 3 bits, gaps 0, 1, 2, 0, 4 in unary: 12 bits) is 15
    # bits: 2 bytes, plus 4 bytes for its length. 22 + 6 + 20 + 4 = 52.
    # With the masks left out, only the 4-byte length (0) remains: 50.
    bound = (11 * 16 + self.mask_bound_bits) / 8
    self.assertEqual(sizes['upload_bytes'], 52)
    self.assertEqual(sizes['upload_bytes_masks_unchanged'], 50)
    self.assertEqual(sizes['mask_bytes'], 6)
    self.assertAlmostEqual(sizes['bound_bytes'], bound)
    self.assertEqual(sizes['known_mask_bound_bytes'], 22)
    self.assertAlmostEqual(sizes['ratio_to_bound'], 52 / bound)
    self.assertAlmostEqual(
        sizes['ratio_masks_unchanged_to_known_mask_bound'], 50 / 22)

  def test_format_message_bytes(self):
    lines = benchmarking.format_message_bytes({
        'num_active': self.num_active,
        'message_bytes': [self.sizes('float32+bitmap')]})
    self.assertIn('11 active', lines[0])
    self.assertLen(lines, 3)
    row = lines[2].split()
    # encoding, readjust, other, masks, bound, ratio, per-layer, other/nnz.
    bound = (11 * 32 + self.mask_bound_bits) / 8
    self.assertEqual(row[:4], ['float32+bitmap', '70', '70', '2'])
    self.assertEqual(row[4:], [f'{bound:.0f}', f'{70 / bound:.3f}',
                               f'{70 / bound:.3f}', f'{70 / 44:.3f}'])


class OutputTest(tf.test.TestCase):

  def test_peak_rss_mb_is_ru_maxrss_in_mib(self):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak = benchmarking.peak_rss_mb()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    self.assertCountEqual(peak, ['self', 'children'])
    # ru_maxrss only grows; this process holds TensorFlow: well over 1 MiB.
    self.assertBetween(peak['self'], before, after)
    self.assertGreater(peak['self'], 1.0)
    self.assertGreaterEqual(peak['children'], 0.0)

  def test_write_json_keeps_fields_and_refuses_to_overwrite(self):
    path = os.path.join(self.create_tempdir().full_path, 'result.json')
    result = {'tff': {'seconds_per_round': 1.5, 'examples_per_second': None},
              'tff_to_plain_ratio': np.float32(1.25),
              'peak_rss_mb': {'self': 512.0, 'children': 0.0}}
    benchmarking.write_json(result, path)
    with open(path) as f:
      text = f.read()
    self.assertTrue(text.endswith('}\n'))
    # numpy scalars are written as plain floats.
    self.assertEqual(json.loads(text), {
        'tff': {'seconds_per_round': 1.5, 'examples_per_second': None},
        'tff_to_plain_ratio': 1.25,
        'peak_rss_mb': {'self': 512.0, 'children': 0.0}})
    with self.assertRaises(FileExistsError):
      benchmarking.write_json({}, path)


if __name__ == '__main__':
  tf.test.main()
