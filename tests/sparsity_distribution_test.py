"""Tests for tff_feddst.sparse.sparsity_distribution."""

import math

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_feddst.sparse import sparsity_distribution

# The paper's MNIST net in Keras shapes (models.py `MNISTNet`).
MNIST_KERNELS = [(5, 5, 1, 10), (5, 5, 10, 20), (5120, 50), (50, 10)]
MNIST_BIASES = [10, 20, 50, 10]
# The authors' CIFAR-10 net (models.py `CIFAR10Net`).
CIFAR10_KERNELS = [(5, 5, 3, 6), (5, 5, 6, 16), (6400, 120), (120, 84),
                   (84, 10)]
CIFAR10_BIASES = [6, 16, 120, 84, 10]
SMALL_KERNELS = [(3, 3, 2, 4), (32, 8), (16, 8)]

MODELS = {
    'mnist': MNIST_KERNELS,
    'cifar10': CIFAR10_KERNELS,
    'small': SMALL_KERNELS,
}


def _rigl_score(shape, distribution):
  if distribution == 'erk':
    return sum(shape) / math.prod(shape)
  return (shape[-2] + shape[-1]) / (shape[-2] * shape[-1])


def _authors_kept(kernel_shapes, bias_sizes, sparsity):
  """models.py `_weights_by_layer` (erk) + `layer_prune`, in PyTorch terms.

  Written as literally as possible from the authors' code, independently of
  the module under test, with layers described as (in, out, kernel_size).
  """
  layers = []
  for shape in kernel_shapes:
    if len(shape) == 4:
      layers.append(('conv', shape[2], shape[3], shape[:2]))
    else:
      layers.append(('linear', shape[0], shape[1], None))
  sparsities = np.empty(len(layers))
  n_weights = np.zeros_like(sparsities, dtype=np.int64)
  for i, (kind, neur_in, neur_out, kernel_size) in enumerate(layers):
    n_weights[i] = math.prod(kernel_shapes[i]) + bias_sizes[i]
    if kind == 'conv':
      sparsities[i] = 1 - (neur_in + neur_out + np.sum(kernel_size)) / (
          neur_in * neur_out * np.prod(kernel_size))
    else:
      sparsities[i] = 1 - (neur_in + neur_out) / (neur_in * neur_out)
  sparsities *= sparsity * np.sum(n_weights) / np.sum(sparsities * n_weights)
  kept = np.floor((1 - sparsities) * n_weights)
  result = []
  for shape, num_kept in zip(kernel_shapes, kept):
    n_total = math.prod(shape)
    n_prune = int(n_total - num_kept)
    if n_prune >= n_total or n_prune < 0:
      result.append(n_total)  # layer_prune skips it: the layer stays dense.
    else:
      result.append(n_total - n_prune)
  return result


class ComputeLayerDensitiesTest(tf.test.TestCase, parameterized.TestCase):

  def test_erk_hand_computed_three_layers(self):
    # Kernels (3,3,2,4), (32,8), (16,8); S = 0.75.
    #   sizes n: 72, 256, 128; ERK scores sum/prod: 12/72, 40/256, 24/128.
    #   budget = sum(n - floor(0.75 n)) = 18 + 64 + 32 = 114.
    #   divisor = sum(score * n) = sum(sum(shape)) = 12 + 40 + 24 = 76.
    #   eps = 114 / 76 = 1.5; no eps * score exceeds 1 (max 1.5/6 = 0.25).
    #   densities = 1.5 * (1/6, 5/32, 3/16) = (1/4, 15/64, 9/32).
    #   kept = (18, 60, 36), which adds up to the budget 114.
    densities = sparsity_distribution.compute_layer_densities(
        SMALL_KERNELS, 0.75, 'erk')
    self.assertAllClose(densities, [1 / 4, 15 / 64, 9 / 32])
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active(SMALL_KERNELS, 0.75,
                                                       'erk'), [18, 60, 36])

  def test_er_uses_only_the_last_two_dims(self):
    # ER scores (in + out) / (in * out): (2+4)/8 = 3/4, 40/256 = 5/32,
    # 24/128 = 3/16. divisor = 3/4 * 72 + 40 + 24 = 118, budget 114 (as in
    # the ERK case), eps = 114/118.
    densities = sparsity_distribution.compute_layer_densities(
        SMALL_KERNELS, 0.75, 'er')
    eps = 114 / 118
    self.assertAllClose(densities, [eps * 3 / 4, eps * 5 / 32, eps * 3 / 16])

  def test_dense_layer_is_redistributed(self):
    # Kernels (2,2) and (64,64); S = 0.5. ERK scores 4/4 = 1 and
    # 128/4096 = 1/32. First solve: budget 2 + 2048 = 2050, divisor
    # 4 + 128 = 132, eps = 15.53: the small layer's density would be 15.5,
    # so it becomes dense. Second solve: its 4 weights cost the big layer its
    # floor(0.5 * 4) = 2 zeros: budget = 2048 - 2 = 2046, divisor 128,
    # eps = 2046 / 128, big density = eps / 32 = 2046 / 4096.
    densities = sparsity_distribution.compute_layer_densities(
        [(2, 2), (64, 64)], 0.5, 'erk')
    self.assertAllClose(densities, [1.0, 2046 / 4096])
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active([(2, 2), (64, 64)], 0.5,
                                                       'erk'), [4, 2046])

  def test_dense_redistribution_repeats_until_no_layer_exceeds_one(self):
    # Kernels (2,2), (16,4), (32,32); S = 0.75. Sizes 4, 64, 1024; ERK
    # scores 1, 20/64 = 5/16, 64/1024 = 1/16.
    #   Solve 1: budget 1 + 16 + 256 = 273, divisor 4 + 20 + 64 = 88,
    #     eps = 3.102: (2,2) -> 3.10 > 1 is dense; (16,4) -> 0.969 is not.
    #   Solve 2: budget 16 + 256 - 3 = 269, divisor 20 + 64 = 84,
    #     eps = 3.202: now (16,4) -> 1.0007 > 1 is dense too.
    #   Solve 3: budget 256 - 3 - 48 = 205, divisor 64, eps = 205 / 64,
    #     density of (32,32) = eps / 16 = 205 / 1024.
    densities = sparsity_distribution.compute_layer_densities(
        [(2, 2), (16, 4), (32, 32)], 0.75, 'erk')
    self.assertAllClose(densities, [1.0, 1.0, 205 / 1024])

  @parameterized.product(
      model=list(MODELS), distribution=['er', 'erk'],
      target_sparsity=list(np.linspace(0.05, 0.98, 7)))
  def test_rigl_invariants(self, model, distribution, target_sparsity):
    kernels = MODELS[model]
    densities = sparsity_distribution.compute_layer_densities(
        kernels, target_sparsity, distribution)
    num_active = sparsity_distribution.compute_layer_num_active(
        kernels, target_sparsity, distribution)
    sizes = [math.prod(shape) for shape in kernels]
    uniform_budget = sum(n - math.floor(target_sparsity * n) for n in sizes)
    # The densities spend exactly the uniform budget ...
    self.assertAllClose(
        sum(d * n for d, n in zip(densities, sizes)), uniform_budget)
    # ... and the counts within half a weight per layer (plus the >= 1 rule).
    self.assertLessEqual(abs(sum(num_active) - uniform_budget), len(sizes))
    self.assertAllInRange(densities, 0.0, 1.0)
    # density / score is the same eps for every layer that is not dense.
    ratios = [
        d / _rigl_score(shape, distribution)
        for d, shape in zip(densities, kernels)
        if d < 1.0
    ]
    self.assertNotEmpty(ratios)
    self.assertAllClose(ratios, [ratios[0]] * len(ratios))
    # A dense layer has a score at least as large as any sparse layer's.
    for d, shape in zip(densities, kernels):
      if d == 1.0:
        self.assertGreaterEqual(
            _rigl_score(shape, distribution) * ratios[0], 1.0 - 1e-9)

  @parameterized.parameters('uniform', 'er', 'erk')
  def test_zero_sparsity_is_all_dense(self, distribution):
    self.assertEqual(
        sparsity_distribution.compute_layer_densities(MNIST_KERNELS, 0.0,
                                                      distribution),
        [1.0] * 4)
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active(MNIST_KERNELS, 0.0,
                                                       distribution),
        [250, 5000, 256000, 500])

  def test_uniform(self):
    self.assertAllClose(
        sparsity_distribution.compute_layer_densities(MNIST_KERNELS, 0.8,
                                                      'uniform'), [0.2] * 4)
    # 0.2 * (250, 5000, 256000, 500) = (50, 1000, 51200, 100).
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active(MNIST_KERNELS, 0.8,
                                                       'uniform'),
        [50, 1000, 51200, 100])

  def test_num_active_rounds_halves_up_and_keeps_at_least_one(self):
    # (1,5) at S = 0.5: 2.5 weights -> 3. (2,2) at S = 0.9: 0.4 -> 0 -> 1.
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active([(1, 5)], 0.5,
                                                       'uniform'), [3])
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active([(2, 2)], 0.9,
                                                       'uniform'), [1])

  @parameterized.parameters(1.0, -0.1, 1.5)
  def test_target_sparsity_out_of_range_raises(self, target_sparsity):
    with self.assertRaisesRegex(ValueError, r'\[0, 1\)'):
      sparsity_distribution.compute_layer_densities(MNIST_KERNELS,
                                                    target_sparsity, 'erk')
    with self.assertRaisesRegex(ValueError, r'\[0, 1\)'):
      sparsity_distribution.compute_layer_num_active(
          MNIST_KERNELS, target_sparsity, 'erk_reference', MNIST_BIASES)

  def test_unknown_distribution_raises_with_accepted_values(self):
    with self.assertRaisesRegex(ValueError, "'uniform', 'er', 'erk'"):
      sparsity_distribution.compute_layer_densities(MNIST_KERNELS, 0.5, 'erx')
    with self.assertRaisesRegex(ValueError, 'erk_reference'):
      sparsity_distribution.compute_layer_num_active(MNIST_KERNELS, 0.5, 'erx')
    # The reference variant exists only as a count, since it needs biases.
    with self.assertRaisesRegex(ValueError, "'uniform', 'er', 'erk'"):
      sparsity_distribution.compute_layer_densities(MNIST_KERNELS, 0.5,
                                                    'erk_reference')

  def test_one_dimensional_kernel_raises(self):
    with self.assertRaisesRegex(ValueError, 'at least 2 dims'):
      sparsity_distribution.compute_layer_densities([(10,)], 0.5, 'erk')


class ErkReferenceTest(tf.test.TestCase, parameterized.TestCase):

  def test_mnist_matches_the_sparsities_the_authors_measured(self):
    # Raw sparsities 1 - score: 1 - 21/250 = 0.916, 1 - 40/5000 = 0.992,
    # 1 - 5170/256000 = 0.97980, 1 - 60/500 = 0.88. Sizes with bias: 260,
    # 5020, 256050, 510 (sum 261840). Common factor c = 0.8 * 261840 /
    # sum(s * n) = 209472 / 256545.8 = 0.81651, so s = 0.7479, 0.8100,
    # 0.8000, 0.7185 and kept = floor((1 - s) * n) = 65, 953, 51204, 143,
    # i.e. kernel sparsities 0.740, 0.809, 0.800, 0.714.
    num_active = sparsity_distribution.compute_layer_num_active(
        MNIST_KERNELS, 0.8, 'erk_reference', MNIST_BIASES)
    self.assertEqual(num_active, [65, 953, 51204, 143])
    kernel_sparsities = [
        1 - kept / math.prod(shape)
        for kept, shape in zip(num_active, MNIST_KERNELS)
    ]
    self.assertAllClose(kernel_sparsities, [0.74, 0.81, 0.80, 0.71], atol=0.005)
    # The bias-inclusive budget (1 - 0.8) * 261840 = 52368 is met up to the
    # four floors: 65 + 953 + 51204 + 143 = 52365.
    self.assertBetween(sum(num_active), 52368 - 4, 52368)

  def test_mnist_rigl_erk_is_very_different(self):
    reference = sparsity_distribution.compute_layer_num_active(
        MNIST_KERNELS, 0.8, 'erk_reference', MNIST_BIASES)
    rigl = sparsity_distribution.compute_layer_num_active(
        MNIST_KERNELS, 0.8, 'erk')
    # RigL ERK: the 50x10 output layer is dense and conv1 keeps 83%, where
    # the reference keeps 143/500 and 65/250.
    self.assertEqual(rigl[3], 500)
    self.assertGreater(rigl[0], 200)
    self.assertLess(rigl[1], 0.1 * 5000)
    self.assertLess(reference[3], 150)
    self.assertLess(reference[0], 70)

  @parameterized.product(
      model=['mnist', 'cifar10'],
      target_sparsity=list(np.linspace(0.0, 0.99, 12)))
  def test_matches_a_literal_transcription_of_the_authors_code(
      self, model, target_sparsity):
    kernels, biases = {
        'mnist': (MNIST_KERNELS, MNIST_BIASES),
        'cifar10': (CIFAR10_KERNELS, CIFAR10_BIASES),
    }[model]
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active(
            kernels, target_sparsity, 'erk_reference', biases),
        _authors_kept(kernels, biases, target_sparsity))

  def test_layer_with_no_weights_left_stays_dense(self):
    # At S = 0.99 the rescaled sparsity of conv2 is 0.992 * 1.0104 > 1, so
    # its kept count is negative; the authors' layer_prune skips the layer.
    num_active = sparsity_distribution.compute_layer_num_active(
        MNIST_KERNELS, 0.99, 'erk_reference', MNIST_BIASES)
    self.assertEqual(num_active[1], 5000)
    self.assertLess(num_active[2], 0.02 * 256000)

  def test_count_is_capped_to_the_kernel_size(self):
    # (2,2) has score 4/4 = 1, raw sparsity 0, so it keeps
    # floor(1 * (4 + 2)) = 6 weights (bias included) -> capped to 4.
    num_active = sparsity_distribution.compute_layer_num_active(
        [(2, 2), (64, 64)], 0.5, 'erk_reference', [2, 64])
    self.assertEqual(num_active[0], 4)

  def test_zero_sparsity_is_all_dense(self):
    self.assertEqual(
        sparsity_distribution.compute_layer_num_active(
            MNIST_KERNELS, 0.0, 'erk_reference', MNIST_BIASES),
        [250, 5000, 256000, 500])

  @parameterized.named_parameters(('none', None), ('too_few', [10, 20, 50]))
  def test_missing_bias_sizes_raise(self, bias_sizes):
    with self.assertRaisesRegex(ValueError, 'bias size'):
      sparsity_distribution.compute_layer_num_active(MNIST_KERNELS, 0.8,
                                                     'erk_reference',
                                                     bias_sizes)



class NumActiveByRoundTest(tf.test.TestCase, parameterized.TestCase):

  def test_uniform_table_by_hand(self):
    # S_t = 0.5, 0.6, 0.7, 0.8 (S_init 0.5 to 0.8 over T_end = 3 rounds);
    # uniform counts round((1 - S_t) * n) for n = 100 and n = 20.
    table = sparsity_distribution.num_active_by_round(
        [(10, 10), (4, 5)], [0.5, 0.6, 0.7, 0.8], 'uniform')
    self.assertEqual(table.dtype, np.int32)
    self.assertAllEqual(table, [[50, 10], [40, 8], [30, 6], [20, 4]])

  @parameterized.parameters('uniform', 'er', 'erk', 'erk_reference')
  def test_rows_are_the_counts_of_each_round_target(self, distribution):
    sparsities = [0.5 + 0.3 * t / 10 for t in range(10)] + [0.8]
    table = sparsity_distribution.num_active_by_round(
        MNIST_KERNELS, sparsities, distribution, bias_sizes=MNIST_BIASES)
    self.assertEqual(table.shape, (11, 4))
    for row, sparsity in zip(table, sparsities):
      self.assertAllEqual(row, sparsity_distribution.compute_layer_num_active(
          MNIST_KERNELS, sparsity, distribution, bias_sizes=MNIST_BIASES))
    self.assertTrue(np.all(np.diff(table, axis=0) <= 0))

  def test_a_layer_never_grows_back(self):
    # erk_reference leaves the MNIST net's second conv dense at S = 0.99
    # (no weight would be left); growing from 0.985 it keeps its count.
    dense_again = sparsity_distribution.compute_layer_num_active(
        MNIST_KERNELS, 0.99, 'erk_reference', bias_sizes=MNIST_BIASES)
    self.assertEqual(dense_again[1], 5 * 5 * 10 * 20)
    table = sparsity_distribution.num_active_by_round(
        MNIST_KERNELS, [0.985, 0.99], 'erk_reference', bias_sizes=MNIST_BIASES)
    self.assertEqual(table[1][1], table[0][1])
    self.assertLess(table[0][1], 5 * 5 * 10 * 20)

  def test_decreasing_targets_raise(self):
    with self.assertRaisesRegex(ValueError, 'non-decreasing'):
      sparsity_distribution.num_active_by_round(
          MNIST_KERNELS, [0.8, 0.5], 'erk')
    with self.assertRaisesRegex(ValueError, 'at least one'):
      sparsity_distribution.num_active_by_round(MNIST_KERNELS, [], 'erk')


if __name__ == '__main__':
  tf.test.main()
