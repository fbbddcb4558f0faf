"""Does a sparse FedDST round compute less than a dense FedAvg round?

The benchmark's `sparse_to_dense_round_ratio` is the seconds of a plain-TF
FedDST round (the run's sparsity S and readjustment) over the seconds of a
dense FedAvg round on the same clients. The dense round is the same plain
loop (`plain_loop.PlainFedDst`) at S=0 with no readjustment
(`dense_counterpart`): every mask is all ones, so clients run FedAvg's local
SGD and the server FedAvg's weighted mean, with the same model, data,
batches and optimizer. Rounds of the two alternate (FedDST round t, then
dense round t), from their initial models, so both see the same load on a
shared machine.

Today the masked client multiplies dense kernels by masks, so the ratio is
about 1: a round at S=0.8 costs what a dense one does, plus readjustment.
"""

from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.benchmarks import plain_loop
from tff_feddst.methods import feddst_methods
from tff_feddst.methods import model_setup
from tff_feddst.running import settings as settings_lib

# Runs one round of a path: takes the 1-based round number, returns
# `(wall seconds, CPU seconds)` of the round.
TimedRound = Callable[[int], tuple[float, float]]


def dense_counterpart(settings: settings_lib.ExperimentSettings
                      ) -> settings_lib.ExperimentSettings:
  """The run's settings at sparsity 0 without readjustment (dense FedAvg).

  Args:
    settings: The benchmarked run's settings.

  Returns:
    The same settings (resolved) with `target_sparsity=0` and
    `drop_fraction=0` (a schedule that never readjusts).
  """
  return settings_lib.ExperimentSettings.from_flat(**{
      **settings.flat(), 'target_sparsity': 0.0,
      'drop_fraction': 0.0}).resolved()


def build_dense_plain(settings: settings_lib.ExperimentSettings,
                      federated_data: Any, data_element_spec: Any
                      ) -> plain_loop.PlainFedDst:
  """The plain loop of `dense_counterpart(settings)`.

  Build it before any TFF process (Keras models built after one may fail;
  see `evaluation.py`).

  Args:
    settings: The benchmarked run's settings (resolved).
    federated_data: The run's federated data (the server's bounds on each
      client depend on it).
    data_element_spec: `element_spec` of a client's batched dataset.

  Returns:
    A `plain_loop.PlainFedDst` running dense FedAvg rounds.
  """
  dense = dense_counterpart(settings)
  model_fn, initial = model_setup.build_model(dense)
  upload_encoding, download_encoding = dense.payload_encodings()
  client_config = model_setup.build_client_config(dense, initial)
  return plain_loop.PlainFedDst(
      model_fn, initial, data_element_spec,
      feddst_methods.build_schedule(dense), client_config,
      upload_encoding=upload_encoding, download_encoding=download_encoding,
      robust=model_setup.build_robust_aggregation(
          dense, federated_data, model_fn, initial, client_config),
      min_new_position_votes=dense.server.min_new_position_votes)


def plain_round_runner(plain: plain_loop.PlainFedDst,
                       datasets_for: Callable[[int], Sequence[tf.data.Dataset]],
                       stopwatch: Any) -> TimedRound:
  """A `TimedRound` stepping `plain` from its initial state.

  Args:
    plain: The plain loop.
    datasets_for: Builds the round's client datasets from its number (built
      outside the timed part).
    stopwatch: Has `start()` and `stop() -> (wall, cpu)`.

  Returns:
    The round runner; it keeps the loop's state between calls.
  """
  state = [plain.initialize()]

  def run_round(round_num: int) -> tuple[float, float]:
    datasets = datasets_for(round_num)
    stopwatch.start()
    state[0], _ = plain.next(state[0], datasets)
    return stopwatch.stop()

  return run_round


def measure(plain: plain_loop.PlainFedDst, dense_plain: plain_loop.PlainFedDst,
            datasets_for: Callable[[int], Sequence[tf.data.Dataset]],
            stopwatch: Any, warmup_rounds: int, timed_rounds: int,
            log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
  """`compare_rounds` of two plain loops, each from its initial state.

  Args:
    plain: The FedDST plain loop.
    dense_plain: Its dense twin (`build_dense_plain`).
    datasets_for: Builds a round's client datasets from its number.
    stopwatch: Has `start()` and `stop() -> (wall, cpu)`.
    warmup_rounds: Untimed rounds of each first.
    timed_rounds: Timed rounds of each.
    log: Called with a line per round.

  Returns:
    As `compare_rounds`.
  """
  return compare_rounds(
      plain_round_runner(plain, datasets_for, stopwatch),
      plain_round_runner(dense_plain, datasets_for, stopwatch),
      warmup_rounds, timed_rounds, log)


def compare_rounds(sparse_round: TimedRound, dense_round: TimedRound,
                   warmup_rounds: int, timed_rounds: int,
                   log: Optional[Callable[[str], None]] = None
                   ) -> dict[str, Any]:
  """Times rounds of both paths, alternating, and takes their ratios.

  Args:
    sparse_round: Runs a FedDST round.
    dense_round: Runs a dense FedAvg round on the same clients.
    warmup_rounds: Untimed rounds of each first (tracing).
    timed_rounds: Timed rounds of each, >= 1.
    log: Called with a line per round.

  Returns:
    `sparse_seconds_per_round`, `dense_seconds_per_round`, their CPU
    counterparts, `sparse_to_dense_round_ratio` (wall) and
    `sparse_to_dense_cpu_ratio`, and the `rounds` timed.

  Raises:
    ValueError: If `timed_rounds` < 1 or `warmup_rounds` < 0.
  """
  if timed_rounds < 1 or warmup_rounds < 0:
    raise ValueError('compare_rounds needs timed_rounds >= 1 and '
                     f'warmup_rounds >= 0, got {timed_rounds} and '
                     f'{warmup_rounds}.')
  log = log or (lambda line: None)
  times = {'sparse': [], 'dense': []}
  timed = range(warmup_rounds + 1, warmup_rounds + timed_rounds + 1)
  for round_num in range(1, warmup_rounds + timed_rounds + 1):
    sparse = sparse_round(round_num)
    dense = dense_round(round_num)
    if round_num in timed:
      times['sparse'].append(sparse)
      times['dense'].append(dense)
    log(f'sparse/dense round {round_num}'
        f'{"" if round_num in timed else " (warm-up)"}: FedDST '
        f'{sparse[0]:.2f} s, dense FedAvg {dense[0]:.2f} s')
  mean = lambda pairs, i: float(np.mean([pair[i] for pair in pairs]))
  result = {
      'sparse_seconds_per_round': mean(times['sparse'], 0),
      'dense_seconds_per_round': mean(times['dense'], 0),
      'sparse_cpu_seconds_per_round': mean(times['sparse'], 1),
      'dense_cpu_seconds_per_round': mean(times['dense'], 1),
      'rounds': list(timed),
  }
  result['sparse_to_dense_round_ratio'] = (
      result['sparse_seconds_per_round'] / result['dense_seconds_per_round'])
  result['sparse_to_dense_cpu_ratio'] = (
      result['sparse_cpu_seconds_per_round'] /
      result['dense_cpu_seconds_per_round'])
  return result



def format_line(measured: Optional[dict[str, Any]]) -> str:
  """One report line for a `compare_rounds` result (or None)."""
  if not measured:
    return 'FedDST/dense FedAvg round: not measured'
  return ('FedDST/dense FedAvg round (plain, same clients): '
          f'{measured["sparse_to_dense_round_ratio"]:.3f} wall, '
          f'{measured["sparse_to_dense_cpu_ratio"]:.3f} CPU '
          f'({measured["sparse_seconds_per_round"]:.3f} s vs '
          f'{measured["dense_seconds_per_round"]:.3f} s per round)')
