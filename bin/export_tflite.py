"""Exports a FedDST client for on-device training with TensorFlow Lite.

  python bin/export_tflite.py --checkpoint=runs/quick --output=runs/quick/tflite
  python bin/export_tflite.py --model=mnist_net --target_sparsity=0.8 \\
      --output=/tmp/mnist_tflite

With --checkpoint (a run's output directory or its global_model.npz), the
model and client hyper-parameters come from the run's flags.txt; without it,
the seeded initial model of the given settings is exported. Writes
training.tflite, inference.tflite, inference_sparse.tflite and metadata.json
(see `tff_feddst.ondevice.tflite_export`). Bad input ends with a one-line error naming
the file or flag, exit code 1, nothing written; existing files are never
overwritten.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order
from absl import logging

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.running import settings as settings_lib

flags.DEFINE_string('checkpoint', None, 'A run\'s output directory or its '
                    'global_model.npz (settings from the run\'s flags.txt). '
                    'Unset: export a fresh seeded initialisation.')
flags.DEFINE_string('output', None, 'Output directory (existing export files '
                    'are refused).')
# Settings of a fresh export (a checkpoint brings its own): the training
# flags of the same names.
SETTING_FLAGS = ('dataset', 'model', 'target_sparsity', 'sparsity_distribution',
                 'initial_mask', 'seed', 'client_learning_rate',
                 'client_momentum', 'client_weight_decay', 'prox_mu',
                 'grow_score', 'readjust_rule', 'drop_fraction',
                 'upload_value_dtype', 'upload_encoding')
experiment_flags.define_flags(only=SETTING_FLAGS)

FLAGS = flags.FLAGS


def main(argv):
  prog = 'export_tflite.py'
  if len(argv) > 1:
    sys.exit(f'{prog}: error: unexpected arguments {argv[1:]}; all settings '
             'are --flags.')
  if not FLAGS.output:
    sys.exit(f'{prog}: error: --output is required (a directory for the '
             '.tflite files).')
  if FLAGS.checkpoint:
    given = [name for name in SETTING_FLAGS if FLAGS[name].present]
    if given:
      sys.exit(f'{prog}: error: --{given[0]} cannot be combined with '
               '--checkpoint: the run\'s flags.txt decides.')

  if not FLAGS['verbosity'].present:
    # SavedModel export logs every step at INFO; keep the output to results.
    logging.set_verbosity(logging.WARNING)

  # TF/TFF are imported only once the flags are known to be usable.
  # Importing `execution` releases TFF's import-time default context at
  # exit, which would otherwise print an ignored exception to stderr.
  from tff_feddst.ondevice import tflite_export  # pylint: disable=g-import-not-at-top
  from tff_feddst.running import execution  # pylint: disable=g-import-not-at-top,unused-import
  try:
    if FLAGS.checkpoint:
      result = tflite_export.export_checkpoint(FLAGS.checkpoint, FLAGS.output)
    else:
      config = experiment_flags.settings_from_flags(only=SETTING_FLAGS)
      result = tflite_export.export_initial(config, FLAGS.output)
  except (tflite_export.ExportError, settings_lib.ConfigError) as error:
    sys.exit(f'{prog}: error: {error}')
  for name, size in result.sizes.items():
    print(f'{result.paths[name]}: {size} bytes')
  print(f'{result.paths[tflite_export.METADATA_FILE]}: shapes, names, '
        'hyper-parameters')
  flex = sorted({op for ops in result.select_tf_ops.values() for op in ops})
  print(f'select TF ops (training model): {", ".join(flex)}')


if __name__ == '__main__':
  cli.run(main)
