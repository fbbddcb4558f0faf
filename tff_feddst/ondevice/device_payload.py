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

With an upload encoding that is not the plain bitmap (Rice-coded masks,
masks left out when unchanged: the simulation's `CodedPayload`),
`packed_masks` is replaced by

  mask_code       uint8, the mask code's buffer at its full capacity;
  mask_code_bits  int32[1], the bits of it in use (0: masks left out).

Only the used bytes of `mask_code`, ceil(mask_code_bits / 8), need to be
sent (the rest is zeros): `encoding.payload_num_bytes` counts the upload so,
as it counts the simulation's uploads.

The broadcast follows the run's download encoding the same way
(`broadcast_specs`, `broadcast_inputs`): float16 values as int16, Rice-coded
masks as `mask_code` and `mask_code_bits`, and `packed_masks` holding the
dense layers' masks too when the encoding sends them ('dense_masks': runs
whose server can thin a dense layer: the 'reference' rules, `min_votes` > 1,
a growing sparsity, PruneFL).
"""

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.networks import models
from tff_feddst.ondevice import device_client
from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.process import payload_validation
from tff_feddst.process import upload_binding

PACKED_MASKS_NAME = 'packed_masks'
MASK_CODE_NAME = 'mask_code'
MASK_CODE_BITS_NAME = 'mask_code_bits'
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


def payload_to_dict(payload: encoding.Payload) -> dict[str, Any]:
  """Flattens a payload into the signatures' named tensors.

  Args:
    payload: A `SparsePayload` or `CodedPayload` (tensors or numpy arrays).

  Returns:
    `{values_<l>: ..., packed_masks: ..., dense_<j>: ...}` (a
    `CodedPayload`: `mask_code` and `mask_code_bits` for `packed_masks`)
    with the same objects as in `payload`.
  """
  named = {values_name(l): v for l, v in enumerate(payload.values)}
  if isinstance(payload, encoding.CodedPayload):
    named[MASK_CODE_NAME] = payload.mask_code
    named[MASK_CODE_BITS_NAME] = payload.mask_code_bits
  else:
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


def coded_payload_from_dict(named: Mapping[str, Any], num_layers: int,
                            num_dense: int) -> encoding.CodedPayload:
  """Inverse of `payload_to_dict` for a `CodedPayload`.

  Args:
    named: Tensors keyed `values_<l>`, `mask_code`, `mask_code_bits`,
      `dense_<j>` (extra keys are ignored).
    num_layers: Number of prunable kernels.
    num_dense: Number of dense parameter tensors.

  Returns:
    The `CodedPayload` (`mask_code_bits` as given: reshape a device's [1]).

  Raises:
    KeyError: If a name is missing.
  """
  return encoding.CodedPayload(
      values=tuple(named[values_name(l)] for l in range(num_layers)),
      mask_code=named[MASK_CODE_NAME],
      mask_code_bits=named[MASK_CODE_BITS_NAME],
      dense=tuple(named[dense_name(j)] for j in range(num_dense)))


def _one_element_to_scalar(array: Any) -> Any:
  """A numpy [1] array as its element; anything else unchanged."""
  if isinstance(array, np.ndarray) and array.shape == (1,):
    return array[0]
  return array


def to_wire(payload: encoding.Payload) -> encoding.Payload:
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


def from_wire(payload: encoding.Payload,
              spec: encoding.Payload) -> encoding.Payload:
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
                        spec: encoding.Payload
                        ) -> payload_validation.UploadCheck:
  """The server's check of one device's `get_weights` outputs.

  Args:
    outputs: `{name: numpy array}` as the app read them from `get_weights`
      (see the module docstring), `weight` included.
    spec: The expected payload (`payload_validation.payload_spec` with the
      run's upload encoding: a `SparsePayload` or `CodedPayload` spec).

  Returns:
    `payload_validation.check_upload_arrays`'s verdict on the decoded
    payload and weight: a missing name is a 'shape' rejection; a weight
    (or `mask_code_bits`) that is not a [1] array is handed on as it is
    (and rejected unless it is what the check expects).
  """
  num_layers, num_dense = len(spec.values), len(spec.dense)
  try:
    if isinstance(spec, encoding.CodedPayload):
      payload = coded_payload_from_dict(outputs, num_layers, num_dense)
      payload = payload._replace(
          mask_code_bits=_one_element_to_scalar(payload.mask_code_bits))
    else:
      payload = payload_from_dict(outputs, num_layers, num_dense)
  except KeyError as error:
    return payload_validation.UploadCheck(
        'shape', f'missing output {error.args[0]!r}', None, None)
  weight = _one_element_to_scalar(outputs.get(WEIGHT_NAME))
  return payload_validation.check_upload_arrays(from_wire(payload, spec),
                                                weight, spec)


def accept_device_upload(outputs: Mapping[str, np.ndarray], spec: Any,
                         round_digest: Optional[tf.Tensor]
                         ) -> tuple[Optional[tuple[Any, np.float32, float]],
                                    Optional[tuple[str, str]]]:
  """The server's check of one device's upload, as read from the device.

  Args:
    outputs: The device's `get_weights` outputs plus `model_digest` (when
      the round binds uploads) and optionally `train_loss`.
    spec: The expected payload (`payload_validation.payload_spec` with the
      run's upload encoding).
    round_digest: The digest the round's uploads must echo, or None.

  Returns:
    `((upload, weight, train loss), None)` for an upload that passed the
    device-upload check (`check_device_upload`; bound to its digest as an
    `upload_binding.BoundUpload` when the round binds; the loss nan when
    absent), or `(None, (kind, reason))` for a rejected one.
  """
  verdict = check_device_upload(outputs, spec)
  if verdict.rejection is not None:
    return None, (verdict.rejection, verdict.reason)
  upload = tf.nest.map_structure(tf.constant, verdict.payload)
  if round_digest is not None:
    digest = outputs.get(device_client.MODEL_DIGEST_NAME)
    if (not isinstance(digest, np.ndarray) or digest.shape != (1,) or
        digest.dtype != np.int32):
      return None, ('stale', f'{device_client.MODEL_DIGEST_NAME} is not an '
                    'int32[1] array')
    upload = upload_binding.BoundUpload(upload, tf.constant(digest[0]))
  loss = outputs.get(device_client.TRAIN_LOSS_NAME)
  loss = (float(loss.reshape(-1)[0]) if isinstance(loss, np.ndarray) and
          loss.size == 1 else float('nan'))
  return (upload, np.float32(verdict.weight), loss), None


def check_download_encoding(download_encoding: encoding.PayloadEncoding
                            ) -> None:
  """Refuses a download encoding that a broadcast cannot have.

  Args:
    download_encoding: The broadcast's encoding.

  Raises:
    ValueError: If it would leave the masks out (a device holds no masks
      between rounds, as `distributor.build_sparse_broadcast` says).
  """
  if download_encoding.masks_only_when_changed:
    raise ValueError(
        f'download encoding {download_encoding.name!r} is invalid: a '
        'broadcast always carries the masks (changed_masks_only applies to '
        'uploads only).')


def broadcast_specs(model: tf.keras.Model, layout: models.ModelLayout,
                    num_active: Sequence[int],
                    download_encoding: Optional[
                        encoding.PayloadEncoding] = None
                    ) -> tuple[tf.TensorSpec, ...]:
  """Named specs of the payload the server broadcasts, in signature order.

  They follow the run's download encoding, as the TF client's decoding
  (`distributor.decode_model_weights`) does: float16 values come as their
  int16 bit patterns (`broadcast_inputs`), the masks of dense layers are
  there when the encoding sends them ('dense_masks', which the settings
  turn on for runs that can thin a dense layer), and a Rice-coded broadcast
  has `mask_code` and `mask_code_bits` in place of `packed_masks`.

  Args:
    model: The wrapped Keras model.
    layout: Its `ModelLayout`.
    num_active: Payload capacity per prunable kernel.
    download_encoding: The broadcast's encoding (None: float32 values,
      bitmap masks, dense layers without mask: `PayloadEncoding()`).

  Returns:
    `values_<l>` float32 (float16 broadcast: int16) [num_active[l]]; for a
    bitmap broadcast `packed_masks` uint8 [ceil(positions of the layers
    that carry a mask / 8)], else `mask_code` uint8 [code capacity] and
    `mask_code_bits` int32 [1]; then `dense_<j>` float32 with the
    parameter's shape.

  Raises:
    ValueError: For a download encoding that leaves the masks out.
  """
  download_encoding = download_encoding or encoding.PayloadEncoding()
  check_download_encoding(download_encoding)
  trainable = model.trainable_variables
  non_trainable = model.non_trainable_variables
  dense = ([trainable[i] for i in layout.dense_trainable_indices] +
           [non_trainable[i] for i in layout.dense_non_trainable_indices])
  value_dtype = (FLOAT16_WIRE_DTYPE if download_encoding.value_bits == 16
                 else tf.float32)
  specs = [tf.TensorSpec((int(count),), value_dtype, name=values_name(l))
           for l, count in enumerate(num_active)]
  omit_dense_masks = download_encoding.omit_dense_masks
  if download_encoding.is_bitmap_payload:
    specs.append(tf.TensorSpec(
        (mask_codes.num_packed_bytes(mask_codes.num_mask_bits(
            layout.kernel_sizes, num_active, omit_dense_masks)),), tf.uint8,
        name=PACKED_MASKS_NAME))
  else:
    specs.append(tf.TensorSpec(
        (mask_codes.num_packed_bytes(mask_codes.mask_code_capacity_bits(
            layout.kernel_sizes, num_active, download_encoding.mask_code,
            omit_dense_masks)),), tf.uint8, name=MASK_CODE_NAME))
    specs.append(tf.TensorSpec((1,), tf.int32, name=MASK_CODE_BITS_NAME))
  specs += [tf.TensorSpec(v.shape, tf.float32, name=dense_name(j))
            for j, v in enumerate(dense)]
  return tuple(specs)


def broadcast_from_inputs(named: Mapping[str, tf.Tensor], num_layers: int,
                          num_dense: int,
                          download_encoding: encoding.PayloadEncoding
                          ) -> encoding.Payload:
  """The broadcast payload from `set_weights`' inputs (in a TF graph).

  Inverse of `broadcast_inputs`: int16 values are bit-cast back to float16
  and `mask_code_bits` [1] becomes a scalar, so the payload is the one the
  server encoded, for `distributor.decode_model_weights`.

  Args:
    named: Tensors keyed as `broadcast_specs` names them.
    num_layers: Number of prunable kernels.
    num_dense: Number of dense parameter tensors.
    download_encoding: The broadcast's encoding.

  Returns:
    A `SparsePayload` (bitmap broadcast) or a `CodedPayload`.
  """
  if download_encoding.is_bitmap_payload:
    payload = payload_from_dict(named, num_layers, num_dense)
  else:
    payload = coded_payload_from_dict(named, num_layers, num_dense)
    payload = payload._replace(
        mask_code_bits=tf.reshape(payload.mask_code_bits, []))
  return payload._replace(values=tuple(
      tf.bitcast(v, tf.float16) if v.dtype == FLOAT16_WIRE_DTYPE else v
      for v in payload.values))


def broadcast_inputs(payload: encoding.Payload) -> dict[str, np.ndarray]:
  """The inputs of `set_weights` for a broadcast payload (numpy).

  What the server (or the app) hands the device: float16 values as their
  int16 bit patterns (`ndarray.view`, no value changes) and
  `mask_code_bits` as a [1] array, the rest as it is.

  Args:
    payload: The server's `SparsePayload` or `CodedPayload` (tensors or
      numpy arrays), e.g. from `client_work.encode_weights` with the run's
      download encoding.

  Returns:
    `{name: numpy array}` keyed as `broadcast_specs` names them.
  """
  named = {name: np.asarray(value)
           for name, value in payload_to_dict(payload).items()}
  for name, value in named.items():
    if value.dtype == np.float16:
      named[name] = value.view(np.int16)
  if MASK_CODE_BITS_NAME in named:
    named[MASK_CODE_BITS_NAME] = np.reshape(named[MASK_CODE_BITS_NAME], [1])
  return named
