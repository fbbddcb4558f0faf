"""The errors the bin/ scripts report as one line.

Bad settings raise `ConfigError` (also `settings.ConfigError`); a run that cannot go on (a TFF
worker that cannot be started or reached, an output that cannot be written)
raises a `RunError` whose message names what failed and what to do next. The
bin/ scripts print it as `<script>: error: <message>`, exit code 1, with no
traceback (`bin/cli.py`). This module imports nothing heavy, so a script can
catch the class without importing TensorFlow.
"""


class ConfigError(ValueError):
  """A bad experiment setting; the message is one line naming the flag."""


class RunError(Exception):
  """A run-time failure; the message is one line: what failed, what to do."""
