"""TensorFlow's kernel settings that make a run repeat bit for bit.

The TFF workers started here (`execution.LocalWorker`) run every client
update and the server's math; this process runs evaluation and, in the
benchmarks and profiles, the same computations in plain TF. Both get the
same kernel settings, chosen for the same bits under any load: one intra-op
thread per kernel and oneDNN's AVX2 code (`worker_environment` for a
worker, `use_bit_exact_kernels` for this process), and a worker runs as many
client calls at once as there are CPUs (`concurrent_client_calls`).
README, "Reproducibility", has the measurements behind each choice.
"""

import logging
import os
from typing import Mapping

from tff_feddst.running import setting_checks

# One thread per kernel, and oneDNN's AVX2 kernels rather than its AVX-512
# ones (see `worker_environment`, `use_bit_exact_kernels`).
INTRA_OP_THREADS_ENV = 'TF_NUM_INTRAOP_THREADS'
ONEDNN_ISA_ENV = 'ONEDNN_MAX_CPU_ISA'
BIT_EXACT_ONEDNN_ISA = 'AVX2'
# glibc's malloc arenas for a worker (see `worker_environment`).
MALLOC_ARENAS_ENV = 'MALLOC_ARENA_MAX'
WORKER_MALLOC_ARENAS = '2'


def worker_environment() -> dict[str, str]:
  """The environment of a worker we start: ours, plus bit-exact kernels.

  The worker runs every client update and the server's math. TensorFlow's
  default oneDNN CPU kernels split a matmul or convolution across the
  threads of the intra-op pool as they are free, so under load one seed gave
  results that differed in the last bits, and training grew those into
  different models (measured: three identical Fashion-MNIST runs started
  together gave three different round-3 losses). With one intra-op thread
  (`TF_NUM_INTRAOP_THREADS=1`) every kernel always runs the same
  single-threaded code; the cores stay busy because the worker runs the
  round's clients concurrently, one kernel stream each (measured: no slower,
  see the README). `TF_DETERMINISTIC_OPS=1`, which earlier versions set
  here, is not set: with it, 2 of 18 repeated runs under load still
  differed, without it none of 30 (README, "Reproducibility").

  That still left a rare odd client under load: with its AVX-512 kernels
  (brgemm convolutions), oneDNN now and then gave one client's update other
  last bits (1 ulp in a few per cent of the weights) when several clients'
  kernels shared the worker. Limited to its AVX2 kernels
  (`ONEDNN_MAX_CPU_ISA=AVX2`) it has always given the same bits (README,
  "Reproducibility", with the measured cost). With oneDNN's TensorFlow ops
  off (`TF_ENABLE_ONEDNN_OPTS=0`, Eigen kernels, which repeat on their own)
  the instruction set is left alone: Eigen's matmuls still call oneDNN's
  sgemm, and their bits stay those of earlier versions. A value the caller
  set for either variable is kept.

  Memory: the worker runs a round's clients on as many threads, and glibc
  gives threads up to 8 malloc arenas per core, each holding freed memory
  of its own; `MALLOC_ARENA_MAX=2` took the worker's peak on the
  benchmark's configuration from 852 to 766 MiB, with the same CPU time
  (median ratio 0.997 over 3 pairs) and the same bits (README, "Memory").
  A value the caller set is kept.
  """
  env = dict(os.environ)
  env.setdefault(INTRA_OP_THREADS_ENV, '1')
  env.setdefault(MALLOC_ARENAS_ENV, WORKER_MALLOC_ARENAS)
  if _onednn_enabled(env):
    env.setdefault(ONEDNN_ISA_ENV, BIT_EXACT_ONEDNN_ISA)
  return env


def use_bit_exact_kernels() -> bool:
  """Gives this process the workers' bit-exact kernel settings.

  One intra-op thread per TensorFlow kernel, and oneDNN's AVX2 kernels
  (`ONEDNN_MAX_CPU_ISA=AVX2`, which oneDNN reads once, at its first
  kernel). Evaluation and any other TF work in this process then give the
  same bits under any load, as the workers do (`worker_environment`). Must
  run before TensorFlow executes its first op; values the user set for
  `TF_NUM_INTRAOP_THREADS` or `ONEDNN_MAX_CPU_ISA` are kept, and with
  `TF_ENABLE_ONEDNN_OPTS=0` the instruction set is left alone (see
  `worker_environment`).

  Returns:
    True if this process now computes bit-exactly (one intra-op thread,
    AVX2 kernels); False, with a warning, if TensorFlow was initialised
    already with another setting (e.g. in a notebook that ran TF before), or
    the user chose another thread count or instruction set.
  """
  isa_is_bit_exact = True
  if _onednn_enabled(os.environ):  # Else Eigen kernels; see above.
    os.environ.setdefault(ONEDNN_ISA_ENV, BIT_EXACT_ONEDNN_ISA)
    isa = os.environ[ONEDNN_ISA_ENV]
    isa_is_bit_exact = isa.strip().upper() == BIT_EXACT_ONEDNN_ISA
  if not isa_is_bit_exact:
    logging.warning('%s=%s: results may differ in the last bits under load '
                    '(bit-exact: %s=%s).', ONEDNN_ISA_ENV, isa,
                    ONEDNN_ISA_ENV, BIT_EXACT_ONEDNN_ISA)
  return _use_one_intra_op_thread() and isa_is_bit_exact


def _onednn_enabled(environment: Mapping[str, str]) -> bool:
  """False if `environment` turns TensorFlow's oneDNN ops off (Eigen's)."""
  value = environment.get('TF_ENABLE_ONEDNN_OPTS', '').strip().lower()
  return value not in ('0', 'false')


def _use_one_intra_op_thread() -> bool:
  """One intra-op thread for this process; see `use_bit_exact_kernels`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  wanted = os.environ.get(INTRA_OP_THREADS_ENV)
  if wanted is not None:  # Read by TensorFlow when it starts.
    if wanted.strip() == '1':
      return True
    logging.warning('%s=%s: evaluation in this process may differ in the '
                    'last bits under load.', INTRA_OP_THREADS_ENV, wanted)
    return False
  if tf.config.threading.get_intra_op_parallelism_threads() == 1:
    return True
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:
    logging.warning(
        'TensorFlow ran before tff_feddst could give it one intra-op '
        'thread: evaluation in this process may differ in the last bits '
        'under load. Call tff_feddst.running.kernel_settings.'
        'use_bit_exact_kernels() (or set %s=1) before any other '
        'TensorFlow work for bit-exact results.',
        INTRA_OP_THREADS_ENV)
    return False
  return True


def concurrent_client_calls(num_local_workers: int = 1) -> int:
  """How many calls of one computation a worker started here runs at once.

  A round's client updates are calls of one computation, each on one
  intra-op thread (`worker_environment`), so a worker keeps as many cores
  busy as it runs calls at once. More calls than cores only share them:
  with every client of a 20-client round at once, the worker's peak memory
  was higher and the round slower than with one call per core (README,
  "Memory" and "Speed"). The result does not depend on the limit: clients
  are independent and their sums exact (`exact_sum`).

  Args:
    num_local_workers: Workers started on this machine, sharing its CPUs.

  Returns:
    The CPUs this process may run on, divided among the local workers,
    at least 1.
  """
  cpus = setting_checks.usable_cpu_count()
  return max(1, cpus // max(1, num_local_workers))
