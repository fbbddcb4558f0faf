"""Tests for tff_feddst.benchmarks.arithmetic_rate."""

import math

import tensorflow as tf

from tff_feddst.benchmarks import arithmetic_rate
from tff_feddst.networks import models
from tff_feddst.networks import pruning


class DenseFlopsTest(tf.test.TestCase):

  def test_mnist_net_by_hand(self):
    # Multiply-adds of one example's forward at density 1: conv1 24x24
    # outputs x (5x5x1x10) = 144,000; conv2 18x18 x (5x5x10x20) = 1,620,000;
    # dense 5120x50 = 256,000; dense 50x10 = 500; 2,020,500 in all, 2 FLOPs
    # each, forward and backward (3x).
    model = models.mnist_net(seed=0)
    self.assertEqual(
        arithmetic_rate.dense_training_flops_per_example(model),
        3 * 2 * 2_020_500)

  def test_the_sparsity_does_not_change_it(self):
    model = models.mnist_net(seed=0)
    before = arithmetic_rate.dense_training_flops_per_example(model)
    for pair in pruning.prunable_weights(model):
      pair.mask.assign(tf.zeros_like(pair.mask))
    self.assertEqual(
        arithmetic_rate.dense_training_flops_per_example(model), before)


class RateSummaryTest(tf.test.TestCase):

  def test_by_hand(self):
    # 3,000 examples of 12 MFLOP in 2 CPU seconds: 18 GFLOP/s; against a
    # matmul at 72, a quarter of it, so at most 4x faster.
    summary = arithmetic_rate.rate_summary(3000, 2.0, 12_000_000, 72.0)
    self.assertAlmostEqual(summary['dense_gflops_per_cpu_second'], 18.0)
    self.assertAlmostEqual(summary['fraction_of_matmul_rate'], 0.25)
    self.assertAlmostEqual(summary['speedup_bound'], 4.0)

  def test_undefined_parts_are_none(self):
    self.assertEqual(
        arithmetic_rate.rate_summary(3000, 0.0, 12_000_000, 72.0),
        {'dense_gflops_per_cpu_second': None, 'fraction_of_matmul_rate': None,
         'speedup_bound': None})
    summary = arithmetic_rate.rate_summary(3000, 2.0, 12_000_000, None)
    self.assertAlmostEqual(summary['dense_gflops_per_cpu_second'], 18.0)
    self.assertIsNone(summary['speedup_bound'])


class MatmulRateTest(tf.test.TestCase):

  def test_a_positive_finite_rate(self):
    rate = arithmetic_rate.matmul_gflops(size=64, min_cpu_seconds=0.01)
    self.assertTrue(math.isfinite(rate))
    self.assertGreater(rate, 0)

  def test_refuses_what_cannot_be_timed(self):
    with self.assertRaisesRegex(ValueError, 'must be positive'):
      arithmetic_rate.matmul_gflops(size=0)
    with self.assertRaisesRegex(ValueError, 'must be positive'):
      arithmetic_rate.matmul_gflops(min_cpu_seconds=0)


if __name__ == '__main__':
  tf.test.main()
