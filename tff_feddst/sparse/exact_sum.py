"""Sums over clients whose bits do not depend on order or grouping.

Float32 addition is not associative: summing the same client contributions
in another order, or in other groups (one TFF worker folds its clients one by
one; with several workers the mergeable context adds per-worker partial sums),
changes the last bits, and training grows those into different models. Here
every float32 contribution is first rounded to a fixed-point grid and the
sums are kept in integers, where addition is associative and commutative, so
the total is the same for any order and any split of the clients over
workers.

A contribution `c` (float32) becomes `FixedPoint(whole, fraction)`:
`whole = floor(c)` and `fraction = round((c - whole) * 2**FRACTION_BITS)`,
both int64. Contributions are clipped to `[-MAX_MAGNITUDE, MAX_MAGNITUDE]`
first, so that up to `MAX_TERMS` of them sum without int64 overflow; honest
contributions (an example count times a weight) are many orders of magnitude
below the clip. The grid step, 2**-40 (about 9.1e-13), is finer than a
float32's spacing for every |c| >= 2**-17, so such contributions enter
exactly; smaller ones are rounded to the grid (an absolute error below
4.6e-13 each). The total is turned back into float32 once, at the end.

Each float32 leaf costs 16 bytes in a running sum instead of 4; integer
leaves (counts, bytes) are summed as they are.
"""

from typing import Any, NamedTuple

import tensorflow as tf

FRACTION_BITS = 40
MAX_MAGNITUDE = 2.0 ** 46
# Contributions that can be summed without int64 overflow: 2**62 / 2**46.
MAX_TERMS = 2 ** 16

_SCALE = 2.0 ** FRACTION_BITS


class FixedPoint(NamedTuple):
  """A float32 tensor's exact fixed-point form, or a sum of such forms.

  The value is `whole + fraction * 2**-FRACTION_BITS`.

  Attributes:
    whole: int64 tensor, the integer parts.
    fraction: int64 tensor, the fractional parts in units of
      2**-FRACTION_BITS (each term in [0, 2**FRACTION_BITS]).
  """
  whole: tf.Tensor
  fraction: tf.Tensor


def encode(value: tf.Tensor) -> FixedPoint:
  """Rounds a float32 tensor onto the fixed-point grid.

  Args:
    value: float32 tensor (NaN is not allowed; +-inf is clipped).

  Returns:
    Its `FixedPoint` form, elementwise.
  """
  value = tf.clip_by_value(tf.cast(value, tf.float64), -MAX_MAGNITUDE,
                           MAX_MAGNITUDE)
  whole = tf.floor(value)
  # value - whole is exact in float64 (a float32 times a small power of two
  # range), and its scaled round is exact below 2**53.
  fraction = tf.round((value - whole) * _SCALE)
  return FixedPoint(whole=tf.cast(whole, tf.int64),
                    fraction=tf.cast(fraction, tf.int64))


def decode(fixed: FixedPoint) -> tf.Tensor:
  """Returns the float32 nearest (via float64) to a fixed-point sum.

  Args:
    fixed: A `FixedPoint` (one contribution or a sum of them).

  Returns:
    float32 tensor of the same shape.
  """
  total = (tf.cast(fixed.whole, tf.float64) +
           tf.cast(fixed.fraction, tf.float64) / _SCALE)
  return tf.cast(total, tf.float32)


def _is_float32(leaf: Any) -> bool:
  return tf.as_dtype(leaf.dtype) == tf.float32


def to_exact(tree: Any) -> Any:
  """Replaces every float32 leaf of a nested structure by its `FixedPoint`.

  Args:
    tree: Nested structure (tuples, NamedTuples, dicts) of tensors.

  Returns:
    The same structure with float32 leaves encoded; other leaves unchanged.
  """
  return tf.nest.map_structure(
      lambda leaf: encode(leaf) if _is_float32(leaf) else leaf, tree)


def add(first: Any, second: Any) -> Any:
  """Adds two structures returned by `to_exact` (or sums of them)."""
  return tf.nest.map_structure(tf.add, first, second)


def from_exact(template: Any, exact: Any) -> Any:
  """Turns a sum of `to_exact` structures back into float32 leaves.

  Args:
    template: A structure of the original (float) form, e.g. the zero sum;
      only its structure and dtypes are used.
    exact: The exact sum, structured as `to_exact(template)`.

  Returns:
    A structure like `template`: float32 leaves decoded, others as summed.
  """
  summed = iter(tf.nest.flatten(exact))  # A FixedPoint flattens to 2.
  leaves = []
  for leaf in tf.nest.flatten(template):
    if _is_float32(leaf):
      leaves.append(decode(FixedPoint(next(summed), next(summed))))
    else:
      leaves.append(next(summed))
  return tf.nest.pack_sequence_as(template, leaves)


class MeanTerms(NamedTuple):
  """Running sums for an order-independent weighted mean of scalars.

  Attributes:
    weighted_values: `FixedPoint` sum of value * weight (float32 products).
    weights: `FixedPoint` sum of the weights.
    num_nonfinite: int32, how many values or weights were NaN or +-inf
      (the mean is then NaN, as a float32 mean would be).
  """
  weighted_values: FixedPoint
  weights: FixedPoint
  num_nonfinite: tf.Tensor


def mean_terms(value: tf.Tensor, weight: tf.Tensor) -> MeanTerms:
  """The `MeanTerms` of one weighted float32 scalar."""
  value = tf.cast(value, tf.float32)
  weight = tf.cast(weight, tf.float32)
  product = value * weight
  is_finite = tf.logical_and(tf.math.is_finite(product),
                             tf.math.is_finite(weight))
  zero = tf.zeros_like(product)
  return MeanTerms(
      weighted_values=encode(tf.where(is_finite, product, zero)),
      weights=encode(tf.where(is_finite, weight, zero)),
      num_nonfinite=tf.cast(tf.logical_not(is_finite), tf.int32))


def zero_mean_terms() -> MeanTerms:
  """The `MeanTerms` of no values."""
  return mean_terms(tf.constant(0.0), tf.constant(0.0))


def mean_of(terms: MeanTerms) -> tf.Tensor:
  """The weighted mean of summed `MeanTerms` (float32; NaN if undefined).

  NaN when any term was not finite or the weights sum to 0 (no values).
  """
  mean = decode(terms.weighted_values) / decode(terms.weights)
  return tf.where(terms.num_nonfinite > 0, tf.constant(float('nan')), mean)
