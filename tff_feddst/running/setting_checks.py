"""Checks of single setting values, shared by the settings groups.

Types (`check_setting_type`), worker addresses (`check_worker_addresses`),
PruneFL's layer times and the CPU count that bounds --num_local_workers.
Imports no TF.
"""

import ipaddress
import math
import numbers
import os
import re
import typing
from typing import Any, Optional

from tff_feddst.running import errors

ConfigError = errors.ConfigError
MAX_PORT = 65535


def usable_cpu_count() -> int:
  """CPUs this process may run on (its affinity set where the OS has one)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


_TYPE_NAMES = {int: 'an integer', float: 'a number', str: 'a string',
               bool: 'True or False'}


def check_setting_type(name: str, value: Any, hint: Any) -> None:
  """Checks that a setting has the type its annotation asks for.

  Integers are accepted for floats; booleans are not numbers here; a float
  setting must be finite (inf and nan are refused).

  Args:
    name: The setting (flag) name, for the message.
    value: Its value.
    hint: `int`, `float`, `str`, `bool`, or `Optional` of one of them.

  Raises:
    ConfigError: One line, `--name=value is invalid: expected ...`.
  """
  options = typing.get_args(hint) or (hint,)
  optional = type(None) in options
  kind = next(option for option in options if option is not type(None))
  if value is None:
    ok = optional
  elif kind is bool:
    ok = isinstance(value, bool)
  elif kind is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  elif kind is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and not math.isfinite(value):
      # inf and nan parse as floats but no setting means them.
      raise ConfigError(f'--{name}={value!r} is invalid: expected a finite '
                        'number.')
  else:
    ok = isinstance(value, kind)
  if not ok:
    expected = _TYPE_NAMES.get(kind, kind.__name__)
    if optional:
      expected += ' or None (unset)'
    raise ConfigError(f'--{name}={value!r} is invalid: expected {expected}, '
                      f'got {type(value).__name__}.')


def is_layer_times(text: str) -> bool:
  """Whether `text` is 'uniform' or positive numbers joined by commas (as
  `prunefl.parse_layer_times` reads it; checked here without importing TF)."""
  if text.strip() in ('', 'uniform'):
    return True
  try:
    return all(0 < float(part) < float('inf') for part in text.split(','))
  except ValueError:
    return False


# A host name (RFC 1123 labels; '_' tolerated, as some resolvers do).
_HOST_NAME = re.compile(r'(?!-)[A-Za-z0-9_-]{1,63}(?<!-)'
                        r'(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?')


def _worker_address_problem(address: str) -> Optional[str]:
  """What is wrong with one `host:port` worker address, or None."""
  host, separator, port = address.rpartition(':')
  if not separator:
    return 'no :port'
  if not host:
    return 'no host'
  if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
    return f'port {port!r} is not in [1, {MAX_PORT}]'
  if host.startswith('[') and host.endswith(']'):
    try:
      ipaddress.IPv6Address(host[1:-1])
      return None
    except ValueError:
      return f'{host} is not an IPv6 address'
  if len(host) > 253 or not _HOST_NAME.fullmatch(host):
    return f'host {host!r} is not a host name, an IPv4 address or [IPv6]'
  if all(label.isdigit() for label in host.rstrip('.').split('.')):
    try:
      ipaddress.IPv4Address(host)
    except ValueError:
      return f'{host} is not an IPv4 address'
  return None


def check_worker_addresses(workers: str) -> None:
  """Checks a `--workers` value: comma-separated `host:port`, each once.

  Args:
    workers: The flag's value.

  Raises:
    ConfigError: One line naming the first bad address and what is wrong.
  """
  addresses = [a.strip() for a in workers.split(',')]
  expected = ('comma-separated host:port addresses of running TFF workers '
              f'(host name, IPv4 or [IPv6]; port in [1, {MAX_PORT}])')
  for address in addresses:
    problem = ('an empty address' if not address
               else _worker_address_problem(address))
    if problem:
      raise ConfigError(f'--workers={workers!r} is invalid: expected '
                        f'{expected}; {address!r}: {problem}.')
  duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
  if duplicates:
    raise ConfigError(f'--workers={workers!r} is invalid: expected each '
                      f'worker once; {duplicates[0]!r} is listed twice.')


# Server settings `plain_loop.PlainServer` has only at these values: it
# steps the server with SGD (and momentum) and re-prunes by the FedDST rule.
PLAIN_SERVER_SETTINGS = (('server_optimizer', 'sgd'), ('server_rule', 'feddst'),
                         ('min_votes_unit', 'clients'))


def unsupported_plain_server_setting(
    server: Any) -> Optional[tuple[str, Any, str]]:
  """The first server setting `plain_loop.PlainServer` cannot run, if any.

  Args:
    server: A run's server settings (`settings.ServerSettings`).

  Returns:
    `(flag name, its value, the value the plain server runs)`, or None.
  """
  for name, supported in PLAIN_SERVER_SETTINGS:
    value = getattr(server, name)
    if value != supported:
      return name, value, supported
  return None


def check_tflite_runtime(settings: Any) -> None:
  """Refuses what `--client_runtime=tflite` cannot run.

  The TFLite rounds (`ondevice.tflite_rounds`) train each client through
  the exported training model in this process and aggregate with
  `plain_loop.PlainServer`: a method of the FedDST family, no TFF workers,
  the plain server's settings, the plain mean, constant sparsity, grow
  scores the `train` signature keeps and the round's readjustment counter.

  Args:
    settings: The run's `settings.ExperimentSettings` (duck-typed: this
      module imports no settings).

  Raises:
    ConfigError: One line naming the first flag that does not fit and what
      --client_runtime=tflite accepts.
  """
  from tff_feddst.methods import registry  # pylint: disable=g-import-not-at-top
  prefix = '--client_runtime=tflite:'
  if not registry.get(settings.method).runs_on_tflite:
    runs = ', '.join(name for name in registry.method_names()
                     if registry.get(name).runs_on_tflite)
    raise ConfigError(f'{prefix} --method={settings.method} does not run on '
                      f'TFLite clients; expected one of {runs}.')
  execution = settings.execution
  if execution.num_local_workers:
    raise ConfigError(f'{prefix} --num_local_workers='
                      f'{execution.num_local_workers} is invalid: expected 0 '
                      '(TFLite clients train in this process).')
  if execution.workers is not None:
    raise ConfigError(f'{prefix} --workers={execution.workers!r} is invalid: '
                      'expected unset (TFLite clients train in this process).')
  server = settings.server
  unsupported = unsupported_plain_server_setting(server)
  if unsupported:
    name, value, supported = unsupported
    raise ConfigError(f'{prefix} --{name}={value} is invalid: expected '
                      f'{supported} (the plain server\'s).')
  if server.robust_mean != 'mean':
    raise ConfigError(f'{prefix} --robust_mean={server.robust_mean} is '
                      'invalid: expected mean.')
  if settings.network.is_growing_sparsity:
    raise ConfigError(f'{prefix} --initial_sparsity='
                      f'{settings.network.initial_sparsity} is invalid: '
                      'expected unset (constant sparsity).')
  grow_score = settings.readjustment.grow_score
  if grow_score == 'last_batch_after_step':
    raise ConfigError(f'{prefix} --grow_score={grow_score} is invalid: '
                      'expected accumulated or last_batch (what the train '
                      'signature keeps).')
  counter = settings.readjustment.readjust_counter
  if counter != 'round':
    raise ConfigError(f'{prefix} --readjust_counter={counter} is invalid: '
                      'expected round (the exported model keeps no lifetime '
                      'epoch count).')
