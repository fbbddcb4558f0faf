"""Tests for tff_feddst.process.server_step: averaging and re-prune, by hand.

The hand-checked tiny model and aggregate are finalizer_test's (one kernel of
4 positions, 2 active, and one bias).
"""

import numpy as np
import tensorflow as tf

from tff_feddst.process import robust_means
from tff_feddst.process import server_step
from tests import finalizer_test

LAYOUT = finalizer_test.LAYOUT
global_weights = finalizer_test.global_weights
hand_aggregate = finalizer_test.hand_aggregate
new_position_aggregate = finalizer_test.new_position_aggregate


class MomentumAndVotesTest(tf.test.TestCase):
  """The averaging step with server momentum and the vote threshold."""

  def test_server_momentum_by_hand(self):
    # Current kernel [1,2,0,0], buffer [1,1,0,0], bias 0 (buffer 0).
    # delta = target - w = [2.33-1, 3.5-2, 7.2, 0]; beta 0.5, lr 0.5:
    # buffer' = 0.5*[1,1,0,0] + delta = [1.833, 2.0, 7.2, 0]
    # w' = w + 0.5*buffer' = [1.917, 3.0, 3.6, 0]; keep 2 largest: 3.0, 3.6.
    buffers = [np.array([1., 1., 0., 0.], np.float32),
               np.zeros([1], np.float32)]
    new_buffers, new_weights, changed = server_step.apply_aggregate(
        buffers, global_weights(), hand_aggregate(), LAYOUT, (2,),
        server_learning_rate=0.5, server_momentum=0.5)
    self.assertAllClose(new_weights.trainable[0], [0., 3.0, 3.6, 0.])
    self.assertAllClose(new_buffers[0], [0., 2.0, 7.2, 0.])  # Masked.
    self.assertAllClose(new_weights.trainable[1], [1.25])  # 0 + 0.5 * 2.5.
    self.assertEqual(int(changed), 2)

  def test_min_votes_excludes_rarely_held_positions(self):
    # Votes 3, 1, 2, 0; means 2.33, 3.5, 7.2, 0. Any holder: keep 7.2 and
    # 3.5. With min_votes 2, position 1 (one holder) is not eligible: keep
    # 7.2 and 2.33.
    aggregate = hand_aggregate()._replace(
        votes=(np.array([3., 1., 2., 0.], np.float32),))
    for min_votes, expected_mask in ((0, [0., 1., 1., 0.]),
                                     (2, [1., 0., 1., 0.])):
      _, weights, _ = server_step.apply_aggregate(
          [np.zeros(4, np.float32), np.zeros(1, np.float32)],
          global_weights(), aggregate, LAYOUT, (2,), 1.0, 0.0,
          min_votes=min_votes)
      self.assertAllEqual(weights.non_trainable[0], expected_mask)


class NewPositionVotesTest(tf.test.TestCase):
  """min_new_position_votes: positions outside the global mask need holders."""

  def next_weights(self, **kwargs):
    return server_step.apply_aggregate(
        [np.zeros(4, np.float32), np.zeros(1, np.float32)], global_weights(),
        new_position_aggregate(), LAYOUT, (2,), 1.0, 0.0, **kwargs)[1]

  def test_admitted_sums_by_hand(self):
    # k = 2: p2 (outside, 1 holder) is dropped; p1 (inside, 1 holder) and
    # p3 (outside, 2 holders) stay.
    admitted = server_step.admit_new_positions(new_position_aggregate(),
                                               global_weights(), LAYOUT, 2)
    self.assertAllEqual(admitted.weighted_kernel_sums[0], [7., 14., 0., 20.])
    self.assertAllEqual(admitted.weighted_votes[0], [3., 4., 0., 4.])
    self.assertAllEqual(admitted.votes[0], [2., 1., 0., 2.])
    self.assertAllEqual(admitted.weighted_dense_sums[0], [15.])

  def test_which_positions_enter_by_hand(self):
    # k = 1 (any holder): the 2 largest means, 7.2 (p2) and 5.0 (p3).
    # k = 2: p2 is out; of 2.33, 3.5, 5.0 keep p1 and p3.
    # k = 3: p3 is out too; only the global positions p0 and p1 remain.
    for k, kernel in ((1, [0., 0., 7.2, 5.]), (2, [0., 3.5, 0., 5.]),
                      (3, [7. / 3., 3.5, 0., 0.])):
      weights = self.next_weights(min_new_position_votes=k)
      self.assertAllClose(weights.trainable[0], kernel)
      self.assertAllEqual(weights.non_trainable[0],
                          np.not_equal(kernel, 0.).astype(np.float32))

  def test_a_round_of_fewer_clients_needs_all_of_them(self):
    # Two clients reported and k = 3: both must hold a new position (as
    # k = 2); one client alone may bring positions in (as k = 1).
    for num_clients, kernel in ((2, [0., 3.5, 0., 5.]),
                                (1, [0., 0., 7.2, 5.])):
      weights = server_step.apply_aggregate(
          [np.zeros(4, np.float32), np.zeros(1, np.float32)],
          global_weights(),
          new_position_aggregate()._replace(num_clients=np.int32(num_clients)),
          LAYOUT, (2,), 1.0, 0.0, min_new_position_votes=3)[1]
      self.assertAllClose(weights.trainable[0], kernel)

  def test_min_votes_still_applies_to_all(self):
    # min_votes 2 drops p1 (inside) and p2 (outside): keep p0 and p3.
    weights = self.next_weights(min_votes=2, min_new_position_votes=2)
    self.assertAllClose(weights.trainable[0], [7. / 3., 0., 0., 5.])

  def test_too_few_eligible_positions_are_topped_up_from_the_global_mask(
      self):
    # Nobody kept p0 (inside); p1 (inside) has 1 holder, p2 (outside) 1, p3
    # (outside) 2. k = 1: the 2 largest means 7.2 (p2) and 5.0 (p3). k = 2:
    # p1 (3.5) and p3. k = 3: only p1 is eligible; p0, the global mask's
    # other position, fills the layer at its average, 0.
    aggregate = new_position_aggregate()._replace(
        weighted_kernel_sums=(np.array([0., 14., 36., 20.], np.float32),),
        weighted_votes=(np.array([0., 4., 5., 4.], np.float32),),
        votes=(np.array([0., 1., 1., 2.], np.float32),))
    for k, mask, kernel in ((1, [0., 0., 1., 1.], [0., 0., 7.2, 5.]),
                            (2, [0., 1., 0., 1.], [0., 3.5, 0., 5.]),
                            (3, [1., 1., 0., 0.], [0., 3.5, 0., 0.])):
      _, weights, _ = server_step.apply_aggregate(
          [np.zeros(4, np.float32), np.zeros(1, np.float32)],
          global_weights(), aggregate, LAYOUT, (2,), 1.0, 0.0,
          min_new_position_votes=k)
      self.assertAllEqual(weights.non_trainable[0], mask)
      self.assertAllClose(weights.trainable[0], kernel)

  def test_min_votes_may_still_thin_the_layer(self):
    # k = 3 and min_votes 2: only p0 is eligible, and no top-up.
    weights = self.next_weights(min_votes=2, min_new_position_votes=3)
    self.assertAllEqual(weights.non_trainable[0], [1., 0., 0., 0.])


class MaskMovementTest(tf.test.TestCase):
  """mask_movement: what was offered, what entered, and their |w| mass."""

  def movement(self, aggregate, **rules):
    old = global_weights()  # Kernel [1, 2, 0, 0], mask [1, 1, 0, 0].
    _, new, _ = server_step.apply_aggregate(
        [np.zeros(4, np.float32), np.zeros(1, np.float32)], old, aggregate,
        LAYOUT, (2,), 1.0, 0.0, **rules)
    measured = server_step.mask_movement(old, new, aggregate, LAYOUT,
                                         **rules)
    return {key: float(value) for key, value in measured.items()}

  def assert_movement(self, measured, offered, entered, entered_mass,
                      left_mass):
    self.assertEqual(measured['mask_new_positions_offered'], offered)
    self.assertEqual(measured['mask_new_positions_entered'], entered)
    self.assertAllClose(measured['mask_entered_weight_mass'], entered_mass)
    self.assertAllClose(measured['mask_left_weight_mass'], left_mass)

  def test_hand_aggregate(self):
    # Votes [2, 2, 2, 0]: outside the mask only p2 is held (p3 has none),
    # so 1 offered. New kernel [0, 3.5, 7.2, 0]: p2 entered at 7.2; p0 left,
    # its old weight 1.
    self.assert_movement(self.movement(hand_aggregate()), 1, 1, 7.2, 1.0)

  def test_new_position_rule_counts_only_admitted_positions(self):
    # Votes [2, 1, 1, 2]. k = 1: p2 and p3 offered; new kernel
    # [0, 0, 7.2, 5]: both entered (7.2 + 5 = 12.2), p0 and p1 left (1 + 2).
    self.assert_movement(self.movement(new_position_aggregate()),
                         2, 2, 12.2, 3.0)
    # k = 2: p2 (1 holder) is not admitted; new kernel [0, 3.5, 0, 5]: p3
    # entered at 5, p0 left at 1.
    self.assert_movement(
        self.movement(new_position_aggregate(), min_new_position_votes=2),
        1, 1, 5.0, 1.0)

  def test_min_votes_counts_only_eligible_positions(self):
    # min_votes 2: p2 (1 holder) is not eligible, p3 is: 1 offered. New
    # kernel [7/3, 0, 0, 5]: p3 entered at 5; p1 left at its old 2.
    self.assert_movement(
        self.movement(new_position_aggregate(), min_votes=2), 1, 1, 5.0, 2.0)

  def test_offered_but_not_entered(self):
    # k = 3 (3 clients): no outside position has 3 holders, nothing offered;
    # mask unchanged at [1, 1, 0, 0].
    self.assert_movement(
        self.movement(new_position_aggregate(), min_new_position_votes=3),
        0, 0, 0.0, 0.0)
    # Means [2.33, 3.5, 0.4, 0]: p2 held (offered) but too small to enter.
    aggregate = hand_aggregate()._replace(
        weighted_kernel_sums=(np.array([7., 14., 2., 0.], np.float32),))
    self.assert_movement(self.movement(aggregate), 1, 0, 0.0, 0.0)


class RobustValuesTest(tf.test.TestCase):
  """A robust mean's values (`robust_means`) are the targets as they are."""

  def aggregate(self):
    # p3 (outside the global mask [1, 1, 0, 0]) has one holder.
    return hand_aggregate()._replace(
        votes=(np.array([2., 2., 2., 1.], np.float32),),
        robust_values=robust_means.RobustValues(
            kernels=(np.array([1 / 3, 2 / 3, 0.1, 9.], np.float32),),
            dense=(np.array([0.3], np.float32),),
            over_capacity=np.int32(0)))

  def next_weights(self, **kwargs):
    # From a zero kernel, w + 1 * (target - w) is the target, bit for bit.
    return server_step.apply_aggregate(
        [np.zeros(4, np.float32), np.zeros(1, np.float32)],
        global_weights(kernel=(0., 0., 0., 0.)), self.aggregate(), LAYOUT,
        (2,), 1.0, 0.0, **kwargs)[1]

  def test_values_are_taken_bit_for_bit(self):
    # Any holder: the 2 largest, 9 and 2/3; two holders needed: p3 is out,
    # so 2/3 and 1/3. The weighted sums (7/3, 3.5, 7.2) play no part.
    for k, kernel in ((1, [0., 2 / 3, 0., 9.]), (2, [1 / 3, 2 / 3, 0., 0.])):
      weights = self.next_weights(min_new_position_votes=k)
      self.assertAllEqual(weights.trainable[0],
                          np.array(kernel, np.float32))
      self.assertAllEqual(weights.trainable[1], np.float32([0.3]))

  def test_remember_old_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'remember_old'):
      self.next_weights(remember_old=True)


class RememberOldTest(tf.test.TestCase):
  """--remember_old: missing clients count as sending the old weight."""

  def test_remembered_sums_by_hand(self):
    # Global kernel [5, 2, 0, 0], mask [1, 1, 0, 0]; W = 6, 3 clients.
    # p0: missing weight 6 - 3 = 3: sum 7 + 5 * 3 = 22, votes 2 + 1 = 3.
    # p1: missing weight 6 - 4 = 2: sum 14 + 2 * 2 = 18, votes 2 + 1 = 3.
    # p2, p3 are outside the global mask: unchanged.
    remembered = server_step.remember_global_weights(
        hand_aggregate(), global_weights(kernel=(5., 2., 0., 0.)), LAYOUT)
    self.assertAllClose(remembered.weighted_kernel_sums[0], [22., 18., 36., 0.])
    self.assertAllClose(remembered.weighted_votes[0], [6., 6., 5., 0.])
    self.assertAllClose(remembered.votes[0], [3., 3., 2., 0.])
    self.assertAllClose(remembered.weighted_dense_sums[0], [15.])

  def test_changes_the_values_and_the_mask(self):
    weights = global_weights(kernel=(5., 2., 0., 0.))
    buffers = [np.zeros(4, np.float32), np.zeros(1, np.float32)]
    # Without: means 7/3 = 2.33, 14/4 = 3.5, 36/5 = 7.2: keep p1 and p2.
    _, plain, _ = server_step.apply_aggregate(
        buffers, weights, hand_aggregate(), LAYOUT, (2,), 1.0, 0.0)
    self.assertAllClose(plain.trainable[0], [0., 3.5, 7.2, 0.])
    # With: 22/6 = 3.667, 18/6 = 3.0, 7.2: p0 now beats p1.
    _, remembered, changed = server_step.apply_aggregate(
        buffers, weights, hand_aggregate(), LAYOUT, (2,), 1.0, 0.0,
        remember_old=True)
    self.assertAllClose(remembered.trainable[0], [22. / 6., 0., 7.2, 0.])
    self.assertAllEqual(remembered.non_trainable[0], [1., 0., 1., 0.])
    self.assertEqual(int(changed), 2)  # p1 out, p2 in.
    self.assertAllClose(remembered.trainable[1], [2.5])  # Biases as before.

  def test_global_positions_pass_min_votes(self):
    # Votes 2, 2, 2, 0: with min_votes 3 no position is eligible and the
    # layer empties; remembered, p0 and p1 have 3 votes and stay.
    buffers = [np.zeros(4, np.float32), np.zeros(1, np.float32)]
    _, plain, _ = server_step.apply_aggregate(
        buffers, global_weights(), hand_aggregate(), LAYOUT, (2,), 1.0, 0.0,
        min_votes=3)
    self.assertAllEqual(plain.non_trainable[0], [0., 0., 0., 0.])
    _, remembered, _ = server_step.apply_aggregate(
        buffers, global_weights(), hand_aggregate(), LAYOUT, (2,), 1.0, 0.0,
        min_votes=3, remember_old=True)
    self.assertAllEqual(remembered.non_trainable[0], [1., 1., 0., 0.])
    # p0: (7 + 1 * 3) / 6, p1: (14 + 2 * 2) / 6.
    self.assertAllClose(remembered.trainable[0], [10. / 6., 3., 0., 0.])


class ReferenceServerRuleTest(tf.test.TestCase):
  """server_rule='reference' on two clients of weight 1, by hand.

  Global mask [1,1,0,0] (count 2), kernel [1,2,0,0]; a readjusting client
  prunes a global position and uploads its regrown one as exactly 0.
  """

  def next_weights(self, kernel_sums, votes, **kwargs):
    aggregate = hand_aggregate(2.0)._replace(
        weighted_kernel_sums=(np.array(kernel_sums, np.float32),),
        weighted_votes=(np.array(votes, np.float32),),
        votes=(np.array(votes, np.float32),), num_clients=np.int32(2))
    _, weights, changed = server_step.apply_aggregate(
        [np.zeros(4, np.float32), np.zeros(1, np.float32)], global_weights(),
        aggregate, LAYOUT, (2,), 1.0, 0.0, **kwargs)
    return weights, int(changed)

  def test_mask_does_not_move_when_only_some_clients_readjust(self):
    # A keeps [1,1,0,0] with values 2, 3; B pruned p0, regrew p2 (sent 0),
    # values [0,4,0,0]. Means [2/1, 7/2, 0/1, 0] = [2, 3.5, 0, 0]; union
    # [1,1,1,0] holds 3 > 2, so keep the 2 largest |w|: p1, p0.
    weights, changed = self.next_weights([2., 7., 0., 0.], [1., 2., 1., 0.],
                                         server_rule='reference')
    self.assertAllEqual(weights.non_trainable[0], [1., 1., 0., 0.])
    self.assertAllClose(weights.trainable[0], [2., 3.5, 0., 0.])
    self.assertEqual(changed, 0)

  def test_mask_only_shrinks_when_all_clients_readjust(self):
    # Both pruned p0; A regrew p2, B regrew p3 (each sent 0). A's p1 = 3,
    # B's p1 = 5: means [0, 4, 0, 0], union [0,1,1,1] holds 3 > 2. The two
    # largest |w| over all positions are p1 and a zero, p0 (held zeros
    # lose ties to positions nobody holds), which no client holds: the mask
    # keeps only p1 (1 change: p0 left).
    sums, votes = [0., 8., 0., 0.], [0., 2., 1., 1.]
    weights, changed = self.next_weights(sums, votes, server_rule='reference')
    self.assertAllEqual(weights.non_trainable[0], [0., 1., 0., 0.])
    self.assertEqual(changed, 1)
    # Ours instead refills to 2 among held positions (more votes, then the
    # lower index): p1 and the regrown p2 (2 changes).
    weights, changed = self.next_weights(sums, votes)
    self.assertAllEqual(weights.non_trainable[0], [0., 1., 1., 0.])
    self.assertEqual(changed, 2)

  def test_union_not_denser_than_the_counts_is_the_mask(self):
    # One holder of p1 (4) and one of p2 (sent 0): union 2 = count 2, so
    # no re-prune; the regrown zero p2 stays (p0 left, p2 joined: 2).
    weights, changed = self.next_weights([0., 4., 0., 0.], [0., 1., 1., 0.],
                                         server_rule='reference')
    self.assertAllEqual(weights.non_trainable[0], [0., 1., 1., 0.])
    self.assertEqual(changed, 2)

  def test_weight_unit_thresholds_weighted_votes_strictly(self):
    # hand_aggregate: weighted votes 3, 4, 5, 0 (votes 2, 2, 2, 0), means
    # 2.33, 3.5, 7.2. In weight units, min_votes 4 passes only p2 (5 > 4;
    # 4 is not > 4): the layer keeps p2 alone. In clients, min_votes 2
    # passes p0..p2 (2 >= 2): keep 7.2 and 3.5.
    for unit, min_votes, expected in (('weight', 4, [0., 0., 1., 0.]),
                                      ('weight', 3, [0., 1., 1., 0.]),
                                      ('clients', 2, [0., 1., 1., 0.])):
      _, weights, _ = server_step.apply_aggregate(
          [np.zeros(4, np.float32), np.zeros(1, np.float32)],
          global_weights(), hand_aggregate(), LAYOUT, (2,), 1.0, 0.0,
          min_votes=min_votes, min_votes_unit=unit)
      self.assertAllEqual(weights.non_trainable[0], expected, msg=unit)


if __name__ == '__main__':
  tf.test.main()
