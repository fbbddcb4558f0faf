"""Tests for tff_feddst.process.upload_screening, by hand-checked numbers."""

import math

import numpy as np
import tensorflow as tf

from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation as robust_lib
from tff_feddst.process import upload_screening
from tests import robust_aggregation_test as robust_test

KERNEL_SHAPES = robust_test.KERNEL_SHAPES
DENSE_SHAPES = robust_test.DENSE_SHAPES
NUM_ACTIVE = robust_test.NUM_ACTIVE


def screen(upload, weight=1.0, reference=None):
  return upload_screening.screen_upload(
      upload, tf.constant(weight), KERNEL_SHAPES, DENSE_SHAPES, NUM_ACTIVE,
      None, payload_validation.PayloadChecks(), reference)


class ScreenUploadTest(tf.test.TestCase):

  def test_accepted_upload_gives_its_delta_norm_and_fingerprint(self):
    # The CLIENT's delta on its support is [3, 3]: norm sqrt(18).
    result = screen(robust_test.payload(*robust_test.CLIENT),
                    reference=robust_test.reference())
    self.assertTrue(bool(result.accepted))
    self.assertAllClose(result.norm, math.sqrt(18.0))
    self.assertAllEqual(result.fingerprint, robust_lib.upload_fingerprint(
        robust_test.payload(*robust_test.CLIENT)))
    # Without a reference nothing is measured, but it is still accepted.
    self.assertEqual(float(screen(robust_test.payload(
        *robust_test.CLIENT)).norm), 0.0)

  def test_rejected_upload_is_not_counted(self):
    nan_upload = robust_test.payload([np.nan, 0., 0., 2.],
                                     robust_test.REFERENCE_MASK, [0.5])
    result = screen(nan_upload, reference=robust_test.reference())
    self.assertFalse(bool(result.accepted))
    counts = upload_screening.add_screen(upload_screening.zero_counts(), result,
                                         tf.constant(1.0))
    for count in counts:
      self.assertEqual(int(tf.reduce_sum(count)), 0)

  def test_findings_of_three_uploads(self):
    # Norms 1, 1 and sqrt(18) with weights 1, 2, 8: the median norm is 1
    # (bound 2 x 1), the median weight 2 (cap 2 x 2); the fingerprint of
    # the upload sent twice counts 2.
    reference = robust_test.reference()
    counts = upload_screening.zero_counts()
    one = robust_test.payload([2., 0., 0., 2.], robust_test.REFERENCE_MASK,
                              [0.5])
    for upload, weight in ((one, 1.0), (one, 2.0),
                           (robust_test.payload(*robust_test.CLIENT), 8.0)):
      counts = upload_screening.add_screen(
          counts, screen(upload, weight, reference), tf.constant(weight))
    bound, replay_counts, weight_cap = upload_screening.screening_findings(
        counts, robust_lib.RobustAggregation())
    self.assertEqual(float(bound), 2.0)
    self.assertEqual(float(weight_cap), 4.0)
    self.assertTrue(bool(robust_lib.is_replayed(
        robust_lib.upload_fingerprint(one), replay_counts)))
    # Settings that are off give +inf.
    bound, _, weight_cap = upload_screening.screening_findings(
        counts, robust_lib.RobustAggregation(clip_updates=False,
                                             max_weight_multiple=None))
    self.assertEqual(float(bound), math.inf)
    self.assertEqual(float(weight_cap), math.inf)


if __name__ == '__main__':
  tf.test.main()
