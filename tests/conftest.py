"""Shared test set-up: import path, quiet TF, one owned TFF context.

pytest never runs `if __name__ == '__main__'` blocks, so the TFF execution
context is installed here, once per session, on a worker process the session
owns; at the end the worker is stopped and the session fails if any TFF
worker process started by it is still alive.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The tests assert bit equality (identical seeds, 1 vs 2 workers, kill and
# resume) on the library's default kernels: TensorFlow's oneDNN ones, with
# the settings `use_bit_exact_kernels` gives this process (below) and
# `kernel_settings.worker_environment` every process it starts (README,
# "Reproducibility").
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # pylint: disable=g-import-not-at-top
import pytest

# One intra-op thread and oneDNN's AVX2 kernels, as `run_experiment` sets
# them, before any test runs TensorFlow; the environment passes them on to
# the bin/ scripts the tests start.
from tff_feddst.running import kernel_settings  # pylint: disable=g-import-not-at-top
assert kernel_settings.use_bit_exact_kernels()


def _worker_children() -> list:
  return [p for p in psutil.Process().children(recursive=True)
          if 'worker_binary' in ' '.join(p.cmdline() or [])]


@pytest.fixture(scope='session', autouse=True)
def tff_context():
  """Installs the owned local TFF context for the whole session."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  from tff_feddst.running import execution
  with execution.local_execution_context() as worker:
    yield worker
  leftovers = _worker_children()
  assert not leftovers, f'TFF worker processes left behind: {leftovers}'
