"""Tests for tff_feddst.process.update_direction, by hand-checked numbers."""

import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import model_setup
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation as robust_lib
from tff_feddst.process import sum_factory
from tff_feddst.process import update_direction
from tff_feddst.process import upload_screening
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib

# As in robust_aggregation_test: one kernel of 4 positions, one bias. The
# broadcast: kernel [1, 0, 0, 2], mask [1, 0, 0, 1], bias 0.5.
REFERENCE = robust_lib.Reference(kernels=(tf.constant([1., 0., 0., 2.]),),
                                 masks=(tf.constant([1., 0., 0., 1.]),),
                                 dense=(tf.constant([0.5]),))
KERNEL_SHAPES = [[4]]
DENSE_SHAPES = [[1]]
NUM_ACTIVE = [2]
S = 1 / math.sqrt(2)


def payload(kernel, mask=(1., 0., 0., 1.), bias=(0.5,)):
  return encoding.encode([np.array(kernel, np.float32)],
                         [np.array(mask, np.float32)],
                         [np.array(bias, np.float32)], NUM_ACTIVE)


# Four clients on the global mask; their deltas at positions (0, 3), bias
# unchanged: A (1, 0), B (1, 1), D (0, 1), and F = B reversed (-1, -1).
# Unit deltas: A (1, 0), B (s, s), D (0, 1), F (-s, -s), s = 1/sqrt(2);
# their sum S = (1, 1). Each one's others: S minus its own, so
#   A: (0, 1), cos 0;  B: (1 - s, 1 - s), cos 1;  D: (1, 0), cos 0;
#   F: (1 + s, 1 + s), cos -1.
UPLOADS = [payload([2., 0., 0., 2.]), payload([2., 0., 0., 3.]),
           payload([1., 0., 0., 3.]), payload([0., 0., 0., 1.])]
COSINES = [0.0, 1.0, 0.0, -1.0]


def pieces(upload):
  """`(values, dense, ref_values, masks)` of an upload."""
  _, masks, _ = encoding.decode_payload(upload, KERNEL_SHAPES, NUM_ACTIVE,
                                        encoding.PayloadEncoding())
  ref_values = robust_lib.reference_values(REFERENCE, masks, NUM_ACTIVE)
  return upload.values, upload.dense, ref_values, masks


def direction_sum(uploads):
  """The first pass's float32 sum of the uploads' unit deltas."""
  counts = upload_screening.zero_counts((KERNEL_SHAPES, DENSE_SHAPES))
  for upload in uploads:
    screen = upload_screening.screen_upload(
        upload, 1.0, KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE,
        encoding.PayloadEncoding(), payload_validation.PayloadChecks(),
        REFERENCE, with_direction=True)
    counts = upload_screening.add_screen(counts, screen, 1.0)
  return upload_screening.direction_sum_of(counts, KERNEL_SHAPES,
                                           DENSE_SHAPES)


class UnitDeltaTest(tf.test.TestCase):

  def test_unit_delta_is_laid_out_on_the_client_mask(self):
    # Kept position 0 (1 -> 4), regrew position 1 (value 3), dropped 3:
    # delta (3, 3) on its support, bias 0; unit (s, s) at positions 0, 1.
    values, dense, ref_values, masks = pieces(
        payload([4., 3., 0., 0.], [1., 1., 0., 0.]))
    unit = update_direction.unit_delta(values, dense, ref_values,
                                       REFERENCE.dense, masks)
    self.assertAllClose(unit.kernels[0], [S, S, 0., 0.])
    self.assertAllClose(unit.dense[0], [0.])

  def test_zero_delta_is_zero_and_never_checked(self):
    values, dense, ref_values, masks = pieces(payload([1., 0., 0., 2.]))
    unit = update_direction.unit_delta(values, dense, ref_values,
                                       REFERENCE.dense, masks)
    self.assertAllEqual(unit.kernels[0], [0., 0., 0., 0.])
    cosine = update_direction.update_cosine(
        values, dense, ref_values, REFERENCE.dense, masks, NUM_ACTIVE,
        direction_sum(UPLOADS))
    self.assertEqual(float(cosine), 1.0)

  def test_first_pass_sums_the_unit_deltas(self):
    total = direction_sum(UPLOADS)
    self.assertAllClose(total.kernels[0], [1., 0., 0., 1.])
    self.assertAllClose(total.dense[0], [0.])

  def test_cosine_with_the_other_clients(self):
    total = direction_sum(UPLOADS)
    for upload, expected in zip(UPLOADS, COSINES):
      values, dense, ref_values, masks = pieces(upload)
      self.assertAllClose(update_direction.update_cosine(
          values, dense, ref_values, REFERENCE.dense, masks, NUM_ACTIVE,
          total), expected, atol=1e-6)

  def test_cosine_is_taken_on_the_client_support(self):
    # A client on mask [1, 1, 0, 0]: delta (-3, 2) at positions 0, 1. The
    # others' sum there is (1, 0) (position 1: nobody else), so the cosine
    # is -3 / sqrt(13); position 3 of the sum does not count.
    upload = payload([-2., 2., 0., 0.], [1., 1., 0., 0.])
    values, dense, ref_values, masks = pieces(upload)
    total = direction_sum(UPLOADS + [upload])
    self.assertAllClose(update_direction.update_cosine(
        values, dense, ref_values, REFERENCE.dense, masks, NUM_ACTIVE,
        total), -3 / math.sqrt(13), atol=1e-6)


def factory_round(robust):
  process = sum_factory.SparseSumFactory(
      KERNEL_SHAPES, NUM_ACTIVE, robust=robust).create(
          tff.types.tensorflow_to_type(tf.nest.map_structure(
              lambda t: tf.TensorSpec(t.shape, t.dtype), UPLOADS[0])),
          tff.TensorType(np.float32))
  state = process.initialize()._replace(
      reference=tf.nest.map_structure(lambda t: t.numpy(), REFERENCE))
  return process, process.next(state, UPLOADS, [1.0] * 4)


class FactoryTest(tf.test.TestCase):

  def test_reversed_update_is_rejected_by_the_aggregator(self):
    # cos -1 < -0.5: F is left out; A, B, D are summed (bound: 2 x the
    # median norm's bin edge, no clipping of norms 1 and sqrt(2)).
    _, output = factory_round(robust_lib.RobustAggregation(
        min_update_cosine=-0.5))
    self.assertEqual(output.measurements['rejected_direction'], 1)
    self.assertEqual(output.measurements['num_clients'], 3)
    # Position 0: A 2 + B 2 + D 1; position 3: 2 + 3 + 3.
    self.assertAllClose(output.result.weighted_kernel_sums[0],
                        [5., 0., 0., 8.])
    # At 0.5 the orthogonal A and D (cos 0) go too.
    _, output = factory_round(robust_lib.RobustAggregation(
        min_update_cosine=0.5))
    self.assertEqual(output.measurements['rejected_direction'], 3)
    self.assertEqual(output.measurements['num_clients'], 1)

  def test_off_by_default_and_without_a_first_pass(self):
    _, output = factory_round(robust_lib.RobustAggregation())
    self.assertEqual(output.measurements['rejected_direction'], 0)
    one_pass = robust_lib.RobustAggregation(min_update_cosine=-0.5,
                                            first_pass=False)
    self.assertFalse(one_pass.checks_direction)
    self.assertFalse(robust_lib.RobustAggregation(
        min_update_cosine=-0.5, clip_updates=False).checks_direction)

  def test_the_state_is_the_same_with_and_without_the_check(self):
    # So a run resumes with or without workers (which turn it off).
    states = [factory_round(robust_lib.RobustAggregation(
        min_update_cosine=cosine, first_pass=first_pass))[0]
              .initialize.type_signature.result
              for cosine, first_pass in ((-0.5, True), (-0.5, False),
                                         (None, True))]
    self.assertEqual(states[0], states[1])
    self.assertEqual(states[0], states[2])


class SettingsTest(tf.test.TestCase):

  class Partition:
    client_ids = ['0']

    def num_train_examples(self, client_id):
      del client_id
      return 100

  def test_flags_reach_the_aggregator(self):
    settings = settings_lib.ExperimentSettings.from_flat(
        reject_opposed_updates=True, min_update_cosine=-0.25)
    robust = model_setup.build_robust_aggregation(settings, self.Partition())
    self.assertEqual(robust.min_update_cosine, -0.25)
    self.assertTrue(robust.checks_direction)
    settings = settings_lib.ExperimentSettings.from_flat(
        reject_opposed_updates=False)
    self.assertIsNone(model_setup.build_robust_aggregation(
        settings, self.Partition()).min_update_cosine)

  def test_bad_values_are_one_line_errors(self):
    for value in (1.0, -1.5, math.nan):
      with self.assertRaisesRegex(
          errors.ConfigError,
          r'^--min_update_cosine=\S+ is invalid: expected') as raised:
        settings_lib.ExperimentSettings.from_flat(
            min_update_cosine=value).validate()
      self.assertNotIn('\n', str(raised.exception))
      with self.assertRaisesRegex(ValueError, '^min_update_cosine '):
        robust_lib.RobustAggregation(min_update_cosine=value)


if __name__ == '__main__':
  tf.test.main()
