"""The sparse payload that crosses the client/server boundary, and its size.

A FedDST message (client upload, or server broadcast) carries, for the
prunable kernels, only the values of active weights plus one bit per prunable
position, and the dense parameters (biases) in full:

  values[l]     `num_active[l]` values of kernel l, in row-major order of the
                active positions (float32, or float16 when asked); a mask
                with fewer ones leaves trailing zeros, ignored on decoding
                and never counted as sent (see below);
  packed_masks  the masks of the prunable kernels that carry one (see dense
                layers below), flattened and concatenated in layer order,
                packed 8 positions per uint8, most significant bit first, the
                last byte zero-padded;
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

The mask code is either the bitmap above, or a Rice code of the gaps between
coded positions (`rice_layer`): per layer, the number c of coded positions
in w bits, then for each coded position the gap g (positions skipped since
the previous one) as a Rice code with parameter k: quotient g >> k in unary
(that many 1s, then a 0), remainder g mod 2^k in k bits, MSB first. All c
quotients come first, then all c remainders, which has exactly the length of
interleaved Rice codewords but decodes with vectorized ops. A layer denser
than 1/2 codes its inactive positions instead; k is fixed per layer from its
size and number of active weights, so it is never sent. Layers follow each
other without padding.

Dense layers are left out of the mask code as of the bitmap.

TFF types are static, so `mask_code` has the capacity of the longest
possible code and the bytes counted (`payload_num_bytes`) are the used
ones: ceil(mask_code_bits / 8), plus 4 bytes for `mask_code_bits` itself
(unless no layer carries a mask: then `mask_code` is empty, the field is
always 0 and is not counted). A transport would send the used prefix only;
the simulation moves the whole buffer.
"""

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


VALUE_DTYPES = ('float32', 'float16')
MASK_CODES = ('bitmap', 'rice')
# `PayloadEncoding.name` token for `masks_only_when_changed`.
_CHANGED_MASKS_TOKEN = 'changed_masks_only'
# `PayloadEncoding.name` token for `omit_dense_masks=False`.
_DENSE_MASKS_TOKEN = 'dense_masks'
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


@dataclasses.dataclass(frozen=True)
class PayloadEncoding:
  """How a sparse model is put on the wire.

  Attributes:
    value_dtype: 'float32' or 'float16', dtype of the active values.
    mask_code: 'bitmap' (1 bit per position) or 'rice' (Rice code of the
      gaps between active positions; see the module docstring).
    masks_only_when_changed: Uploads only: leave the masks out when they
      equal the global masks the client received (always outside
      readjustment rounds); the server then uses its own.
    omit_dense_masks: Send no mask for layers whose capacity equals their
      size (their mask must be all ones; see the module docstring). False
      sends them, for methods that can thin a full-capacity layer.
  """
  value_dtype: str = 'float32'
  mask_code: str = 'bitmap'
  masks_only_when_changed: bool = False
  omit_dense_masks: bool = True

  def __post_init__(self):
    if self.value_dtype not in VALUE_DTYPES:
      raise ValueError(f'value_dtype must be one of {VALUE_DTYPES}, got '
                       f'{self.value_dtype!r}.')
    if self.mask_code not in MASK_CODES:
      raise ValueError(f'mask_code must be one of {MASK_CODES}, got '
                       f'{self.mask_code!r}.')

  @property
  def is_bitmap_payload(self) -> bool:
    """Whether messages are `SparsePayload`s (else `CodedPayload`s)."""
    return self.mask_code == 'bitmap' and not self.masks_only_when_changed

  @property
  def value_bits(self) -> int:
    return 32 if self.value_dtype == 'float32' else 16

  @property
  def name(self) -> str:
    """E.g. 'float16+rice+changed_masks_only'; `parse` reads it back."""
    tokens = [self.value_dtype, self.mask_code]
    if self.masks_only_when_changed:
      tokens.append(_CHANGED_MASKS_TOKEN)
    if not self.omit_dense_masks:
      tokens.append(_DENSE_MASKS_TOKEN)
    return '+'.join(tokens)

  @classmethod
  def parse(cls, name: str) -> 'PayloadEncoding':
    """Reads a `name`: '+'-joined value dtype, mask code, and optionally
    'changed_masks_only' and 'dense_masks', in any order (missing ones take
    the defaults).

    Raises:
      ValueError: For an unknown or repeated token.
    """
    settings = {}
    for token in name.split('+'):
      token = token.strip()
      if token in VALUE_DTYPES:
        key, value = 'value_dtype', token
      elif token in MASK_CODES:
        key, value = 'mask_code', token
      elif token == _CHANGED_MASKS_TOKEN:
        key, value = 'masks_only_when_changed', True
      elif token == _DENSE_MASKS_TOKEN:
        key, value = 'omit_dense_masks', False
      else:
        raise ValueError(
            f'unknown encoding token {token!r} in {name!r}; expected '
            f'{GRAMMAR}.')
      if key in settings:
        raise ValueError(f'{key} given twice in encoding {name!r}.')
      settings[key] = value
    return cls(**settings)


# The accepted `PayloadEncoding.parse` names, for error messages.
GRAMMAR = (f'"+"-joined tokens: {"|".join(VALUE_DTYPES)} (values), '
           f'{"|".join(MASK_CODES)} (mask code), optionally '
           f'{_CHANGED_MASKS_TOKEN} and {_DENSE_MASKS_TOKEN}, '
           'e.g. float16+rice')


def carries_mask(kernel_sizes: Sequence[int], num_active: Sequence[int],
                 omit_dense_masks: bool = True) -> tuple[bool, ...]:
  """Per prunable layer, whether payloads carry its mask.

  Args:
    kernel_sizes: Positions per kernel.
    num_active: Payload capacity per kernel.
    omit_dense_masks: Whether dense layers (capacity == size) go without.

  Returns:
    False for the dense layers when `omit_dense_masks`, True otherwise.
  """
  return tuple(not (omit_dense_masks and int(a) == int(n))
               for n, a in zip(kernel_sizes, num_active))


def num_mask_bits(kernel_sizes: Sequence[int], num_active: Sequence[int],
                  omit_dense_masks: bool = True) -> int:
  """Bitmap bits of a payload: the positions of the layers with a mask."""
  return sum(int(n) for n, carried in zip(
      kernel_sizes, carries_mask(kernel_sizes, num_active, omit_dense_masks))
             if carried)


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
          f'{_DENSE_MASKS_TOKEN!r}) for methods that thin such layers')]):
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
  carried = carries_mask([_flat_size(m) for m in masks], num_active,
                         omit_dense_masks)
  values = _check_dense_masks(
      active_values(kernels, masks, num_active, value_dtype), masks, carried)
  packed = pack_bits(_concat_flat(
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
  masks = decode_masks(payload.packed_masks, kernel_shapes, num_active,
                       'bitmap', omit_dense_masks)
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
          + num_packed_bytes(num_mask_bits(kernel_sizes, num_active,
                                           omit_dense_masks))
          + 4 * num_dense_parameters)


# ---------------------------------------------------------------------------
# Rice code of mask positions.


class RiceLayer(NamedTuple):
  """Static parameters of one layer's Rice mask code.

  Attributes:
    size: Positions in the layer.
    invert: Whether the inactive positions are coded (layer denser than 1/2).
    count_bits: w, bits of the count field.
    k: Rice parameter (remainder bits).
    max_count: Largest possible count of coded positions.
    capacity_bits: Longest possible code of the layer.
  """
  size: int
  invert: bool
  count_bits: int
  k: int
  max_count: int
  capacity_bits: int


def rice_parameter(num_positions: int, num_coded: int) -> int:
  """The Rice parameter k minimizing the expected code length.

  Gaps between coded positions are modelled as geometric with success
  probability p = num_coded / num_positions; a gap costs 1 + k +
  E[floor(g / 2^k)] = 1 + k + x / (1 - x) bits, x = (1 - p)^(2^k).

  Args:
    num_positions: Positions in the layer, >= 1.
    num_coded: Expected coded positions, in [0, num_positions].

  Returns:
    The smallest k in [0, 30] of least expected cost.
  """
  if num_coded <= 0:
    return 0
  p = min(num_coded / num_positions, 1.0)
  best_k, best_cost = 0, math.inf
  for k in range(31):
    x = (1.0 - p) ** (2 ** k)
    cost = 1 + k + (x / (1.0 - x) if x < 1.0 else math.inf)
    if cost < best_cost:
      best_k, best_cost = k, cost
  return best_k


def rice_layer(size: int, num_active: int, k: Optional[int] = None
               ) -> RiceLayer:
  """The `RiceLayer` of a kernel with `size` positions, `num_active` active.

  Args:
    size: Positions, >= 1.
    num_active: Active weights the payload holds (a mask may have fewer).
    k: Rice parameter; None picks `rice_parameter` for the expected density.

  Returns:
    The layer's static code parameters.
  """
  invert = 2 * num_active > size
  expected = size - num_active if invert else num_active
  # With the reference readjust rule a mask may have fewer active weights
  # than num_active, hence up to `size` inactive ones.
  max_count = size if invert else num_active
  count_bits = max(1, int(max_count).bit_length())
  if k is None:
    k = rice_parameter(size, expected)
  # Gaps sum to at most size - count, so the quotients take at most
  # (size - count) >> k ones; the bound grows with count.
  capacity = count_bits + ((size - max_count) >> k) + max_count * (k + 1)
  return RiceLayer(size=size, invert=invert, count_bits=count_bits, k=k,
                   max_count=max_count, capacity_bits=capacity)


def _bits_msb_first(values: tf.Tensor, width: int) -> tf.Tensor:
  """[..., width] int32 bits of non-negative int32 `values`, MSB first."""
  shifts = tf.range(width - 1, -1, -1, dtype=tf.int32)
  return tf.bitwise.bitwise_and(
      tf.bitwise.right_shift(values[..., tf.newaxis], shifts), 1)


def _from_bits_msb_first(bits: tf.Tensor, width: int) -> tf.Tensor:
  powers = tf.bitwise.left_shift(
      1, tf.range(width - 1, -1, -1, dtype=tf.int32))
  return tf.reduce_sum(bits * powers, axis=-1)


def rice_encode_layer(flat_mask: tf.Tensor, layer: RiceLayer
                      ) -> tuple[tf.Tensor, tf.Tensor]:
  """Rice-codes one layer's mask.

  Args:
    flat_mask: 1-D 0/1 mask with `layer.size` positions.
    layer: The layer's `RiceLayer`.

  Returns:
    `(bits, length)`: int32 [layer.capacity_bits] 0/1 code, zero after the
    first `length` (int32 scalar) bits.
  """
  w, k, capacity = layer.count_bits, layer.k, layer.capacity_bits
  coded = flat_mask < 0.5 if layer.invert else flat_mask > 0.5
  positions = tf.cast(tf.where(coded)[:, 0], tf.int32)
  count = tf.size(positions, out_type=tf.int32)
  gaps = positions - tf.concat([[-1], positions[:-1]], axis=0) - 1
  quotients = tf.bitwise.right_shift(gaps, k)
  remainders = gaps - tf.bitwise.left_shift(quotients, k)
  unary_ends = tf.cumsum(quotients + 1)
  unary_length = tf.reduce_sum(quotients + 1)
  # Code i's quotient is 1s on [w + end_i - q_i - 1, w + end_i - 1), then
  # the 0 at w + end_i - 1: +1 at the start, -1 at the zero, cumsum.
  ones = tf.ones_like(positions)
  delta = (tf.scatter_nd((w + unary_ends - quotients - 1)[:, tf.newaxis],
                         ones, [capacity + 1]) -
           tf.scatter_nd((w + unary_ends - 1)[:, tf.newaxis], ones,
                         [capacity + 1]))
  bits = tf.cumsum(delta)[:capacity]
  bits += tf.pad(_bits_msb_first(count, w), [[0, capacity - w]])
  if k:
    remainder_bits = tf.reshape(_bits_msb_first(remainders, k), [-1])
    start = w + unary_length
    bits += tf.scatter_nd(
        (start + tf.range(count * k))[:, tf.newaxis], remainder_bits,
        [capacity])
  length = w + unary_length + count * k
  return bits, length


def rice_decode_layer(bits: tf.Tensor, layer: RiceLayer
                      ) -> tuple[tf.Tensor, tf.Tensor]:
  """Inverse of `rice_encode_layer`.

  Args:
    bits: int32 0/1 tensor of at least `layer.capacity_bits` bits whose
      first bits are the layer's code (what follows is ignored).
    layer: The layer's `RiceLayer`.

  Returns:
    `(flat_mask, length)`: float32 [layer.size] 0/1 mask, and the int32 code
    length in bits.
  """
  w, k = layer.count_bits, layer.k
  bits = bits[:layer.capacity_bits]
  count = _from_bits_msb_first(bits[:w], w)
  zeros = tf.cast(tf.where(tf.equal(bits[w:], 0))[:, 0], tf.int32)[:count]
  quotients = zeros - tf.concat([[-1], zeros[:-1]], axis=0) - 1
  unary_length = tf.reduce_sum(quotients + 1)
  gaps = tf.bitwise.left_shift(quotients, k)
  if k:
    indices = (w + unary_length + tf.range(count)[:, tf.newaxis] * k +
               tf.range(k)[tf.newaxis, :])
    gaps += _from_bits_msb_first(tf.gather(bits, indices), k)
  positions = tf.cumsum(gaps + 1) - 1
  coded = tf.scatter_nd(positions[:, tf.newaxis],
                        tf.ones_like(positions, tf.float32), [layer.size])
  flat_mask = 1.0 - coded if layer.invert else coded
  return flat_mask, w + unary_length + count * k


def mask_code_capacity_bits(kernel_sizes: Sequence[int],
                            num_active: Sequence[int], mask_code: str,
                            omit_dense_masks: bool = True) -> int:
  """Bits `CodedPayload.mask_code` can hold (its capacity, rounded up to bytes
  when allocated); dense layers count 0 when `omit_dense_masks`."""
  carried = carries_mask(kernel_sizes, num_active, omit_dense_masks)
  if mask_code == 'bitmap':
    return num_mask_bits(kernel_sizes, num_active, omit_dense_masks)
  return sum(rice_layer(int(n), int(a)).capacity_bits
             for n, a, has_mask in zip(kernel_sizes, num_active, carried)
             if has_mask)


def encode_masks(masks: Sequence[tf.Tensor], num_active: Sequence[int],
                 mask_code: str, omit_dense_masks: bool = True
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """Encodes the layers' masks with `mask_code`.

  Args:
    masks: 0/1 masks, one per prunable kernel.
    num_active: Payload capacity per kernel (fixes the Rice parameters).
    mask_code: 'bitmap' or 'rice'.
    omit_dense_masks: Leave out dense layers (capacity == size).

  Returns:
    `(mask_code, mask_code_bits)`: uint8 buffer of
    ceil(`mask_code_capacity_bits` / 8) bytes, and the int32 bits used
    (an empty buffer and 0 when no layer carries a mask).
  """
  carried = carries_mask([_flat_size(m) for m in masks], num_active,
                         omit_dense_masks)
  flat_masks = [tf.reshape(m, [-1]) for m, has_mask in zip(masks, carried)
                if has_mask]
  num_active = [a for a, has_mask in zip(num_active, carried) if has_mask]
  if not flat_masks:
    return tf.zeros([0], tf.uint8), tf.constant(0, tf.int32)
  if mask_code == 'bitmap':
    total = sum(int(m.shape[0]) for m in flat_masks)
    return pack_bits(tf.concat(flat_masks, axis=0)), tf.constant(total,
                                                                 tf.int32)
  layers = [rice_layer(int(m.shape[0]), int(a))
            for m, a in zip(flat_masks, num_active)]
  capacity = sum(layer.capacity_bits for layer in layers)
  buffer = tf.zeros([capacity], tf.int32)
  offset = tf.constant(0, tf.int32)
  for flat_mask, layer in zip(flat_masks, layers):
    bits, length = rice_encode_layer(flat_mask, layer)
    # Layer l starts where layer l-1 ends; its unused tail is all zeros,
    # so adding it over the next layer's region changes nothing.
    buffer = tf.tensor_scatter_nd_add(
        buffer, (offset + tf.range(layer.capacity_bits))[:, tf.newaxis],
        bits)
    offset += length
  return pack_bits(buffer), offset


def decode_masks(mask_code: tf.Tensor, kernel_shapes: Sequence[Sequence[int]],
                 num_active: Sequence[int], mask_code_name: str,
                 omit_dense_masks: bool = True) -> list[tf.Tensor]:
  """Inverse of `encode_masks`.

  Args:
    mask_code: uint8 buffer from `encode_masks`.
    kernel_shapes: Shape of each kernel.
    num_active: Payload capacity per kernel (required for 'rice'; for
      'bitmap', empty means every layer carries its mask).
    mask_code_name: 'bitmap' or 'rice'.
    omit_dense_masks: As given to `encode_masks`.

  Returns:
    float32 0/1 masks with the kernels' shapes; all ones for the layers
    sent without mask.
  """
  sizes = [int(math.prod(shape)) for shape in kernel_shapes]
  if len(num_active):
    carried = carries_mask(sizes, num_active, omit_dense_masks)
  else:
    carried = (True,) * len(sizes)
  coded_sizes = [n for n, has_mask in zip(sizes, carried) if has_mask]
  if mask_code_name == 'bitmap':
    all_bits = unpack_bits(mask_code, sum(coded_sizes))
    offsets = np.cumsum([0] + coded_sizes)
    coded_masks = [all_bits[start:stop]
                   for start, stop in zip(offsets[:-1], offsets[1:])]
  else:
    layers = [rice_layer(n, int(a)) for n, a, has_mask in
              zip(sizes, num_active, carried) if has_mask]
    capacity = sum(layer.capacity_bits for layer in layers)
    longest = max([layer.capacity_bits for layer in layers], default=0)
    bits = tf.cast(unpack_bits(mask_code, capacity), tf.int32)
    bits = tf.pad(bits, [[0, longest]])
    coded_masks = []
    offset = tf.constant(0, tf.int32)
    for layer in layers:
      flat_mask, length = rice_decode_layer(
          tf.slice(bits, [offset], [layer.capacity_bits]), layer)
      coded_masks.append(flat_mask)
      offset += length
  coded_masks.reverse()
  flat_masks = [coded_masks.pop() if has_mask else tf.ones([n], tf.float32)
                for n, has_mask in zip(sizes, carried)]
  return [tf.reshape(m, shape) for m, shape in zip(flat_masks, kernel_shapes)]


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
    layer_values = tf.cast(tf.gather(tf.reshape(kernel, [-1]), positions),
                           value_dtype)
    num_ones = tf.size(positions)
    with tf.control_dependencies([tf.debugging.assert_less_equal(
        num_ones, count,
        message=f'mask {len(values)} has more active positions than the '
        f'payload holds ({count})')]):
      layer_values = tf.pad(layer_values, [[0, count - num_ones]])
    values.append(tf.ensure_shape(layer_values, [count]))
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
    active = tf.cast(layer_values[:tf.shape(positions)[0]], tf.float32)
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
      carries_mask(sizes, num_active, omit_dense_masks))

  def with_masks():
    return encode_masks(masks, num_active, payload_encoding.mask_code,
                        omit_dense_masks)

  if payload_encoding.masks_only_when_changed:
    capacity = num_packed_bytes(mask_code_capacity_bits(
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
        lambda: decode_masks(payload.mask_code, kernel_shapes, num_active,
                             code_name, omit_dense_masks),
        lambda: [tf.identity(m) for m in global_masks])
  else:
    masks = decode_masks(payload.mask_code, kernel_shapes, num_active,
                         code_name, omit_dense_masks)
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
  capacity_bits = mask_code_capacity_bits(
      kernel_sizes, num_active, payload_encoding.mask_code, omit_dense_masks)
  length_bytes = MASK_CODE_LENGTH_BYTES if any(
      carries_mask(kernel_sizes, num_active, omit_dense_masks)) else 0
  return (sum(num_active) * payload_encoding.value_bits // 8
          + num_packed_bytes(capacity_bits) + length_bytes
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
