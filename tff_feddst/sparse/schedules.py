"""When FedDST clients readjust their masks, and by how much.

Two value objects with the same interface:

* `ReadjustmentSchedule`: the algorithm as described in the paper (and RigL's
  cosine annealing). Rounds are 1-based.
* `ReferenceReadjustmentSchedule`: what the authors' `dst.py` actually does.
  Rounds are 0-based and the decayed ratio only decides WHETHER to readjust;
  the amount pruned is always the undecayed alpha.

Both take the round as a Python int or a scalar integer tensor and return
tensors, so they can be called inside TFF `tf_computation`s. Generic callers
should gate on `should_readjust(t)` and prune `prune_fraction_at(t)` of the
active weights.

`SparsitySchedule` gives the global target sparsity of each round: constant
(the paper) or growing linearly until the annealing end round (the authors'
`--final-sparsity`).
"""

import math
from typing import Any

import numpy as np
import tensorflow as tf

from tff_feddst.running import choices

ANNEALINGS = choices.ANNEALINGS
COSINE, CONSTANT = ANNEALINGS

Round = int | tf.Tensor


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class _ConfigValue:
  """A value object defined by its `get_config()` dict: rebuilt from it, and
  compared, hashed and printed by it."""

  def get_config(self) -> dict[str, Any]:
    raise NotImplementedError

  @classmethod
  def from_config(cls, config: dict[str, Any]):
    """Builds a schedule from the output of `get_config`."""
    return cls(**config)

  def __eq__(self, other: object) -> bool:
    return (type(self) is type(other) and
            self.get_config() == other.get_config())

  def __hash__(self) -> int:
    return hash((type(self).__name__,) + tuple(self.get_config().values()))

  def __repr__(self) -> str:
    arguments = ', '.join(f'{k}={v!r}' for k, v in self.get_config().items())
    return f'{type(self).__name__}({arguments})'


class _BaseReadjustmentSchedule(_ConfigValue):
  """Validated hyperparameters shared by both schedules."""

  # Smallest valid round number; subclasses set 1 (paper) or 0 (reference).
  _FIRST_ROUND = 1

  def __init__(self,
               drop_fraction: float,
               rounds_between_readjustments: int,
               end_round: int,
               annealing: str = COSINE):
    """Checks and stores the hyperparameters.

    Args:
      drop_fraction: alpha, the fraction of active weights readjusted, in
        [0, 1].
      rounds_between_readjustments: R >= 1, rounds from one readjustment to
        the next.
      end_round: T_end >= 1, the round where annealing reaches 0.
      annealing: 'cosine' or 'constant'.

    Raises:
      ValueError: If a value is out of range or `annealing` is unknown.
      TypeError: If a value has the wrong type.
    """
    if isinstance(drop_fraction, bool) or not isinstance(
        drop_fraction, (int, float, np.integer, np.floating)):
      raise TypeError(
          f'drop_fraction must be a number, got {type(drop_fraction)}.')
    if not 0.0 <= drop_fraction <= 1.0:
      raise ValueError(f'drop_fraction must be in [0, 1], got {drop_fraction}.')
    if not _is_int(rounds_between_readjustments):
      raise TypeError('rounds_between_readjustments must be an int, got '
                      f'{type(rounds_between_readjustments)}.')
    if rounds_between_readjustments < 1:
      raise ValueError('rounds_between_readjustments must be >= 1, got '
                       f'{rounds_between_readjustments}.')
    if not _is_int(end_round):
      raise TypeError(f'end_round must be an int, got {type(end_round)}.')
    if end_round < 1:
      raise ValueError(f'end_round must be >= 1, got {end_round}.')
    if annealing not in ANNEALINGS:
      raise ValueError(
          f'annealing must be one of {ANNEALINGS}, got {annealing!r}.')
    self._drop_fraction = float(drop_fraction)
    self._rounds_between_readjustments = int(rounds_between_readjustments)
    self._end_round = int(end_round)
    self._annealing = annealing

  @property
  def drop_fraction(self) -> float:
    return self._drop_fraction

  @property
  def rounds_between_readjustments(self) -> int:
    return self._rounds_between_readjustments

  @property
  def end_round(self) -> int:
    return self._end_round

  @property
  def annealing(self) -> str:
    return self._annealing

  @property
  def first_round(self) -> int:
    """Number of the first round: 1 (paper) or 0 (reference)."""
    return self._FIRST_ROUND

  def get_config(self) -> dict[str, Any]:
    """Returns the constructor arguments as a dict."""
    return {
        'drop_fraction': self._drop_fraction,
        'rounds_between_readjustments': self._rounds_between_readjustments,
        'end_round': self._end_round,
        'annealing': self._annealing,
    }

  def _round_tensor(self, round_num: Round) -> tf.Tensor:
    """`round_num` as an int32 scalar, checked to be >= the first round."""
    if isinstance(round_num, bool):
      raise TypeError('round_num must be an integer, got a bool.')
    if _is_int(round_num):
      if round_num < self._FIRST_ROUND:
        raise ValueError(
            f'round_num must be >= {self._FIRST_ROUND}, got {round_num}.')
      return tf.constant(int(round_num), dtype=tf.int32)
    round_num = tf.cast(round_num, tf.int32)
    round_num.shape.assert_has_rank(0)
    check = tf.debugging.assert_greater_equal(
        round_num, self._FIRST_ROUND,
        message=f'round_num must be >= {self._FIRST_ROUND}')
    with tf.control_dependencies([check]):
      return tf.identity(round_num)

  def _cosine(self, round_num: tf.Tensor) -> tf.Tensor:
    """alpha / 2 * (1 + cos(pi * t / T_end)) for t < T_end, else 0 (float64).

    At t = T_end the cosine term is 0 anyway; excluding it avoids a 1e-17
    residue from floating-point pi.
    """
    t = tf.cast(round_num, tf.float64)
    value = self._drop_fraction / 2.0 * (
        1.0 + tf.cos(math.pi * t / float(self._end_round)))
    return tf.where(t < float(self._end_round), value,
                    tf.constant(0.0, tf.float64))

  def _on_interval(self, round_num: tf.Tensor) -> tf.Tensor:
    """(t - 1) mod R == 0, with the floor modulo of Python."""
    return tf.equal(
        tf.math.floormod(round_num - 1, self._rounds_between_readjustments), 0)


class ReadjustmentSchedule(_BaseReadjustmentSchedule):
  """The paper's schedule, rounds t = 1, 2, ....

  drop_fraction_at(t) = alpha / 2 * (1 + cos(pi * t / T_end)) ('cosine') or
  alpha ('constant'), and 0 for t > T_end. Clients readjust in round t when
  (t - 1) % R == 0, t <= T_end and drop_fraction_at(t) > 0, so the first
  readjustment is in round 1.
  """

  _FIRST_ROUND = 1

  def drop_fraction_at(self, round_num: Round) -> tf.Tensor:
    """Fraction of active weights readjusted in round `round_num`.

    Args:
      round_num: 1-based round, Python int or integer scalar tensor.

    Returns:
      A float32 scalar tensor in [0, alpha].

    Raises:
      ValueError: If a Python int `round_num` is < 1.
    """
    t = self._round_tensor(round_num)
    if self._annealing == COSINE:
      value = self._cosine(t)
    else:
      value = tf.where(t <= self._end_round,
                       tf.constant(self._drop_fraction, tf.float64),
                       tf.constant(0.0, tf.float64))
    return tf.cast(value, tf.float32)

  def prune_fraction_at(self, round_num: Round) -> tf.Tensor:
    """Fraction pruned and regrown when readjusting (= drop_fraction_at)."""
    return self.drop_fraction_at(round_num)

  def should_readjust(self, round_num: Round) -> tf.Tensor:
    """Whether clients readjust their masks in round `round_num`.

    Args:
      round_num: 1-based round, Python int or integer scalar tensor.

    Returns:
      A bool scalar tensor.

    Raises:
      ValueError: If a Python int `round_num` is < 1.
    """
    t = self._round_tensor(round_num)
    return tf.logical_and(
        tf.logical_and(self._on_interval(t), t <= self._end_round),
        self.drop_fraction_at(t) > 0.0)


class ReferenceReadjustmentSchedule(_BaseReadjustmentSchedule):
  """The schedule of the authors' `dst.py`, rounds t = 0, 1, ....

  Their loop computes, for `server_round` t,
  ratio = alpha * decay(t) with decay(t) = alpha / 2 * (1 + cos(pi * t /
  T_end)) for t < T_end and 0 after ('cosine', so alpha is applied twice),
  or ratio = alpha in every round ('constant': no end round), and readjusts
  when (t - 1) % R == 0 (Python modulo, so t = 0 only when R = 1) and
  ratio > 0. The ratio is only printed and gates readjustment: clients
  prune at sparsity S + (1 - S) * alpha, i.e. the undecayed alpha of their
  active weights, whatever the round.
  """

  _FIRST_ROUND = 0

  def drop_fraction_at(self, round_num: Round) -> tf.Tensor:
    """The authors' decayed readjustment ratio in round `round_num`.

    Args:
      round_num: 0-based round, Python int or integer scalar tensor.

    Returns:
      A float32 scalar tensor: alpha * decay(t) ('cosine') or alpha.

    Raises:
      ValueError: If a Python int `round_num` is < 0.
    """
    t = self._round_tensor(round_num)
    if self._annealing == COSINE:
      value = self._drop_fraction * self._cosine(t)
    else:
      value = tf.constant(self._drop_fraction, tf.float64)
    return tf.cast(value, tf.float32)

  def prune_fraction_at(self, round_num: Round) -> tf.Tensor:
    """Fraction pruned in a readjusting round: always the undecayed alpha.

    Args:
      round_num: 0-based round, Python int or integer scalar tensor (only
        checked; the value does not depend on it).

    Returns:
      A float32 scalar tensor equal to alpha.
    """
    self._round_tensor(round_num)
    return tf.constant(self._drop_fraction, tf.float32)

  def prune_sparsity(self, target_sparsity: float) -> float:
    """The sparsity the authors' clients prune to: S + (1 - S) * alpha.

    Args:
      target_sparsity: S, the fraction of zeros after regrowth, in [0, 1).

    Returns:
      The fraction of zeros after the prune step, in [S, 1].

    Raises:
      ValueError: If `target_sparsity` is outside [0, 1).
    """
    if not 0.0 <= target_sparsity < 1.0:
      raise ValueError(
          f'target_sparsity must be in [0, 1), got {target_sparsity}.')
    return target_sparsity + (1 - target_sparsity) * self._drop_fraction

  def should_readjust(self, round_num: Round) -> tf.Tensor:
    """Whether the authors' clients readjust in round `round_num`.

    Args:
      round_num: 0-based round, Python int or integer scalar tensor.

    Returns:
      A bool scalar tensor.

    Raises:
      ValueError: If a Python int `round_num` is < 0.
    """
    t = self._round_tensor(round_num)
    return tf.logical_and(self._on_interval(t),
                          self.drop_fraction_at(t) > 0.0)


class SparsitySchedule(_ConfigValue):
  """The global target sparsity of each round: constant, or growing.

  S_t = S_init + (S_final - S_init) * min(t, T_end) / T_end for rounds
  t = 0, 1, ... (t = 0 is the initial global model, t >= 1 the model after
  server round t), and exactly S_final from T_end on. With S_init = S_final
  the target is constant (the paper). The FedDST authors' `--sparsity` /
  `--final-sparsity` interpolate the same way up to their `--rate-decay-end`.

  Only S_init <= S_final is supported (gradual pruning): the server builds
  each round's mask from the positions that some client holds, and every
  client holds as many as the previous round's global mask, so a layer can
  always shrink to its next count but could not grow denser.

  Plain Python: the per-round table of per-layer counts is computed once,
  before the process is built (`sparsity_distribution.num_active_by_round`).
  """

  def __init__(self, initial_sparsity: float, final_sparsity: float,
               end_round: int):
    """Checks and stores the schedule.

    Args:
      initial_sparsity: S_init, fraction of zeros at round 0, in [0, 1).
      final_sparsity: S_final, fraction of zeros from `end_round` on, in
        [S_init, 1).
      end_round: T_end >= 1, the first round at S_final.

    Raises:
      ValueError: If a value is out of range, or S_init > S_final.
      TypeError: If a value has the wrong type.
    """
    for name, value in (('initial_sparsity', initial_sparsity),
                        ('final_sparsity', final_sparsity)):
      if isinstance(value, bool) or not isinstance(
          value, (int, float, np.integer, np.floating)):
        raise TypeError(f'{name} must be a number, got {type(value)}.')
      if not 0.0 <= value < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got {value}.')
    if initial_sparsity > final_sparsity:
      raise ValueError(
          f'initial_sparsity={initial_sparsity} > final_sparsity='
          f'{final_sparsity}: only growing sparsity is supported (the server '
          'can shrink a layer to the clients\' masks but not grow it).')
    if not _is_int(end_round):
      raise TypeError(f'end_round must be an int, got {type(end_round)}.')
    if end_round < 1:
      raise ValueError(f'end_round must be >= 1, got {end_round}.')
    self._initial_sparsity = float(initial_sparsity)
    self._final_sparsity = float(final_sparsity)
    self._end_round = int(end_round)

  @property
  def initial_sparsity(self) -> float:
    return self._initial_sparsity

  @property
  def final_sparsity(self) -> float:
    return self._final_sparsity

  @property
  def end_round(self) -> int:
    return self._end_round

  @property
  def is_constant(self) -> bool:
    """Whether every round has the same target."""
    return self._initial_sparsity == self._final_sparsity

  def sparsity_at(self, round_num: int) -> float:
    """S_t, the target fraction of zeros of the global model after round t.

    Args:
      round_num: t >= 0 (0: the initial model), a Python int.

    Returns:
      A float in [S_init, S_final]; exactly S_final for t >= T_end.

    Raises:
      ValueError: If `round_num` < 0.
      TypeError: If `round_num` is not an int.
    """
    if not _is_int(round_num):
      raise TypeError(f'round_num must be an int, got {type(round_num)}.')
    if round_num < 0:
      raise ValueError(f'round_num must be >= 0, got {round_num}.')
    if round_num >= self._end_round:
      # Not S_init + (S_final - S_init): that can miss S_final by one ulp
      # and so move a per-layer count by one.
      return self._final_sparsity
    return self._initial_sparsity + (
        self._final_sparsity - self._initial_sparsity) * (
            round_num / self._end_round)

  def sparsities(self) -> list[float]:
    """[S_0, S_1, ..., S_T_end]: every distinct round's target."""
    return [self.sparsity_at(t) for t in range(self._end_round + 1)]

  def get_config(self) -> dict[str, Any]:
    """Returns the constructor arguments as a dict."""
    return {'initial_sparsity': self._initial_sparsity,
            'final_sparsity': self._final_sparsity,
            'end_round': self._end_round}
