"""The attack script's choices, without TensorFlow: the attacks' names and
the defence switch, and their parsers.

`bin/attack.py` lists them in its flags' help and checks its flags against
them before it loads TensorFlow (seconds), so that a bad value is refused at
once. `attacks.ATTACKS` implements the attacks under these names, in this
order.
"""

from typing import Sequence

ATTACK_NAMES = ('takeover', 'weight_1e9', 'weight_3e38', 'huge_values',
                'scaled_x10', 'scaled_x100', 'sign_flip', 'replay', 'nan',
                'stale')
# The defences of issue 13 at their defaults (on), or none (off).
DEFENCE_MODES = ('on', 'off')


def parse_attacks(names: Sequence[str]) -> list[str]:
  """Checks attack names; 'all' (or nothing) means every attack.

  Args:
    names: Attack names from `ATTACK_NAMES`, or ['all'].

  Returns:
    The names, in the order given (all of `ATTACK_NAMES` for 'all' or empty).

  Raises:
    ValueError: For an unknown name (one line naming the accepted ones).
  """
  names = [n.strip() for n in names if n.strip()]
  if not names or names == ['all']:
    return list(ATTACK_NAMES)
  for name in names:
    if name not in ATTACK_NAMES:
      raise ValueError(f'--attacks: unknown attack {name!r}; expected a '
                       f'comma list of {", ".join(ATTACK_NAMES)} (or all).')
  return names


def parse_defences(modes: Sequence[str]) -> list[str]:
  """Checks --defences values ('on', 'off').

  Raises:
    ValueError: One line naming the bad value and the accepted ones.
  """
  modes = [m.strip() for m in modes if m.strip()]
  if not modes:
    raise ValueError('--defences: expected a comma list of on, off; got '
                     'nothing.')
  for mode in modes:
    if mode not in DEFENCE_MODES:
      raise ValueError(f'--defences: unknown value {mode!r}; expected a comma '
                       'list of on, off.')
  return modes
