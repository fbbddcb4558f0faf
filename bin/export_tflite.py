"""Exports a FedDST client for on-device training with TensorFlow Lite.

  python bin/export_tflite.py --checkpoint=runs/quick --output=runs/quick/tflite
  python bin/export_tflite.py --model=mnist_net --target_sparsity=0.8 \\
      --output=/tmp/mnist_tflite
  python bin/export_tflite.py --list_ops=/tmp/mnist_tflite/training.tflite

With --checkpoint (a run's output directory or its global_model.npz), the
model and client hyper-parameters come from the run's flags.txt; without it,
the seeded initial model of the given settings is exported. Writes
training.tflite, inference.tflite, inference_sparse.tflite and metadata.json
(see `tff_feddst.ondevice.tflite_export`) and prints the select TF ops of
each signature and any breach of the Java contract
(`tff_feddst.ondevice.signature_report`). --list_ops prints the ops of each
signature of any .tflite file and the contract check, and writes nothing.
Bad input ends with a one-line error naming the file or flag, exit code 1,
nothing written; existing files are never overwritten.
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
flags.DEFINE_string('list_ops', None, 'A .tflite file: print the ops each '
                    'signature runs (select TF ops first) and the Java '
                    'contract check, then exit; nothing is exported.')
# Settings of a fresh export (a checkpoint brings its own): the training
# flags of the same names.
SETTING_FLAGS = ('dataset', 'model', 'target_sparsity', 'sparsity_distribution',
                 'initial_mask', 'seed', 'client_learning_rate',
                 'client_momentum', 'client_weight_decay', 'prox_mu',
                 'grow_score', 'readjust_rule', 'drop_fraction',
                 'upload_value_dtype', 'upload_encoding')
experiment_flags.define_flags(only=SETTING_FLAGS)

FLAGS = flags.FLAGS


def check_flags() -> None:
  """Refuses bad settings of a fresh export before TensorFlow loads."""
  if FLAGS.checkpoint or FLAGS.list_ops:
    return
  try:
    experiment_flags.settings_from_flags(only=SETTING_FLAGS).validate()
  except settings_lib.ConfigError as error:
    sys.exit(f'export_tflite.py: error: {error}')


def main(argv):
  prog = 'export_tflite.py'
  if len(argv) > 1:
    sys.exit(f'{prog}: error: unexpected arguments {argv[1:]}; all settings '
             'are --flags.')
  if FLAGS.list_ops:
    return list_ops(prog, FLAGS.list_ops)
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
  print('select TF ops of the training model, per signature:')
  for key, ops in sorted(result.select_tf_ops.items()):
    print(f'  {key}: {", ".join(ops) or "none"}')
  print_contract(result.contract_violations)


def print_contract(violations: list[str]) -> None:
  """Prints the Java contract check: kept, or each breach."""
  if violations:
    print('Java contract broken:')
    for line in violations:
      print(f'  {line}')
  else:
    print('Java contract: kept (every signature has an input, no scalar '
          'output, no float16/float64 tensor, only allowed select TF ops)')


def list_ops(prog: str, path: str) -> None:
  """--list_ops: prints the ops of each signature of `path` and the contract.

  Args:
    prog: The program name for error messages.
    path: A .tflite file.
  """
  given = [name for name in ('output', 'checkpoint', *SETTING_FLAGS)
           if FLAGS[name].present]
  if given:
    sys.exit(f'{prog}: error: --{given[0]} cannot be combined with '
             '--list_ops (which only reads a .tflite file).')
  try:
    with open(path, 'rb') as f:
      content = f.read()
  except OSError as error:
    sys.exit(f'{prog}: error: --list_ops={path}: cannot read it '
             f'({error.strerror}).')
  from tff_feddst.ondevice import signature_report  # pylint: disable=g-import-not-at-top
  try:
    listing = signature_report.format_ops(content)
    violations = signature_report.contract_violations(content)
  except Exception as error:  # A corrupt flatbuffer raises many kinds.
    sys.exit(f'{prog}: error: --list_ops={path}: not a readable .tflite '
             f'model ({type(error).__name__}).')
  print(listing)
  print_contract(violations)


if __name__ == '__main__':
  cli.run(main, check_flags)
