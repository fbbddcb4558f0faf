"""Tests for tff_feddst.process.payload_validation: checks of client payloads."""

import math

import numpy as np
import tensorflow as tf

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.process import payload_validation
from tff_feddst.sparse import schedules

# One kernel of 4 positions with 2 values, one bias (the hand example of
# aggregation_test): mask [0,1,1,0], values 4, 6, bias 2.
KERNEL_SHAPES = [(4,)]
NUM_ACTIVE = [2]
DENSE_SHAPES = [(1,)]


def honest_payload():
  return encoding.SparsePayload(
      values=(np.array([4., 6.], np.float32),),
      packed_masks=np.array([96], np.uint8),  # 0110 0000.
      dense=(np.array([2.], np.float32),))


def validate(payload, weight=3.0, **kwargs):
  return payload_validation.validate_upload(
      payload, weight, KERNEL_SHAPES, NUM_ACTIVE, DENSE_SHAPES, **kwargs)


class PayloadChecksTest(tf.test.TestCase):

  def test_bad_settings_raise(self):
    for settings in (dict(num_active_rule='most'), dict(max_norm=-1.0),
                     dict(max_norm=math.nan),
                     dict(num_active_by_round=[[1, 2], [1]]),
                     dict(num_active_by_round=[])):
      with self.assertRaises(ValueError, msg=str(settings)):
        payload_validation.PayloadChecks(**settings)

  def test_zero_norm_is_no_bound(self):
    self.assertIsNone(payload_validation.PayloadChecks(max_norm=0).norm_bound)
    self.assertEqual(
        payload_validation.PayloadChecks(max_norm=5).norm_bound, 5.0)

  def test_default_checks_allow_sparser_masks_when_clients_may_send_them(self):
    rule = lambda **kw: payload_validation.default_checks(**kw).num_active_rule
    self.assertEqual(rule(), 'exact')
    self.assertEqual(rule(min_votes=1), 'exact')
    self.assertEqual(rule(min_votes=2), 'at_most')
    self.assertEqual(rule(readjust_rule='reference'), 'at_most')

  def test_targets_table(self):
    checks = payload_validation.PayloadChecks(
        num_active_by_round=np.array([[4, 2], [3, 1]]))
    self.assertAllEqual(checks.targets_table([4, 2]), [[4, 2], [3, 1]])
    self.assertAllEqual(payload_validation.PayloadChecks().targets_table(
        [4, 2]), [[4, 2]])
    with self.assertRaisesRegex(ValueError, 'capacity'):
      checks.targets_table([3, 2])


class TensorChecksTest(tf.test.TestCase):

  def test_first_failure_reports_the_earliest_kind(self):
    code = payload_validation.first_failure(
        [('norm', tf.constant(False)), ('nonfinite', tf.constant(False)),
         ('weight', tf.constant(True))])
    self.assertEqual(int(code), payload_validation.rejection_code('nonfinite'))
    self.assertEqual(int(payload_validation.first_failure(
        [('weight', tf.constant(True))])), payload_validation.ACCEPTED)

  def test_shapes_match_at_run_time(self):
    spec = payload_validation.payload_spec(KERNEL_SHAPES, NUM_ACTIVE,
                                           DENSE_SHAPES)
    relaxed = tf.nest.map_structure(
        lambda s: tf.TensorSpec([None] * s.shape.rank, s.dtype), spec)
    match = tf.function(lambda p: payload_validation.shapes_match(p, spec),
                        input_signature=[relaxed])
    self.assertTrue(bool(match(honest_payload())))
    short = honest_payload()._replace(values=(np.array([4.], np.float32),))
    self.assertFalse(bool(match(short)))

  def test_payload_norm(self):
    # sqrt(16 + 36 + 4).
    self.assertAllClose(payload_validation.payload_norm(
        tf.nest.map_structure(tf.constant, honest_payload())),
                        math.sqrt(56.0))
    self.assertAllClose(payload_validation.model_norm(
        [np.array([[3., 0.]])], [np.array([4.])]), 5.0)


def rice_fixture():
  """A 40-position layer with 6 active and a 10-position one with 7 (coded
  inverted), and their honest Rice code."""
  kernel_shapes = [(40,), (10,)]
  num_active = [6, 7]
  masks = [np.zeros(40, np.float32), np.zeros(10, np.float32)]
  masks[0][[0, 3, 11, 12, 30, 39]] = 1
  masks[1][[0, 1, 2, 4, 5, 7, 9]] = 1
  code, bits = mask_codes.encode_masks([tf.constant(m) for m in masks],
                                       num_active, 'rice')
  return kernel_shapes, num_active, masks, code.numpy(), int(bits)


class RiceCodeTest(tf.test.TestCase):

  def test_honest_code_is_valid(self):
    kernel_shapes, num_active, _, code, bits = rice_fixture()
    self.assertTrue(bool(payload_validation.rice_code_is_valid(
        code, bits, [40, 10], num_active)))
    self.assertFalse(bool(payload_validation.rice_code_is_valid(
        code, bits + 1, [40, 10], num_active)))
    del kernel_shapes

  def test_garbage_codes_never_crash_and_accepted_ones_decode(self):
    kernel_shapes, num_active, masks, code, bits = rice_fixture()
    rice = encoding.PayloadEncoding(mask_code='rice')
    checks = payload_validation.PayloadChecks(num_active_rule='at_most')
    capacity_bits = 8 * len(code)

    @tf.function
    def check(mask_code, mask_code_bits):
      payload = encoding.CodedPayload(
          values=(tf.zeros([6]), tf.zeros([7])), mask_code=mask_code,
          mask_code_bits=mask_code_bits, dense=())
      content = payload_validation.check_content(
          payload, tf.constant(1.0), kernel_shapes, num_active, rice, checks)
      return content.rejection, [tf.reduce_sum(m) for m in content.masks]

    rejection, counts = check(tf.constant(code), tf.constant(bits))
    self.assertEqual(int(rejection), payload_validation.ACCEPTED)
    self.assertAllEqual(counts, [m.sum() for m in masks])
    rng = np.random.default_rng(0)
    num_accepted = 0
    for trial in range(200):
      if trial % 2:  # Random bytes and length.
        garbage = rng.integers(0, 256, size=len(code), dtype=np.uint8)
        claimed = int(rng.integers(-2, capacity_bits + 3))
      else:  # The honest code with one bit flipped.
        flipped = np.unpackbits(code)
        flipped[rng.integers(0, bits)] ^= 1
        garbage, claimed = np.packbits(flipped), bits
      rejection, counts = check(tf.constant(garbage), tf.constant(claimed))
      if int(rejection) == payload_validation.ACCEPTED:
        num_accepted += 1
        self.assertTrue(np.all(np.asarray(counts) <= num_active))
      else:
        self.assertIn(int(rejection), [
            payload_validation.rejection_code('mask_code'),
            payload_validation.rejection_code('mask_count')])
    self.assertLess(num_accepted, 200)


class CheckUploadArraysTest(tf.test.TestCase):

  def test_honest_upload_is_accepted(self):
    verdict = validate(honest_payload())
    self.assertIsNone(verdict.rejection)
    self.assertEqual(verdict.reason, '')
    self.assertEqual(verdict.weight, np.float32(3.0))
    self.assertAllEqual(verdict.payload.values[0], [4., 6.])

  def test_wrong_dtype_is_rejected_not_cast(self):
    payload = honest_payload()._replace(
        values=(np.array([4., 6.], np.float64),))
    verdict = validate(payload)
    self.assertEqual(verdict.rejection, 'shape')
    self.assertIn('values[0]: expected dtype float32, got float64',
                  verdict.reason)

  def test_wrong_shapes_and_structure_are_rejected(self):
    cases = [
        (honest_payload()._replace(values=(np.zeros(3, np.float32),)),
         'values[0]: expected shape (2,), got (3,)'),
        (honest_payload()._replace(values=()), 'values: expected 1 tensors'),
        (honest_payload()._replace(packed_masks=[96]),
         'packed_masks: expected a numpy array'),
        (encoding.CodedPayload((), np.zeros(1, np.uint8), np.int32(0), ()),
         'expected a SparsePayload'),
    ]
    for payload, reason in cases:
      verdict = validate(payload)
      self.assertEqual(verdict.rejection, 'shape', reason)
      self.assertIn(reason, verdict.reason)
      self.assertIsNone(verdict.payload)

  def test_bad_weights_are_rejected(self):
    for weight in (0, -3, math.nan, math.inf, 1e39, '3', True, [3.0]):
      verdict = validate(honest_payload(), weight=weight)
      self.assertEqual(verdict.rejection, 'weight', repr(weight))

  def test_content_is_checked_too(self):
    nan = honest_payload()._replace(values=(np.array([np.nan, 6.],
                                                     np.float32),))
    self.assertEqual(validate(nan).rejection, 'nonfinite')
    three_ones = honest_payload()._replace(
        packed_masks=np.array([224], np.uint8))
    self.assertEqual(validate(three_ones).rejection, 'mask_count')
    self.assertEqual(validate(honest_payload(), checks=(
        payload_validation.PayloadChecks(max_norm=7.0))).rejection, 'norm')
    # Round 2 of a table whose second row wants one active weight.
    checks = payload_validation.PayloadChecks(num_active_by_round=[[2], [1]])
    self.assertIsNone(validate(honest_payload(), checks=checks).rejection)
    self.assertEqual(validate(honest_payload(), checks=checks,
                              round_index=1).rejection, 'mask_count')


NUM_CLIENTS = 3


def client_datasets(poisoned=()):
  """Three learnable clients (as in fed_dst_test); those in `poisoned`
  have NaN images, so local training yields NaN weights."""
  rng = np.random.default_rng(0)
  patterns = rng.normal(size=(10, 28, 28, 1)).astype(np.float32)
  datasets = []
  for client in range(NUM_CLIENTS):
    labels = rng.choice([client, client + 3, client + 6], size=16)
    images = patterns[labels] + 0.5 * rng.normal(size=(16, 28, 28, 1))
    if client in poisoned:
      images[:] = np.nan
    datasets.append(tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), labels.astype(np.int32))).batch(8))
  return datasets


class HostileClientProcessTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
    schedule = schedules.ReadjustmentSchedule(
        drop_fraction=0.3, rounds_between_readjustments=1, end_round=10,
        annealing='constant')
    cls.process = fed_dst.build_fed_dst(
        model_fn, initial, client_datasets()[0].element_spec, schedule,
        client_work.ClientConfig(num_epochs=1, learning_rate=0.02))

  def test_nan_client_is_rejected_and_the_rest_aggregated_alone(self):
    datasets = client_datasets(poisoned=(1,))
    with_nan = self.process.next(self.process.initialize(), datasets)
    without = self.process.next(self.process.initialize(),
                                [datasets[0], datasets[2]])
    aggregator = with_nan.metrics['aggregator']
    self.assertEqual(aggregator['rejected_clients'], 1)
    self.assertEqual(aggregator['rejected_nonfinite'], 1)
    self.assertEqual(aggregator['num_clients'], 2)
    self.assertEqual(without.metrics['aggregator']['rejected_clients'], 0)
    got = self.process.get_model_weights(with_nan.state)
    want = self.process.get_model_weights(without.state)
    for array in tf.nest.flatten(got):
      self.assertTrue(np.all(np.isfinite(array)))
    tf.nest.map_structure(
        lambda g, w: self.assertAllClose(g, w, atol=1e-6, rtol=0), got, want)

  def test_all_rejected_round_keeps_the_global_model(self):
    state = self.process.initialize()
    output = self.process.next(state, client_datasets(poisoned=(0, 1, 2)))
    self.assertEqual(output.metrics['aggregator']['rejected_clients'], 3)
    self.assertEqual(output.metrics['aggregator']['num_clients'], 0)
    tf.nest.map_structure(self.assertAllEqual,
                          self.process.get_model_weights(output.state),
                          self.process.get_model_weights(state))


if __name__ == '__main__':
  tf.test.main()
