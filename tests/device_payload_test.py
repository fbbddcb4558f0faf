"""Tests for tff_feddst.ondevice.device_payload: named tensors, int16 wire."""

import numpy as np
import tensorflow as tf

from tff_feddst.ondevice import device_payload
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation

KERNEL_SHAPES = ((4, 3), (3, 2))
NUM_ACTIVE = (5, 6)
DENSE_SHAPES = ((3,), (2,))


def spec_for(value_dtype: str) -> encoding.SparsePayload:
  return payload_validation.payload_spec(
      KERNEL_SHAPES, NUM_ACTIVE, DENSE_SHAPES,
      encoding.PayloadEncoding(value_dtype=value_dtype))


def honest_payload(value_dtype: str) -> encoding.SparsePayload:
  """An encoded payload of two small layers (the second one dense)."""
  rng = np.random.default_rng(0)
  kernels = [tf.constant(rng.normal(size=s).astype(np.float32))
             for s in KERNEL_SHAPES]
  first_mask = np.zeros(12, np.float32)
  first_mask[[0, 2, 5, 7, 11]] = 1
  masks = [tf.constant(first_mask.reshape(4, 3)), tf.ones((3, 2))]
  dense = [tf.constant(rng.normal(size=s).astype(np.float32))
           for s in DENSE_SHAPES]
  return encoding.encode(kernels, masks, dense, NUM_ACTIVE,
                         value_dtype=tf.as_dtype(value_dtype))


def rice_payload() -> encoding.CodedPayload:
  """The same layers, float16 values and Rice-coded masks."""
  payload = honest_payload('float16')
  kernels, masks, dense = encoding.decode(payload, KERNEL_SHAPES)
  return encoding.encode_payload(
      kernels, masks, dense, NUM_ACTIVE,
      encoding.PayloadEncoding.parse('float16+rice'))


def device_outputs(payload: encoding.Payload, weight=(12.,)) -> dict:
  """What `get_weights` returns for `payload`, as numpy arrays."""
  named = {k: np.asarray(v) for k, v in device_payload.payload_to_dict(
      device_payload.to_wire(payload)).items()}
  named[device_payload.WEIGHT_NAME] = np.asarray(weight, np.float32)
  if device_payload.MASK_CODE_BITS_NAME in named:
    named[device_payload.MASK_CODE_BITS_NAME] = np.reshape(
        named[device_payload.MASK_CODE_BITS_NAME], [1])
  return named


class NamesTest(tf.test.TestCase):

  def test_round_trip_of_the_names(self):
    payload = honest_payload('float32')
    named = device_payload.payload_to_dict(payload)
    self.assertEqual(list(named), ['values_0', 'values_1', 'packed_masks',
                                   'dense_0', 'dense_1'])
    back = device_payload.payload_from_dict(named, 2, 2)
    tf.nest.map_structure(self.assertAllEqual, back, payload)


class WireTest(tf.test.TestCase):

  def test_every_float16_bit_pattern_survives_the_int16_wire(self):
    patterns = np.arange(-2**15, 2**15, dtype=np.int32).astype(np.int16)
    values = patterns.view(np.float16)  # NaNs and infinities included.
    payload = encoding.SparsePayload(values=(tf.constant(values),),
                                     packed_masks=tf.zeros([0], tf.uint8),
                                     dense=())
    wire = device_payload.to_wire(payload)
    self.assertEqual(wire.values[0].dtype, tf.int16)
    self.assertEqual(wire.values[0].numpy().tobytes(), patterns.tobytes())
    spec = payload._replace(values=(tf.TensorSpec([2**16], tf.float16),))
    back = device_payload.from_wire(
        wire._replace(values=(wire.values[0].numpy(),)), spec)
    self.assertEqual(back.values[0].dtype, np.float16)
    self.assertEqual(back.values[0].tobytes(), values.tobytes())

  def test_float32_values_are_unchanged(self):
    payload = honest_payload('float32')
    wire = device_payload.to_wire(payload)
    tf.nest.map_structure(self.assertAllEqual, wire, payload)


class CheckDeviceUploadTest(tf.test.TestCase):

  def test_float16_upload_is_accepted_as_the_encoded_payload(self):
    payload = honest_payload('float16')
    verdict = device_payload.check_device_upload(device_outputs(payload),
                                                 spec_for('float16'))
    self.assertIsNone(verdict.rejection, verdict.reason)
    self.assertEqual(verdict.weight, np.float32(12.))
    for got, want in zip(tf.nest.flatten(verdict.payload),
                         tf.nest.flatten(payload)):
      self.assertEqual(got.dtype, want.dtype.as_numpy_dtype)
      self.assertEqual(got.tobytes(), want.numpy().tobytes())
    # The full check (content included) accepts it too.
    full = payload_validation.validate_upload(
        verdict.payload, verdict.weight, KERNEL_SHAPES, NUM_ACTIVE,
        DENSE_SHAPES, encoding.PayloadEncoding(value_dtype='float16'))
    self.assertIsNone(full.rejection, full.reason)

  def test_float32_upload_is_accepted(self):
    verdict = device_payload.check_device_upload(
        device_outputs(honest_payload('float32')), spec_for('float32'))
    self.assertIsNone(verdict.rejection, verdict.reason)

  def test_rice_coded_upload_is_accepted_as_the_encoded_payload(self):
    payload = rice_payload()
    outputs = device_outputs(payload)
    self.assertEqual(outputs['mask_code_bits'].shape, (1,))
    self.assertNotIn('packed_masks', outputs)
    rice = encoding.PayloadEncoding.parse('float16+rice')
    spec = payload_validation.payload_spec(KERNEL_SHAPES, NUM_ACTIVE,
                                           DENSE_SHAPES, rice)
    verdict = device_payload.check_device_upload(outputs, spec)
    self.assertIsNone(verdict.rejection, verdict.reason)
    self.assertIsInstance(verdict.payload, encoding.CodedPayload)
    for got, want in zip(tf.nest.flatten(verdict.payload),
                         tf.nest.flatten(payload)):
      self.assertEqual(np.asarray(got).tobytes(), want.numpy().tobytes())
    full = payload_validation.validate_upload(
        verdict.payload, verdict.weight, KERNEL_SHAPES, NUM_ACTIVE,
        DENSE_SHAPES, rice)
    self.assertIsNone(full.rejection, full.reason)
    # A bitmap upload where the run expects Rice codes, a [2] bit count.
    for bad in (device_outputs(honest_payload('float16')),
                {**outputs, 'mask_code_bits': np.zeros(2, np.int32)}):
      verdict = device_payload.check_device_upload(bad, spec)
      self.assertEqual(verdict.rejection, 'shape', verdict.reason)

  def test_bad_uploads_are_rejected(self):
    float16_outputs = device_outputs(honest_payload('float16'))
    missing = dict(float16_outputs)
    del missing['dense_1']
    # int16 where the server expects float32 is not reinterpreted.
    cases = [
        (float16_outputs, 'float32', 'shape', 'values[0]'),
        (missing, 'float16', 'shape', 'dense_1'),
        (device_outputs(honest_payload('float16'), weight=(1., 2.)),
         'float16', 'weight', 'example count'),
        (device_outputs(honest_payload('float16'), weight=(0.,)),
         'float16', 'weight', 'example count'),
        ({**float16_outputs, 'values_1': np.zeros(7, np.int16)}, 'float16',
         'shape', 'values[1]'),
    ]
    for outputs, value_dtype, kind, named in cases:
      verdict = device_payload.check_device_upload(outputs,
                                                   spec_for(value_dtype))
      self.assertEqual(verdict.rejection, kind, verdict.reason)
      self.assertIn(named, verdict.reason)


if __name__ == '__main__':
  tf.test.main()
