"""Tests for tff_feddst.sparse.masks."""

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tff_feddst.sparse import masks

# A 4x4 kernel, flat (row-major) indices:
#    0: 0.9   1: -0.1   2: 0.0   3: 0.5
#    4: 0.0   5:  0.3   6: -0.7  7: 0.0
#    8: 0.2   9:  0.0  10: 0.0  11: -0.4
#   12: 0.0  13:  0.8  14: 0.0  15: 0.6
# Active: 0, 1, 3, 5, 6, 8, 11, 13, 15 (9); inactive: 2, 4, 7, 9, 10, 12, 14.
KERNEL = np.array(
    [[0.9, -0.1, 0.0, 0.5],
     [0.0, 0.3, -0.7, 0.0],
     [0.2, 0.0, 0.0, -0.4],
     [0.0, 0.8, 0.0, 0.6]], dtype=np.float32)
KERNEL_MASK = (KERNEL != 0).astype(np.float32)
# Gradient: huge on active 0, 13 and on 1 (which gets pruned), so none of
# these may be regrown; among inactive positions |g| ranks 10 (0.8),
# 7 (0.7), 4 (0.6), 2 (0.3), 9 (0.2), 12 (0.05), 14 (0.0).
KERNEL_GRADIENT = np.array(
    [[5.0, 9.0, 0.3, 0.0],
     [0.6, 0.0, 0.0, 0.7],
     [0.0, 0.2, -0.8, 0.0],
     [0.05, -4.0, 0.0, 0.0]], dtype=np.float32)


def _flat_ones(mask):
  return set(np.flatnonzero(np.asarray(mask)).tolist())


def _positions(shape, flat_indices):
  mask = np.zeros(int(np.prod(shape)), dtype=np.float32)
  mask[list(flat_indices)] = 1.0
  return mask.reshape(shape)


def _random_kernel(seed, shape=(6, 5), density=0.4):
  """Distinct magnitudes (a permuted linspace with random signs) and a mask."""
  rng = np.random.default_rng(seed)
  size = int(np.prod(shape))
  magnitudes = rng.permutation(np.linspace(0.1, 2.0, size))
  signs = rng.choice([-1.0, 1.0], size)
  mask = np.zeros(size, np.float32)
  mask[rng.choice(size, int(density * size), replace=False)] = 1.0
  weight = (magnitudes * signs).astype(np.float32) * mask
  gradient = (rng.permutation(np.linspace(0.05, 3.0, size)) *
              rng.choice([-1.0, 1.0], size)).astype(np.float32)
  return (weight.reshape(shape), mask.reshape(shape), gradient.reshape(shape))


class TopKMaskTest(tf.test.TestCase, parameterized.TestCase):

  def test_ties_go_to_secondary_score_then_lower_index(self):
    # Scores 2 at 1, 2, 3 with secondaries 1, 3, 3: order 2, 3 (equal
    # secondary, lower index first), then 1, then 0 (score 1), then 4.
    scores = tf.constant([1.0, 2.0, 2.0, 2.0, 0.0])
    secondary = tf.constant([0.0, 1.0, 3.0, 3.0, 9.0])
    expected = {1: {2}, 2: {2, 3}, 3: {1, 2, 3}, 4: {0, 1, 2, 3}}
    for k, ones in expected.items():
      self.assertEqual(
          _flat_ones(masks.top_k_mask(scores, k, secondary)), ones, msg=k)

  def test_ties_without_secondary_go_to_lower_index(self):
    scores = tf.constant([[3.0, 1.0, 3.0], [3.0, 1.0, 1.0]])
    # 3.0 at 0, 2, 3; k = 2 -> 0, 2. 1.0 at 1, 4, 5; k = 4 -> 0, 2, 3, 1.
    self.assertEqual(_flat_ones(masks.top_k_mask(scores, 2)), {0, 2})
    self.assertEqual(_flat_ones(masks.top_k_mask(scores, 4)), {0, 1, 2, 3})

  @parameterized.parameters(0, 1, 2, 3, 4)
  def test_matches_python_lexicographic_sort_with_many_ties(self, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=40).astype(np.float32)
    secondary = rng.integers(0, 3, size=40).astype(np.float32)
    order = sorted(range(40), key=lambda i: (-scores[i], -secondary[i], i))
    for k in (0, 1, 7, 20, 39, 40):
      self.assertEqual(
          _flat_ones(masks.top_k_mask(scores, k, secondary)), set(order[:k]))

  def test_k_zero_and_full_size(self):
    scores = tf.constant(np.linspace(0.0, 1.0, 12).reshape(3, 4))
    self.assertAllEqual(masks.top_k_mask(scores, 0), np.zeros((3, 4)))
    self.assertAllEqual(masks.top_k_mask(scores, 12), np.ones((3, 4)))

  def test_returns_float32_with_the_shape_of_scores(self):
    mask = masks.top_k_mask(tf.zeros([2, 3, 4], tf.float64), 5)
    self.assertEqual(mask.dtype, tf.float32)
    self.assertEqual(mask.shape, (2, 3, 4))
    self.assertEqual(int(tf.reduce_sum(mask)), 5)

  def test_tensor_k_inside_tf_function(self):

    @tf.function(input_signature=[
        tf.TensorSpec([4, 4], tf.float32),
        tf.TensorSpec([], tf.int32)
    ])
    def top_k(scores, k):
      mask = masks.top_k_mask(scores, k)
      # The static shape survives tracing.
      assert mask.shape == (4, 4), mask.shape
      return mask

    scores = tf.constant(np.linspace(-1.0, 1.0, 16).reshape(4, 4),
                         tf.float32)
    # The largest three are the last three flat positions.
    self.assertEqual(_flat_ones(top_k(scores, tf.constant(3))), {13, 14, 15})
    self.assertEqual(_flat_ones(top_k(scores, tf.constant(0))), set())
    self.assertEqual(_flat_ones(top_k(scores, tf.constant(16))), set(range(16)))

  @parameterized.parameters(-1, 17)
  def test_python_k_out_of_range_raises(self, k):
    with self.assertRaisesRegex(ValueError, r'\[0, 16\]'):
      masks.top_k_mask(tf.zeros([4, 4]), k)

  def test_tensor_k_out_of_range_raises(self):
    with self.assertRaises(tf.errors.InvalidArgumentError):
      masks.top_k_mask(tf.zeros([4, 4]), tf.constant(17))


class RandomMaskTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(((5, 5, 1, 10), 65), ((50, 10), 143), ((3, 4), 0),
                            ((3, 4), 12), ((7,), 3))
  def test_exact_count(self, shape, num_active):
    mask = masks.random_mask(shape, num_active, seed=7)
    self.assertEqual(mask.shape, shape)
    self.assertEqual(mask.dtype, tf.float32)
    self.assertEqual(int(masks.count_active(mask)), num_active)
    self.assertAllInSet(mask, [0.0, 1.0])

  def test_same_seed_same_mask_and_other_seed_other_mask(self):
    first = masks.random_mask((20, 30), 60, seed=3)
    again = masks.random_mask((20, 30), 60, seed=3)
    other = masks.random_mask((20, 30), 60, seed=4)
    self.assertAllEqual(first, again)
    self.assertNotAllEqual(first, other)

  def test_tensor_seed_and_count_inside_tf_function_match_python_ints(self):

    @tf.function
    def make(seed, num_active):
      return masks.random_mask((8, 8), num_active, seed)

    self.assertAllEqual(
        make(tf.constant(11), tf.constant(20)),
        masks.random_mask((8, 8), 20, seed=11))

  def test_dtype(self):
    mask = masks.random_mask((4, 4), 5, seed=0, dtype=tf.float64)
    self.assertEqual(mask.dtype, tf.float64)


class CountAndApplyTest(tf.test.TestCase):

  def test_count_active(self):
    self.assertEqual(int(masks.count_active(KERNEL_MASK)), 9)
    self.assertEqual(masks.count_active(KERNEL_MASK).dtype, tf.int32)

  def test_apply_mask(self):
    weight = np.arange(1.0, 5.0, dtype=np.float32)
    self.assertAllEqual(
        masks.apply_mask(weight, np.array([1.0, 0.0, 0.0, 1.0], np.float32)),
        [1.0, 0.0, 0.0, 4.0])


class NumToReadjustTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ('rounds_down', 9, 16, 0.25, 2),  # 2.25 -> 2.
      ('halves_up', 10, 16, 0.25, 3),  # 2.5 -> 3.
      ('limited_by_inactive', 10, 12, 0.5, 2),  # 5 wanted, 12 - 10 = 2 free.
      ('all_active', 8, 16, 1.0, 8),
      ('dense_layer', 16, 16, 0.5, 0),
      ('nothing_active', 0, 16, 0.5, 0),
      ('zero_fraction', 9, 16, 0.0, 0),
  )
  def test_values(self, num_active, num_total, drop_fraction, expected):
    result = masks.num_to_readjust(num_active, num_total, drop_fraction)
    self.assertEqual(result.dtype, tf.int32)
    self.assertEqual(int(result), expected)

  def test_tensor_arguments(self):
    result = masks.num_to_readjust(
        tf.constant(9), tf.constant(16), tf.constant(0.25, tf.float32))
    self.assertEqual(int(result), 2)


class PruneAndRegrowTest(tf.test.TestCase, parameterized.TestCase):

  def test_prune_by_magnitude_hand_example(self):
    # Smallest active magnitudes: 1 (0.1), 8 (0.2), 5 (0.3), 11 (0.4).
    # Inactive zeros (2, 4, ...) are never candidates.
    self.assertEqual(
        _flat_ones(masks.prune_by_magnitude(KERNEL, KERNEL_MASK, 2)), {1, 8})
    self.assertEqual(
        _flat_ones(masks.prune_by_magnitude(KERNEL, KERNEL_MASK, 4)),
        {1, 5, 8, 11})

  def test_prune_ties_prune_lower_index_first(self):
    weight = np.array([0.5, -0.5, 0.5, 0.5, 0.2], np.float32)
    mask = np.array([1.0, 1.0, 0.0, 1.0, 1.0], np.float32)
    # 4 (0.2) first, then the 0.5 ties among active 0, 1, 3 by index.
    self.assertEqual(_flat_ones(masks.prune_by_magnitude(weight, mask, 3)),
                     {4, 0, 1})

  def test_prune_more_than_active_returns_all_active(self):
    self.assertEqual(
        _flat_ones(masks.prune_by_magnitude(KERNEL, KERNEL_MASK, 12)),
        _flat_ones(KERNEL_MASK))

  def test_regrow_by_gradient_hand_example(self):
    # Excluding the just-pruned 1 (|g| = 9) and skipping active 0 and 13,
    # the inactive positions with the largest |g| are 10 (0.8) and 7 (0.7).
    pruned = _positions((4, 4), [1, 8])
    self.assertEqual(
        _flat_ones(
            masks.regrow_by_gradient(KERNEL_MASK, pruned, KERNEL_GRADIENT, 2)),
        {7, 10})
    # Without the exclusion, 1 is still active in KERNEL_MASK, so the same.
    self.assertEqual(
        _flat_ones(
            masks.regrow_by_gradient(KERNEL_MASK, np.zeros((4, 4)),
                                     KERNEL_GRADIENT, 3)), {4, 7, 10})

  def test_regrow_never_picks_excluded_positions(self):
    mask = np.zeros(6, np.float32)
    gradient = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], np.float32)
    excluded = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0], np.float32)
    self.assertEqual(
        _flat_ones(masks.regrow_by_gradient(mask, excluded, gradient, 2)),
        {1, 3})

  def test_regrow_ties_pick_lower_index_first(self):
    mask = np.array([1.0, 0.0, 0.0, 0.0, 0.0], np.float32)
    gradient = np.array([1.0, 0.5, -0.5, 0.5, 0.1], np.float32)
    self.assertEqual(
        _flat_ones(
            masks.regrow_by_gradient(mask, np.zeros(5), gradient, 2)), {1, 2})


class ReadjustTest(tf.test.TestCase, parameterized.TestCase):

  def test_hand_example(self):
    # 9 active, drop 0.25: round(2.25) = 2 readjusted. Pruned {1, 8} (see
    # test_prune_by_magnitude_hand_example), grown {7, 10} (see
    # test_regrow_by_gradient_hand_example).
    result = masks.readjust(KERNEL, KERNEL_MASK, KERNEL_GRADIENT, 0.25)
    expected_mask = KERNEL_MASK.copy().reshape(-1)
    expected_mask[[1, 8]] = 0.0
    expected_mask[[7, 10]] = 1.0
    self.assertAllEqual(result.mask, expected_mask.reshape(4, 4))
    expected_weight = KERNEL.copy().reshape(-1)
    expected_weight[[1, 8]] = 0.0
    self.assertAllEqual(result.weight, expected_weight.reshape(4, 4))
    self.assertEqual(int(result.num_pruned), 2)
    self.assertEqual(int(result.num_grown), 2)

  @parameterized.product(seed=[0, 1, 2, 3], drop_fraction=[0.1, 0.3, 0.5, 1.0])
  def test_invariants(self, seed, drop_fraction):
    weight, mask, gradient = _random_kernel(seed)
    result = masks.readjust(weight, mask, gradient, drop_fraction)
    old_mask = mask.reshape(-1)
    new_mask = result.mask.numpy().reshape(-1)
    new_weight = result.weight.numpy().reshape(-1)
    pruned = (old_mask == 1) & (new_mask == 0)
    grown = (old_mask == 0) & (new_mask == 1)
    num_active = int(old_mask.sum())
    expected = min(
        int(np.floor(drop_fraction * num_active + 0.5)),
        old_mask.size - num_active)
    # Same number of ones; drop and grow sets disjoint and of size n.
    self.assertEqual(new_mask.sum(), num_active)
    self.assertEqual(pruned.sum(), expected)
    self.assertEqual(grown.sum(), expected)
    self.assertFalse(np.any(pruned & grown))
    self.assertEqual(int(result.num_pruned), expected)
    self.assertEqual(int(result.num_grown), expected)
    self.assertAllInSet(new_mask, [0.0, 1.0])
    # Pruned and grown weights are exactly 0, survivors unchanged.
    self.assertTrue(np.all(new_weight[pruned | grown] == 0.0))
    self.assertTrue(np.all(new_weight[new_mask == 0] == 0.0))
    survivors = (old_mask == 1) & (new_mask == 1)
    self.assertAllEqual(new_weight[survivors], weight.reshape(-1)[survivors])
    # Pruned are the smallest magnitudes among the active ...
    magnitude = np.abs(weight.reshape(-1))
    if pruned.any() and survivors.any():
      self.assertLess(magnitude[pruned].max(), magnitude[survivors].min())
    # ... grown the largest |gradient| among the previously inactive.
    grad_magnitude = np.abs(gradient.reshape(-1))
    not_grown = (old_mask == 0) & ~grown
    if grown.any() and not_grown.any():
      self.assertGreater(grad_magnitude[grown].min(),
                         grad_magnitude[not_grown].max())

  def test_regrow_never_picks_just_pruned_or_active_positions(self):
    # The largest gradients sit on active positions (all of which are
    # pruned candidates); the grown set must still come from the inactive.
    weight = np.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0, 0.0], np.float32)
    mask = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    gradient = np.array([9.0, 8.0, 7.0, 6.0, 0.1, 0.4, 0.2, 0.3], np.float32)
    # round(0.5 * 4) = 2: prune 0, 1 (smallest |w|); grow 5 (0.4), 7 (0.3).
    result = masks.readjust(weight, mask, gradient, 0.5)
    self.assertEqual(_flat_ones(result.mask), {2, 3, 5, 7})

  def test_inside_tf_function_with_tensor_fraction(self):

    @tf.function
    def step(weight, mask, gradient, drop_fraction):
      return masks.readjust(weight, mask, gradient, drop_fraction)

    result = step(
        tf.constant(KERNEL), tf.constant(KERNEL_MASK),
        tf.constant(KERNEL_GRADIENT), tf.constant(0.25))
    self.assertEqual(_flat_ones(result.mask),
                     (_flat_ones(KERNEL_MASK) - {1, 8}) | {7, 10})
    self.assertEqual(result.mask.shape, (4, 4))

  def test_zero_fraction_changes_nothing(self):
    result = masks.readjust(KERNEL, KERNEL_MASK, KERNEL_GRADIENT, 0.0)
    self.assertAllEqual(result.mask, KERNEL_MASK)
    self.assertAllEqual(result.weight, KERNEL)


class ReadjustReferenceTest(tf.test.TestCase):

  def test_regrowing_active_positions_shrinks_the_mask(self):
    # Active 0 (0.9), 2 (0.5), 3 (0.1). Keep 2 by |w| -> prune 3.
    # Target 3 -> grow 3 - 2 = 1 by |g| over ALL positions: 0 (|g| = 2.0)
    # is already active, so the mask stays {0, 2} and weight 0 is zeroed.
    weight = np.array([[0.9, 0.0, 0.5], [0.1, 0.0, 0.0]], np.float32)
    mask = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    gradient = np.array([[2.0, 0.5, 0.1], [0.0, 0.3, 0.0]], np.float32)
    result = masks.readjust_reference(
        weight, mask, gradient, num_keep_after_prune=2, num_target=3)
    self.assertEqual(_flat_ones(result.mask), {0, 2})
    self.assertAllEqual(
        result.weight,
        np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]], np.float32))
    self.assertEqual(int(result.num_pruned), 1)
    self.assertEqual(int(result.num_grown), 0)
    self.assertLess(int(masks.count_active(result.mask)), 3)

  def test_regrowing_inactive_positions_reaches_the_target(self):
    # Same, but the largest |g| is on inactive 4: mask {0, 2, 4}, w[4] = 0.
    weight = np.array([0.9, 0.0, 0.5, 0.1, 0.0, 0.0], np.float32)
    mask = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], np.float32)
    gradient = np.array([0.2, 0.5, 0.1, 0.0, 3.0, 0.0], np.float32)
    result = masks.readjust_reference(weight, mask, gradient, 2, 3)
    self.assertEqual(_flat_ones(result.mask), {0, 2, 4})
    self.assertAllEqual(result.weight,
                        np.array([0.9, 0.0, 0.5, 0.0, 0.0, 0.0], np.float32))
    self.assertEqual(int(result.num_grown), 1)

  def test_keeping_more_than_active_prunes_nothing_and_grows_nothing(self):
    # Keep 3 of 2 active: an active weight that is exactly 0 (position 1)
    # wins the tie with inactive zeros; nothing is activated by the prune.
    weight = np.array([0.0, 0.0, 0.3, 0.0], np.float32)
    mask = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    gradient = np.array([1.0, 1.0, 1.0, 1.0], np.float32)
    result = masks.readjust_reference(weight, mask, gradient, 3, 2)
    self.assertAllEqual(result.mask, mask)
    self.assertAllEqual(result.weight, weight)
    self.assertEqual(int(result.num_pruned), 0)
    self.assertEqual(int(result.num_grown), 0)

  def test_tensor_counts_inside_tf_function(self):

    @tf.function
    def step(num_keep, num_target):
      return masks.readjust_reference(KERNEL, KERNEL_MASK, KERNEL_GRADIENT,
                                      num_keep, num_target)

    # Keep 7 of 9 (prune 1 and 8), grow 9 - 7 = 2 by |g| over all
    # positions: 1 (9.0) and 0 (5.0). 0 is active -> mask loses 1 and 8,
    # gains 1 back: {0, 1, 3, 5, 6, 11, 13, 15}, w[0] = w[1] = 0.
    result = step(tf.constant(7), tf.constant(9))
    self.assertEqual(_flat_ones(result.mask), {0, 1, 3, 5, 6, 11, 13, 15})
    self.assertEqual(float(result.weight[0, 0]), 0.0)
    self.assertEqual(float(result.weight[0, 1]), 0.0)
    self.assertEqual(int(result.num_pruned), 2)
    self.assertEqual(int(result.num_grown), 1)


class ServerRepruneTest(tf.test.TestCase):

  def test_hand_example_ties_broken_by_votes(self):
    # Voted positions 0, 1, 2, 5. |w| = 0.5 at 0, 1, 5 with 1, 3, 3 votes:
    # order 1, 5 (3 votes; lower index first), 0, then 2 (0.2). Position 3
    # has the largest |w| but no vote.
    mean_weight = np.array([0.5, -0.5, 0.2, 0.9, 0.0, 0.5], np.float32)
    votes = np.array([1.0, 3.0, 2.0, 0.0, 0.0, 3.0], np.float32)
    self.assertEqual(_flat_ones(masks.server_reprune(mean_weight, votes, 2)),
                     {1, 5})
    self.assertEqual(_flat_ones(masks.server_reprune(mean_weight, votes, 3)),
                     {0, 1, 5})
    # Five wanted, four voted: all voted and nothing else; position 3 (|w|
    # 0.9) is held by no client, so it is never activated.
    self.assertEqual(_flat_ones(masks.server_reprune(mean_weight, votes, 5)),
                     {0, 1, 2, 5})

  def test_shape_dtype_and_count_with_tensor_count(self):
    rng = np.random.default_rng(0)
    mean_weight = rng.permutation(np.linspace(-1.0, 1.0, 30)).reshape(5, 6)
    votes = rng.integers(0, 3, size=(5, 6)).astype(np.float64)

    @tf.function
    def reprune(num_active):
      return masks.server_reprune(mean_weight, votes, num_active)

    mask = reprune(tf.constant(8))
    self.assertEqual(mask.dtype, tf.float64)
    self.assertEqual(mask.shape, (5, 6))
    self.assertEqual(int(masks.count_active(mask)), 8)
    kept = mask.numpy().astype(bool)
    voted = votes > 0
    self.assertTrue(np.all(voted[kept]))
    # Every kept voted weight beats every dropped voted weight in |w|.
    self.assertGreater(
        np.abs(mean_weight[kept]).min(),
        np.abs(mean_weight[voted & ~kept]).max())


class ServerRepruneReferenceTest(tf.test.TestCase):
  """The authors' server mask: union, re-pruned only when denser."""

  def test_denser_union_is_pruned_by_magnitude_over_all_positions(self):
    # Layer 1: union [1,1,1,0] (3 held), |w| [3,0,1,5], count 2: the two
    # largest over ALL positions are p3 (5, held by nobody) and p0 (3);
    # only union bits survive, so p3 is not grown and the layer ends with
    # 1 < 2 ones. Layer 2: union [0,1], |w| [0,2], count 1: keeps p1.
    # Union total 3 + 1 = 4 > counts 2 + 1 = 3, so both layers are pruned.
    new = masks.server_reprune_reference(
        [tf.constant([3., 0., -1., 5.]), tf.constant([0., 2.])],
        [tf.constant([2., 1., 1., 0.]), tf.constant([0., 1.])], (2, 1))
    self.assertAllEqual(new[0], [1., 0., 0., 0.])
    self.assertAllEqual(new[1], [0., 1.])

  def test_union_not_denser_than_counts_is_kept(self):
    # Union totals 2 + 1 = 3 = counts 2 + 1: no re-prune, the zero-valued
    # held p2 stays (the authors' server never re-prunes then).
    new = masks.server_reprune_reference(
        [tf.constant([0., 4., 0., 0.]), tf.constant([0., 2.])],
        [tf.constant([0., 1., 1., 0.]), tf.constant([0., 1.])], (2, 1))
    self.assertAllEqual(new[0], [0., 1., 1., 0.])
    self.assertAllEqual(new[1], [0., 1.])

  def test_held_zeros_lose_ties_to_positions_nobody_holds(self):
    # Union [1,1,1,0] (3 > 2), |w| [0,0,3,0]: p2, then among the zeros the
    # one nobody holds (p3) before the held p0, p1; p3 is not in the union,
    # so only p2 stays. (By index alone p0 would have stayed.)
    new = masks.server_reprune_reference(
        [tf.constant([0., 0., 3., 0.])], [tf.constant([1., 1., 2., 0.])], (2,))
    self.assertAllEqual(new[0], [0., 0., 1., 0.])
    # Union [0,1,1,1], |w| [0,4,0,0]: p1, then p0 (nobody holds it); the
    # regrown zeros p2, p3 go.
    new = masks.server_reprune_reference(
        [tf.constant([0., 4., 0., 0.])], [tf.constant([0., 2., 1., 1.])], (2,))
    self.assertAllEqual(new[0], [0., 1., 0., 0.])


if __name__ == '__main__':
  tf.test.main()
