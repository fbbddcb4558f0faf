"""Plots test accuracy against cumulative upload and rounds for runs.

  python bin/plot.py --run_dirs=runs/a,runs/b --output=runs/accuracy

Writes <output>.png and <output>.svg; one line per run directory.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

from tff_feddst.outputs import comparison
from tff_feddst.outputs import plotting

flags.DEFINE_list('run_dirs', None, 'Output directories of bin/train.py runs.')
flags.DEFINE_list('labels', None, 'Legend labels, one per run (default: the '
                  'method of each run).')
flags.DEFINE_string('output', None, 'Figure path without extension.')
flags.DEFINE_string('title', None, 'Figure title.')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f'plot.py: error: unexpected arguments {argv[1:]}.')
  if not FLAGS.run_dirs or not FLAGS.output:
    sys.exit('plot.py: error: --run_dirs and --output are required.')
  if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.run_dirs):
    sys.exit(f'plot.py: error: --labels has {len(FLAGS.labels)} entries for '
             f'{len(FLAGS.run_dirs)} --run_dirs.')
  try:
    paths = plotting.plot_runs(FLAGS.run_dirs, FLAGS.output,
                               labels=FLAGS.labels, title=FLAGS.title)
  except (comparison.RunDirError, FileExistsError) as error:
    sys.exit(f'plot.py: error: {error}')
  print('\n'.join(paths))


if __name__ == '__main__':
  cli.run(main, uses_tensorflow=False)
