"""The server side of FedDST rounds with real devices, one command a step.

  python bin/device_round.py init --flagfile=configs/fashion_mnist_quick.cfg \
      --max_client_weight=0 --state_dir=server
  python bin/device_round.py broadcast --state_dir=server --output_dir=out/1
  # ... the devices read out/1, train, and their uploads land in in/1 ...
  python bin/device_round.py aggregate --state_dir=server --uploads_dir=in/1

`init` writes the settings, the initial global model and server state, and
the TFLite export the devices run (server/model/training.tflite);
`broadcast` writes the next round's broadcast.npz and instructions.json;
`aggregate` checks every .npz upload, sums the accepted ones, re-prunes and
writes the next global model, server state and metrics.json
(`tff_feddst/ondevice/device_server.py` describes the files). Any transport
can carry the files. Bad input ends with one line naming the file or flag,
exit code 1; nothing is overwritten.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.ondevice import device_server
from tff_feddst.running import errors
# Drops TFF's default context at exit, which otherwise complains at teardown.
from tff_feddst.running import execution  # pylint: disable=unused-import

COMMANDS = ('init', 'broadcast', 'aggregate')

experiment_flags.define_flags()
flags.DEFINE_string('state_dir', None, 'The server\'s state directory (init: '
                    'a new or empty one).')
flags.DEFINE_string('output_dir', None, 'broadcast: where the round\'s '
                    'broadcast.npz and instructions.json go.')
flags.DEFINE_string('uploads_dir', None, 'aggregate: the directory of the '
                    'devices\' .npz uploads.')
flags.DEFINE_bool('export_model', True, 'init: also write the TFLite export '
                  'to <state_dir>/model.')

FLAGS = flags.FLAGS
PROG = 'device_round.py'


def _require(name: str) -> str:
  value = getattr(FLAGS, name)
  if not value:
    sys.exit(f'{PROG}: error: --{name} is required here.')
  return value


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    sys.exit(f'{PROG}: error: expected one command of {", ".join(COMMANDS)}, '
             f'got {argv[1:]}.')
  command = argv[1]
  state_dir = _require('state_dir')
  try:
    if command == 'init':
      round_dir = device_server.init_state(
          experiment_flags.settings_from_flags(), state_dir,
          export_model=FLAGS.export_model)
      print(f'initial model and server state -> {round_dir}')
      return
    server = device_server.DeviceServer(device_server.load_settings(state_dir))
    if command == 'broadcast':
      output_dir = _require('output_dir')
      instructions = server.write_broadcast(state_dir, output_dir)
      print(f'round {instructions["round_num"]}: broadcast '
            f'({instructions["download_bytes"]} bytes, readjust='
            f'{instructions["should_readjust"]}) -> {output_dir}')
    else:
      metrics = server.aggregate_uploads(state_dir, _require('uploads_dir'))
      summary = {k: metrics[k] for k in (
          'round_num', 'received_uploads', 'rejected_clients', 'train_loss',
          'mask_changed_positions', 'sparsity', 'upload_bytes')}
      print(json.dumps(summary))
  except (device_server.DeviceRoundError, errors.ConfigError) as error:
    sys.exit(f'{PROG}: error: {error}')


if __name__ == '__main__':
  cli.run(main)
