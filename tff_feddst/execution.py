"""TFF execution contexts whose worker processes belong to this Python process.

TFF 0.87's built-in local contexts start `worker_binary` with the parent's
stdout/stderr and leave it running after Python exits, which hangs pipes
(pytest capture, CI). Here the worker is started with its output discarded and
a parent-death signal, is stopped by PID when the context is closed (and at
interpreter exit), and the context is assembled from public `tff.framework`
parts, as TFF's own local factory does.
"""

import atexit
import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import time
from typing import Iterator, Optional, Sequence

import grpc
import portpicker
import tensorflow_federated as tff

from tff_feddst import errors

# Deterministic kernels in the workers we start (see `worker_environment`).
DETERMINISM_ENV = 'TF_DETERMINISTIC_OPS'

_PR_SET_PDEATHSIG = 1
_STARTUP_TIMEOUT_SECONDS = 60.0
_GRPC_MAX_MESSAGE_BYTES = 2_000_000_000


class WorkerError(errors.RunError):
  """A TFF worker could not be started or reached; one line, what to do."""


def _release_default_context() -> None:
  """At exit, drops TFF's import-time default context while modules live.

  That context's service manager ends its worker (if it ever started one) in
  `__del__`; left to interpreter teardown, it fails noisily.
  """
  tff.test.set_no_default_context()
  gc.collect()


atexit.register(_release_default_context)


def worker_binary_path() -> str:
  """Returns the path of the TFF C++ worker shipped in the TFF package."""
  return os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')


def worker_environment() -> dict[str, str]:
  """The environment of a worker we start: ours, plus deterministic kernels.

  The worker runs every client update and the server's math. Without
  `TF_DETERMINISTIC_OPS=1` its oneDNN kernels decide at run time how to split
  a matmul or convolution across threads, so under CPU load one seed gives
  results that differ in the last bits, and training grows those into
  different models (measured: three identical Fashion-MNIST runs started
  together gave three different round-3 losses; with it, six agreed bit for
  bit, with the same numbers and speed as a run on a quiet machine, though
  the test suite later saw one identical-seed pair differ; only
  `TF_ENABLE_ONEDNN_OPTS=0` has never differed, at twice the time). Only the
  worker gets it: in this process it would change how TensorFlow traces some
  ops (e.g. the sparse cross-entropy), and with it the graphs. A value the
  caller set is kept.
  """
  env = dict(os.environ)
  env.setdefault(DETERMINISM_ENV, '1')
  return env


def _die_with_parent() -> None:
  """Runs in the child before exec: SIGTERM it when the parent dies."""
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _grpc_stub(address: str) -> tff.framework.RemoteExecutorGrpcStub:
  """Returns a TFF executor stub on a gRPC channel to `address` (host:port)."""
  channel = grpc.insecure_channel(
      address,
      options=[('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
               ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES)])
  return tff.framework.RemoteExecutorGrpcStub(channel)


def _wait_until_ready(stub, exit_code, what: str, fix: str,
                      timeout_seconds: float = _STARTUP_TIMEOUT_SECONDS) -> None:
  """Waits until `stub` answers.

  Args:
    stub: The worker's executor stub.
    exit_code: Returns the worker process's exit code, or None while it runs
      (or when it is not ours).
    what: Names the worker, e.g. 'TFF worker at host:port'.
    fix: What the user can do about it.

  Raises:
    WorkerError: If the worker exits or does not answer in time.
  """
  deadline = time.monotonic() + timeout_seconds
  while not stub.is_ready:
    code = exit_code()
    if code is not None:
      raise WorkerError(f'{what} exited at start-up (exit code {code}); '
                        f'{fix}')
    if time.monotonic() > deadline:
      raise WorkerError(f'{what} did not answer within {timeout_seconds:g} s; '
                        f'{fix}')
    time.sleep(0.05)


class LocalWorker:
  """A TFF `worker_binary` process on 127.0.0.1 that this process owns.

  Attributes:
    port: The gRPC port the worker serves on.
    process: The `subprocess.Popen` of the worker.
    stub: The executor stub connected to it.
  """

  def __init__(self, port: Optional[int] = None,
               max_concurrent_computation_calls: int = -1):
    """Starts the worker and waits until it answers.

    Args:
      port: Port to serve on; a free one is picked when None.
      max_concurrent_computation_calls: Passed to the worker; <= 0 is no limit.

    Raises:
      WorkerError: If the worker cannot be started, exits, or does not
        become ready in time.
    """
    self.port = port or portpicker.pick_unused_port()
    try:
      self.process = subprocess.Popen(
          [worker_binary_path(), f'--port={self.port}',
           '--max_concurrent_computation_calls='
           f'{max_concurrent_computation_calls}',
           '--grpc_max_message_length_megabytes='
           f'{_GRPC_MAX_MESSAGE_BYTES >> 20}'],
          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
          env=worker_environment())
    except OSError as error:
      raise WorkerError(
          f'cannot start the TFF worker {worker_binary_path()}: '
          f'{error.strerror or error}; check the tensorflow-federated '
          'install (see README).') from None
    atexit.register(self.stop)
    self.stub = _grpc_stub(f'127.0.0.1:{self.port}')
    try:
      _wait_until_ready(
          self.stub, self.process.poll,
          f'the local TFF worker on port {self.port}',
          'check that the worker starts on this machine '
          f'({worker_binary_path()} --port={self.port}), or retry when the '
          'machine is less loaded.')
    except WorkerError:
      self.stop()
      raise

  def stop(self) -> None:
    """Ends the worker process (by PID) and waits for it. Idempotent."""
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()


class RemoteWorker:
  """A TFF worker this process does not own (started elsewhere).

  Attributes:
    address: Its host:port.
    stub: The executor stub connected to it.
  """

  def __init__(self, address: str):
    """Connects and waits until the worker answers.

    Args:
      address: host:port of a running TFF worker.

    Raises:
      ValueError: If `address` is not host:port.
      WorkerError: If nothing answers there in time.
    """
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit():
      raise ValueError(f'Worker address {address!r} is not host:port.')
    self.address = address
    self.stub = _grpc_stub(address)
    _wait_until_ready(self.stub, lambda: None, f'TFF worker at {address}',
                      'start it or fix --workers.', timeout_seconds=10.0)

  def stop(self) -> None:
    """Leaves the worker running: it belongs to whoever started it."""


def _executor_factory(worker: LocalWorker):
  def stack_fn(cardinalities):
    # A computation with no client-placed argument still needs a cardinality.
    cardinalities.setdefault(tff.CLIENTS, 0)
    executor = tff.framework.RemoteExecutor(worker.stub)
    executor.set_cardinalities(cardinalities)
    return executor
  return tff.framework.ResourceManagingExecutorFactory(
      executor_stack_fn=stack_fn)


def _context_for(worker, context_class):
  return context_class(
      executor_fn=_executor_factory(worker),
      compiler_fn=tff.backends.native.compiler.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result)


def sync_context_for(worker) -> tff.framework.SyncExecutionContext:
  """Returns a synchronous TFF execution context that runs on `worker`."""
  return _context_for(worker, tff.framework.SyncExecutionContext)


@contextlib.contextmanager
def local_execution_context(
    max_concurrent_computation_calls: int = -1) -> Iterator[LocalWorker]:
  """Runs TFF computations on an owned local worker inside a `with` block.

  The context is pushed on TFF's context stack, so whatever context was in
  force before (another run's, a test session's) is back in force on exit. On
  exit (normal, error or Ctrl-C) the worker process is ended.

  Args:
    max_concurrent_computation_calls: Worker concurrency limit; <= 0 is none.

  Yields:
    The `LocalWorker` in use.

  Raises:
    WorkerError: If the worker cannot be started.
  """
  worker = LocalWorker(
      max_concurrent_computation_calls=max_concurrent_computation_calls)
  try:
    with tff.framework.get_context_stack().install(sync_context_for(worker)):
      yield worker
  finally:
    worker.stop()


@contextlib.contextmanager
def distributed_execution_context(
    num_local_workers: int = 0,
    worker_addresses: Sequence[str] = ()) -> Iterator[list]:
  """Runs TFF computations with clients spread over several workers.

  Each worker gets its own asynchronous context; TFF's mergeable-computation
  context splits the CLIENTS of a call across them and merges the partial
  aggregates (`federated_aggregate`'s merge), so a FedDST round runs its
  clients in parallel. Workers started here are owned (ended by PID on exit,
  also on error or Ctrl-C); workers given by address are left running.

  Args:
    num_local_workers: Workers to start on 127.0.0.1.
    worker_addresses: host:port of workers started elsewhere.

  Yields:
    The workers in use (`LocalWorker`s, then `RemoteWorker`s).

  Raises:
    ValueError: If no worker is asked for, or an address is malformed.
    WorkerError: If a worker cannot be started or reached.
  """
  if num_local_workers < 0 or num_local_workers + len(worker_addresses) < 1:
    raise ValueError('A distributed context needs at least one worker; got '
                     f'num_local_workers={num_local_workers} and '
                     f'{len(worker_addresses)} addresses.')
  workers = []
  try:
    for _ in range(num_local_workers):
      workers.append(LocalWorker())
    for address in worker_addresses:
      workers.append(RemoteWorker(address))
    context = tff.backends.native.create_mergeable_comp_execution_context(
        [_context_for(w, tff.framework.AsyncExecutionContext)
         for w in workers])
    with tff.framework.get_context_stack().install(context):
      yield workers
  finally:
    for worker in workers:
      worker.stop()
