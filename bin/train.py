"""Trains FedDST (or a baseline from the same code path) with TFF.

  python bin/train.py --flagfile=configs/fashion_mnist_quick.cfg \
      --output_dir=runs/quick

Every setting flag maps one-to-one onto a field of
`tff_feddst.running.settings.ExperimentSettings` (bin/experiment_flags.py).
Writes output_dir/{flags.txt, metrics.csv, global_model.npz, summary.json},
each atomically. Bad input ends with a one-line error naming the flag or
file, exit code 1, nothing written; so does a failure at run time (a worker
that cannot be reached, a full disk), saying whether to rerun with --resume.

SIGTERM or SIGINT (Ctrl-C) abandons the round in progress (a round is one
TFF call, which cannot be paused and can be long), saves a checkpoint of the
last completed round, ends the owned workers and exits with one stderr line
and code 143 (SIGTERM) or 130 (SIGINT); `--resume` continues exactly. A
local worker that dies is restarted and its round re-run; a `--workers`
worker that does not answer for --worker_timeout_seconds ends the run the
same way, with exit code 1.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# gRPC's own notes (e.g. on forking a restarted worker) are not for users.
os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.data import file_formats
from tff_feddst.running import experiment
from tff_feddst.running import interruptions


experiment_flags.define_run_flags()
flags.DEFINE_bool('resume', False, 'Continue the unfinished run in '
                  '--output_dir (same flags) from its newest checkpoint.')
flags.DEFINE_float('worker_timeout_seconds', 60.0, 'Stop the run (keeping a '
                   'checkpoint for --resume) when a --workers worker has not '
                   'answered for this many seconds.')

FLAGS = flags.FLAGS


def _how_to_continue(error: interruptions.Interrupted) -> str:
  """The end of a stopped run's one-line message: what next."""
  if error.completed_round is None:  # Stopped before the run had a state.
    if os.path.exists(os.path.join(FLAGS.output_dir, 'flags.txt')):
      return 'nothing to keep; start it again with --resume'
    return 'nothing to keep; start it again'
  return 'continue with --resume'


def _stop_message(stop: interruptions.StopRequested) -> str:
  """E.g. 'train.py: stopped by SIGTERM after round 3; checkpoint saved...'."""
  if stop.completed_round is None:
    return f'train.py: {stop} before round 1; {_how_to_continue(stop)}'
  when = (f'after round {stop.completed_round}' if stop.completed_round
          else 'before round 1 completed')
  return (f'train.py: {stop} {when}; checkpoint saved; '
          f'{_how_to_continue(stop)}')


def _lost_worker_message(error: interruptions.Interrupted) -> str:
  if error.completed_round is None:
    return f'train.py: error: {error}; {_how_to_continue(error)}'
  return (f'train.py: error: {error}; checkpoint of round '
          f'{error.completed_round} saved; {_how_to_continue(error)}')


def check_flags() -> None:
  """Refuses a bad setting before TensorFlow loads."""
  try:
    experiment_flags.config_from_flags().validate()
  except experiment.ConfigError as error:
    sys.exit(f'train.py: error: {error}')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'train.py: error: unexpected arguments {argv[1:]}; all '
             'settings are --flags.')
  if not FLAGS.output_dir:
    sys.exit('train.py: error: --output_dir is required (a new directory for '
             'the results).')
  watch = interruptions.SignalWatch()
  try:
    with watch.installed():
      rows = experiment.run_experiment(
          experiment_flags.config_from_flags(), FLAGS.output_dir,
          resume=FLAGS.resume, progress=FLAGS.progress,
          check_interrupt=watch.check,
          worker_timeout_seconds=FLAGS.worker_timeout_seconds)
  except (experiment.ConfigError, file_formats.DataFileError) as error:
    sys.exit(f'train.py: error: {error}')
  except interruptions.StopRequested as stop:
    print(_stop_message(stop), file=sys.stderr)
    sys.exit(stop.exit_code)
  except interruptions.Interrupted as error:  # A lost worker.
    sys.exit(_lost_worker_message(error))
  final = rows[-1]
  print(f'round {final["round"]}: test_accuracy={final["test_accuracy"]:.4f} '
        f'client_test_accuracy={final["client_test_accuracy"]:.4f} '
        f'sparsity={final["sparsity"]:.4f} '
        f'upload_bytes_cumulative={final["upload_bytes_cumulative"]} '
        f'-> {FLAGS.output_dir}')


if __name__ == '__main__':
  cli.run(main, check_flags)
