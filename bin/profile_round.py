"""Where a benchmark round's CPU time goes, phase by phase, in one process.

  python bin/profile_round.py --clients_per_round=4 --client_parts_reps=3

Takes bin/benchmark.py's settings and defaults (the MNIST net, iid
Fashion-MNIST, S=0.8, E=5, float32+bitmap both ways) and runs its rounds as
plain TF (`plain_loop.PlainFedDst`: the TFF process's own computations, the
server's screening and exact sums included, one client after the other) in
this process with the workers' bit-exact kernels (one intra-op thread,
AVX2). It prints

- CPU seconds per round of each phase of `--profile_rounds` rounds after a
  warm-up round (a benchmark round alternates: readjusting, not), with the
  per-client phases summed over the round's clients; evaluation on the
  global test set is timed too (bin/train.py runs it every --eval_every
  rounds, bin/benchmark.py's TFF rounds do not);
- one client's update split into parts, each run on its own, the median of
  `--client_parts_reps` runs: the input pipeline alone (the counting pass
  and E passes), forward + backward alone (Keras model, gradient tape), the
  whole update with and without a readjustment, and the per-client fixed
  costs (decoding the broadcast, encoding the upload in float32+bitmap and
  in float16+rice, the upload digest).

CPU seconds are `time.process_time` (all threads of this process), less
sensitive than wall time to other jobs; on a loaded machine they still grow
(caches, frequency), so compare shares, measured in one run. TFF's own
overhead is what bin/benchmark.py's `tff_to_plain_cpu_ratio` says.
"""

import collections
import contextlib
import os
import sys
import time
from typing import Callable, Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

import numpy as np
import tensorflow as tf

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.benchmarks import benchmark_config
from tff_feddst.benchmarks import benchmarking
from tff_feddst.benchmarks import plain_loop
from tff_feddst.data import client_files
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import robust_aggregation
from tff_feddst.process import upload_binding
from tff_feddst.process import upload_screening
from tff_feddst.running import evaluation
from tff_feddst.running import kernel_settings

experiment_flags.define_flags(defaults=benchmark_config.BENCHMARK_DEFAULTS)
flags.DEFINE_integer('profile_rounds', 2, 'Rounds timed by phase, after one '
                     'warm-up round.')
flags.DEFINE_integer('client_parts_reps', 3, 'Runs of each part of one '
                     'client update (the median is printed; 0: none).')

FLAGS = flags.FLAGS


class CpuPhases:
  """CPU seconds of this process per named phase, summed over calls."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.calls = collections.defaultdict(int)

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Adds the CPU time of the `with` block to phase `name`."""
    start = time.process_time()
    try:
      yield
    finally:
      self.seconds[name] += time.process_time() - start
      self.calls[name] += 1


def _wait(structure) -> None:
  """Waits for every tensor of `structure` (None entries skipped)."""
  for tensor in tf.nest.flatten(structure):
    if tensor is not None and hasattr(tensor, 'numpy'):
      tensor.numpy()


def profile_round(setup, plain, evaluator, state, round_num: int,
                  phases: CpuPhases):
  """One plain round, timed by phase into `phases`; returns the new state.

  The same calls as `PlainFedDst.next` (with the server's screening pass,
  `PlainServer.aggregate_screened`, split into its two passes).
  """
  server, trainer = plain.server, plain.trainer
  k = setup.settings.run.clients_per_round
  instructions = server.instructions(round_num)
  targets = server.targets(round_num)
  with phases.phase('server: encode the broadcast'):
    payload, _ = server.encode_global(state.weights)
    _wait(payload)
  with phases.phase('server: round digest'):
    round_digest = server.round_digest(state.weights)
    _wait(round_digest)
  with phases.phase('input: build the datasets'):
    datasets = setup.datasets(k, round_num)
  uploads = []
  for dataset in datasets:
    with phases.phase('client: decode the broadcast'):
      client_weights = server.decode_global(payload)
      _wait(client_weights)
    with phases.phase('client: update (train, readjust, encode)'):
      upload, weight, _ = trainer.update(client_weights, dataset,
                                         instructions)
      weight = weight.numpy()
    if round_digest is not None:
      with phases.phase('client: upload digest'):
        digest = server.weights_digest(client_weights)
        _wait(digest)
      upload = upload_binding.BoundUpload(upload, digest)
    uploads.append((upload, weight))
  aggregate = server.zero_aggregate()
  round_bound = None
  robust = server.robust
  if server.screens_uploads:
    with phases.phase('server: screening pass (norms, replays)'):
      reference = (server._reference_of(state.weights)  # pylint: disable=protected-access
                   if robust.clip_updates else None)
      direction_shapes = server._direction_shapes  # pylint: disable=protected-access
      counts = upload_screening.zero_counts(direction_shapes)
      for upload, weight in uploads:
        counts = server._screen(counts, upload, weight, targets, reference,  # pylint: disable=protected-access
                                round_digest)
      bound, replay_counts, weight_cap = (
          upload_screening.screening_findings(counts, robust))
      direction_sum = (upload_screening.direction_sum_of(
          counts, *direction_shapes) if direction_shapes else None)
      round_bound = robust_aggregation.RoundBound(
          reference, bound, replay_counts if robust.reject_replays else None,
          weight_cap if robust.caps_weights_by_round else None,
          direction_sum)
      _wait(round_bound)
  with phases.phase('server: checks and exact sums'):
    for upload, weight in uploads:
      aggregate = server.accumulate(aggregate, upload, weight, targets,
                                    round_bound, round_digest)
    _wait(aggregate)
  with phases.phase('server: finalizer (step, re-prune)'):
    state, _ = server.server_update(state, aggregate)
  with phases.phase('server: evaluation (global test set)'):
    evaluator.evaluate(plain.get_model_weights(state))
  return state


def client_parts(setup, plain, reps: int) -> dict[str, float]:
  """Median CPU seconds of each part of one client's update (module doc)."""
  server, trainer = plain.server, plain.trainer
  model, layout = trainer.model, setup.initial.layout
  num_epochs = setup.num_epochs
  state = plain.initialize()
  payload, _ = server.encode_global(state.weights)
  client_weights = server.decode_global(payload)
  global_masks = [client_weights.non_trainable[i] for i in layout.mask_indices]
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def instructions(readjust):
    return client_work.RoundInstructions(tf.constant(readjust),
                                         tf.constant(0.3, tf.float32))

  @tf.function
  def input_only(dataset):
    count = dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    with tf.control_dependencies([count]):
      batches = iter(dataset.repeat(num_epochs))
    total = tf.constant(0.0)
    for x, _ in batches:
      total += x[0, 0, 0, 0]
    return total

  @tf.function
  def forward_backward(dataset):
    count = dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    with tf.control_dependencies([count]):
      batches = iter(dataset.repeat(num_epochs))
    total = tf.constant(0.0)
    for x, y in batches:
      with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
      gradients = tape.gradient(loss, model.trainable_variables)
      total += tf.add_n([tf.reduce_sum(g) for g in gradients])
    return total

  float16_rice = encoding.PayloadEncoding.parse('float16+rice')

  @tf.function
  def encode_upload():
    return trainer.encoded_upload(global_masks)

  @tf.function
  def encode_float16_rice():
    return client_work.encode_weights(model, layout, trainer.num_active,
                                      payload_encoding=float16_rice)

  parts: dict[str, Callable[[tf.data.Dataset], object]] = {
      'update, no readjustment': lambda d: trainer.update(
          client_weights, d, instructions(False)),
      'update, readjustment': lambda d: trainer.update(
          client_weights, d, instructions(True)),
      'input pipeline only': input_only,
      'forward + backward only': forward_backward,
      'decode the broadcast': lambda d: server.decode_global(payload),
      f'encode the upload ({trainer.upload_encoding.name})':
          lambda d: encode_upload(),
      'encode the upload (float16+rice)': lambda d: encode_float16_rice(),
      'upload digest': lambda d: upload_binding.weights_digest(
          client_weights, layout),
  }
  seconds = collections.defaultdict(list)
  for rep in range(reps + 1):  # The first is a warm-up (tracing).
    for name, part in parts.items():
      dataset = setup.datasets(1, rep + 2)[0]
      start = time.process_time()
      _wait(part(dataset))
      if rep:
        seconds[name].append(time.process_time() - start)
  return {name: float(np.median(values)) for name, values in seconds.items()}


def main(argv):
  if len(argv) > 1:
    sys.exit(f'profile_round.py: error: unexpected arguments {argv[1:]}; '
             'all settings are --flags.')
  if FLAGS.profile_rounds < 1 or FLAGS.client_parts_reps < 0:
    sys.exit('profile_round.py: error: --profile_rounds must be >= 1 and '
             '--client_parts_reps >= 0.')
  # The workers' kernels, before TensorFlow's first op.
  kernel_settings.use_bit_exact_kernels()
  try:
    config = benchmark_config.BenchmarkConfig(
        experiment=experiment_flags.settings_from_flags(),
        timing=benchmark_config.TimingSettings(sweep_clients_per_round=()))
  except ValueError as error:
    sys.exit(f'profile_round.py: error: {error}')
  setup = benchmarking._Setup(config)  # pylint: disable=protected-access
  evaluator = evaluation.Evaluator(setup.model_fn, setup.federated_data)
  with client_files.ClientFiles(setup.federated_data) as files:
    setup.client_files = files
    element_spec = setup.datasets(1, 1)[0].element_spec
    plain = plain_loop.PlainFedDst(
        setup.model_fn, setup.initial, element_spec, setup.schedule,
        setup.client_config, upload_encoding=setup.upload_encoding,
        download_encoding=setup.download_encoding, robust=setup.robust,
        min_new_position_votes=setup.settings.server.min_new_position_votes)
    state = profile_round(setup, plain, evaluator, plain.initialize(), 1,
                          CpuPhases())
    phases = CpuPhases()
    for round_num in range(2, FLAGS.profile_rounds + 2):
      state = profile_round(setup, plain, evaluator, state, round_num, phases)
    parts = (client_parts(setup, plain, FLAGS.client_parts_reps)
             if FLAGS.client_parts_reps else {})
  rounds = FLAGS.profile_rounds
  k = setup.settings.run.clients_per_round
  total = sum(phases.seconds.values())
  print(f'CPU seconds per round, {rounds} rounds after a warm-up, {k} '
        f'clients x {setup.num_epochs} epochs (one process, plain TF)')
  for name, seconds in phases.seconds.items():
    print(f'  {name:<44}{seconds / rounds:>9.3f}{100 * seconds / total:>7.1f}%'
          f'  ({phases.calls[name] // rounds} calls)')
  print(f'  {"total":<44}{total / rounds:>9.3f}')
  if parts:
    steps = setup.num_epochs * -(-600 // setup.settings.client.
                                 client_batch_size)
    base = parts['update, no readjustment']
    print(f'one client ({FLAGS.client_parts_reps} runs, median CPU s; '
          f'share of an update without readjustment)')
    for name, seconds in parts.items():
      print(f'  {name:<44}{seconds:>9.4f}{100 * seconds / base:>7.1f}%')
    print(f'  (an update of 600 examples runs {steps} steps)')


if __name__ == '__main__':
  cli.run(main)
