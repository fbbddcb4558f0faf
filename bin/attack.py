"""Measures what one hostile client per round does to a run, per attack.

  python bin/attack.py --flagfile=configs/fashion_mnist_quick.cfg \
      --total_rounds=10 --defences=off --output_dir=runs/attack

Runs the configuration once without a hostile client (the clean run) and
once per attack (`tff_feddst/benchmarks/attacks.py`: takeover, weight_1e9,
weight_3e38, huge_values, scaled_x10, scaled_x100, sign_flip, replay, nan),
for each --defences setting and seed, with the plain-TF loop (real client
training, the server's own checks, aggregation and finalizer); the client at
--hostile_index among each round's sampled clients is the hostile one. Prints
a Markdown table and writes output_dir/attack_table.{csv,md}: final and mean
test accuracy, clients rejected (total and by kind), whether the global model
stayed finite, and the mean against the clean run in points. Bad input ends
with a one-line error and exit code 1.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top

import cli  # pylint: disable=g-bad-import-order

import experiment_flags  # pylint: disable=g-bad-import-order
from tff_feddst.benchmarks import attack_names
from tff_feddst.data import file_formats
from tff_feddst.running import errors

# Every setting, --output_dir (where attack_table.{csv,md} go; existing
# tables are not overwritten) and --progress (unused).
experiment_flags.define_run_flags()
flags.DEFINE_list('attacks', ['all'], 'Attacks to run (the clean run always '
                  f'runs), from: {", ".join(attack_names.ATTACK_NAMES)}; or all.')
flags.DEFINE_list('defences', ['on', 'off'], 'Defence settings to run: on '
                  '(issue 13\'s defences at their defaults), off (none).')
flags.DEFINE_list('seeds', ['0'], 'Seeds to run (each replaces --seed).')
flags.DEFINE_integer('hostile_index', 0, 'Index among each round\'s sampled '
                     'clients of the hostile one.')

FLAGS = flags.FLAGS


def _seeds(values: list[str]) -> list[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    seeds = []
  if not seeds:
    sys.exit(f'attack.py: error: --seeds={",".join(values)} is invalid: '
             'expected a comma list of integers.')
  return seeds


def check_flags() -> None:
  """Refuses bad flags before TensorFlow loads."""
  if not FLAGS.output_dir:
    sys.exit('attack.py: error: --output_dir is required (where the table '
             'is written).')
  try:
    attack_names.parse_attacks(FLAGS.attacks)
    attack_names.parse_defences(FLAGS.defences)
    experiment_flags.config_from_flags().validate()
  except ValueError as error:
    sys.exit(f'attack.py: error: {error}')
  _seeds(FLAGS.seeds)


def main(argv):
  if len(argv) > 1:
    sys.exit(f'attack.py: error: unexpected arguments {argv[1:]}; all '
             'settings are --flags.')
  # pylint: disable=g-import-not-at-top
  from tff_feddst.benchmarks import attack_runs
  # Imported for its exit hook: it drops TFF's import-time default context
  # before interpreter teardown, which would otherwise print a traceback.
  from tff_feddst.running import execution  # pylint: disable=unused-import
  # pylint: enable=g-import-not-at-top
  attacks = attack_names.parse_attacks(FLAGS.attacks)
  defences = attack_names.parse_defences(FLAGS.defences)
  seeds = _seeds(FLAGS.seeds)
  log = lambda line: print(line, file=sys.stderr, flush=True)
  try:
    attack_runs.check_output_dir(FLAGS.output_dir)
    rows = attack_runs.run_table(experiment_flags.config_from_flags(),
                                 attacks, defences, seeds,
                                 FLAGS.hostile_index, log=log)
  except (errors.ConfigError, file_formats.DataFileError) as error:
    sys.exit(f'attack.py: error: {error}')
  paths = attack_runs.write_table(rows, FLAGS.output_dir)
  print(attack_runs.to_markdown(rows), end='')
  print(f'-> {", ".join(paths)}')


if __name__ == '__main__':
  cli.run(main, check_flags)
