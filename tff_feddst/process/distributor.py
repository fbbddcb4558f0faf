"""Broadcast of the sparse global model, counted in bytes.

The server encodes its model once as a `SparsePayload` (active values, packed
masks, dense parameters) or, with another `encoding.PayloadEncoding` (float16
values, Rice-coded masks), a `CodedPayload`; it broadcasts that payload, and
each client decodes it back into `ModelWeights`. Download bytes are counted
from the payload each client receives (values for the masks' ones only;
dense layers, whose capacity equals their size, carry no mask bits: see
`encoding`). Clients keep nothing between rounds, so a broadcast always
carries the masks.

Type signatures:
  initialize: `( -> <>@SERVER)`
  next: `(<<>@SERVER, ModelWeights@SERVER> -> <state=<>@SERVER,
    result=ModelWeights@CLIENTS, measurements=<download_bytes=int64>@SERVER>)`
"""

import collections
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import encoding


def decode_model_weights(payload: encoding.Payload,
                         layout: models.ModelLayout,
                         model_weights_type: tff.Type,
                         num_active: Sequence[int] = (),
                         payload_encoding: Optional[
                             encoding.PayloadEncoding] = None
                         ) -> tff.learning.models.ModelWeights:
  """Rebuilds full `ModelWeights` from a broadcast payload.

  TF-MOT's bookkeeping variables (thresholds, pruning steps) are not sent;
  they are always 0 in the global model and are rebuilt as zeros.

  Args:
    payload: The server's `SparsePayload` or `CodedPayload`.
    layout: The model's `ModelLayout`.
    model_weights_type: TFF type of `ModelWeights` (for shapes and dtypes).
    num_active: Active weights per kernel (needed for `CodedPayload`s).
    payload_encoding: The download encoding (None: `PayloadEncoding()`).

  Returns:
    The decoded `ModelWeights`.
  """
  kernels, masks, dense = encoding.decode_payload(
      payload, layout.kernel_shapes, num_active,
      payload_encoding or encoding.PayloadEncoding())
  trainable = [None] * len(model_weights_type.trainable)
  non_trainable = [None] * len(model_weights_type.non_trainable)
  for index, kernel in zip(layout.kernel_indices, kernels):
    trainable[index] = kernel
  for position, index in enumerate(layout.dense_trainable_indices):
    trainable[index] = dense[position]
  for index, mask in zip(layout.mask_indices, masks):
    non_trainable[index] = mask
  offset = len(layout.dense_trainable_indices)
  for position, index in enumerate(layout.dense_non_trainable_indices):
    non_trainable[index] = dense[offset + position]
  for index in layout.bookkeeping_indices:
    spec = model_weights_type.non_trainable[index]
    non_trainable[index] = tf.zeros(spec.shape, spec.dtype)
  trainable = [tf.cast(t, spec.dtype) for t, spec in
               zip(trainable, model_weights_type.trainable)]
  non_trainable = [tf.cast(t, spec.dtype) for t, spec in
                   zip(non_trainable, model_weights_type.non_trainable)]
  return tff.learning.models.ModelWeights(trainable=trainable,
                                          non_trainable=non_trainable)


def build_sparse_broadcast(layout: models.ModelLayout,
                           num_active: Sequence[int],
                           model_weights_type: tff.Type,
                           download_encoding: Optional[
                               encoding.PayloadEncoding] = None
                           ) -> tff.learning.templates.DistributionProcess:
  """Builds the `DistributionProcess` that broadcasts the sparse model.

  Args:
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel.
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    download_encoding: How the model is encoded (None: float32 values and
      bitmap masks, a `SparsePayload`). With float16 values, clients start
      from the global weights rounded to float16 (the server keeps float32).

  Returns:
    A `tff.learning.templates.DistributionProcess`.

  Raises:
    ValueError: If `download_encoding` would leave masks out (clients hold
      no masks between rounds).
  """
  download_encoding = download_encoding or encoding.PayloadEncoding()
  if download_encoding.masks_only_when_changed:
    raise ValueError('a broadcast always carries the masks: '
                     'masks_only_when_changed applies to uploads only.')

  @tff.tensorflow.computation(model_weights_type)
  def encode_global(weights):
    return client_work.encode_weights(weights, layout, num_active,
                                      payload_encoding=download_encoding)

  payload_type = encode_global.type_signature.result

  @tff.tensorflow.computation(payload_type)
  def decode_global(payload):
    return decode_model_weights(payload, layout, model_weights_type,
                                num_active, download_encoding)

  @tff.tensorflow.computation(payload_type)
  def num_bytes(payload):
    # Values are charged for the masks' ones (what a transport sends), not
    # for the padding up to each layer's capacity.
    _, masks, _ = encoding.decode_payload(payload, layout.kernel_shapes,
                                          num_active, download_encoding)
    return encoding.payload_num_bytes(payload, masks)

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.types.FederatedType(model_weights_type, tff.SERVER))
  def next_fn(state, weights):
    received = tff.federated_broadcast(
        tff.federated_map(encode_global, weights))
    measurements = tff.federated_zip(collections.OrderedDict(
        download_bytes=tff.federated_sum(tff.federated_map(num_bytes,
                                                           received))))
    return tff.templates.MeasuredProcessOutput(
        state=state, result=tff.federated_map(decode_global, received),
        measurements=measurements)

  return tff.learning.templates.DistributionProcess(init_fn, next_fn)


def initial_weights_computation(weights) -> tff.Computation:
  """The server's initial model as a no-argument TF computation.

  Args:
    weights: The initial `tff.learning.models.ModelWeights` (arrays).

  Returns:
    A `tff.Computation` returning those weights as constants; its result
    type is the process's (unplaced) model weights type.
  """
  trainable = [np.asarray(v) for v in weights.trainable]
  non_trainable = [np.asarray(v) for v in weights.non_trainable]

  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights(
        trainable=[tf.constant(v) for v in trainable],
        non_trainable=[tf.constant(v) for v in non_trainable])

  return initial_model_weights_fn
