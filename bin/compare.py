"""Runs several methods on one split and seed (or several), and tabulates them.

  python bin/compare.py --flagfile=configs/fashion_mnist_compare.cfg \
      --methods=fedavg,fedavgm,randommask,feddst --output_dir=runs/compare

Each method runs through the same FedDST process (`--method`), with every
other flag shared, into output_dir/<method>/. Then output_dir/summary.csv and
summary.md tabulate final and best accuracy, client-local accuracy, bytes,
upload to reach --target_accuracy, rounds, stop reason and wall time, and
output_dir/accuracy.{png,svg} plot them. With --upload_budget_bytes every
method stops at the same upload.

With --seeds=0,1,2 (two or more seeds) every method runs once per seed, on
that seed's split (the same for every method), into
output_dir/<method>/seed_<seed>/; then summary.csv has per method the mean,
sample std, min and max over seeds of the headline (mean test accuracy over
the last quarter of evaluations), final and best accuracy, upload and
rounds; paired.csv the headline differences against --baseline_method
(mean, 95% t interval over seeds, sign test); runs.csv every run;
summary.md both tables; statistics.json all of it; accuracy.{png,svg} the
mean and +- one std band per method (`seed_statistics`).
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
from tff_feddst.outputs import seed_statistics
from tff_feddst.running import experiment

experiment_flags.define_run_flags()
flags.DEFINE_list('methods', ['fedavg', 'fedavgm', 'randommask', 'feddst'],
                  'Methods to run, from: '
                  f'{", ".join(registry.method_names())}.')
flags.DEFINE_float('target_accuracy', None, 'Report the upload spent until '
                   'test accuracy first reached this.')

flags.DEFINE_list('seeds', None, 'Run every method on each of these seeds '
                  '(integers in [0, 2**32), each once) and summarise over '
                  'them; unset: --seed alone.')
flags.DEFINE_string('baseline_method', None, 'With two or more --seeds: the '
                    'method the others are compared with, seed by seed '
                    '(default: the first of --methods).')

FLAGS = flags.FLAGS

SEED_TABLE_FILES = {'summary_csv': 'summary.csv', 'markdown': 'summary.md',
                    'paired_csv': 'paired.csv', 'runs_csv': 'runs.csv',
                    'json': 'statistics.json'}


def _what_now(run_dir: str, is_resumable: bool, fix: str) -> str:
  """How to go on after the run in `run_dir` stopped with an error."""
  first = f'{fix}, then ' if fix else ''
  if is_resumable:
    return (f'{first}finish that run with bin/train.py '
            f'--flagfile={run_dir}/flags.txt --output_dir={run_dir} --resume, '
            'or rerun compare.py with a new --output_dir')
  return (f'nothing of that run was kept; {first}rerun compare.py with a '
          'new --output_dir')


def _seeds_or_exit(default_seed: int) -> list[int]:
  """--seeds as integers (or [default_seed] when unset); exits on bad input."""
  if FLAGS.seeds is None:
    return [default_seed]
  seeds = []
  for text in FLAGS.seeds:
    try:
      seed = int(text)
    except ValueError:
      seed = -1
    if not 0 <= seed < 2**32 or seed in seeds:
      sys.exit(f'compare.py: error: --seeds={",".join(FLAGS.seeds)} is '
               'invalid: expected distinct integers in [0, 2**32).')
    seeds.append(seed)
  if not seeds:
    sys.exit('compare.py: error: --seeds= is invalid: expected distinct '
             'integers in [0, 2**32), or leave it unset.')
  return seeds


def _run_all(configs: list, run_dirs: list[str],
             name_seeds: bool = False) -> None:
  """Runs each config into its directory; exits with a line on failure."""
  try:
    for config in configs:
      config.validate()
    for config, run_dir in zip(configs, run_dirs):
      seed = f' (seed {config.run.seed})' if name_seeds else ''
      print(f'== {config.method}{seed}', flush=True)
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
  baseline = FLAGS.baseline_method or FLAGS.methods[0]
  if baseline not in FLAGS.methods:
    sys.exit(f'compare.py: error: --baseline_method={baseline} is invalid: '
             f'expected one of --methods ({",".join(FLAGS.methods)}).')
  base = experiment_flags.config_from_flags()
  seeds = _seeds_or_exit(base.run.seed)
  if len(seeds) > 1:
    _compare_over_seeds(base, seeds, baseline)
    return
  base = base.replace(seed=seeds[0])
  table_paths = [os.path.join(FLAGS.output_dir, name) for name in (
      'summary.csv', 'summary.md', 'accuracy.png', 'accuracy.svg')]
  _exit_if_used(table_paths + [os.path.join(FLAGS.output_dir, m)
                               for m in FLAGS.methods])
  run_dirs = [os.path.join(FLAGS.output_dir, m) for m in FLAGS.methods]
  _run_all([base.replace(method=m) for m in FLAGS.methods], run_dirs)
  summaries = [comparison.summarize_run(d, target_accuracy=FLAGS.target_accuracy)
               for d in run_dirs]
  comparison.write_summary_table(summaries, table_paths[0], table_paths[1],
                                 target_accuracy=FLAGS.target_accuracy)
  from tff_feddst.outputs import plotting  # pylint: disable=g-import-not-at-top
  plotting.plot_runs(run_dirs, os.path.join(FLAGS.output_dir, 'accuracy'),
                     title=_title(base))
  with open(table_paths[1]) as f:
    print(f.read())


def _title(base) -> str:
  return (f'{base.data.dataset}, {base.data.data_distribution} split, sparse '
          f'methods at S={base.network.target_sparsity}')


def _exit_if_used(paths: list[str]) -> None:
  used = [p for p in paths if os.path.exists(p)]
  if used:
    sys.exit(f'compare.py: error: --output_dir={FLAGS.output_dir} already '
             f'holds results ({used[0]}); choose a new directory.')


def _compare_over_seeds(base, seeds: list[int], baseline: str) -> None:
  """Runs every method on every seed, then writes the seed tables."""
  paths = {key: os.path.join(FLAGS.output_dir, name)
           for key, name in SEED_TABLE_FILES.items()}
  figure = os.path.join(FLAGS.output_dir, 'accuracy')
  _exit_if_used(list(paths.values()) + [f'{figure}.png', f'{figure}.svg'] +
                [os.path.join(FLAGS.output_dir, m) for m in FLAGS.methods])
  run_dirs = {m: [os.path.join(FLAGS.output_dir, m, f'seed_{seed}')
                  for seed in seeds] for m in FLAGS.methods}
  # Seed by seed, so that an interrupted comparison has whole pairs.
  configs, dirs = [], []
  for index, seed in enumerate(seeds):
    for method in FLAGS.methods:
      configs.append(base.replace(method=method, seed=seed))
      dirs.append(run_dirs[method][index])
  _run_all(configs, dirs, name_seeds=True)
  runs_by_method = seed_statistics.summarize_seed_runs(
      run_dirs, target_accuracy=FLAGS.target_accuracy)
  seed_statistics.write_seed_tables(runs_by_method, seeds, baseline, paths)
  from tff_feddst.outputs import plotting  # pylint: disable=g-import-not-at-top
  plotting.plot_seed_bands(run_dirs, figure, title=(
      f'{_title(base)}, seeds {",".join(str(s) for s in seeds)}'))
  with open(paths['markdown']) as f:
    print(f.read())


if __name__ == '__main__':
  cli.run(main)
