"""Tests for tff_feddst.sparse.schedules."""

import math

from absl.testing import parameterized
import tensorflow as tf

from tff_feddst.sparse import schedules


class ReadjustmentScheduleTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      # alpha = 0.5, T_end = 10: 0.25 * (1 + cos(pi * t / 10)).
      ('first_round', 1, 0.25 * (1 + math.cos(math.pi / 10))),  # 0.48776.
      ('middle', 5, 0.25),  # cos(pi / 2) = 0.
      ('three_quarters', 7, 0.25 * (1 + math.cos(0.7 * math.pi))),  # 0.10305.
      ('end', 10, 0.0),  # cos(pi) = -1.
      ('after_end', 11, 0.0),
      ('long_after_end', 100, 0.0),
  )
  def test_cosine_drop_fraction(self, round_num, expected):
    schedule = schedules.ReadjustmentSchedule(0.5, 1, 10, 'cosine')
    value = schedule.drop_fraction_at(round_num)
    self.assertEqual(value.dtype, tf.float32)
    self.assertAllClose(value, expected)
    self.assertAllClose(schedule.prune_fraction_at(round_num), expected)

  def test_cosine_is_exactly_zero_at_the_end(self):
    schedule = schedules.ReadjustmentSchedule(0.5, 1, 10)
    self.assertEqual(float(schedule.drop_fraction_at(10)), 0.0)

  def test_constant_drop_fraction(self):
    schedule = schedules.ReadjustmentSchedule(0.3, 1, 10, 'constant')
    self.assertAllClose(schedule.drop_fraction_at(1), 0.3)
    self.assertAllClose(schedule.drop_fraction_at(10), 0.3)
    self.assertEqual(float(schedule.drop_fraction_at(11)), 0.0)

  def test_should_readjust_cosine(self):
    # R = 3, T_end = 10: (t - 1) % 3 == 0 for t = 1, 4, 7, 10, 13; at t = 10
    # the cosine fraction is 0 and t = 13 is after T_end.
    schedule = schedules.ReadjustmentSchedule(0.5, 3, 10, 'cosine')
    readjusting = [t for t in range(1, 16) if bool(schedule.should_readjust(t))]
    self.assertEqual(readjusting, [1, 4, 7])

  def test_should_readjust_constant(self):
    # As above, but the constant fraction is still 0.5 at t = 10.
    schedule = schedules.ReadjustmentSchedule(0.5, 3, 10, 'constant')
    readjusting = [t for t in range(1, 16) if bool(schedule.should_readjust(t))]
    self.assertEqual(readjusting, [1, 4, 7, 10])

  def test_zero_drop_fraction_never_readjusts(self):
    schedule = schedules.ReadjustmentSchedule(0.0, 1, 10, 'constant')
    self.assertFalse(
        any(bool(schedule.should_readjust(t)) for t in range(1, 12)))

  def test_tensor_round_inside_tf_function(self):
    schedule = schedules.ReadjustmentSchedule(0.5, 3, 10, 'cosine')

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def evaluate(round_num):
      return (schedule.should_readjust(round_num),
              schedule.drop_fraction_at(round_num))

    readjust, fraction = evaluate(tf.constant(4))
    self.assertEqual(readjust.dtype, tf.bool)
    self.assertTrue(bool(readjust))
    # 0.25 * (1 + cos(0.4 pi)) = 0.25 * 1.30902 = 0.32725.
    self.assertAllClose(fraction, 0.25 * (1 + math.cos(0.4 * math.pi)))
    readjust, _ = evaluate(tf.constant(5))
    self.assertFalse(bool(readjust))
    # int64 rounds are accepted too.
    self.assertTrue(bool(schedule.should_readjust(tf.constant(7, tf.int64))))

  def test_round_zero_raises(self):
    schedule = schedules.ReadjustmentSchedule(0.5, 1, 10)
    with self.assertRaisesRegex(ValueError, 'round_num must be >= 1'):
      schedule.drop_fraction_at(0)
    with self.assertRaises(tf.errors.InvalidArgumentError):
      schedule.should_readjust(tf.constant(0))

  @parameterized.named_parameters(
      ('alpha_above_one', dict(drop_fraction=1.5), ValueError, 'drop_fraction'),
      ('alpha_negative', dict(drop_fraction=-0.1), ValueError, 'drop_fraction'),
      ('alpha_nan', dict(drop_fraction=float('nan')), ValueError,
       'drop_fraction'),
      ('alpha_string', dict(drop_fraction='0.5'), TypeError, 'drop_fraction'),
      ('zero_interval', dict(rounds_between_readjustments=0), ValueError,
       'rounds_between_readjustments'),
      ('float_interval', dict(rounds_between_readjustments=2.0), TypeError,
       'rounds_between_readjustments'),
      ('zero_end', dict(end_round=0), ValueError, 'end_round'),
      ('bool_end', dict(end_round=True), TypeError, 'end_round'),
      ('unknown_annealing', dict(annealing='linear'), ValueError,
       "'cosine', 'constant'"),
  )
  def test_bad_values_raise(self, override, error, message):
    arguments = dict(
        drop_fraction=0.5,
        rounds_between_readjustments=10,
        end_round=200,
        annealing='cosine')
    arguments.update(override)
    for schedule_class in (schedules.ReadjustmentSchedule,
                           schedules.ReferenceReadjustmentSchedule):
      with self.assertRaisesRegex(error, message):
        schedule_class(**arguments)

  def test_get_config_round_trip_and_equality(self):
    schedule = schedules.ReadjustmentSchedule(0.5, 10, 200, 'constant')
    self.assertEqual(
        schedule.get_config(), {
            'drop_fraction': 0.5,
            'rounds_between_readjustments': 10,
            'end_round': 200,
            'annealing': 'constant',
        })
    self.assertEqual(
        schedules.ReadjustmentSchedule.from_config(schedule.get_config()),
        schedule)
    self.assertNotEqual(
        schedules.ReadjustmentSchedule(0.5, 10, 200, 'cosine'), schedule)
    self.assertNotEqual(
        schedules.ReferenceReadjustmentSchedule(0.5, 10, 200, 'constant'),
        schedule)
    self.assertIn('ReadjustmentSchedule(drop_fraction=0.5', repr(schedule))


class ReferenceReadjustmentScheduleTest(tf.test.TestCase,
                                        parameterized.TestCase):

  @parameterized.named_parameters(
      # alpha = 0.5, T_end = 10: 0.5 * 0.25 * (1 + cos(pi * t / 10)).
      ('round_zero', 0, 0.5 * 0.5),  # decay(0) = alpha.
      ('middle', 5, 0.5 * 0.25),  # 0.125: alpha applied twice.
      ('end', 10, 0.0),  # decay(t) = 0 for t >= T_end.
      ('after_end', 12, 0.0),
  )
  def test_cosine_ratio_applies_alpha_twice(self, round_num, expected):
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 10, 10, 'cosine')
    self.assertAllClose(schedule.drop_fraction_at(round_num), expected)

  def test_prune_fraction_is_the_undecayed_alpha(self):
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 10, 10, 'cosine')
    for round_num in (0, 1, 5, 9, 50):
      self.assertAllClose(schedule.prune_fraction_at(round_num), 0.5)
    # Clients prune to S + (1 - S) * alpha: 0.8 + 0.2 * 0.5 = 0.9.
    self.assertAllClose(schedule.prune_sparsity(0.8), 0.9)

  def test_should_readjust_cosine(self):
    # R = 3, T_end = 10, 0-based: (t - 1) % 3 == 0 for t = 1, 4, 7, 10
    # (Python modulo: t = 0 gives 2); the ratio is 0 from t = 10 on.
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 3, 10, 'cosine')
    readjusting = [t for t in range(0, 16) if bool(schedule.should_readjust(t))]
    self.assertEqual(readjusting, [1, 4, 7])

  def test_round_zero_readjusts_only_every_round(self):
    # (0 - 1) % 1 == 0, so with R = 1 round 0 readjusts.
    every_round = schedules.ReferenceReadjustmentSchedule(0.5, 1, 10)
    self.assertTrue(bool(every_round.should_readjust(0)))
    self.assertTrue(bool(every_round.should_readjust(tf.constant(0))))

  def test_constant_has_no_end(self):
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 10, 20,
                                                       'constant')
    self.assertAllClose(schedule.drop_fraction_at(500), 0.5)
    self.assertTrue(bool(schedule.should_readjust(501)))
    self.assertFalse(bool(schedule.should_readjust(500)))

  def test_tensor_round_inside_tf_function(self):
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 10, 100)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def evaluate(round_num):
      return (schedule.should_readjust(round_num),
              schedule.drop_fraction_at(round_num),
              schedule.prune_fraction_at(round_num))

    readjust, ratio, prune = evaluate(tf.constant(11))
    self.assertTrue(bool(readjust))
    # 0.5 * 0.25 * (1 + cos(0.11 pi)) = 0.24259.
    self.assertAllClose(ratio, 0.125 * (1 + math.cos(0.11 * math.pi)))
    self.assertAllClose(prune, 0.5)

  def test_negative_round_raises(self):
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 10, 100)
    with self.assertRaisesRegex(ValueError, 'round_num must be >= 0'):
      schedule.should_readjust(-1)

  def test_prune_sparsity_out_of_range_raises(self):
    schedule = schedules.ReferenceReadjustmentSchedule(0.5, 10, 100)
    with self.assertRaisesRegex(ValueError, r'\[0, 1\)'):
      schedule.prune_sparsity(1.0)



class FirstRoundTest(tf.test.TestCase):

  def test_first_round_of_each_schedule(self):
    paper = schedules.ReadjustmentSchedule(0.5, 1, 10)
    reference = schedules.ReferenceReadjustmentSchedule(0.5, 1, 10)
    self.assertEqual(paper.first_round, 1)
    self.assertEqual(reference.first_round, 0)


class SparsityScheduleTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      # S_init 0.5, S_final 0.8, T_end 3: 0.5 + 0.3 * t / 3.
      ('initial', 0, 0.5),
      ('first', 1, 0.6),
      ('second', 2, 0.7),
      ('end', 3, 0.8),
      ('after_end', 40, 0.8),
  )
  def test_linear_until_the_end_round(self, round_num, expected):
    schedule = schedules.SparsitySchedule(0.5, 0.8, 3)
    self.assertAlmostEqual(schedule.sparsity_at(round_num), expected)

  def test_end_is_exactly_the_final_sparsity(self):
    # 0.05 + (0.21 - 0.05) is 0.20999999999999996 in floating point.
    self.assertNotEqual(0.05 + (0.21 - 0.05), 0.21)
    schedule = schedules.SparsitySchedule(0.05, 0.21, 7)
    self.assertEqual(schedule.sparsity_at(7), 0.21)
    self.assertEqual(schedule.sparsities()[-1], 0.21)
    self.assertLen(schedule.sparsities(), 8)

  def test_constant(self):
    schedule = schedules.SparsitySchedule(0.8, 0.8, 5)
    self.assertTrue(schedule.is_constant)
    self.assertEqual(schedule.sparsities(), [0.8] * 6)
    self.assertFalse(schedules.SparsitySchedule(0.5, 0.8, 5).is_constant)

  def test_shrinking_sparsity_raises_saying_why(self):
    with self.assertRaisesRegex(ValueError, 'only growing sparsity'):
      schedules.SparsitySchedule(0.9, 0.8, 5)

  @parameterized.named_parameters(
      ('initial_out_of_range', dict(initial_sparsity=1.0), ValueError),
      ('final_out_of_range', dict(final_sparsity=-0.1), ValueError),
      ('end_round_zero', dict(end_round=0), ValueError),
      ('end_round_float', dict(end_round=2.0), TypeError),
      ('sparsity_bool', dict(initial_sparsity=True), TypeError),
  )
  def test_bad_values_raise(self, override, error):
    arguments = dict(initial_sparsity=0.5, final_sparsity=0.8, end_round=4)
    arguments.update(override)
    with self.assertRaises(error):
      schedules.SparsitySchedule(**arguments)

  def test_negative_round_raises(self):
    with self.assertRaisesRegex(ValueError, 'round_num must be >= 0'):
      schedules.SparsitySchedule(0.5, 0.8, 4).sparsity_at(-1)

  def test_get_config_round_trip_and_equality(self):
    schedule = schedules.SparsitySchedule(0.5, 0.8, 4)
    self.assertEqual(schedules.SparsitySchedule.from_config(
        schedule.get_config()), schedule)
    self.assertNotEqual(schedule, schedules.SparsitySchedule(0.5, 0.8, 5))
    self.assertIn('SparsitySchedule(initial_sparsity=0.5', repr(schedule))


if __name__ == '__main__':
  tf.test.main()
