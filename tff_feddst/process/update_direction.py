"""Direction check: an update that points against the round's others is dropped.

Clipping (`robust_aggregation`) bounds how FAR one client can move the
model, not WHERE: a client that sends its honest step reversed (a sign
flip) has an honest norm and passes every bound. Here the server compares
each client's update with the other clients' updates of the same round.

Reference direction. The screening aggregator's first pass (it already
takes every accepted upload's delta from the broadcast model on the
client's own support, `upload_screening`) also sums the deltas scaled to
unit norm, positionally (kernels at their mask positions, a regrown
position's delta being its value, and the dense parameters): `S = sum_c
u_c`, `u_c = delta_c / ||delta_c||`, in `exact_sum` form (the same bits
for any client order). Unit vectors give every client the same say in the
direction, so a client with huge values moves it no more than any other.

Check. In the summing pass, client c's reference is the sum of the OTHER
clients' unit deltas, `S - u_c`, restricted to c's support (its mask
positions and the dense parameters); with

  cos_c = <delta_c, S - u_c> / (||delta_c|| ||S - u_c||)   (on c's support)

an upload with `cos_c < min_update_cosine` is dropped ('direction' in
`payload_validation.REJECTION_KINDS`). A client alone in its round, or
with a zero delta, is not checked.

Why the round's own uploads, and why only with a first pass. The previous
round's global step, which the state could carry as it carries the clip
bound for workers, was measured as the reference first (10 rounds of
`configs/fashion_mnist_quick.cfg` with the server's defences, seed 0):
honest clients' cosines with it lay on both sides of 0 (-0.54 to +0.30, 56
of 90 negative), so it cannot tell a reversed step from an honest one on
this non-iid split. Against the other clients of the same round (as here)
28 of 300 honest cosines were negative and 15 below -0.1 (seeds 0, 1, 2).
TFF's multi-worker form has no first pass (`sum_factory`), so there the
check is off, as the replay check is; the aggregator's state is the same
with and without it, so a run resumes with or without workers.
"""

from typing import Any, NamedTuple, Sequence

import tensorflow as tf

from tff_feddst.process import encoding
from tff_feddst.sparse import exact_sum


class Direction(NamedTuple):
  """Unit deltas laid out as the model (float32, or their `exact_sum` form).

  Attributes:
    kernels: Per prunable kernel, its shape (zero off every summed mask).
    dense: Dense parameters, in payload order.
  """
  kernels: tuple
  dense: tuple


def zero_direction(kernel_shapes: Sequence[Sequence[int]],
                   dense_shapes: Sequence[Sequence[int]]) -> Direction:
  """The float32 `Direction` of no client (its layout)."""
  return Direction(
      kernels=tuple(tf.zeros(shape, tf.float32) for shape in kernel_shapes),
      dense=tuple(tf.zeros(shape, tf.float32) for shape in dense_shapes))


def zero_exact_direction(kernel_shapes: Sequence[Sequence[int]],
                         dense_shapes: Sequence[Sequence[int]]) -> Direction:
  """The `exact_sum` form of `zero_direction` (a first pass's zero)."""
  return exact_sum.to_exact(zero_direction(kernel_shapes, dense_shapes))


def _deltas(values: Sequence[tf.Tensor], dense: Sequence[tf.Tensor],
            ref_values: Sequence[tf.Tensor], ref_dense: Sequence[tf.Tensor]
            ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
  """float64 deltas: per kernel in value order (padding 0), and dense."""
  value_deltas = [tf.cast(v, tf.float64) - tf.cast(r, tf.float64)
                  for v, r in zip(values, ref_values)]
  dense_deltas = [tf.cast(d, tf.float64) - tf.cast(r, tf.float64)
                  for d, r in zip(dense, ref_dense)]
  return value_deltas, dense_deltas


def _norm(parts: Sequence[tf.Tensor]) -> tf.Tensor:
  """float64 L2 norm of a list of float64 tensors."""
  return tf.sqrt(tf.add_n([tf.constant(0.0, tf.float64)] +
                          [tf.reduce_sum(tf.square(p)) for p in parts]))


def unit_delta(values: Sequence[tf.Tensor], dense: Sequence[tf.Tensor],
               ref_values: Sequence[tf.Tensor],
               ref_dense: Sequence[tf.Tensor],
               masks: Sequence[tf.Tensor]) -> Direction:
  """A client's delta scaled to unit norm, laid out as the model.

  Args:
    values: The client's uploaded values per kernel (padding zero).
    dense: Its dense parameters.
    ref_values: The broadcast model's values at its mask ones
      (`robust_aggregation.reference_values`), lined up with `values`.
    ref_dense: The broadcast model's dense parameters.
    masks: The client's 0/1 masks (float32, kernel shapes).

  Returns:
    float32 `Direction`: delta / ||delta|| at the client's mask positions
    and in the dense parameters, zero elsewhere (all zero for a zero
    delta).
  """
  value_deltas, dense_deltas = _deltas(values, dense, ref_values, ref_dense)
  norm = _norm(value_deltas + dense_deltas)
  scale = tf.where(norm > 0, 1.0 / tf.maximum(norm, 1e-300),
                   tf.constant(0.0, tf.float64))
  kernels = encoding.scatter_values(
      [tf.cast(d * scale, tf.float32) for d in value_deltas], masks)
  return Direction(
      kernels=tuple(kernels),
      dense=tuple(tf.cast(d * scale, tf.float32) for d in dense_deltas))


def step_direction(kernels: Sequence[tf.Tensor], dense: Sequence[tf.Tensor],
                   reference: Any) -> Direction:
  """A whole model's step from the reference, scaled to unit norm.

  Args:
    kernels: The stepped model's kernels (zero off its masks).
    dense: Its dense parameters, in payload order.
    reference: The model it stepped from (`robust_aggregation.Reference`).

  Returns:
    float32 `Direction` (all zero for a zero step).
  """
  kernel_deltas, dense_deltas = _deltas(kernels, dense, reference.kernels,
                                        reference.dense)
  norm = _norm(kernel_deltas + dense_deltas)
  scale = tf.where(norm > 0, 1.0 / tf.maximum(norm, 1e-300),
                   tf.constant(0.0, tf.float64))
  return Direction(
      kernels=tuple(tf.cast(d * scale, tf.float32) for d in kernel_deltas),
      dense=tuple(tf.cast(d * scale, tf.float32) for d in dense_deltas))


def update_cosine(values: Sequence[tf.Tensor], dense: Sequence[tf.Tensor],
                  ref_values: Sequence[tf.Tensor],
                  ref_dense: Sequence[tf.Tensor],
                  masks: Sequence[tf.Tensor], num_active: Sequence[int],
                  direction_sum: Direction,
                  includes_own: bool = True) -> tf.Tensor:
  """Cosine of a client's delta with a reference direction.

  The reference is the other clients' unit deltas (`direction_sum` with
  this client's own, which is taken out) or, with `includes_own` False,
  `direction_sum` as it is (the server's root step, `server_root_step`).

  Args:
    values: The client's uploaded values per kernel (padding zero).
    dense: Its dense parameters.
    ref_values: As for `unit_delta`.
    ref_dense: As for `unit_delta`.
    masks: The client's 0/1 masks.
    num_active: Payload capacity per kernel.
    direction_sum: float32 `Direction`, the round's sum of unit deltas,
      this client's own included (the first pass's), or the reference
      itself when `includes_own` is False.
    includes_own: Whether `direction_sum` holds this client's own unit
      delta, which is taken out.

  Returns:
    float32 scalar in [-1, 1]: cos(delta, S - u) (or cos(delta, S)) on the
    client's support; 1 when the delta or the reference there is zero (not
    checked).
  """
  value_deltas, dense_deltas = _deltas(values, dense, ref_values, ref_dense)
  if includes_own:
    own = unit_delta(values, dense, ref_values, ref_dense, masks)
    others_kernels = [s - u for s, u in zip(direction_sum.kernels,
                                            own.kernels)]
    others_dense = [tf.cast(s, tf.float64) - tf.cast(u, tf.float64)
                    for s, u in zip(direction_sum.dense, own.dense)]
  else:
    others_kernels = list(direction_sum.kernels)
    others_dense = [tf.cast(s, tf.float64) for s in direction_sum.dense]
  others_values = [tf.cast(v, tf.float64) for v in encoding.active_values(
      others_kernels, masks, num_active)]
  dot = tf.add_n([tf.constant(0.0, tf.float64)] + [
      tf.reduce_sum(d * o) for d, o in zip(value_deltas + dense_deltas,
                                          others_values + others_dense)])
  norms = _norm(value_deltas + dense_deltas) * _norm(others_values +
                                                     others_dense)
  cosine = tf.where(norms > 0, dot / tf.maximum(norms, 1e-300),
                    tf.constant(1.0, tf.float64))
  return tf.cast(tf.clip_by_value(cosine, -1.0, 1.0), tf.float32)
