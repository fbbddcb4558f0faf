"""Coordinate-wise trimmed mean and median over the holders of each position.

The server's default value of a position is the weighted mean of the values
its holders sent (`server_step.apply_aggregate`): one client far from the
others moves it in proportion to its weight. A robust mean (as Flower's
FedTrimmedAvg and FedMedian do for dense models) takes, per position, the
UNWEIGHTED trimmed mean or median of the holders' values instead, so a
minority of clients cannot move it beyond the honest values' range:

  holders of a kernel position: the accepted clients whose mask holds it;
  holders of a dense parameter: every accepted client;
  values: what the server sums, i.e. after it clipped the client's delta.

  trimmed_mean, k holders, t = floor(trim_fraction * k):
      (sum of the k values - the t smallest - the t largest) / (k - 2t)
  median: the middle value (k odd) or the mean of the two middle values
      (k even).
  A position without holders gets 0, as the weighted mean does.

Mergeable and exact. An aggregate cannot keep every client's value, so per
position it keeps the L largest and the L smallest holder values (sorted;
a non-holder enters as -inf / +inf), the exact (`exact_sum`) sum of the
holder values and the number of holders (`OrderTerms`). A client is added,
and two partial aggregates (TFF workers) are merged, with `tf.math.top_k`
over the concatenated lists: the kept values are those of the multiset of
values, whatever the client order or worker split, so the result has the
same bits for any (-0.0 is stored as +0.0, so equal values are identical).

Capacity. L is fixed when the process is built from the round's expected
number of clients C (`RobustMean.clients_per_round`): median L = ceil(C/2),
which keeps every rank of up to 2L >= C holders, so the median is exact;
trimmed mean L = max(1, floor(trim_fraction * C)), enough to trim every
position of up to C holders (more rounds never have more than C clients,
unless uploads are duplicated or a setting changes). A position beyond the
capacity (median: k > 2L holders; trimmed mean: floor(trim_fraction * k) > L)
gets the trimmed mean with t = L, the most the kept lists allow, and is
counted in the measurement `robust_mean_over_capacity`.

Cost: per position 8L bytes for the lists plus 20 for the exact sum and the
holder count, on top of the weighted sums (`aggregation`).
"""

import dataclasses
import math
import numbers
from typing import Any, NamedTuple, Sequence

import tensorflow as tf

from tff_feddst.running import choices
from tff_feddst.sparse import exact_sum

ROBUST_MEANS = choices.ROBUST_MEANS
# floor(trim_fraction * k) is taken with this slack, so that e.g.
# 0.3 * 10 (3.0000000000000004 in float64) and 0.29 * 100
# (28.999999999999996) give 3 and 29.
_FLOOR_SLACK = 1e-9


@dataclasses.dataclass(frozen=True)
class RobustMean:
  """Which robust mean the server takes per position (not 'mean').

  Attributes:
    kind: 'trimmed_mean' or 'median'.
    trim_fraction: Share of the holders trimmed at each end, in [0, 0.5)
      (trimmed mean only).
    clients_per_round: The clients a round is expected to have (sets the
      capacity L, see the module docstring), >= 1.
  """
  kind: str = 'median'
  trim_fraction: float = 0.2
  clients_per_round: int = 10

  def __post_init__(self):
    if self.kind not in ROBUST_MEANS[1:]:
      raise ValueError(f'kind must be one of {ROBUST_MEANS[1:]}, got '
                       f'{self.kind!r}.')
    if not (isinstance(self.trim_fraction, numbers.Real) and
            0 <= self.trim_fraction < 0.5):
      raise ValueError('trim_fraction must be in [0, 0.5), got '
                       f'{self.trim_fraction!r}.')
    if (not isinstance(self.clients_per_round, int) or
        self.clients_per_round < 1):
      raise ValueError('clients_per_round must be an integer >= 1, got '
                       f'{self.clients_per_round!r}.')

  @property
  def capacity(self) -> int:
    """L: how many of the largest and of the smallest values are kept."""
    if self.kind == 'median':
      return (self.clients_per_round + 1) // 2
    return max(1, math.floor(self.trim_fraction * self.clients_per_round +
                             _FLOOR_SLACK))


class OrderTerms(NamedTuple):
  """Per tensor (kernels, then dense parameters), what a robust mean needs.

  Attributes:
    value_sums: `exact_sum.FixedPoint` sums of the holders' values.
    holders: int32 number of holders per position.
    largest: float32 [*shape, L], the L largest holder values, descending
      (-inf where fewer hold the position).
    smallest: float32 [*shape, L], the L smallest, ascending (+inf).
  """
  value_sums: tuple
  holders: tuple
  largest: tuple
  smallest: tuple


class ClientValues(NamedTuple):
  """One accepted client's values and which positions it holds.

  Attributes:
    values: float32 per tensor (kernels zero off the mask).
    holds: float32 0/1 per tensor.
  """
  values: tuple
  holds: tuple


class RobustSums(NamedTuple):
  """The running aggregate of a robust-mean aggregator.

  Attributes:
    sums: The usual sums in `exact_sum` form (merged by addition).
    terms: The `OrderTerms` (merged with `merge_terms`).
  """
  sums: Any
  terms: OrderTerms


class WithClientValues(NamedTuple):
  """One client's contribution: its sums and, if accepted, its values.

  `aggregation.accumulate_payload` fills `client` for an accepted upload
  (a rejected one keeps the zeros it was given).
  """
  sums: Any
  client: ClientValues


class RobustValues(NamedTuple):
  """The robust mean of every position, as the finalizer takes it.

  Attributes:
    kernels: float32 per kernel (0 where nobody holds the position).
    dense: float32 per dense parameter tensor, in payload order.
    over_capacity: int32, positions beyond the capacity (trimmed with L).
  """
  kernels: tuple
  dense: tuple
  over_capacity: tf.Tensor


def zero_terms(shapes: Sequence[Sequence[int]], capacity: int) -> OrderTerms:
  """The `OrderTerms` of no clients for tensors of `shapes`."""
  return OrderTerms(
      value_sums=tuple(exact_sum.encode(tf.zeros(s, tf.float32))
                       for s in shapes),
      holders=tuple(tf.zeros(s, tf.int32) for s in shapes),
      largest=tuple(tf.fill(list(s) + [capacity], float('-inf'))
                    for s in shapes),
      smallest=tuple(tf.fill(list(s) + [capacity], float('inf'))
                     for s in shapes))


def no_client_values(shapes: Sequence[Sequence[int]]) -> ClientValues:
  """`ClientValues` holding nothing (a rejected or absent client)."""
  zeros = tuple(tf.zeros(s, tf.float32) for s in shapes)
  return ClientValues(values=zeros, holds=zeros)


def client_values(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
                  dense: Sequence[tf.Tensor], weight: tf.Tensor
                  ) -> ClientValues:
  """An accepted client's `ClientValues`.

  Args:
    kernels: Its decoded (clipped) kernels, zero off `masks`.
    masks: Its 0/1 masks (the global masks if it sent none).
    dense: Its (clipped) dense parameters.
    weight: The weight the server gives it; a client of weight 0 holds
      nothing (as it casts no vote).

  Returns:
    The `ClientValues`.
  """
  has_weight = tf.cast(tf.cast(weight, tf.float32) > 0, tf.float32)
  values = tuple(tf.cast(v, tf.float32) for v in (*kernels, *dense))
  holds = tuple(has_weight * tf.cast(m, tf.float32) for m in masks) + tuple(
      has_weight * tf.ones_like(values[len(masks) + i])
      for i in range(len(dense)))
  return ClientValues(values=values, holds=holds)


def _top(lists: tf.Tensor, capacity: int) -> tf.Tensor:
  return tf.math.top_k(lists, k=capacity, sorted=True).values


def _keep_largest(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
  return _top(tf.concat([first, second], axis=-1), first.shape[-1])


def _keep_smallest(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
  return -_top(-tf.concat([first, second], axis=-1), first.shape[-1])


def add_client(terms: OrderTerms, client: ClientValues) -> OrderTerms:
  """`terms` plus one client's values (exact; see the module docstring)."""
  value_sums, holders, largest, smallest = [], [], [], []
  for index, (values, holds) in enumerate(zip(client.values, client.holds)):
    held = holds > 0
    values = values + 0.0  # -0.0 becomes +0.0: equal values, equal bits.
    value_sums.append(exact_sum.add(
        terms.value_sums[index], exact_sum.encode(values * holds)))
    holders.append(terms.holders[index] + tf.cast(held, tf.int32))
    largest.append(_keep_largest(
        terms.largest[index],
        tf.where(held, values, float('-inf'))[..., tf.newaxis]))
    smallest.append(_keep_smallest(
        terms.smallest[index],
        tf.where(held, values, float('inf'))[..., tf.newaxis]))
  return OrderTerms(tuple(value_sums), tuple(holders), tuple(largest),
                    tuple(smallest))


def merge_terms(first: OrderTerms, second: OrderTerms) -> OrderTerms:
  """The `OrderTerms` of two disjoint groups of clients (exact)."""
  return OrderTerms(
      value_sums=exact_sum.add(first.value_sums, second.value_sums),
      holders=tuple(a + b for a, b in zip(first.holders, second.holders)),
      largest=tuple(_keep_largest(a, b)
                    for a, b in zip(first.largest, second.largest)),
      smallest=tuple(_keep_smallest(a, b)
                     for a, b in zip(first.smallest, second.smallest)))


def _sum_first(sorted_values: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
  """float64 sum of the first `count` (per position) of the kept values."""
  ranks = tf.range(sorted_values.shape[-1], dtype=count.dtype)
  taken = ranks < count[..., tf.newaxis]
  return tf.reduce_sum(
      tf.where(taken, tf.cast(sorted_values, tf.float64), 0.0), axis=-1)


def _value_at_rank(terms_smallest: tf.Tensor, terms_largest: tf.Tensor,
                   rank: tf.Tensor, holders: tf.Tensor) -> tf.Tensor:
  """The holder value of ascending `rank` (per position; needs k <= 2L)."""
  capacity = terms_smallest.shape[-1]
  from_small = tf.clip_by_value(rank, 0, capacity - 1)
  from_large = tf.clip_by_value(holders - 1 - rank, 0, capacity - 1)
  small = tf.gather(terms_smallest, from_small[..., tf.newaxis],
                    batch_dims=rank.shape.rank)[..., 0]
  large = tf.gather(terms_largest, from_large[..., tf.newaxis],
                    batch_dims=rank.shape.rank)[..., 0]
  return tf.cast(tf.where(rank < capacity, small, large), tf.float64)


def _robust_value(value_sum: exact_sum.FixedPoint, holders: tf.Tensor,
                  largest: tf.Tensor, smallest: tf.Tensor,
                  config: RobustMean) -> tuple[tf.Tensor, tf.Tensor]:
  """`(float32 robust mean, int32 positions over capacity)` of a tensor."""
  capacity = config.capacity
  total = (tf.cast(value_sum.whole, tf.float64) +
           tf.cast(value_sum.fraction, tf.float64) /
           2.0 ** exact_sum.FRACTION_BITS)
  count = tf.cast(holders, tf.float64)
  if config.kind == 'trimmed_mean':
    wanted = tf.cast(tf.floor(config.trim_fraction * count + _FLOOR_SLACK),
                     tf.int32)
    over = wanted > capacity
  else:
    wanted = tf.fill(tf.shape(holders), capacity)
    over = holders > 2 * capacity
  trim = tf.minimum(wanted, capacity)
  trimmed = tf.math.divide_no_nan(
      total - _sum_first(smallest, trim) - _sum_first(largest, trim),
      count - 2.0 * tf.cast(trim, tf.float64))
  value = trimmed
  if config.kind == 'median':
    lower = _value_at_rank(smallest, largest, (holders - 1) // 2, holders)
    upper = _value_at_rank(smallest, largest, holders // 2, holders)
    value = tf.where(over, trimmed, (lower + upper) / 2.0)
  value = tf.where(holders > 0, value, 0.0)
  return (tf.cast(value, tf.float32),
          tf.reduce_sum(tf.cast(over, tf.int32)))


def robust_values(terms: OrderTerms, config: RobustMean,
                  num_kernels: int) -> RobustValues:
  """The robust mean of every position (see the module docstring).

  Args:
    terms: The round's `OrderTerms` (kernels first, then dense tensors).
    config: The `RobustMean`.
    num_kernels: How many of the tensors are kernels.

  Returns:
    The `RobustValues`.
  """
  values, over_capacity = [], tf.constant(0, tf.int32)
  for value_sum, holders, largest, smallest in zip(*terms):
    value, over = _robust_value(value_sum, holders, largest, smallest,
                                config)
    values.append(value)
    over_capacity += over
  return RobustValues(kernels=tuple(values[:num_kernels]),
                      dense=tuple(values[num_kernels:]),
                      over_capacity=over_capacity)
