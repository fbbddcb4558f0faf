"""The payload as the named tensors of the TFLite signatures, both ways.

A device receives the broadcast `SparsePayload` as the inputs of
`set_weights` and returns its upload as the outputs of `get_weights`, one
tensor per name:

  values_<l>     per prunable layer, its active values: float32, or, with a
                 float16 upload, the float16 bit patterns as int16 (the Java
                 `Tensor` API has no float16 type: an app reads them into a
                 `ShortBuffer` and sends the 2 bytes per value unchanged);
  packed_masks   uint8, the masks packed 8 positions a byte;
  dense_<j>      float32, the dense parameters;
  weight         float32[1], the upload's aggregation weight: the number of
                 local examples the app passed to `get_weights`, echoed.

On the server, `check_device_upload` turns such outputs back into the
`SparsePayload` the aggregator takes (int16 read as float16, bit for bit)
and runs `payload_validation.check_upload_arrays` on it.
"""

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.networks import models
from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.process import payload_validation

PACKED_MASKS_NAME = 'packed_masks'
NUM_EXAMPLES_NAME = 'num_examples'
WEIGHT_NAME = 'weight'
# float16 values cross the signature boundary as their bit patterns.
FLOAT16_WIRE_DTYPE = tf.int16


def values_name(layer: int) -> str:
  """Signature name of a prunable layer's active values.

  Args:
    layer: Position of the kernel among the prunable kernels.

  Returns:
    `values_<layer>`.
  """
  return f'values_{layer}'


def dense_name(index: int) -> str:
  """Signature name of a dense parameter tensor.

  Args:
    index: Position in the payload's `dense` tuple (dense trainable, then
      dense non-trainable).

  Returns:
    `dense_<index>`.
  """
  return f'dense_{index}'


def payload_to_dict(payload: encoding.SparsePayload) -> dict[str, Any]:
  """Flattens a `SparsePayload` into the signatures' named tensors.

  Args:
    payload: The payload (tensors or numpy arrays).

  Returns:
    `{values_<l>: ..., packed_masks: ..., dense_<j>: ...}` with the same
    objects as in `payload`.
  """
  named = {values_name(l): v for l, v in enumerate(payload.values)}
  named[PACKED_MASKS_NAME] = payload.packed_masks
  named.update({dense_name(j): d for j, d in enumerate(payload.dense)})
  return named


def payload_from_dict(named: Mapping[str, Any], num_layers: int,
                      num_dense: int) -> encoding.SparsePayload:
  """Inverse of `payload_to_dict`.

  Args:
    named: Tensors keyed `values_<l>`, `packed_masks`, `dense_<j>` (extra
      keys are ignored).
    num_layers: Number of prunable kernels.
    num_dense: Number of dense parameter tensors.

  Returns:
    The `SparsePayload`.

  Raises:
    KeyError: If a name is missing.
  """
  return encoding.SparsePayload(
      values=tuple(named[values_name(l)] for l in range(num_layers)),
      packed_masks=named[PACKED_MASKS_NAME],
      dense=tuple(named[dense_name(j)] for j in range(num_dense)))


def to_wire(payload: encoding.SparsePayload) -> encoding.SparsePayload:
  """Bit-casts float16 values to int16 (in a TF graph, for `get_weights`).

  Args:
    payload: The client's payload (tensors).

  Returns:
    The same payload with every float16 values tensor replaced by its bit
    patterns as int16; float32 values and the rest are unchanged.
  """
  return payload._replace(values=tuple(
      tf.bitcast(v, FLOAT16_WIRE_DTYPE) if v.dtype == tf.float16 else v
      for v in payload.values))


def from_wire(payload: encoding.SparsePayload,
              spec: encoding.SparsePayload) -> encoding.SparsePayload:
  """Reads int16 values as float16 where `spec` expects float16 (numpy).

  Only the dtype is reinterpreted (`ndarray.view`): no value changes, and
  an array of any other dtype or structure is left for
  `check_upload_arrays` to reject.

  Args:
    payload: An upload of numpy arrays (values possibly int16).
    spec: The expected payload (`payload_validation.payload_spec`).

  Returns:
    The payload with those values as float16.
  """
  if not isinstance(payload.values, (tuple, list)):
    return payload
  values = []
  for index, array in enumerate(payload.values):
    expected = spec.values[index] if index < len(spec.values) else None
    if (expected is not None and expected.dtype == tf.float16 and
        isinstance(array, np.ndarray) and array.dtype == np.int16):
      array = array.view(np.float16)
    values.append(array)
  return payload._replace(values=tuple(values))


def check_device_upload(outputs: Mapping[str, Any],
                        spec: encoding.SparsePayload
                        ) -> payload_validation.UploadCheck:
  """The server's check of one device's `get_weights` outputs.

  Args:
    outputs: `{name: numpy array}` as the app read them from `get_weights`
      (see the module docstring), `weight` included.
    spec: The expected payload (`payload_validation.payload_spec` with the
      run's upload encoding; bitmap payloads only).

  Returns:
    `payload_validation.check_upload_arrays`'s verdict on the decoded
    payload and weight: a missing name is a 'shape' rejection; a weight
    that is not a float32[1] array is handed on as it is (and rejected as
    'weight' unless it is a number).
  """
  num_layers, num_dense = len(spec.values), len(spec.dense)
  try:
    payload = payload_from_dict(outputs, num_layers, num_dense)
  except KeyError as error:
    return payload_validation.UploadCheck(
        'shape', f'missing output {error.args[0]!r}', None, None)
  weight = outputs.get(WEIGHT_NAME)
  if isinstance(weight, np.ndarray) and weight.shape == (1,):
    weight = weight[0]
  return payload_validation.check_upload_arrays(from_wire(payload, spec),
                                                weight, spec)


def broadcast_specs(model: tf.keras.Model, layout: models.ModelLayout,
                    num_active: Sequence[int]) -> tuple[tf.TensorSpec, ...]:
  """Named specs of the payload the server broadcasts, in signature order.

  The server encodes with float32 values (`distributor`), whatever dtype the
  clients upload in.

  Args:
    model: The wrapped Keras model.
    layout: Its `ModelLayout`.
    num_active: Active weights per prunable kernel.

  Returns:
    `values_<l>` float32 [num_active[l]], `packed_masks` uint8
    [ceil(positions of the layers that are not dense / 8)], `dense_<j>`
    float32 with the parameter's shape.
  """
  trainable = model.trainable_variables
  non_trainable = model.non_trainable_variables
  dense = ([trainable[i] for i in layout.dense_trainable_indices] +
           [non_trainable[i] for i in layout.dense_non_trainable_indices])
  specs = [tf.TensorSpec((int(count),), tf.float32, name=values_name(l))
           for l, count in enumerate(num_active)]
  # Dense layers (capacity == size) carry no mask bits (`encoding`).
  specs.append(tf.TensorSpec(
      (mask_codes.num_packed_bytes(mask_codes.num_mask_bits(
          layout.kernel_sizes, num_active)),), tf.uint8,
      name=PACKED_MASKS_NAME))
  specs += [tf.TensorSpec(v.shape, tf.float32, name=dense_name(j))
            for j, v in enumerate(dense)]
  return tuple(specs)
