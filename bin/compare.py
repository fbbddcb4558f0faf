"""Runs several methods on one data split and seed, and tabulates them.

  python bin/compare.py --flagfile=configs/fashion_mnist_compare.cfg \
      --methods=fedavg,fedavgm,randommask,feddst --output_dir=runs/compare

Each method runs through the same FedDST process (`--method`), with every
other flag shared, into output_dir/<method>/. Then output_dir/summary.csv and
summary.md tabulate final and best accuracy, client-local accuracy, bytes,
upload to reach --target_accuracy, rounds, stop reason and wall time, and
output_dir/accuracy.{png,svg} plot them. With --upload_budget_bytes every
method stops at the same upload.
"""

import math
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.data import file_formats
from tff_feddst.methods import registry
from tff_feddst.outputs import comparison
from tff_feddst.running import experiment

experiment_flags.define_run_flags()
flags.DEFINE_list('methods', ['fedavg', 'fedavgm', 'randommask', 'feddst'],
                  'Methods to run, from: '
                  f'{", ".join(registry.method_names())}.')
flags.DEFINE_float('target_accuracy', None, 'Report the upload spent until '
                   'test accuracy first reached this.')

FLAGS = flags.FLAGS


def _what_now(run_dir: str, is_resumable: bool, fix: str) -> str:
  """How to go on after the run in `run_dir` stopped with an error."""
  first = f'{fix}, then ' if fix else ''
  if is_resumable:
    return (f'{first}finish that run with bin/train.py '
            f'--flagfile={run_dir}/flags.txt --output_dir={run_dir} --resume, '
            'or rerun compare.py with a new --output_dir')
  return (f'nothing of that run was kept; {first}rerun compare.py with a '
          'new --output_dir')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'compare.py: error: unexpected arguments {argv[1:]}.')
  if not FLAGS.output_dir:
    sys.exit('compare.py: error: --output_dir is required.')
  methods = registry.method_names()
  unknown = [m for m in FLAGS.methods if m not in methods]
  if unknown or not FLAGS.methods:
    sys.exit(f'compare.py: error: --methods={",".join(FLAGS.methods)} is '
             f'invalid: expected a list from {", ".join(methods)}.')
  repeated = [m for m in FLAGS.methods if FLAGS.methods.count(m) > 1]
  if repeated:
    # The second run would find the first one's results in its directory.
    sys.exit(f'compare.py: error: --methods={",".join(FLAGS.methods)} is '
             f'invalid: expected each method once ({repeated[0]} repeats).')
  if FLAGS.target_accuracy is not None and not (
      math.isfinite(FLAGS.target_accuracy) and
      0 < FLAGS.target_accuracy <= 1):
    sys.exit(f'compare.py: error: --target_accuracy={FLAGS.target_accuracy} '
             'is invalid: expected an accuracy in (0, 1], or unset.')
  table_paths = [os.path.join(FLAGS.output_dir, name) for name in (
      'summary.csv', 'summary.md', 'accuracy.png', 'accuracy.svg')]
  used = [p for p in table_paths + [os.path.join(FLAGS.output_dir, m)
                                    for m in FLAGS.methods]
          if os.path.exists(p)]
  if used:
    sys.exit(f'compare.py: error: --output_dir={FLAGS.output_dir} already '
             f'holds results ({used[0]}); choose a new directory.')
  base = experiment_flags.config_from_flags()
  configs = [base.replace(method=m) for m in FLAGS.methods]
  try:
    for config in configs:
      config.validate()
    for config in configs:
      print(f'== {config.method}', flush=True)
      run_dir = os.path.join(FLAGS.output_dir, config.method)
      try:
        experiment.run_experiment(config, run_dir, progress=FLAGS.progress)
      except KeyboardInterrupt:
        cli.interrupted('compare.py', _what_now(
            run_dir, os.path.exists(os.path.join(run_dir, 'flags.txt')), ''))
      except experiment.OutputError as error:
        sys.exit(f'compare.py: error: {error.problem}; '
                 f'{_what_now(run_dir, error.is_resumable, error.fix)}')
  except (experiment.ConfigError, file_formats.DataFileError) as error:
    sys.exit(f'compare.py: error: {error}')
  run_dirs = [os.path.join(FLAGS.output_dir, m) for m in FLAGS.methods]
  summaries = [comparison.summarize_run(d, target_accuracy=FLAGS.target_accuracy)
               for d in run_dirs]
  comparison.write_summary_table(summaries, table_paths[0], table_paths[1],
                                 target_accuracy=FLAGS.target_accuracy)
  from tff_feddst.outputs import plotting  # pylint: disable=g-import-not-at-top
  plotting.plot_runs(run_dirs, os.path.join(FLAGS.output_dir, 'accuracy'),
                     title=f'{base.data.dataset}, '
                     f'{base.data.data_distribution} split, sparse methods '
                     f'at S={base.network.target_sparsity}')
  with open(table_paths[1]) as f:
    print(f.read())


if __name__ == '__main__':
  cli.run(main)
