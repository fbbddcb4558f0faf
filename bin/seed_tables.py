"""Tabulates existing seed runs of several variants, paired by seed.

  python bin/seed_tables.py --seeds=0,1,2,3,4 --baseline_method=randommask \
      --runs=randommask=runs/rm/randommask,feddst_r2=runs/aggr/feddst \
      --output_dir=runs/paired

bin/compare.py --seeds runs methods that share every other flag; variants
of one method with different flags (e.g. FedDST with another readjustment
schedule) go to separate compare.py output directories. This script reads
such runs back: each --runs entry is label=directory, the directory holding
one run per seed in seed_<seed>/ (as compare.py --seeds writes
<output_dir>/<method>/seed_<seed>/). It writes the same tables as
compare.py --seeds (summary.csv, summary.md, paired.csv against
--baseline_method, runs.csv, statistics.json; `seed_statistics`) and the
mean-and-band figure accuracy.{png,svg} into --output_dir, a new directory.
Pairing by seed is meaningful only if every variant ran with the same data
flags, so that seed s gives every variant the same split.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

from tff_feddst.outputs import comparison
from tff_feddst.outputs import seed_statistics

flags.DEFINE_list('runs', None, 'label=directory entries; each directory '
                  'holds seed_<seed>/ run directories.')
flags.DEFINE_list('seeds', None, 'The seeds to pair (two or more distinct '
                  'integers); every variant needs a run for each.')
flags.DEFINE_string('baseline_method', None, 'The label the others are '
                    'compared with (default: the first of --runs).')
flags.DEFINE_string('output_dir', None, 'New directory for the tables and '
                    'the figure.')
flags.DEFINE_float('target_accuracy', None, 'Report the upload spent until '
                   'test accuracy first reached this.')
flags.DEFINE_string('title', None, 'Figure title.')

FLAGS = flags.FLAGS

_PROGRAM = 'seed_tables.py'

SEED_TABLE_FILES = {'summary_csv': 'summary.csv', 'markdown': 'summary.md',
                    'paired_csv': 'paired.csv', 'runs_csv': 'runs.csv',
                    'json': 'statistics.json'}



def _labelled_dirs_or_exit() -> dict[str, str]:
  """--runs as {label: directory}; exits with one line on bad input."""
  entries = {}
  for entry in FLAGS.runs or []:
    label, separator, directory = entry.partition('=')
    if not separator or not label or not directory or label in entries:
      sys.exit(f'{_PROGRAM}: error: --runs entry "{entry}" is invalid: '
               'expected label=directory with distinct labels.')
    entries[label] = directory
  if not entries:
    sys.exit(f'{_PROGRAM}: error: --runs is required: label=directory '
             'entries.')
  return entries


def _seeds_or_exit() -> list[int]:
  """--seeds as distinct integers, at least two; exits on bad input."""
  seeds = []
  for text in FLAGS.seeds or []:
    try:
      seed = int(text)
    except ValueError:
      seed = -1
    if seed < 0 or seed in seeds:
      seed_text = ','.join(FLAGS.seeds)
      sys.exit(f'{_PROGRAM}: error: --seeds={seed_text} is invalid: expected '
               'two or more distinct non-negative integers.')
    seeds.append(seed)
  if len(seeds) < 2:
    sys.exit(f'{_PROGRAM}: error: --seeds={",".join(FLAGS.seeds or [])} is '
             'invalid: expected two or more distinct non-negative integers.')
  return seeds


def main(argv):
  if len(argv) > 1:
    sys.exit(f'{_PROGRAM}: error: unexpected arguments {argv[1:]}.')
  if not FLAGS.output_dir:
    sys.exit(f'{_PROGRAM}: error: --output_dir is required.')
  labelled = _labelled_dirs_or_exit()
  seeds = _seeds_or_exit()
  baseline = FLAGS.baseline_method or next(iter(labelled))
  if baseline not in labelled:
    sys.exit(f'{_PROGRAM}: error: --baseline_method={baseline} is invalid: '
             f'expected a label of --runs ({",".join(labelled)}).')
  if os.path.exists(FLAGS.output_dir) and os.listdir(FLAGS.output_dir):
    sys.exit(f'{_PROGRAM}: error: --output_dir={FLAGS.output_dir} is not '
             'empty; choose a new directory.')
  run_dirs = {label: [os.path.join(directory, f'seed_{seed}')
                      for seed in seeds]
              for label, directory in labelled.items()}
  try:
    runs_by_method = seed_statistics.summarize_seed_runs(
        run_dirs, target_accuracy=FLAGS.target_accuracy)
  except comparison.RunDirError as error:
    sys.exit(f'{_PROGRAM}: error: {error}')
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  paths = {key: os.path.join(FLAGS.output_dir, name)
           for key, name in SEED_TABLE_FILES.items()}
  seed_statistics.write_seed_tables(runs_by_method, seeds, baseline, paths)
  from tff_feddst.outputs import plotting  # pylint: disable=g-import-not-at-top
  plotting.plot_seed_bands(run_dirs, os.path.join(FLAGS.output_dir,
                                                  'accuracy'),
                           title=FLAGS.title)
  with open(paths['markdown']) as f:
    print(f.read())


if __name__ == '__main__':
  cli.run(main, uses_tensorflow=False)
