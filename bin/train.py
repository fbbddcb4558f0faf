"""Trains FedDST (or a baseline from the same code path) with TFF.

  python bin/train.py --flagfile=configs/fashion_mnist_quick.cfg \
      --output_dir=runs/quick

Every flag maps one-to-one onto `tff_feddst.experiment.ExperimentConfig`.
Writes output_dir/{flags.txt, metrics.csv, global_model.npz, summary.json},
each atomically. Bad input ends with a one-line error naming the flag or
file, exit code 1, nothing written; so does a failure at run time (a worker
that cannot be reached, a full disk), saying whether to rerun with --resume;
Ctrl-C ends with one line and exit code 130 (see bin/cli.py).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst import data
from tff_feddst import experiment


flags.DEFINE_bool('resume', False, 'Continue the unfinished run in '
                  '--output_dir (same flags) from its newest checkpoint.')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f'train.py: error: unexpected arguments {argv[1:]}; all '
             'settings are --flags.')
  if not FLAGS.output_dir:
    sys.exit('train.py: error: --output_dir is required (a new directory for '
             'the results).')
  try:
    rows = experiment.run_experiment(experiment_flags.config_from_flags(),
                                     FLAGS.output_dir,
                                     resume=FLAGS.resume,
                                     progress=FLAGS.progress)
  except (experiment.ConfigError, data.DataFileError) as error:
    sys.exit(f'train.py: error: {error}')
  final = rows[-1]
  print(f'round {final["round"]}: test_accuracy={final["test_accuracy"]:.4f} '
        f'client_test_accuracy={final["client_test_accuracy"]:.4f} '
        f'sparsity={final["sparsity"]:.4f} '
        f'upload_bytes_cumulative={final["upload_bytes_cumulative"]} '
        f'-> {FLAGS.output_dir}')


if __name__ == '__main__':
  cli.run(main)
