"""Which Python the notebook trains with, how it is made, and how it is run.

Standard library only: the notebook's kernel imports this module before
anything is installed, on whatever Python the kernel has (Colab's default
runtime has Python 3.12, newer than TF 2.14 and TFF 0.87 support).

The notebook never imports TensorFlow into its kernel. Every step that needs
the library runs as a subprocess of `Route.python` (`run_step`):
  - not on Colab: the kernel's own Python (the project's `.venv`, made by
    `install.sh`), which must be 3.11;
  - on Colab: a Python 3.11 virtual environment the notebook creates with
    `uv` (pip-installed into the kernel's Python; `uv venv --python 3.11`
    uses a Python 3.11 it finds on the machine, else downloads a standalone
    CPython 3.11 build), with this repository's pinned `requirements.txt`
    installed into it by the venv's own pip (`--no-deps`: TFF's pins cannot
    be resolved, see the README). Colab's preinstalled packages stay as they
    are, so nothing is mixed (e.g. `tensorflow-cpu` over Colab's
    `tensorflow`) and no restart is needed. The same route serves a 3.11
    runtime (no download then) and a 3.12 or 3.13 one.
"""

import codecs
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence, TextIO

REQUIRED_PYTHON = (3, 11)
# The uv release the notebook installs (a static binary in a wheel).
UV_REQUIREMENT = 'uv==0.13.9'
# `uv venv --seed` puts the newest setuptools into the venv, which has no
# `pkg_resources` any more (TensorBoard 2.14 imports it); this is the
# setuptools of the project's tested .venv (Python 3.11's ensurepip).
SETUPTOOLS_REQUIREMENT = 'setuptools==65.5.0'
# Written into the venv once its requirements are installed.
INSTALLED_MARKER = '.feddst_requirements_installed'
# bin/notebook_steps.py --step=configure's exit code for a bad parameter.
EXIT_BAD_PARAMETER = 2


class RuntimeSetupError(RuntimeError):
  """A setup or step that cannot go on; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Route:
  """Where the notebook's steps run.

  Attributes:
    name: 'this_python' (the kernel's Python, nothing installed) or
      'venv' (a Python 3.11 venv made and filled by `commands`).
    python: The interpreter that runs the steps.
    commands: argv lists that make `python` ready, in order (empty when
      nothing is to be done).
    reason: One line saying why this route.
  """
  name: str
  python: str
  commands: tuple[tuple[str, ...], ...]
  reason: str


def version_text(version_info: Sequence[int]) -> str:
  """'3.12.11' from a `sys.version_info`-like sequence."""
  return '.'.join(str(part) for part in tuple(version_info)[:3])


def venv_python(venv_dir: str) -> str:
  """The interpreter of a venv (Linux and macOS layout)."""
  return os.path.join(venv_dir, 'bin', 'python')


def choose_route(version_info: Sequence[int], in_colab: bool,
                 kernel_python: str, repo_dir: str, venv_dir: str,
                 venv_ready: bool = False) -> Route:
  """Picks where the steps run and what to install first.

  Args:
    version_info: The kernel's `sys.version_info` (or a tuple).
    in_colab: Whether the kernel runs on Colab (`google.colab` imported).
    kernel_python: The kernel's `sys.executable`.
    repo_dir: The repository checkout (holds `requirements.txt`).
    venv_dir: Where the Colab route makes its Python 3.11 venv.
    venv_ready: Whether that venv already has the requirements (a second
      run of the notebook in the same runtime): then nothing is installed.

  Returns:
    The `Route`.

  Raises:
    RuntimeSetupError: Off Colab, if the kernel's Python is not 3.11.
  """
  version = tuple(version_info)[:2]
  if not in_colab:
    if version != REQUIRED_PYTHON:
      raise RuntimeSetupError(
          f'this kernel runs Python {version_text(version_info)}; the '
          'pinned stack (TF 2.14, TFF 0.87) needs Python 3.11: run '
          './install.sh and pick the .venv kernel, or open the notebook on '
          'Colab (it makes its own Python 3.11 there).')
    return Route('this_python', kernel_python, (),
                 f'not on Colab: the kernel\'s Python '
                 f'{version_text(version_info)} ({kernel_python}) runs the '
                 'steps as it is.')
  python = venv_python(venv_dir)
  if venv_ready:
    return Route('venv', python, (),
                 f'on Colab: the Python 3.11 venv {venv_dir} is ready.')
  requirements = os.path.join(repo_dir, 'requirements.txt')
  commands = (
      (kernel_python, '-m', 'pip', 'install', '-q', UV_REQUIREMENT),
      (kernel_python, '-m', 'uv', 'venv', '--seed', '--python', '3.11',
       venv_dir),
      (python, '-m', 'pip', 'install', '-q', '--no-deps', '-r',
       requirements, SETUPTOOLS_REQUIREMENT),
  )
  found = ('the runtime\'s own 3.11' if version == REQUIRED_PYTHON else
           'a Python 3.11 uv finds or downloads')
  return Route('venv', python, commands,
               f'on Colab (kernel Python {version_text(version_info)}): a '
               f'venv of {found} at {venv_dir}, with requirements.txt '
               'pinned, beside Colab\'s own packages.')


def is_venv_ready(venv_dir: str) -> bool:
  """Whether `prepare` finished in `venv_dir` before."""
  return (os.path.isfile(venv_python(venv_dir)) and
          os.path.isfile(os.path.join(venv_dir, INSTALLED_MARKER)))


def prepare(route: Route, venv_dir: str, out: Optional[TextIO] = None
            ) -> None:
  """Runs the route's commands; marks the venv ready when they all worked.

  Args:
    route: From `choose_route`.
    venv_dir: The venv the commands fill (for the marker file).
    out: Where the commands' output goes (None: `sys.stdout` at the call,
      the notebook cell's output in a kernel).

  Raises:
    RuntimeSetupError: If a command fails (naming it and its exit code).
  """
  for command in route.commands:
    run_step(command, out=out)
  if route.commands and route.name == 'venv':
    with open(os.path.join(venv_dir, INSTALLED_MARKER), 'w') as f:
      f.write(' '.join(route.commands[-1]) + '\n')


def run_step(command: Sequence[str], out: Optional[TextIO] = None,
             cwd: Optional[str] = None, poll_seconds: float = 0.2) -> None:
  """Runs a command, copying its output (stdout and stderr) to `out`.

  Output goes through a temporary file rather than a pipe, so a process the
  command leaves behind that keeps its output open cannot make this wait
  (a TFF worker does that to pipes); the wait ends when the command exits.

  Args:
    command: argv.
    out: Where the output is copied (None: `sys.stdout` at the call, the
      notebook cell's output in a kernel).
    cwd: Working directory (None: the current one).
    poll_seconds: How often the output is copied while it runs.

  Raises:
    RuntimeSetupError: If the command exits with a non-zero code; the
      message names the program and the code, its output already shown.
  """
  out = sys.stdout if out is None else out
  decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
  with tempfile.TemporaryFile(mode='w+b') as log:
    process = subprocess.Popen(list(command), stdout=log,
                               stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=cwd)
    position = 0
    while True:
      finished = process.poll() is not None
      log.seek(position)
      chunk = log.read()
      if chunk:
        position += len(chunk)
        out.write(decoder.decode(chunk))
        out.flush()
      if finished:
        break
      time.sleep(poll_seconds)
  if process.returncode:
    raise RuntimeSetupError(
        f'{os.path.basename(command[0])} {" ".join(command[1:2])} ... '
        f'failed with exit code {process.returncode} (its output is above).')


class ParameterError(Exception):
  """A bad notebook parameter; IPython shows it as its one-line message."""

  def _render_traceback_(self):
    return [f'ParameterError: {self}']


def configure_run(python: str, repo_dir: str, parameters: dict,
                  flags_path: str) -> str:
  """Checks the notebook's parameters in the training Python.

  Runs `bin/notebook_steps.py --step=configure`, which writes the run's
  flagfile for `bin/train.py` to `flags_path` when every parameter is good.

  Args:
    python: The training Python (`Route.python`).
    repo_dir: The repository checkout.
    parameters: The parameters cell's values (JSON types), `output_dir`
      resolved.
    flags_path: Where the flagfile goes.

  Returns:
    The step's output (the Python it ran on, the output directory and the
    settings).

  Raises:
    ParameterError: For a bad parameter: the step's one-line message.
    RuntimeSetupError: If the step fails otherwise.
  """
  result = subprocess.run(
      [python, os.path.join(repo_dir, 'bin', 'notebook_steps.py'),
       '--step=configure', f'--parameters={json.dumps(parameters)}',
       f'--flags_out={flags_path}'],
      cwd=repo_dir, stdin=subprocess.DEVNULL, capture_output=True,
      text=True, check=False)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  if result.returncode == EXIT_BAD_PARAMETER:
    raise ParameterError(lines[-1] if lines else 'a parameter is invalid')
  if result.returncode:
    raise RuntimeSetupError(
        f'bin/notebook_steps.py --step=configure failed with exit code '
        f'{result.returncode}: {lines[-1] if lines else "no message"}')
  return result.stdout
