"""How fast is a FedDST round in TFF, against the same work in plain TF?

`run_benchmark` times rounds of (a) the TFF `LearningProcess` of
`fed_dst.build_fed_dst`, run on an owned local worker
(`execution.local_execution_context`), and (b) `plain_loop.PlainFedDst`,
which runs the same client work, aggregation and server update as plain
`tf.function`s in this process. Both start from the same initial model and
get identical (separately built, identically seeded) client datasets each
round; their rounds are interleaved (TFF round t, then plain round t), so
both see the same load on a shared machine, and the TFF/plain ratio is
measured in one process. After every round the two global models are
compared: the client work and server math are the same ops, but the TFF
worker and this process may sum floats in other orders, so weights agree to
about 1e-9 until a near-tie in a top-k (readjustment, server re-prune) falls
the other way; from then on the runs drift apart, the more clients per
round the sooner (`tests/plain_loop_test.py` checks equality on 2 clients).

The plain loop also splits its time by phase: data input (building the
client datasets, and iterating the tf.data pipelines once on their own),
client training, mask readjustment (a `ClientTrainer.readjust` call timed on
its own, times the readjusting clients), broadcast (encode + per-client
decode), aggregation, server update, and evaluation on the global test set.
A sweep over clients per round shows how the round time grows. Last, plain
FedDST rounds alternate with dense FedAvg rounds on the same clients
(`sparse_dense`): `sparse_to_dense_round_ratio`.

Each round is timed in wall-clock seconds and in CPU seconds (this process
plus the TFF worker). On a shared machine wall time depends on the other
jobs, and a process with more runnable threads (the TFF worker, running
clients concurrently) gets a larger share of the cores; CPU seconds and the
ratios measured in one process are the numbers to compare.
"""

import json
import resource
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import psutil
import tensorflow as tf

from tff_feddst.benchmarks import arithmetic_rate
from tff_feddst.benchmarks import benchmark_config
from tff_feddst.benchmarks import plain_loop
from tff_feddst.benchmarks import sparse_dense
from tff_feddst.data import client_files
from tff_feddst.methods import fed_dst
from tff_feddst.methods import feddst_methods
from tff_feddst.methods import model_setup
from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.running import evaluation
from tff_feddst.running import execution
from tff_feddst.running import experiment
from tff_feddst.running import kernel_settings
from tff_feddst.running import training_loop


def peak_rss_mb() -> dict[str, float]:
  """Peak resident set sizes in MiB (Linux `ru_maxrss` is in KiB).

  Returns:
    `{'self': this process, 'children': the largest waited-for child, e.g.
    the TFF worker once its context has closed}`.
  """
  return {
      'self': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
      'children': resource.getrusage(
          resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
  }


class _Stopwatch:
  """Wall-clock and CPU seconds of this process plus the TFF worker."""

  def __init__(self, worker_pid: Optional[int]):
    self._worker = psutil.Process(worker_pid) if worker_pid else None

  def _cpu(self) -> float:
    cpu = time.process_time()
    if self._worker is not None:
      times = self._worker.cpu_times()
      cpu += times.user + times.system
    return cpu

  def start(self) -> None:
    self._start = time.perf_counter(), self._cpu(), time.process_time()

  def stop(self) -> tuple[float, float]:
    """Returns `(wall seconds, CPU seconds)` since `start`."""
    return (time.perf_counter() - self._start[0],
            self._cpu() - self._start[1])

  def own_cpu(self) -> float:
    """CPU seconds of this process alone since `start`."""
    return time.process_time() - self._start[2]


def compare_weights(first, second, layout: models.ModelLayout
                    ) -> dict[str, Any]:
  """How far apart two `ModelWeights` of the same model are.

  Args:
    first: `ModelWeights`.
    second: `ModelWeights` of the same structure.
    layout: The model's `ModelLayout`.

  Returns:
    `{'max_abs_weight_difference': largest absolute difference over all
    tensors, 'mask_positions_differing': number of mask bits that differ}`.
  """
  pairs = list(zip(list(first.trainable) + list(first.non_trainable),
                   list(second.trainable) + list(second.non_trainable)))
  differences = [
      float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))))
      for a, b in pairs if np.size(a)]
  mask_differences = sum(
      int(np.sum(np.asarray(first.non_trainable[i]) !=
                 np.asarray(second.non_trainable[i])))
      for i in layout.mask_indices)
  return {'max_abs_weight_difference': max(differences, default=0.0),
          'mask_positions_differing': mask_differences}


def _mean(values: Sequence[float]) -> Optional[float]:
  return float(np.mean(values)) if len(values) else None


def _ratio(numerator: Optional[float],
           denominator: Optional[float]) -> Optional[float]:
  if numerator is None or not denominator:
    return None
  return numerator / denominator


class _Setup:
  """Data, model, schedule and client settings shared by both paths."""

  def __init__(self, config: benchmark_config.BenchmarkConfig):
    settings = config.experiment.resolved()
    self.federated_data = experiment.load_federated_data(settings)
    # The model training starts from (`model_setup.build_model`).
    self.model_fn, self.initial = model_setup.build_model(settings)
    self.schedule = feddst_methods.build_schedule(settings)
    self.client_config = model_setup.build_client_config(settings,
                                                         self.initial)
    self.upload_encoding, self.download_encoding = (
        settings.payload_encodings())
    # The server's bounds on each client, as training uses them.
    self.robust = model_setup.build_robust_aggregation(
        settings, self.federated_data, self.model_fn, self.initial,
        self.client_config)
    self.settings = settings
    self.timing = config.timing
    self.seed = settings.run.seed
    self.num_epochs = settings.client.client_epochs_per_round
    # Set while the paths run: datasets read the examples from these files
    # (`client_files`), as training's do.
    self.client_files = None

  def datasets(self, clients_per_round: int,
               round_num: int) -> list[tf.data.Dataset]:
    sampled = training_loop.sample_clients(
        self.federated_data.client_ids, clients_per_round, self.seed,
        round_num)
    return training_loop.client_datasets(
        self.federated_data, sampled, self.settings.client.client_batch_size,
        self.seed, round_num, self.client_files)

  def examples_per_round(self, clients_per_round: int, round_num: int) -> int:
    sampled = training_loop.sample_clients(
        self.federated_data.client_ids, clients_per_round, self.seed,
        round_num)
    return self.num_epochs * sum(
        self.federated_data.num_train_examples(c) for c in sampled)


def _drain_fn(num_epochs: int) -> Callable[[tf.data.Dataset], tf.Tensor]:
  """A `tf.function` that only iterates a client dataset E epochs."""

  @tf.function
  def drain(dataset):
    return dataset.repeat(num_epochs).reduce(
        tf.constant(0, tf.int64),
        lambda n, batch: n + tf.shape(batch[1], out_type=tf.int64)[0])

  return drain


def _readjust_fn(trainer: client_work.ClientTrainer
                 ) -> Callable[[tf.Tensor], tf.Tensor]:
  """A `tf.function` running one `ClientTrainer.readjust` on its own."""

  @tf.function
  def readjust(drop_fraction):
    return trainer.readjust(drop_fraction)

  return readjust


def run_benchmark(config: benchmark_config.BenchmarkConfig,
                  log: Optional[Callable[[str], None]] = None
                  ) -> dict[str, Any]:
  """Times TFF and plain rounds, phases and a clients-per-round sweep.

  Args:
    config: What to run.
    log: Called with a line of progress now and then (e.g. `print`).

  Returns:
    A JSON-serialisable dict: `config`, `tff`, `plain` (seconds per round,
    examples per second, per-round records), `tff_to_plain_ratio`,
    `tff_to_plain_cpu_ratio`, `breakdown`/`breakdown_cpu` (plain loop,
    seconds per round by phase), `sweep`, `traces` (how often
    `ClientTrainer.update` was traced: building each path, and while rounds
    ran), `message_bytes` (`encoding_sizes` per reported encoding),
    `agreement` (TFF vs plain global model after round 1 and at the end),
    `rounds` (per-round records), `sparse_to_dense` (plain FedDST rounds
    against dense FedAvg rounds on the same clients, `sparse_dense`; None
    when `sparse_dense_rounds` is 0) with its `sparse_to_dense_round_ratio`
    also at the top level, and `peak_rss_mb`.
  """
  log = log or (lambda line: None)
  # The workers' kernels in this process too (before its first TF op), so
  # that the plain loop computes what the worker computes and the two are
  # timed on the same kernels.
  if not kernel_settings.use_bit_exact_kernels():
    log('warning: this process runs other kernels than the TFF worker; '
        'TFF and plain results may differ in the last bits.')
  setup = _Setup(config)
  # Keras models are built before the TFF process (see evaluation.py).
  evaluator = evaluation.Evaluator(setup.model_fn, setup.federated_data)
  element_spec = setup.datasets(1, 1)[0].element_spec
  traces = {}
  traces_before = client_work.update_trace_count()
  plain = plain_loop.PlainFedDst(
      setup.model_fn, setup.initial, element_spec, setup.schedule,
      setup.client_config, upload_encoding=setup.upload_encoding,
      download_encoding=setup.download_encoding, robust=setup.robust,
      min_new_position_votes=setup.settings.server.min_new_position_votes)
  traces['plain_build'] = client_work.update_trace_count() - traces_before
  dense_plain = (sparse_dense.build_dense_plain(
      setup.settings, setup.federated_data, element_spec)
                 if config.timing.sparse_dense_rounds else None)
  with execution.local_execution_context(
      config.timing.max_concurrent_computation_calls or None) as worker, (
          client_files.ClientFiles(setup.federated_data)) as files:
    setup.client_files = files
    watch = _Stopwatch(worker.worker_pid)
    start = time.perf_counter()
    traces_before_build = client_work.update_trace_count()
    process = fed_dst.build_fed_dst(
        setup.model_fn, setup.initial, element_spec, setup.schedule,
        setup.client_config, upload_encoding=setup.upload_encoding,
        download_encoding=setup.download_encoding, robust=setup.robust,
        min_new_position_votes=setup.settings.server.min_new_position_votes)
    build_seconds = time.perf_counter() - start
    traces['tff_build'] = client_work.update_trace_count() - traces_before_build
    traces_before_rounds = client_work.update_trace_count()
    records, plain_state = _timed_rounds(setup, process, plain, evaluator,
                                         watch, log)
    message_sizes = _message_sizes(setup, plain, plain_state)
    sweep = [_sweep_point(setup, process, plain, watch, k, log)
             for k in config.timing.sweep_clients_per_round]
  setup.client_files = None  # Removed: later datasets hold their arrays.
  # A retrace in either path while rounds run would show here: TFF traces
  # its computations in this process when they are built, never per round.
  traces['during_rounds'] = (
      client_work.update_trace_count() - traces_before_rounds)
  traces['plain_tf_function'] = plain.client_update_tracing_count()
  # Plain rounds only (after the trace counts: the dense loop traces).
  sparse_to_dense = dense_plain and sparse_dense.measure(
      plain, dense_plain, lambda r: setup.datasets(
          setup.settings.run.clients_per_round, r),
      _Stopwatch(None), config.timing.warmup_rounds,
      config.timing.sparse_dense_rounds, log)
  timed = [r for r in records if r['timed']]
  result = {
      'config': config.flat(),
      'num_active': list(setup.initial.num_active),
      'tff': _path_summary(timed, 'tff'),
      'plain': _path_summary(timed, 'plain'),
      'tff_build_seconds': build_seconds,
      'breakdown': _breakdown(timed, 'phases'),
      'breakdown_cpu': _breakdown(timed, 'phases_cpu'),
      'sweep': sweep,
      'traces': traces,
      'message_bytes': message_sizes,
      'agreement': {
          **records[-1]['agreement'],
          'first_round': records[0]['agreement'],
          'upload_bytes_equal': all(
              r['tff_upload_bytes'] == r['plain_upload_bytes']
              for r in records),
      },
      'rounds': records,
      'sparse_to_dense': sparse_to_dense,
      'sparse_to_dense_round_ratio': (
          sparse_to_dense['sparse_to_dense_round_ratio']
          if sparse_to_dense else None),
  }
  result['tff_to_plain_ratio'] = _ratio(result['tff']['seconds_per_round'],
                                        result['plain']['seconds_per_round'])
  result['tff_to_plain_cpu_ratio'] = _ratio(
      result['tff']['cpu_seconds_per_round'],
      result['plain']['cpu_seconds_per_round'])
  result['arithmetic'] = _arithmetic(timed, plain.trainer.model)
  result['peak_rss_mb'] = peak_rss_mb()
  return result


def _arithmetic(timed: list[dict], model: tf.keras.Model) -> dict[str, Any]:
  """Each path's dense-equivalent GFLOP per CPU second (`arithmetic_rate`)."""
  flops_per_example = arithmetic_rate.dense_training_flops_per_example(model)
  peak = arithmetic_rate.matmul_gflops()
  examples = sum(r['examples'] for r in timed)
  return {
      'dense_training_flops_per_example': flops_per_example,
      'matmul_gflops_per_cpu_second': peak,
      **{path: arithmetic_rate.rate_summary(
          examples, sum(r[f'{path}_cpu_seconds'] for r in timed),
          flops_per_example, peak) for path in ('tff', 'plain')},
  }


def _timed_rounds(setup: _Setup, process, plain: plain_loop.PlainFedDst,
                  evaluator: evaluation.Evaluator, watch: _Stopwatch,
                  log: Callable[[str], None]
                  ) -> tuple[list[dict[str, Any]], plain_loop.PlainState]:
  """The warm-up and timed rounds, TFF and plain interleaved.

  Returns:
    `(one record per round, the plain loop's state after the last round)`.
  """
  timing = setup.timing
  drain = _drain_fn(setup.num_epochs)
  readjust = _readjust_fn(plain.trainer)
  tff_state = process.initialize()
  plain_state = plain.initialize()
  records = []
  for round_num in range(1, timing.warmup_rounds + timing.timed_rounds + 1):
    is_timed = round_num > timing.warmup_rounds
    k = setup.settings.run.clients_per_round
    tff_datasets = setup.datasets(k, round_num)
    watch.start()
    tff_output = process.next(tff_state, tff_datasets)
    tff_seconds, tff_cpu_seconds = watch.stop()
    tff_python_cpu_seconds = watch.own_cpu()
    tff_state = tff_output.state

    timer = plain_loop.PhaseTimer()
    with timer.phase('data_input'):
      plain_datasets = setup.datasets(k, round_num)
    watch.start()
    plain_state, plain_metrics = plain.next(plain_state, plain_datasets,
                                            timer)
    plain_seconds, plain_cpu_seconds = watch.stop()
    should_readjust = plain_metrics['should_readjust']
    if is_timed:
      with timer.phase('data_iteration'):
        for dataset in setup.datasets(k, round_num):
          drain(dataset).numpy()
      if should_readjust:
        drop = plain.instructions(round_num).drop_fraction
        readjust(drop).numpy()  # Traced outside the timer.
        with timer.phase('readjust_call'):
          readjust(drop).numpy()
      with timer.phase('evaluation'):
        evaluator.evaluate(plain.get_model_weights(plain_state))
    records.append({
        'round': round_num,
        'timed': is_timed,
        'clients': k,
        'should_readjust': should_readjust,
        'examples': setup.examples_per_round(k, round_num),
        'tff_seconds': tff_seconds,
        'plain_seconds': plain_seconds,
        'tff_cpu_seconds': tff_cpu_seconds,
        'tff_python_cpu_seconds': tff_python_cpu_seconds,
        'plain_cpu_seconds': plain_cpu_seconds,
        'phases': dict(timer.seconds),
        'phases_cpu': dict(timer.cpu_seconds),
        'tff_upload_bytes': int(
            tff_output.metrics['aggregator']['upload_bytes']),
        'plain_upload_bytes': plain_metrics['upload_bytes'],
        'tff_download_bytes': int(
            tff_output.metrics['distributor']['download_bytes']),
        'plain_download_bytes': plain_metrics['download_bytes'],
        'agreement': compare_weights(
            process.get_model_weights(tff_state),
            plain.get_model_weights(plain_state), setup.initial.layout),
    })
    log(f'round {round_num}{"" if is_timed else " (warm-up)"}: '
        f'tff {tff_seconds:.2f} s ({tff_cpu_seconds:.2f} CPU s), plain '
        f'{plain_seconds:.2f} s ({plain_cpu_seconds:.2f} CPU s)'
        f'{", readjust" if should_readjust else ""}')
  return records, plain_state


def _sweep_point(setup: _Setup, process, plain: plain_loop.PlainFedDst,
                 watch: _Stopwatch, k: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
  """Seconds per round of both paths with `k` clients, from the start."""
  tff_state = process.initialize()
  plain_state = plain.initialize()
  times = {'tff': [], 'plain': [], 'tff_cpu': [], 'plain_cpu': []}
  examples = []
  for round_num in range(1, setup.timing.sweep_rounds + 1):
    tff_datasets = setup.datasets(k, round_num)
    watch.start()
    tff_state = process.next(tff_state, tff_datasets).state
    wall, cpu = watch.stop()
    times['tff'].append(wall)
    times['tff_cpu'].append(cpu)
    plain_datasets = setup.datasets(k, round_num)
    watch.start()
    plain_state, _ = plain.next(plain_state, plain_datasets)
    wall, cpu = watch.stop()
    times['plain'].append(wall)
    times['plain_cpu'].append(cpu)
    examples.append(setup.examples_per_round(k, round_num))
  point = {
      'clients_per_round': k,
      'tff_seconds_per_round': _mean(times['tff']),
      'plain_seconds_per_round': _mean(times['plain']),
      'tff_to_plain_ratio': _ratio(_mean(times['tff']),
                                   _mean(times['plain'])),
      'tff_cpu_seconds_per_round': _mean(times['tff_cpu']),
      'plain_cpu_seconds_per_round': _mean(times['plain_cpu']),
      'tff_to_plain_cpu_ratio': _ratio(_mean(times['tff_cpu']),
                                       _mean(times['plain_cpu'])),
      'examples_per_round': _mean(examples),
  }
  log(f'sweep {k} clients: tff {point["tff_seconds_per_round"]:.2f} s, '
      f'plain {point["plain_seconds_per_round"]:.2f} s per round')
  return point


def encoding_sizes(kernels: Sequence[tf.Tensor], masks: Sequence[tf.Tensor],
                   dense: Sequence[tf.Tensor], num_active: Sequence[int],
                   payload_encoding: encoding.PayloadEncoding
                   ) -> dict[str, Any]:
  """Bytes of one client's upload in an encoding, and the information bound.

  Args:
    kernels: The client's kernels after local training.
    masks: Its masks (changed by a readjustment, or not).
    dense: Its dense parameters.
    num_active: Active weights per kernel.
    payload_encoding: The encoding.

  Returns:
    `upload_bytes` (payload plus the 4-byte weight, masks sent),
    `upload_bytes_masks_unchanged` (when the masks equal the global ones:
    smaller only for `masks_only_when_changed`), `mask_bytes` (the mask part
    when sent, including the 4-byte length of a `CodedPayload`),
    `bound_bytes` = (nnz * value_bits + log2 C(n, nnz)) / 8 over all
    prunable positions, `bound_bytes_per_layer` (the mask term summed over
    layers), `known_mask_bound_bytes` = nnz * value_bits / 8, and the ratios
    of the upload to each bound.
  """
  kernel_sizes = [int(np.prod(m.shape)) for m in masks]
  dense_bytes = 4 * sum(int(np.prod(d.shape)) for d in dense)
  # Values are sent for the masks' ones (fewer than the capacity
  # `num_active` for a method whose masks thin).
  value_bytes = (int(encoding.num_ones(masks)) * payload_encoding.value_bits
                 // 8)

  def upload_bytes(include_masks: bool) -> int:
    payload = encoding.encode_payload(kernels, masks, dense, num_active,
                                      payload_encoding, include_masks)
    # Left-out masks are the global ones, equal to `masks` here.
    return (int(encoding.payload_num_bytes(payload, masks))
            + aggregation.WEIGHT_BYTES)

  with_masks = upload_bytes(True)
  without_masks = (upload_bytes(False)
                   if payload_encoding.masks_only_when_changed else with_masks)
  bits = encoding.information_bound_bits(kernel_sizes, num_active,
                                         payload_encoding.value_bits)
  bits_per_layer = encoding.information_bound_bits(
      kernel_sizes, num_active, payload_encoding.value_bits, per_layer=True)
  known_mask_bytes = value_bytes
  return {
      'encoding': payload_encoding.name,
      'upload_bytes': with_masks,
      'upload_bytes_masks_unchanged': without_masks,
      'mask_bytes': with_masks - value_bytes - dense_bytes -
                    aggregation.WEIGHT_BYTES,
      'bound_bytes': bits / 8,
      'bound_bytes_per_layer': bits_per_layer / 8,
      'known_mask_bound_bytes': known_mask_bytes,
      'ratio_to_bound': with_masks / (bits / 8),
      'ratio_to_bound_per_layer': with_masks / (bits_per_layer / 8),
      'ratio_masks_unchanged_to_known_mask_bound':
          without_masks / known_mask_bytes,
  }


def _message_sizes(setup: '_Setup', plain: plain_loop.PlainFedDst,
                   state: plain_loop.PlainState) -> list[dict[str, Any]]:
  """`encoding_sizes` of a real upload: one client readjusting from `state`."""
  round_num = state.round_num + 1
  dataset = setup.datasets(1, round_num)[0]
  instructions = client_work.RoundInstructions(
      should_readjust=tf.constant(True),
      drop_fraction=tf.constant(setup.settings.readjustment.drop_fraction,
                                tf.float32))
  trainer = plain.trainer
  trainer.update(state.weights, dataset, instructions)
  model = trainer.model
  layout = setup.initial.layout
  trainable, non_trainable = (model.trainable_variables,
                              model.non_trainable_variables)
  kernels = [trainable[i].read_value() for i in layout.kernel_indices]
  masks = [non_trainable[i].read_value() for i in layout.mask_indices]
  dense = ([trainable[i].read_value() for i in layout.dense_trainable_indices]
           + [non_trainable[i].read_value()
              for i in layout.dense_non_trainable_indices])
  return [encoding_sizes(kernels, masks, dense, setup.initial.num_active,
                         encoding.PayloadEncoding.parse(name))
          for name in setup.timing.report_encodings]


def _path_summary(timed: list[dict], path: str) -> dict[str, Any]:
  key, cpu_key = f'{path}_seconds', f'{path}_cpu_seconds'
  seconds = [r[key] for r in timed]
  examples = sum(r['examples'] for r in timed)
  return {
      'seconds_per_round': _mean(seconds),
      'seconds_per_round_readjust': _mean(
          [r[key] for r in timed if r['should_readjust']]),
      'seconds_per_round_no_readjust': _mean(
          [r[key] for r in timed if not r['should_readjust']]),
      'cpu_seconds_per_round': _mean([r[cpu_key] for r in timed]),
      'python_cpu_seconds_per_round': _mean(
          [r[f'{path}_python_cpu_seconds'] for r in timed
           if f'{path}_python_cpu_seconds' in r]),
      'examples_per_second': examples / sum(seconds) if sum(seconds) else None,
  }


def _breakdown(timed: list[dict], phases_key: str) -> dict[str, Any]:
  """Seconds per round by phase, averaged over the timed plain rounds.

  Args:
    timed: The timed round records.
    phases_key: 'phases' (wall-clock) or 'phases_cpu' (CPU seconds).

  Returns:
    `seconds_per_round` by phase, their total, the client update per client
    on readjusting and other rounds, and one readjust call.
  """
  def phase_mean(name):
    return float(np.mean([r[phases_key].get(name, 0.0) for r in timed]))

  readjusting_clients = sum(r['clients'] for r in timed if r['should_readjust'])
  readjust_per_call = _mean([r[phases_key]['readjust_call'] for r in timed
                             if 'readjust_call' in r[phases_key]])
  readjustment = (readjust_per_call or 0.0) * readjusting_clients / len(timed)
  data_iteration = phase_mean('data_iteration')
  client_update = phase_mean(plain_loop.CLIENT_UPDATE)
  phases = {
      'data_input': phase_mean('data_input') + data_iteration,
      'client_training': client_update - data_iteration - readjustment,
      'readjustment': readjustment,
      'broadcast': phase_mean(plain_loop.BROADCAST),
      'aggregation': phase_mean(plain_loop.AGGREGATION),
      'server_update': phase_mean(plain_loop.SERVER_UPDATE),
      'evaluation': phase_mean('evaluation'),
  }
  return {
      'seconds_per_round': phases,
      'total_seconds_per_round': sum(phases.values()),
      'client_update_seconds_per_client': {
          'readjust_rounds': _mean([
              r[phases_key][plain_loop.CLIENT_UPDATE] / r['clients']
              for r in timed if r['should_readjust']]),
          'other_rounds': _mean([
              r[phases_key][plain_loop.CLIENT_UPDATE] / r['clients']
              for r in timed if not r['should_readjust']]),
      },
      'readjust_seconds_per_call': readjust_per_call,
      'dataset_build_seconds_per_round': phase_mean('data_input'),
      'data_iteration_seconds_per_round': data_iteration,
  }


def _fmt(value: Optional[float], digits: int = 3) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def format_report(result: dict[str, Any]) -> str:
  """Renders a `run_benchmark` result as plain-text tables."""
  config = result['config']
  lines = [
      f'FedDST round benchmark: {config["dataset"]}, {config["model"]}, '
      f'{config["clients_per_round"]} clients/round, '
      f'S={config["target_sparsity"]}, E={config["client_epochs_per_round"]}, '
      f'batch {config["client_batch_size"]}; {config["timed_rounds"]} timed '
      f'rounds after {config["warmup_rounds"]} warm-up, TFF and plain '
      'interleaved in one process',
      '',
      f'{"path":<7}{"s/round":>9}{"readjust":>10}{"other":>9}'
      f'{"CPU s/round":>13}{"examples/s":>12}',
  ]
  for path in ('tff', 'plain'):
    summary = result[path]
    lines.append(
        f'{path:<7}{_fmt(summary["seconds_per_round"]):>9}'
        f'{_fmt(summary["seconds_per_round_readjust"]):>10}'
        f'{_fmt(summary["seconds_per_round_no_readjust"]):>9}'
        f'{_fmt(summary["cpu_seconds_per_round"]):>13}'
        f'{_fmt(summary["examples_per_second"], 0):>12}')
  agreement = result['agreement']
  lines += [
      f'TFF/plain: {_fmt(result["tff_to_plain_ratio"])} wall, '
      f'{_fmt(result["tff_to_plain_cpu_ratio"])} CPU   TFF build '
      f'{_fmt(result["tff_build_seconds"], 1)} s',
      f'TFF vs plain global model: max |difference| '
      f'{agreement["first_round"]["max_abs_weight_difference"]:.1e} and '
      f'{agreement["first_round"]["mask_positions_differing"]} mask bits '
      f'differing after round 1; '
      f'{agreement["max_abs_weight_difference"]:.1e} and '
      f'{agreement["mask_positions_differing"]} after the last round',
      f'traces of ClientTrainer.update: {result["traces"]}',
      sparse_dense.format_line(result.get('sparse_to_dense')),
      format_arithmetic(result['arithmetic']),
      f'peak RSS: {result["peak_rss_mb"]["self"]:.0f} MiB (this process), '
      f'{result["peak_rss_mb"]["children"]:.0f} MiB (TFF worker)',
      '',
      f'plain loop by phase{"":<13}{"s/round":>9}{"share":>8}'
      f'{"CPU s/round":>13}{"share":>8}',
  ]
  wall, cpu = result['breakdown'], result['breakdown_cpu']
  for name, seconds in wall['seconds_per_round'].items():
    cpu_seconds = cpu['seconds_per_round'][name]
    lines.append(
        f'  {name:<30}{seconds:>9.3f}'
        f'{100 * seconds / wall["total_seconds_per_round"]:>7.1f}%'
        f'{cpu_seconds:>13.3f}'
        f'{100 * cpu_seconds / cpu["total_seconds_per_round"]:>7.1f}%')
  per_client = wall['client_update_seconds_per_client']
  lines.append(
      f'  client update per client: {_fmt(per_client["readjust_rounds"])} s '
      f'on readjust rounds, {_fmt(per_client["other_rounds"])} s on others; '
      f'one readjust call {_fmt(wall["readjust_seconds_per_call"])} s')
  lines += [''] + format_message_bytes(result)
  if result['sweep']:
    lines += ['', f'{"clients":>8}{"tff s/round":>13}{"plain s/round":>15}'
              f'{"ratio":>7}{"CPU ratio":>11}{"tff s/client":>14}']
    for point in result['sweep']:
      k = point['clients_per_round']
      tff_seconds = point['tff_seconds_per_round']
      lines.append(
          f'{k:>8}{_fmt(tff_seconds):>13}'
          f'{_fmt(point["plain_seconds_per_round"]):>15}'
          f'{_fmt(point["tff_to_plain_ratio"]):>7}'
          f'{_fmt(point["tff_to_plain_cpu_ratio"]):>11}'
          f'{_fmt(tff_seconds / k if tff_seconds else None):>14}')
  return '\n'.join(lines)


def format_arithmetic(arithmetic: dict[str, Any]) -> str:
  """One line: each path's arithmetic rate against the matmul rate."""
  paths = ', '.join(
      f'{path} {_fmt(arithmetic[path]["dense_gflops_per_cpu_second"], 1)} '
      f'({_fmt(arithmetic[path]["fraction_of_matmul_rate"], 2)} of it; at most '
      f'{_fmt(arithmetic[path]["speedup_bound"], 2)}x faster)'
      for path in ('tff', 'plain'))
  return (f'dense-equivalent GFLOP per CPU second '
          f'({arithmetic["dense_training_flops_per_example"] / 1e6:.2f} MFLOP '
          f'an example; a 1024^2 matmul here: '
          f'{_fmt(arithmetic["matmul_gflops_per_cpu_second"], 1)}): {paths}')


def format_message_bytes(result: dict[str, Any]) -> list[str]:
  """The upload-size table of a result with `message_bytes`, as lines."""
  lines = [
      f'upload per client per round (a real client update, '
      f'{sum(result["num_active"])} active of the prunable positions):',
      f'  {"encoding":<34}{"readjust":>10}{"other":>9}{"masks":>8}'
      f'{"bound":>10}{"ratio":>7}{"per-layer":>10}{"other/nnz":>10}']
  for sizes in result['message_bytes']:
    lines.append(
        f'  {sizes["encoding"]:<34}{sizes["upload_bytes"]:>10}'
        f'{sizes["upload_bytes_masks_unchanged"]:>9}{sizes["mask_bytes"]:>8}'
        f'{sizes["bound_bytes"]:>10.0f}{sizes["ratio_to_bound"]:>7.3f}'
        f'{sizes["ratio_to_bound_per_layer"]:>10.3f}'
        f'{sizes["ratio_masks_unchanged_to_known_mask_bound"]:>10.3f}')
  return lines


def measure_message_bytes(config: benchmark_config.BenchmarkConfig,
                          log: Optional[Callable[[str], None]] = None
                          ) -> dict[str, Any]:
  """Upload sizes of a real client update, with nothing timed (no TFF).

  Runs `warmup_rounds + timed_rounds` plain-TF rounds of
  `clients_per_round` clients from the initial model, then one client's
  readjusting update, and measures `encoding_sizes` of its upload in every
  `config.timing.report_encodings`.

  Args:
    config: What to run.
    log: Called with a line of progress now and then.

  Returns:
    `config`, `num_active` and `message_bytes` as in `run_benchmark`.
  """
  log = log or (lambda line: None)
  setup = _Setup(config)
  element_spec = setup.datasets(1, 1)[0].element_spec
  plain = plain_loop.PlainFedDst(setup.model_fn, setup.initial, element_spec,
                                 setup.schedule, setup.client_config)
  state = plain.initialize()
  timing = config.timing
  for round_num in range(1, timing.warmup_rounds + timing.timed_rounds + 1):
    state, _ = plain.next(state, setup.datasets(
        config.experiment.run.clients_per_round, round_num))
    log(f'plain round {round_num} done')
  return {'config': config.flat(),
          'num_active': list(setup.initial.num_active),
          'message_bytes': _message_sizes(setup, plain, state)}


def write_json(result: dict[str, Any], path: str) -> None:
  """Writes a `run_benchmark` result as JSON (refuses to overwrite)."""
  with open(path, 'x') as f:
    json.dump(result, f, indent=2, default=float)
    f.write('\n')

