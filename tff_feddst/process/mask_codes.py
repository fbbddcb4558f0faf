"""Codes for the masks of a sparse payload: a bitmap, or a Rice code of gaps.

Both codes cover the prunable layers that carry a mask (`carries_mask`): a
layer whose payload capacity equals its size is dense, its mask is all ones,
and it is left out unless the encoding asks for dense masks.

Bitmap: the carried masks, flattened and concatenated in layer order, packed
8 positions per uint8, most significant bit first, the last byte zero-padded
(`pack_bits`, `unpack_bits`).

Rice code of the gaps between coded positions (`rice_layer`): per layer, the
number c of coded positions in w bits, then for each coded position the gap g
(positions skipped since the previous one) as a Rice code with parameter k:
quotient g >> k in unary (that many 1s, then a 0), remainder g mod 2^k in k
bits, MSB first. All c quotients come first, then all c remainders, which has
exactly the length of interleaved Rice codewords but decodes with vectorized
ops. A layer denser than 1/2 codes its inactive positions instead; k is fixed
per layer from its size and number of active weights, so it is never sent.
Layers follow each other without padding.

`encode_masks` and `decode_masks` apply either code to a list of masks; the
payloads that carry the codes, and their sizes, are in `encoding`.
"""

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.running import choices

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)

MASK_CODES = choices.MASK_CODES


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
  # Division and remainder by powers of two give the same bits as a shift and
  # a bitwise AND, and both are TFLite builtins (TFLite has no bitwise AND):
  # the on-device `set_weights` needs no select TF op for them.
  powers = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
  as_int = tf.cast(packed, tf.int32)[:, tf.newaxis]
  bits = tf.math.floormod(tf.math.floordiv(as_int, powers), 2)
  return tf.cast(tf.reshape(bits, [-1])[:num_bits], tf.float32)


def _flat_size(tensor) -> int:
  return int(math.prod(tensor.shape))


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
  # Division and remainder by powers of two (TFLite builtins, as in
  # `unpack_bits`): the bits a shift and a bitwise AND would give.
  powers = tf.constant([2**shift for shift in range(width - 1, -1, -1)],
                       tf.int32)
  return tf.math.floormod(
      tf.math.floordiv(values[..., tf.newaxis], powers), 2)


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
  # quotients * 2**k is the left shift (TFLite has no LEFT_SHIFT builtin).
  remainders = gaps - quotients * (2**k)
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
  # quotients * 2**k is the left shift (TFLite has no LEFT_SHIFT builtin).
  gaps = quotients * (2**k)
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
    # so adding it over the next layer's region changes nothing. (A
    # scatter into zeros plus an add: the sum tensor_scatter_nd_add would
    # give, with TFLite builtins.)
    buffer += tf.scatter_nd(
        (offset + tf.range(layer.capacity_bits))[:, tf.newaxis], bits,
        [capacity])
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
