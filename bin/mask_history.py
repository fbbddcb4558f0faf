"""How a run's global mask moved between its checkpoints.

  python bin/train.py --flagfile=configs/fashion_mnist_compare_s95.cfg \
      --keep_checkpoints=1000 --output_dir=runs/s95
  python bin/mask_history.py --run_dir=runs/s95 --output=runs/s95_mask.csv

Reads the run's flags.txt (to rebuild its seeded initial mask) and every
checkpoint in <run_dir>/checkpoints, and prints and writes (--output, a new
CSV file) one row per checkpoint: active positions, the share of them that
were in the initial mask, the positions that entered and left since the
previous checkpoint, how many of those that entered are still active at the
next and the last checkpoint, and the mean |w| of the entered, stayed and
left positions (`tff_feddst/outputs/mask_movement.py`). Only the newest
--keep_checkpoints checkpoints survive a run (3 by default), so a whole
history needs a run made with a large --keep_checkpoints.
"""

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

# Before flag parsing: Keras built after absl parsed the flags makes
# Sequential models that refuse their own layers' outputs. `execution` also
# releases TFF's import-time context at exit.
from tff_feddst.running import execution  # pylint: disable=unused-import,g-bad-import-order
from tff_feddst.ondevice import tflite_export  # pylint: disable=g-bad-import-order
from tff_feddst.methods import model_setup  # pylint: disable=g-bad-import-order
from tff_feddst.outputs import mask_movement  # pylint: disable=g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_string('run_dir', None, 'A train.py output directory (with '
                    'flags.txt and checkpoints/).')
flags.DEFINE_string('output', None, 'New CSV file for the rows (optional).')

_PROGRAM = 'mask_history.py'
_COLUMNS = ('round', 'active', 'from_initial', 'entered', 'left',
            'entered_still_active_next', 'entered_still_active_last',
            'magnitude_entered', 'magnitude_stayed', 'magnitude_left_before')


def _cell(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def main(argv):
  if len(argv) > 1:
    sys.exit(f'{_PROGRAM}: error: unexpected arguments {argv[1:]}.')
  if not FLAGS.run_dir:
    sys.exit(f'{_PROGRAM}: error: --run_dir is required: a train.py output '
             'directory.')
  flags_path = os.path.join(FLAGS.run_dir, 'flags.txt')
  checkpoint_dir = os.path.join(FLAGS.run_dir, 'checkpoints')
  if not os.path.isfile(flags_path) or not os.path.isdir(checkpoint_dir):
    sys.exit(f'{_PROGRAM}: error: --run_dir={FLAGS.run_dir} is invalid: '
             'expected a run directory with flags.txt and checkpoints/.')
  if FLAGS.output and os.path.exists(FLAGS.output):
    sys.exit(f'{_PROGRAM}: error: --output={FLAGS.output} exists; choose a '
             'new file.')
  try:
    settings = tflite_export.read_flags_file(flags_path)
  except tflite_export.ExportError as error:
    sys.exit(f'{_PROGRAM}: error: {error}')
  if settings.network.effective_initial_sparsity != (
      settings.network.target_sparsity):
    sys.exit(f'{_PROGRAM}: error: {flags_path}: the sparsity grows during '
             'this run; the history compares masks of one size.')
  _, initial = model_setup.build_model(settings)
  layout = initial.layout
  model_arrays = (initial.weights.trainable, initial.weights.non_trainable,
                  layout.kernel_indices, layout.mask_indices)
  try:
    snapshots = mask_movement.load_run_snapshots(
        checkpoint_dir, *model_arrays, initial.num_active)
  except mask_movement.MaskHistoryError as error:
    sys.exit(f'{_PROGRAM}: error: {error}')
  if not snapshots:
    sys.exit(f'{_PROGRAM}: error: {checkpoint_dir} holds no checkpoint.')
  first = mask_movement.snapshot_of_weights(0, *model_arrays)
  rows = mask_movement.history_rows([first, *snapshots])
  print('| ' + ' | '.join(_COLUMNS) + ' |')
  print('|' + '---|' * len(_COLUMNS))
  for row in rows:
    print('| ' + ' | '.join(_cell(row[c]) for c in _COLUMNS) + ' |')
  if FLAGS.output:
    with open(FLAGS.output, 'x', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=_COLUMNS)
      writer.writeheader()
      writer.writerows(rows)


if __name__ == '__main__':
  cli.run(main)
