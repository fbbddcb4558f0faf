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

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.benchmarks import benchmark_config
from tff_feddst.data import file_formats
from tff_feddst.running import settings as settings_lib

# Every training setting, with the benchmark's defaults where they differ,
# and the timing settings.
experiment_flags.define_flags(defaults=benchmark_config.BENCHMARK_DEFAULTS)
experiment_flags.define_flags(benchmark_config.TimingSettings)
flags.DEFINE_string('json_output', None,
                    'Also write the full result as JSON here (a new file).')
flags.DEFINE_bool('message_bytes_only', False,
                  'Only measure upload sizes in --report_encodings on a real '
                  'client update after --warmup_rounds + --timed_rounds '
                  'plain rounds; time nothing, run no TFF.')

FLAGS = flags.FLAGS


def config_from_flags() -> benchmark_config.BenchmarkConfig:
  """Turns the flags into a `BenchmarkConfig`."""
  return benchmark_config.BenchmarkConfig(
      experiment=experiment_flags.settings_from_flags(),
      timing=experiment_flags.settings_from_flags(benchmark_config.TimingSettings))


def check_flags() -> None:
  """Refuses bad settings before TensorFlow loads."""
  try:
    config_from_flags()
  except ValueError as error:
    sys.exit(f'benchmark.py: error: {error}')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'benchmark.py: error: unexpected arguments {argv[1:]}; all '
             'settings are --flags.')
  if FLAGS.json_output and os.path.exists(FLAGS.json_output):
    sys.exit(f'benchmark.py: error: --json_output={FLAGS.json_output} '
             'exists; choose a new file.')
  config = config_from_flags()  # check_flags has refused bad values.
  from tff_feddst.benchmarks import benchmarking  # pylint: disable=g-import-not-at-top
  log = lambda line: print(line, file=sys.stderr, flush=True)
  try:
    if FLAGS.message_bytes_only:
      result = benchmarking.measure_message_bytes(config, log=log)
    else:
      result = benchmarking.run_benchmark(config, log=log)
  except (file_formats.DataFileError, settings_lib.ConfigError) as error:
    sys.exit(f'benchmark.py: error: {error}')
  if FLAGS.message_bytes_only:
    print('\n'.join(benchmarking.format_message_bytes(result)))
  else:
    print(benchmarking.format_report(result))
  if FLAGS.json_output:
    benchmarking.write_json(result, FLAGS.json_output)


if __name__ == '__main__':
  cli.run(main, check_flags)
