"""Times FedDST rounds in TFF against the same work in plain TensorFlow.

  python bin/benchmark.py --json_output=/tmp/benchmark.json
  python bin/benchmark.py --total_clients=10 --examples_per_client=64 \
      --clients_per_round=3 --client_epochs_per_round=1 --timed_rounds=2 \
      --sweep_clients_per_round=2,4

Prints seconds per round of each path and their ratio, examples per second,
peak RSS, the plain loop's time by phase and a clients-per-round sweep
(`tff_feddst/benchmarks/benchmarking.py` says what each number is). Timings are noisy on a
shared machine; compare the ratios, which are measured in one process.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

from tff_feddst.benchmarks import benchmarking
from tff_feddst.data import file_formats
from tff_feddst.running import experiment

_DEFAULTS = benchmarking.BenchmarkConfig()
_CHOICES = experiment.setting_choices()

flags.DEFINE_enum('dataset', _DEFAULTS.dataset, _CHOICES['dataset'],
                  'Data set (split iid).')
flags.DEFINE_string('data_dir', None, 'Directory of the data set files '
                    '(default: the standard location).')
flags.DEFINE_enum('model', _DEFAULTS.model, _CHOICES['model'], 'Model.')
flags.DEFINE_integer('total_clients', _DEFAULTS.total_clients,
                     'Clients the training set is split over (iid).')
flags.DEFINE_integer('examples_per_client', None,
                     'Training examples per client (default: all, evenly).')
flags.DEFINE_integer('clients_per_round', _DEFAULTS.clients_per_round,
                     'Clients per timed round.')
flags.DEFINE_float('target_sparsity', _DEFAULTS.target_sparsity,
                   'Fraction of zeros in prunable kernels.')
flags.DEFINE_enum('sparsity_distribution', _DEFAULTS.sparsity_distribution,
                  _CHOICES['sparsity_distribution'], 'Per-layer densities.')
flags.DEFINE_integer('client_epochs_per_round',
                     _DEFAULTS.client_epochs_per_round, 'Local epochs E.')
flags.DEFINE_integer('client_batch_size', _DEFAULTS.client_batch_size,
                     'Client minibatch size.')
flags.DEFINE_float('drop_fraction', _DEFAULTS.drop_fraction,
                   'Readjustment ratio alpha (constant).')
flags.DEFINE_integer('rounds_between_readjustments',
                     _DEFAULTS.rounds_between_readjustments,
                     'R: rounds t with (t-1) % R == 0 readjust.')
flags.DEFINE_integer('warmup_rounds', _DEFAULTS.warmup_rounds,
                     'Untimed rounds before the timed ones.')
flags.DEFINE_integer('timed_rounds', _DEFAULTS.timed_rounds, 'Timed rounds.')
flags.DEFINE_list('sweep_clients_per_round',
                  [str(k) for k in _DEFAULTS.sweep_clients_per_round],
                  'Clients per round of the sweep (empty: no sweep).')
flags.DEFINE_integer('sweep_rounds', _DEFAULTS.sweep_rounds,
                     'Timed rounds per sweep point.')
flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seed.')
flags.DEFINE_integer('max_concurrent_computation_calls',
                     _DEFAULTS.max_concurrent_computation_calls,
                     'TFF worker concurrency limit (<= 0: none).')
flags.DEFINE_string('upload_encoding', _DEFAULTS.upload_encoding,
                    'Upload encoding of both paths: value dtype '
                    '(float32|float16), mask code (bitmap|rice), optionally '
                    'changed_masks_only, joined by +.')
flags.DEFINE_string('download_encoding', _DEFAULTS.download_encoding,
                    'Broadcast encoding of both paths (value dtype + mask '
                    'code).')
flags.DEFINE_list('report_encodings', list(_DEFAULTS.report_encodings),
                  'Encodings whose upload sizes are reported.')
flags.DEFINE_string('json_output', None,
                    'Also write the full result as JSON here (a new file).')

flags.DEFINE_bool('message_bytes_only', False,
                  'Only measure upload sizes in --report_encodings on a real '
                  'client update after --warmup_rounds + --timed_rounds '
                  'plain rounds; time nothing, run no TFF.')

FLAGS = flags.FLAGS


def config_from_flags() -> benchmarking.BenchmarkConfig:
  """Turns the flags into a `BenchmarkConfig`."""
  return benchmarking.BenchmarkConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, model=FLAGS.model,
      total_clients=FLAGS.total_clients,
      examples_per_client=FLAGS.examples_per_client,
      clients_per_round=FLAGS.clients_per_round,
      target_sparsity=FLAGS.target_sparsity,
      sparsity_distribution=FLAGS.sparsity_distribution,
      client_epochs_per_round=FLAGS.client_epochs_per_round,
      client_batch_size=FLAGS.client_batch_size,
      drop_fraction=FLAGS.drop_fraction,
      rounds_between_readjustments=FLAGS.rounds_between_readjustments,
      warmup_rounds=FLAGS.warmup_rounds, timed_rounds=FLAGS.timed_rounds,
      sweep_clients_per_round=tuple(
          int(k) for k in FLAGS.sweep_clients_per_round),
      sweep_rounds=FLAGS.sweep_rounds, seed=FLAGS.seed,
      max_concurrent_computation_calls=FLAGS.max_concurrent_computation_calls,
      upload_encoding=FLAGS.upload_encoding,
      download_encoding=FLAGS.download_encoding,
      report_encodings=tuple(FLAGS.report_encodings))


def main(argv):
  if len(argv) > 1:
    sys.exit(f'benchmark.py: error: unexpected arguments {argv[1:]}; all '
             'settings are --flags.')
  if FLAGS.json_output and os.path.exists(FLAGS.json_output):
    sys.exit(f'benchmark.py: error: --json_output={FLAGS.json_output} '
             'exists; choose a new file.')
  try:
    config = config_from_flags()
  except ValueError as error:
    sys.exit(f'benchmark.py: error: {error}')
  log = lambda line: print(line, file=sys.stderr, flush=True)
  try:
    if FLAGS.message_bytes_only:
      result = benchmarking.measure_message_bytes(config, log=log)
    else:
      result = benchmarking.run_benchmark(config, log=log)
  except file_formats.DataFileError as error:
    sys.exit(f'benchmark.py: error: {error}')
  if FLAGS.message_bytes_only:
    print('\n'.join(benchmarking.format_message_bytes(result)))
  else:
    print(benchmarking.format_report(result))
  if FLAGS.json_output:
    benchmarking.write_json(result, FLAGS.json_output)


if __name__ == '__main__':
  cli.run(main)
