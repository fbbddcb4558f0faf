"""The sparse payload that crosses the client/server boundary, and its size.

A FedDST message (client upload, or server broadcast) carries, for the
prunable kernels, only the values of active weights plus one bit per prunable
position, and the dense parameters (biases) in full:

  values[l]     `num_active[l]` values of kernel l, in row-major order of the
                active positions (float32, or float16 when asked); a mask
                with fewer ones leaves trailing zeros, ignored on decoding;
  packed_masks  the masks of all prunable kernels, flattened and concatenated
                in layer order, packed 8 positions per uint8, most significant
                bit first, the last byte zero-padded;
  dense         every dense parameter tensor as is (float32).

Shapes are static because readjustment and the server's re-prune keep each
layer's number of active weights fixed, so the payload has a TFF type.

Its size is counted from the tensors themselves (`payload_num_bytes`) and can
be checked against the closed form (`analytic_num_bytes`):
  sum_l num_active[l] * value_bits / 8 + ceil(sum_l size[l] / 8)
  + 4 * (number of dense parameters).
"""

import math
from typing import NamedTuple, Sequence

import tensorflow as tf

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


class SparsePayload(NamedTuple):
  """Encoded sparse model: active values, packed masks, dense parameters."""
  values: tuple
  packed_masks: tf.Tensor
  dense: tuple


def num_packed_bytes(num_bits: int) -> int:
  """Returns the bytes needed to hold `num_bits` bits (rounded up)."""
  return (num_bits + 7) // 8


def pack_bits(bits: tf.Tensor) -> tf.Tensor:
  """Packs a 1-D 0/1 tensor into uint8, 8 bits a byte, MSB first.

  Args:
    bits: 1-D tensor of 0/1 values (any numeric or bool dtype), static length.

  Returns:
    uint8 tensor of length ceil(len(bits) / 8); the padding bits are 0.
  """
  num_bits = int(bits.shape[0])
  padding = num_packed_bytes(num_bits) * 8 - num_bits
  as_int = tf.cast(tf.cast(bits, tf.bool), tf.int32)
  as_int = tf.pad(as_int, [[0, padding]])
  groups = tf.reshape(as_int, [-1, 8])
  packed = tf.reduce_sum(groups * tf.constant(_BIT_WEIGHTS, tf.int32), axis=1)
  return tf.cast(packed, tf.uint8)


def unpack_bits(packed: tf.Tensor, num_bits: int) -> tf.Tensor:
  """Inverse of `pack_bits`.

  Args:
    packed: 1-D uint8 tensor from `pack_bits`.
    num_bits: How many bits were packed.

  Returns:
    float32 tensor of `num_bits` 0/1 values.
  """
  shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.int32)
  as_int = tf.cast(packed, tf.int32)[:, tf.newaxis]
  bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(as_int, shifts), 1)
  return tf.cast(tf.reshape(bits, [-1])[:num_bits], tf.float32)


def encode(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
           dense: Sequence[tf.Tensor], num_active: Sequence[int],
           value_dtype: tf.DType = tf.float32) -> SparsePayload:
  """Encodes masked kernels and dense parameters as a `SparsePayload`.

  Args:
    kernels: Prunable kernels (values outside the mask are ignored).
    masks: Their 0/1 masks, each with exactly `num_active[l]` ones.
    dense: Dense parameter tensors, sent as float32.
    num_active: Number of active weights per kernel; fixes the payload shape.
    value_dtype: dtype of the sent values (tf.float32 or tf.float16).

  Returns:
    The payload.

  Raises:
    tf.errors.InvalidArgumentError: If a mask has more ones than
      `num_active[l]` (at run time in graph mode).
  """
  values = []
  flat_masks = []
  for kernel, mask, count in zip(kernels, masks, num_active):
    flat_mask = tf.reshape(mask, [-1])
    positions = tf.where(flat_mask > 0.5)[:, 0]
    layer_values = tf.cast(tf.gather(tf.reshape(kernel, [-1]), positions),
                           value_dtype)
    num_ones = tf.size(positions)
    with tf.control_dependencies([tf.debugging.assert_less_equal(
        num_ones, count,
        message=f'mask {len(values)} has more active positions than the '
        f'payload holds ({count})')]):
      # A mask with fewer ones (only the reference readjust rule makes one)
      # leaves trailing zero values, which the decoder ignores.
      layer_values = tf.pad(layer_values, [[0, count - num_ones]])
    values.append(tf.ensure_shape(layer_values, [count]))
    flat_masks.append(flat_mask)
  packed = pack_bits(tf.concat(flat_masks, axis=0))
  return SparsePayload(
      values=tuple(values),
      packed_masks=packed,
      dense=tuple(tf.cast(t, tf.float32) for t in dense))


def decode(payload: SparsePayload, kernel_shapes: Sequence[Sequence[int]]
           ) -> tuple[list[tf.Tensor], list[tf.Tensor], list[tf.Tensor]]:
  """Decodes a `SparsePayload` back into dense kernels, masks and parameters.

  Args:
    payload: A payload from `encode`.
    kernel_shapes: Shape of each prunable kernel, in payload order.

  Returns:
    `(kernels, masks, dense)`: float32 kernels with zeros at inactive
    positions, float32 0/1 masks, and the dense tensors.
  """
  sizes = [int(math.prod(shape)) for shape in kernel_shapes]
  all_bits = unpack_bits(payload.packed_masks, sum(sizes))
  kernels, masks = [], []
  offset = 0
  for values, shape, size in zip(payload.values, kernel_shapes, sizes):
    flat_mask = all_bits[offset:offset + size]
    offset += size
    positions = tf.where(flat_mask > 0.5)
    active_values = tf.cast(values[:tf.shape(positions)[0]], tf.float32)
    flat_kernel = tf.scatter_nd(positions, active_values, [size])
    kernels.append(tf.reshape(flat_kernel, shape))
    masks.append(tf.reshape(flat_mask, shape))
  return kernels, masks, list(payload.dense)


def payload_num_bytes(payload: SparsePayload) -> tf.Tensor:
  """Counts the bytes of the tensors in a payload, as they would be sent.

  Args:
    payload: A `SparsePayload` (or any nested structure of tensors).

  Returns:
    int64 scalar tensor: sum over tensors of element count x dtype size.
  """
  total = tf.constant(0, tf.int64)
  for tensor in tf.nest.flatten(payload):
    total += tf.size(tensor, out_type=tf.int64) * tensor.dtype.size
  return total


def analytic_num_bytes(num_active: Sequence[int], kernel_sizes: Sequence[int],
                       num_dense_parameters: int, value_bits: int = 32) -> int:
  """The closed-form size of a payload, for checking `payload_num_bytes`.

  Args:
    num_active: Active weights per kernel.
    kernel_sizes: Positions per kernel.
    num_dense_parameters: Total number of dense (float32) parameters.
    value_bits: Bits per sent value (32 or 16).

  Returns:
    Bytes: values x value_bits/8 + ceil(positions / 8) + 4 x dense.
  """
  return (sum(num_active) * value_bits // 8
          + num_packed_bytes(sum(kernel_sizes)) + 4 * num_dense_parameters)
