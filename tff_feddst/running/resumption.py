"""`--resume`: checks that a run can be continued, and finishes a done one.

A resumed run must have the settings of the run it continues (its
flags.txt), except `settings.EXECUTION_SETTINGS` (where the rounds run),
and a checkpoint to continue from.
"""

import logging
import os
from typing import Optional

from tff_feddst.outputs import run_files
from tff_feddst.running import settings as settings_lib

ConfigError = settings_lib.ConfigError


def _computing_settings(lines) -> dict[str, str]:
  """`{name: value}` of `--name=value` lines, without the execution ones."""
  values = {}
  for line in lines:
    name, _, value = line.strip().partition('=')
    if name.startswith('--') and name[2:] not in (
        settings_lib.EXECUTION_SETTINGS):
      values[name[2:]] = value
  return values


def check_resumable(settings: settings_lib.ExperimentSettings,
                    output_dir: str) -> None:
  """Checks that `output_dir` holds an unfinished run of these settings.

  flags.txt is compared setting by setting (its order does not matter, so
  runs written before the settings were grouped still resume).

  Args:
    settings: The resolved settings of the resumed run.
    output_dir: The run's output directory.

  Raises:
    ConfigError: If there is no run there, it finished already, its
      flags.txt differs from `settings` (naming the first differing flag) in
      anything but the execution settings, or it has no checkpoint to
      continue from.
  """
  flags_path = os.path.join(output_dir, 'flags.txt')
  if not os.path.isfile(flags_path):
    raise ConfigError(f'--resume: {output_dir} holds no run to resume '
                      '(no flags.txt); start it without --resume.')
  if os.path.exists(os.path.join(output_dir, 'summary.json')):
    raise ConfigError(f'--resume: the run in {output_dir} already finished '
                      '(summary.json exists); nothing to resume.')
  with open(flags_path) as f:
    saved = _computing_settings(line for line in f if line.strip())
  wanted = _computing_settings(settings.to_flag_lines())
  if saved != wanted:
    differing = sorted(
        f'--{name}={values[name]}' for values in (saved, wanted)
        for name in values if saved.get(name) != wanted.get(name))
    raise ConfigError(
        f'--resume: the run in {output_dir} has a different configuration '
        f'({differing[0]} differs); resume with the same flags.')
  check_has_checkpoint(settings, output_dir)


def check_has_checkpoint(settings: settings_lib.ExperimentSettings,
                         output_dir: str) -> None:
  """Checks that the run in `output_dir` saved a checkpoint to resume from.

  Without one, `--resume` would silently start over at round 1.

  Args:
    settings: The resolved settings of the resumed run.
    output_dir: The run's output directory.

  Raises:
    ConfigError: One line naming --resume and what to do instead.
  """
  from tff_feddst.outputs import checkpoints  # pylint: disable=g-import-not-at-top
  if checkpoints.list_checkpoints(os.path.join(output_dir, 'checkpoints')):
    return
  run = settings.run
  if run.checkpoint_every == 0:
    why = 'it saves none (--checkpoint_every=0)'
  else:
    why = ('it stopped before its first checkpoint (after round '
           f'{min(run.checkpoint_every, run.total_rounds)})')
  raise ConfigError(
      f'--resume: the run in {output_dir} has no checkpoint to continue '
      f'from: {why}; start it again without --resume in a new '
      f'--output_dir, or remove {output_dir} first.')


def finish_done_run(settings: settings_lib.ExperimentSettings,
                    output_dir: str) -> Optional[list]:
  """Resumes a run whose rounds are all done: writes its summary.json.

  global_model.npz is written (atomically) only after the last round, so if
  it is there and whole, only the summary is missing.

  Args:
    settings: The resolved settings (checked against flags.txt).
    output_dir: The run's output directory.

  Returns:
    The metrics rows, or None if the rounds are not all done (then the run
    resumes from its checkpoint).
  """
  model_path = os.path.join(output_dir, 'global_model.npz')
  if not os.path.exists(model_path):
    return None
  if not run_files.is_complete_npz(model_path):
    # Only a writer that was not atomic can have left this.
    logging.warning('%s is damaged; recomputing it from the checkpoint.',
                    model_path)
    os.remove(model_path)
    return None
  from tff_feddst.running import training_loop  # pylint: disable=g-import-not-at-top
  run_files.remove_temporaries(output_dir)
  rows = training_loop.truncate_metrics(
      os.path.join(output_dir, 'metrics.csv'), settings.run.total_rounds)
  if not rows:
    return None
  # A run stops early only at the upload budget.
  stop_reason = ('total_rounds' if rows[-1]['round'] == settings.run.total_rounds
                 else 'upload_budget')
  run_files.write_summary(os.path.join(output_dir, 'summary.json'), settings,
                          rows, stop_reason)
  return rows
