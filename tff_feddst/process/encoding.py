"""The sparse payload that crosses the client/server boundary, and its size.

A FedDST message (client upload, or server broadcast) carries, for the
prunable kernels, only the values of active weights plus one bit per prunable
position, and the dense parameters (biases) in full:

  values[l]     `num_active[l]` values of kernel l, in row-major order of the
                active positions (float32, or float16 when asked); a mask
                with fewer ones leaves trailing zeros, ignored on decoding
                and never counted as sent (see below);
  packed_masks  the masks of the prunable kernels that carry one (see dense
                layers below) as a bitmap (`mask_codes.pack_bits`): flattened
                and concatenated in layer order, packed 8 positions per
                uint8, most significant bit first, the last byte zero-padded;
  dense         every dense parameter tensor as is (float32).

Shapes are static because the payload has a TFF type: `num_active[l]` is the
payload's capacity for layer l. FedDST's readjustment and the server's
re-prune keep each layer's count fixed, so its masks fill the capacity;
methods whose masks hold fewer ones (a sparsity that grows over rounds,
PruneFL) pad the values with zeros.

Dense layers carry no mask. A layer whose capacity equals its size
(`num_active[l] == size[l]`: a layer that ERK leaves dense, or every layer
of dense FedAvg) has the all-ones mask, which the receiver knows without
being told: the payload carries no mask bits for it, its values are the
whole kernel in row-major order, and it decodes with an all-ones mask.
`encode` checks (at run time) that such a layer's mask is all ones and fails
otherwise rather than dropping information. FedDST keeps dense layers dense:
readjustment never touches them (no inactive position to regrow into), and
the server's re-prune keeps every position. Methods under which a
full-capacity layer can lose ones (PruneFL, whose capacity is every layer's
size; a sparsity growing from 0; the 'reference' readjust rule or
`min_votes` > 1, which can thin a dense layer) send those masks with
`PayloadEncoding(omit_dense_masks=False)` (token 'dense_masks').

Its size is what a transport would send (`payload_num_bytes`); padding
beyond a mask's ones is not sent. It can be checked against the closed form
(`analytic_num_bytes`):
  sum_l nnz[l] * value_bits / 8 + ceil(sum_{l not dense} size[l] / 8)
  + 4 * (number of dense parameters),
nnz[l] being the number of ones of mask l (`num_active[l]` when full).

Smaller encodings (`PayloadEncoding`) produce a `CodedPayload` instead:

  values, dense  as above (values float32 or float16);
  mask_code      uint8 buffer of fixed capacity holding the masks' code;
  mask_code_bits int32: how many bits of `mask_code` are used. 0 means the
                 masks were not sent: the receiver already holds them (a
                 client's mask equals the global mask it received unless a
                 readjustment changed it).

The mask code is either the bitmap above or a Rice code of the gaps between
active positions; both codes live in `mask_codes`, which documents them.

Dense layers are left out of the mask code as of the bitmap.

TFF types are static, so `mask_code` has the capacity of the longest
possible code and the bytes counted (`payload_num_bytes`) are the used
ones: ceil(mask_code_bits / 8), plus 4 bytes for `mask_code_bits` itself
(unless no layer carries a mask: then `mask_code` is empty, the field is
always 0 and is not counted). A transport would send the used prefix only;
the simulation moves the whole buffer.
"""

import math
from typing import NamedTuple, Optional, Sequence, Union

import tensorflow as tf

from tff_feddst.process import mask_codes
from tff_feddst.process import payload_encoding
from tff_feddst.running import choices

VALUE_DTYPES = choices.VALUE_DTYPES
# Bytes of `CodedPayload.mask_code_bits` (int32).
MASK_CODE_LENGTH_BYTES = 4


class SparsePayload(NamedTuple):
  """Encoded sparse model: active values, packed masks, dense parameters."""
  values: tuple
  packed_masks: tf.Tensor
  dense: tuple


class CodedPayload(NamedTuple):
  """Encoded sparse model with a mask code of variable length.

  Attributes:
    values: Per prunable kernel, `num_active[l]` active values (float32 or
      float16), as in `SparsePayload`.
    mask_code: uint8 buffer of fixed capacity holding the mask code.
    mask_code_bits: int32 scalar, the bits of `mask_code` in use; 0 when
      the masks were left out.
    dense: Dense parameter tensors (float32).
  """
  values: tuple
  mask_code: tf.Tensor
  mask_code_bits: tf.Tensor
  dense: tuple


Payload = Union[SparsePayload, CodedPayload]


PayloadEncoding = payload_encoding.PayloadEncoding
# The accepted `PayloadEncoding.parse` names, for error messages.
GRAMMAR = payload_encoding.GRAMMAR


def _flat_size(tensor) -> int:
  return int(math.prod(tensor.shape))


def _concat_flat(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  """Flattens and concatenates; an empty float32 vector for no tensors."""
  if not tensors:
    return tf.zeros([0], tf.float32)
  return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _check_dense_masks(values: Sequence[tf.Tensor],
                       masks: Sequence[tf.Tensor],
                       carried: Sequence[bool]) -> tuple:
  """Ties to each mask-less layer's values a check that its mask is all ones.

  Args:
    values: Per kernel, its payload values.
    masks: The 0/1 masks.
    carried: Per kernel, whether the payload carries its mask.

  Returns:
    `values`, those of mask-less layers behind the check.

  Raises:
    tf.errors.InvalidArgumentError: If a mask-less layer's mask has a zero
      (at run time in graph mode).
  """
  checked = []
  for position, (layer_values, mask, has_mask) in enumerate(
      zip(values, masks, carried)):
    if not has_mask:
      num_ones = tf.reduce_sum(
          tf.cast(tf.reshape(mask, [-1]) > 0.5, tf.int32))
      with tf.control_dependencies([tf.debugging.assert_equal(
          num_ones, _flat_size(mask),
          message=f'mask {position} is dense-capacity and sent without '
          'mask bits, but has zeros; encode with '
          'PayloadEncoding(omit_dense_masks=False) (token '
          f'{payload_encoding.DENSE_MASKS_TOKEN!r}) for methods that thin such layers')]):
        layer_values = tf.identity(layer_values)
    checked.append(layer_values)
  return tuple(checked)


def encode(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
           dense: Sequence[tf.Tensor], num_active: Sequence[int],
           value_dtype: tf.DType = tf.float32,
           omit_dense_masks: bool = True) -> SparsePayload:
  """Encodes masked kernels and dense parameters as a `SparsePayload`.

  Args:
    kernels: Prunable kernels (values outside the mask are ignored).
    masks: Their 0/1 masks, each with at most `num_active[l]` ones (and
      all ones for a dense layer sent without mask).
    dense: Dense parameter tensors, sent as float32.
    num_active: Payload capacity per kernel; fixes the payload shape.
    value_dtype: dtype of the sent values (tf.float32 or tf.float16).
    omit_dense_masks: Leave out the masks of layers whose capacity equals
      their size (see the module docstring).

  Returns:
    The payload.

  Raises:
    tf.errors.InvalidArgumentError: If a mask has more ones than
      `num_active[l]`, or a layer sent without mask has a zero in its mask
      (at run time in graph mode).
  """
  carried = mask_codes.carries_mask([_flat_size(m) for m in masks],
                                    num_active, omit_dense_masks)
  values = _check_dense_masks(
      active_values(kernels, masks, num_active, value_dtype), masks, carried)
  packed = mask_codes.pack_bits(_concat_flat(
      [m for m, has_mask in zip(masks, carried) if has_mask]))
  return SparsePayload(
      values=values,
      packed_masks=packed,
      dense=tuple(tf.cast(t, tf.float32) for t in dense))


def decode(payload: SparsePayload, kernel_shapes: Sequence[Sequence[int]],
           omit_dense_masks: bool = True
           ) -> tuple[list[tf.Tensor], list[tf.Tensor], list[tf.Tensor]]:
  """Decodes a `SparsePayload` back into dense kernels, masks and parameters.

  Args:
    payload: A payload from `encode`.
    kernel_shapes: Shape of each prunable kernel, in payload order.
    omit_dense_masks: As given to `encode`.

  Returns:
    `(kernels, masks, dense)`: float32 kernels with zeros at inactive
    positions, float32 0/1 masks, and the dense tensors.
  """
  num_active = [int(v.shape[0]) for v in payload.values]
  masks = mask_codes.decode_masks(payload.packed_masks, kernel_shapes,
                                  num_active, 'bitmap', omit_dense_masks)
  return scatter_values(payload.values, masks), masks, list(payload.dense)


def num_ones(masks: Sequence[tf.Tensor]) -> tf.Tensor:
  """int64 total number of ones (positions > 0.5) of `masks`."""
  total = tf.constant(0, tf.int64)
  for mask in masks:
    total += tf.reduce_sum(
        tf.cast(tf.reshape(mask, [-1]) > 0.5, tf.int64))
  return total


def payload_num_bytes(payload, masks: Optional[Sequence[tf.Tensor]] = None
                      ) -> tf.Tensor:
  """Counts the bytes of a payload as a transport would send them.

  Values are sent for the ones of the masks only: the zero padding of a mask
  with fewer ones than the payload's capacity is not sent. The count of
  values is the number of ones of `masks`, which the receiver knows after
  decoding the masks (the popcount of the bitmap, the decoded count of the
  Rice code, or, when the payload left its masks out, the ones of the global
  masks it holds). A dense layer sent without mask has all its positions
  sent (its mask is all ones).

  Args:
    payload: A `SparsePayload` (or any nested structure of tensors), or a
      `CodedPayload`, whose `mask_code` counts only its used bytes,
      ceil(mask_code_bits / 8), and whose `mask_code_bits` (4 bytes) is not
      counted when no layer carries a mask (`mask_code` is empty).
    masks: The 0/1 masks the payload decodes to, one per `values` entry;
      None counts every value tensor at its full static length (exact when
      every mask fills its capacity, as in FedDST).

  Returns:
    int64 scalar tensor: value bytes plus, over the other tensors, element
    count x dtype size.
  """
  total = tf.constant(0, tf.int64)
  fixed = payload
  if masks is not None:
    if payload.values:
      value_size = tf.as_dtype(payload.values[0].dtype).size
      total += num_ones(masks) * value_size
    fixed = fixed._replace(values=())
  if isinstance(payload, CodedPayload):
    fixed = fixed._replace(mask_code=(), mask_code_bits=())
    code_bytes = ((tf.cast(payload.mask_code_bits, tf.int64) + 7) // 8 +
                  MASK_CODE_LENGTH_BYTES)
    # (Static or not) an empty code buffer: no layer has a mask to send.
    has_code = tf.size(payload.mask_code, out_type=tf.int64) > 0
    total += tf.where(has_code, code_bytes, tf.constant(0, tf.int64))
  for tensor in tf.nest.flatten(fixed):
    tensor = tf.convert_to_tensor(tensor)
    total += tf.size(tensor, out_type=tf.int64) * tensor.dtype.size
  return total


def analytic_num_bytes(num_active: Sequence[int], kernel_sizes: Sequence[int],
                       num_dense_parameters: int, value_bits: int = 32,
                       omit_dense_masks: bool = True,
                       mask_num_ones: Optional[Sequence[int]] = None) -> int:
  """The closed-form size of a bitmap payload, to check `payload_num_bytes`.

  Args:
    num_active: Payload capacity per kernel.
    kernel_sizes: Positions per kernel.
    num_dense_parameters: Total number of dense (float32) parameters.
    value_bits: Bits per sent value (32 or 16).
    omit_dense_masks: Whether dense layers (capacity == size) go without
      mask bits.
    mask_num_ones: Ones of each layer's actual mask, when fewer than its
      capacity; None means `num_active`.

  Returns:
    Bytes: sum(mask_num_ones) x value_bits/8 + ceil(positions of layers
    with a mask / 8) + 4 x dense.
  """
  sent = num_active if mask_num_ones is None else mask_num_ones
  return (sum(int(n) for n in sent) * value_bits // 8
          + mask_codes.num_packed_bytes(mask_codes.num_mask_bits(
              kernel_sizes, num_active, omit_dense_masks))
          + 4 * num_dense_parameters)


# ---------------------------------------------------------------------------
# Payloads in any encoding.


def active_values(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
                  num_active: Sequence[int],
                  value_dtype: tf.DType = tf.float32) -> tuple:
  """Per kernel, its active values in row-major order, padded to num_active.

  Args:
    kernels: Prunable kernels.
    masks: Their 0/1 masks.
    num_active: Values per kernel in the payload (a mask may have fewer
      ones; the rest is zero padding).
    value_dtype: dtype of the values.

  Returns:
    A tuple of 1-D tensors of static lengths `num_active`.

  Raises:
    tf.errors.InvalidArgumentError: If a mask has more ones than
      `num_active[l]` (at run time in graph mode).
  """
  values = []
  for kernel, mask, count in zip(kernels, masks, num_active):
    positions = tf.where(tf.reshape(mask, [-1]) > 0.5)[:, 0]
    layer_values = tf.gather(tf.reshape(kernel, [-1]), positions)
    num_ones = tf.size(positions)
    with tf.control_dependencies([tf.debugging.assert_less_equal(
        num_ones, count,
        message=f'mask {len(values)} has more active positions than the '
        f'payload holds ({count})')]):
      layer_values = tf.pad(layer_values, [[0, count - num_ones]])
    # Padding before the cast and a reshape to the static length (it checks
    # the length at run time, as tf.ensure_shape would) give the same values
    # with TFLite builtins only: TFLite's PAD has no float16 kernel and
    # EnsureShape no builtin.
    values.append(tf.cast(tf.reshape(layer_values, [count]), value_dtype))
  return tuple(values)


def scatter_values(values: Sequence[tf.Tensor], masks: Sequence[tf.Tensor]
                   ) -> list[tf.Tensor]:
  """Inverse of `active_values`: float32 kernels, zero off the masks.

  Args:
    values: Per kernel, active values in row-major order (trailing padding
      beyond the mask's ones is ignored).
    masks: 0/1 masks of static shape.

  Returns:
    float32 kernels with the masks' shapes.
  """
  kernels = []
  for layer_values, mask in zip(values, masks):
    shape = mask.shape.as_list()
    positions = tf.where(tf.reshape(mask, [-1]) > 0.5)
    # Cast before slicing: the same values, and TFLite's STRIDED_SLICE has
    # no float16 kernel (a device decoding a float16 broadcast).
    active = tf.cast(layer_values, tf.float32)[:tf.shape(positions)[0]]
    flat = tf.scatter_nd(positions, active, [math.prod(shape)])
    kernels.append(tf.reshape(flat, shape))
  return kernels


def encode_payload(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
                   dense: Sequence[tf.Tensor], num_active: Sequence[int],
                   payload_encoding: PayloadEncoding,
                   include_masks: Union[bool, tf.Tensor] = True) -> Payload:
  """Encodes a sparse model with `payload_encoding`.

  Args:
    kernels: Prunable kernels (values outside the mask are ignored).
    masks: Their 0/1 masks, each with at most `num_active[l]` ones.
    dense: Dense parameter tensors, sent as float32.
    num_active: Active weights per kernel; fixes the payload shape.
    payload_encoding: The encoding.
    include_masks: bool (or bool scalar tensor): whether the masks are sent;
      only read when `payload_encoding.masks_only_when_changed`.

  Returns:
    A `SparsePayload` when `payload_encoding.is_bitmap_payload`, else a
    `CodedPayload`.
  """
  value_dtype = tf.as_dtype(payload_encoding.value_dtype)
  omit_dense_masks = payload_encoding.omit_dense_masks
  if payload_encoding.is_bitmap_payload:
    return encode(kernels, masks, dense, num_active, value_dtype=value_dtype,
                  omit_dense_masks=omit_dense_masks)
  sizes = [_flat_size(m) for m in masks]
  values = _check_dense_masks(
      active_values(kernels, masks, num_active, value_dtype), masks,
      mask_codes.carries_mask(sizes, num_active, omit_dense_masks))

  def with_masks():
    return mask_codes.encode_masks(masks, num_active,
                                   payload_encoding.mask_code,
                                   omit_dense_masks)

  if payload_encoding.masks_only_when_changed:
    capacity = mask_codes.num_packed_bytes(mask_codes.mask_code_capacity_bits(
        sizes, num_active, payload_encoding.mask_code, omit_dense_masks))
    mask_code, mask_code_bits = tf.cond(
        tf.convert_to_tensor(include_masks), with_masks,
        lambda: (tf.zeros([capacity], tf.uint8), tf.constant(0, tf.int32)))
  else:
    mask_code, mask_code_bits = with_masks()
  return CodedPayload(values=values, mask_code=mask_code,
                      mask_code_bits=mask_code_bits,
                      dense=tuple(tf.cast(t, tf.float32) for t in dense))


def decode_payload(payload: Payload, kernel_shapes: Sequence[Sequence[int]],
                   num_active: Sequence[int],
                   payload_encoding: PayloadEncoding,
                   global_masks: Optional[Sequence[tf.Tensor]] = None
                   ) -> tuple[list[tf.Tensor], list[tf.Tensor],
                              list[tf.Tensor]]:
  """Decodes a payload of any encoding.

  Args:
    payload: From `encode_payload` with the same encoding.
    kernel_shapes: Shape of each prunable kernel.
    num_active: Active weights per kernel.
    payload_encoding: The encoding.
    global_masks: The masks the receiver holds, used when the payload left
      its masks out (required for `masks_only_when_changed`).

  Returns:
    `(kernels, masks, dense)` as from `decode`.

  Raises:
    ValueError: If masks may be left out and `global_masks` is None.
  """
  if payload_encoding.is_bitmap_payload:
    return decode(payload, kernel_shapes, payload_encoding.omit_dense_masks)
  code_name = payload_encoding.mask_code
  omit_dense_masks = payload_encoding.omit_dense_masks
  if payload_encoding.masks_only_when_changed:
    if global_masks is None:
      raise ValueError('global_masks are required to decode payloads that '
                       'may leave their masks out.')
    global_masks = [tf.cast(m, tf.float32) for m in global_masks]
    masks = tf.cond(
        payload.mask_code_bits > 0,
        lambda: mask_codes.decode_masks(payload.mask_code, kernel_shapes,
                                        num_active, code_name,
                                        omit_dense_masks),
        lambda: [tf.identity(m) for m in global_masks])
  else:
    masks = mask_codes.decode_masks(payload.mask_code, kernel_shapes,
                                    num_active, code_name, omit_dense_masks)
  return (scatter_values(payload.values, masks), list(masks),
          list(payload.dense))


def max_payload_num_bytes(kernel_sizes: Sequence[int],
                          num_active: Sequence[int],
                          num_dense_parameters: int,
                          payload_encoding: PayloadEncoding) -> int:
  """The most bytes `payload_num_bytes` can count for a payload.

  For the bitmap payload this is `analytic_num_bytes` with full masks; for
  a `CodedPayload`, the mask code at full capacity (an upper bound, e.g. for
  an upload budget). Masks with fewer ones than their capacity cost less.

  Args:
    kernel_sizes: Positions per kernel.
    num_active: Active weights per kernel.
    num_dense_parameters: Total number of dense (float32) parameters.
    payload_encoding: The encoding.

  Returns:
    Bytes.
  """
  omit_dense_masks = payload_encoding.omit_dense_masks
  if payload_encoding.is_bitmap_payload:
    return analytic_num_bytes(num_active, kernel_sizes, num_dense_parameters,
                              payload_encoding.value_bits, omit_dense_masks)
  capacity_bits = mask_codes.mask_code_capacity_bits(
      kernel_sizes, num_active, payload_encoding.mask_code, omit_dense_masks)
  carried = mask_codes.carries_mask(kernel_sizes, num_active,
                                    omit_dense_masks)
  length_bytes = MASK_CODE_LENGTH_BYTES if any(carried) else 0
  return (sum(num_active) * payload_encoding.value_bits // 8
          + mask_codes.num_packed_bytes(capacity_bits) + length_bytes
          + 4 * num_dense_parameters)


def information_bound_bits(kernel_sizes: Sequence[int],
                           num_active: Sequence[int], value_bits: int,
                           per_layer: bool = False) -> float:
  """nnz * value_bits + log2(C(n, nnz)): bits to send values and masks.

  log2 C(n, k) is computed with `math.lgamma`. With `per_layer`, the masks'
  term is the sum over layers of log2 C(n_l, nnz_l) (the bound for a code
  that knows each layer's count, as the Rice code does); otherwise it is
  log2 C(sum n_l, sum nnz_l) over the layers that are not dense (a dense
  layer, nnz_l == n_l, has one possible mask: 0 bits either way).

  Args:
    kernel_sizes: Positions per kernel.
    num_active: Active weights per kernel.
    value_bits: Bits per sent value.
    per_layer: See above.

  Returns:
    The bound in bits (a float).
  """
  def log2_binomial(n, k):
    return (math.lgamma(n + 1) - math.lgamma(k + 1) -
            math.lgamma(n - k + 1)) / math.log(2)

  if per_layer:
    mask_bits = sum(log2_binomial(n, k)
                    for n, k in zip(kernel_sizes, num_active))
  else:
    sparse = [(n, k) for n, k in zip(kernel_sizes, num_active) if n != k]
    mask_bits = log2_binomial(sum(n for n, _ in sparse),
                              sum(k for _, k in sparse))
  return sum(num_active) * value_bits + mask_bits
