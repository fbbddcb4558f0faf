"""The one place where settings become absl flags, and flags settings.

Every field of `settings.ExperimentSettings` (and of any other settings
dataclass a script passes, e.g. the benchmark's timing settings) is one
flag of the same name, with the field's help text; a field with choices is
an enum flag, so absl refuses an unknown value while parsing, and
`ExperimentSettings.validate` checks the rest. `define_flags` defines them,
with optional other defaults (bin/benchmark.py's), and `settings_from_flags`
reads them back. Only bin/ imports this module.
"""

import dataclasses
import typing
from typing import Any, Optional, Union

from absl import flags

from tff_feddst.running import settings as settings_lib

FLAGS = flags.FLAGS


def define_run_flags() -> None:
  """Defines the flags of the scripts that run experiments: every setting,
  --output_dir and --progress (train.py, compare.py)."""
  define_flags()
  if 'output_dir' not in FLAGS:
    flags.DEFINE_string('output_dir', None, 'Where results are written: a '
                        'new directory, or one without results (nothing is '
                        'overwritten).')
    flags.DEFINE_bool('progress', True, 'Show a progress bar (per run).')


def _kind(hint: Any) -> Any:
  """The type of a setting: `hint` without its Optional."""
  if typing.get_origin(hint) is Union:
    return next(option for option in typing.get_args(hint)
                if option is not type(None))
  return hint


def _define(field: dataclasses.Field, hint: Any, default: Any,
            flag_values: flags.FlagValues) -> None:
  """Defines the flag of one settings field in `flag_values`."""
  name, help_text = field.name, field.metadata.get('help', field.name)
  choices = settings_lib.choices_of(field)
  kind = _kind(hint)
  if choices is not None:
    flags.DEFINE_enum(name, default, choices, help_text,
                      flag_values=flag_values)
  elif kind is bool:
    flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
  elif kind is int:
    flags.DEFINE_integer(name, default, help_text,
                         flag_values=flag_values)
  elif kind is float:
    flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
  elif kind is str:
    flags.DEFINE_string(name, default, help_text,
                        flag_values=flag_values)
  elif typing.get_origin(kind) is tuple:
    flags.DEFINE_list(name, [str(v) for v in default], help_text,
                      flag_values=flag_values)
  else:
    raise TypeError(f'no flag type for setting {name} ({hint})')


def setting_fields(settings_class: type) -> dict[str, tuple[dataclasses.Field,
                                                            Any]]:
  """`{name: (field, type hint)}` of a flat settings dataclass, or of every
  group of `ExperimentSettings`."""
  if settings_class is settings_lib.ExperimentSettings:
    classes = list(settings_lib.GROUPS.values())
  else:
    classes = [settings_class]
  return {field.name: (field, typing.get_type_hints(cls)[field.name])
          for cls in classes for field in dataclasses.fields(cls)}


def define_flags(settings_class: type = settings_lib.ExperimentSettings,
                 defaults: Optional[dict[str, Any]] = None,
                 only: Optional[tuple[str, ...]] = None,
                 flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines one flag per setting of `settings_class` (once: a flag already
  defined is kept, so a script and its test may both ask for them).

  Args:
    settings_class: `ExperimentSettings` (all its groups) or one flat
      settings dataclass.
    defaults: Flag defaults that differ from the fields' (e.g. the
      benchmark's smaller runs).
    only: Define only these settings (None: all).
    flag_values: Where to define them.
  """
  defaults = defaults or {}
  for name, (field, hint) in setting_fields(settings_class).items():
    if (only is None or name in only) and name not in flag_values:
      _define(field, hint, defaults.get(name, field.default), flag_values)


def _value(name: str, hint: Any, flag_values: flags.FlagValues) -> Any:
  value = flag_values[name].value
  kind = _kind(hint)
  if typing.get_origin(kind) is tuple:
    item = typing.get_args(kind)[0]
    return tuple(item(v) for v in value)
  return value


def settings_from_flags(settings_class: type = settings_lib.ExperimentSettings,
                        only: Optional[tuple[str, ...]] = None,
                        flag_values: flags.FlagValues = FLAGS):
  """Builds settings from the parsed flags.

  Args:
    settings_class: As given to `define_flags`.
    only: As given to `define_flags` (other settings keep their defaults).
    flag_values: The parsed flags.

  Returns:
    A `settings_class` instance.
  """
  values = {name: _value(name, hint, flag_values)
            for name, (_, hint) in setting_fields(settings_class).items()
            if only is None or name in only}
  if settings_class is settings_lib.ExperimentSettings:
    return settings_lib.ExperimentSettings.from_flat(**values)
  return settings_class(**values)


def config_from_flags() -> settings_lib.ExperimentSettings:
  """The `ExperimentSettings` of the parsed flags (train.py, compare.py)."""
  return settings_from_flags()
