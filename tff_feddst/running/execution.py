"""TFF execution contexts whose worker processes belong to this Python process.

TFF 0.87's built-in local contexts start `worker_binary` with the parent's
stdout/stderr and leave it running after Python exits, which hangs pipes
(pytest capture, CI). Here the worker is started with its output discarded and
a parent-death signal, is stopped by PID when the context is closed (and at
interpreter exit), and the context is assembled from public `tff.framework`
parts, as TFF's own local factory does.

TFF's contexts also retry a dead worker forever, so a run would hang with no
message. The contexts here are `SupervisedContext`s: an owned worker that dies
during a call is restarted and the call re-run (exactly: computations are pure
functions of their inputs); a worker given by address that stops answering
ends the call with a `WorkerLostError` naming it; a stop request abandons the
call.
"""

import atexit
import contextlib
import gc
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import grpc
import portpicker
import tensorflow_federated as tff

from tff_feddst.running import errors
from tff_feddst.running import interruptions
from tff_feddst.running import kernel_settings
from tff_feddst.running import worker_isolation

_STARTUP_TIMEOUT_SECONDS = 60.0
_GRPC_MAX_MESSAGE_BYTES = 2_000_000_000
# A lost worker: restarts of an owned one per TFF call, and how long one not
# owned may go without answering before the run stops.
DEFAULT_MAX_RESTARTS = 3
DEFAULT_WORKER_TIMEOUT_SECONDS = 60.0


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


def _grpc_stub(address: str) -> tff.framework.RemoteExecutorGrpcStub:
  """Returns a TFF executor stub on a gRPC channel to `address`.

  Args:
    address: host:port, or `unix:<path>` for a Unix socket.
  """
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
  """A TFF `worker_binary` process that this process owns.

  The worker runs in a network namespace of its own where the platform allows
  (`worker_isolation`), so no other host can reach it; else on 127.0.0.1 and
  every other interface, with a warning.

  Attributes:
    port: The gRPC port the worker serves on (inside its namespace, if any).
    process: The `subprocess.Popen` to watch and stop: it exits when the
      worker does (the worker itself, or its forwarder when isolated).
    worker_pid: PID of the `worker_binary` process.
    target: gRPC target the stub connects to (`unix:<path>` or host:port).
    is_isolated: Whether the worker is unreachable from the network.
    stub: The executor stub connected to it.
  """

  def __init__(self, port: Optional[int] = None,
               max_concurrent_computation_calls: Optional[int] = None):
    """Starts the worker and waits until it answers.

    Args:
      port: Port to serve on; a free one is picked when None.
      max_concurrent_computation_calls: Passed to the worker; <= 0 is no
        limit; None is one call per CPU (`kernel_settings.concurrent_client_calls`).

    Raises:
      WorkerError: If the worker cannot be started, exits, or does not
        become ready in time.
    """
    self.port = port or portpicker.pick_unused_port()
    if max_concurrent_computation_calls is None:
      max_concurrent_computation_calls = kernel_settings.concurrent_client_calls()
    self.max_concurrent_computation_calls = max_concurrent_computation_calls
    try:
      self._started = worker_isolation.start(
          [worker_binary_path(), f'--port={self.port}',
           '--max_concurrent_computation_calls='
           f'{max_concurrent_computation_calls}',
           '--grpc_max_message_length_megabytes='
           f'{_GRPC_MAX_MESSAGE_BYTES >> 20}'],
          port=self.port, env=kernel_settings.worker_environment(),
          timeout_seconds=_STARTUP_TIMEOUT_SECONDS)
    except OSError as error:
      raise WorkerError(
          f'cannot start the TFF worker {worker_binary_path()}: '
          f'{error.strerror or error}; check the tensorflow-federated '
          'install (see README).') from None
    except RuntimeError as error:  # The worker exited or never listened.
      raise WorkerError(
          f'{error} Check that the worker starts on this machine '
          f'({worker_binary_path()} --port={self.port}).') from None
    self.process = self._started.process
    self.worker_pid = self._started.worker_pid
    self.target = self._started.target
    self.is_isolated = self._started.is_isolated
    atexit.register(self.stop)
    self.stub = _grpc_stub(self.target)
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
    self._started.remove_socket_dir()

  def restart(self) -> None:
    """Replaces the worker process (e.g. a dead one) with a fresh one.

    The new worker serves on the same port when it can, else on a new one.
    Call it from a thread that lives as long as the worker should: the
    parent-death signal follows the thread that starts the process.

    Raises:
      RuntimeError: If no new worker becomes ready in time.
    """
    self.stop()
    try:
      fresh = LocalWorker(self.port, self.max_concurrent_computation_calls)
    except Exception:  # pylint: disable=broad-except
      # The port may still be held; a free one does as well, since the
      # caller builds new connections from the worker's attributes.
      fresh = LocalWorker(None, self.max_concurrent_computation_calls)
    vars(self).update(vars(fresh))


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
    worker_isolation.warn_if_not_loopback(host, address)
    self.address = address
    self.stub = _grpc_stub(address)
    _wait_until_ready(self.stub, lambda: None, f'TFF worker at {address}',
                      'start it or fix --workers.', timeout_seconds=10.0)

  def stop(self) -> None:
    """Leaves the worker running: it belongs to whoever started it."""


def _executor_factory(stub: tff.framework.RemoteExecutorStub):
  def stack_fn(cardinalities):
    # A computation with no client-placed argument still needs a cardinality.
    cardinalities.setdefault(tff.CLIENTS, 0)
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor
  return tff.framework.ResourceManagingExecutorFactory(
      executor_stack_fn=stack_fn)


def _context_for(stub, context_class):
  return context_class(
      executor_fn=_executor_factory(stub),
      compiler_fn=tff.backends.native.compiler.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result)


def sync_context_for(worker) -> tff.framework.SyncExecutionContext:
  """Returns a synchronous TFF execution context that runs on `worker`."""
  return _context_for(worker.stub, tff.framework.SyncExecutionContext)


class _WithoutRetryNotes(logging.Filter):
  """Drops TFF's note on every retry of an unavailable worker.

  TFF logs one (at INFO, with the full gRPC error) each time it retries a
  call to a worker that is down; `SupervisedContext` reports a dead or lost
  worker once instead.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno < logging.WARNING and
                record.getMessage().startswith('Received retryable gRPC'))


# TFF logs through absl's logger.
logging.getLogger('absl').addFilter(_WithoutRetryNotes())


class WorkerLostError(interruptions.Interrupted):
  """A TFF worker died or stopped answering, and the run cannot go on.

  Attributes:
    address: host:port of the worker.
  """

  def __init__(self, address: str, message: str):
    self.address = address
    super().__init__(message)


class _AbandonedCallError(grpc.RpcError):
  """A call on an abandoned stub.

  A `grpc.RpcError` but not a TFF `RetryableError`: TFF's retry loop gives up
  on it and its executor clean-up swallows it.
  """


def _address_of(worker) -> str:
  """The gRPC target of a `LocalWorker` (its `target`) or `RemoteWorker`."""
  return getattr(worker, 'address', None) or worker.target


def _name_of(worker) -> str:
  """How messages name a worker: a remote one's host:port, else its port."""
  return getattr(worker, 'address', None) or f'on local port {worker.port}'


class _AbandonableStub(tff.framework.RemoteExecutorStub):
  """A TFF executor stub on its own channel, whose calls fail once abandoned.

  TFF's execution contexts retry a worker's UNAVAILABLE errors forever, with
  a backoff of up to 30 s. After `abandon()`, the channel is closed (an
  in-flight call ends at once) and every further call fails with a
  non-retryable error, so the retry loop ends at its next attempt.
  """

  def __init__(self, address: str):
    self.address = address
    self._abandoned = False
    # Its own connection (no subchannel shared with other channels to the
    # address), so closing it touches nothing else.
    self._channel = grpc.insecure_channel(
        address,
        options=[('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
                 ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
                 ('grpc.use_local_subchannel_pool', 1)])
    self._stub = tff.framework.RemoteExecutorGrpcStub(self._channel)

  def abandon(self) -> None:
    self._abandoned = True
    self._channel.close()

  def _call(self, method: str, request):
    if self._abandoned:
      raise _AbandonedCallError(f'call to abandoned worker {self.address}')
    try:
      return getattr(self._stub, method)(request)
    except Exception:
      if self._abandoned:
        raise _AbandonedCallError(
            f'call to abandoned worker {self.address}') from None
      raise

  def get_executor(self, request):
    return self._call('get_executor', request)

  def create_value(self, request):
    return self._call('create_value', request)

  def create_struct(self, request):
    return self._call('create_struct', request)

  def create_call(self, request):
    return self._call('create_call', request)

  def create_selection(self, request):
    return self._call('create_selection', request)

  def compute(self, request):
    return self._call('compute', request)

  def dispose(self, request):
    if self._abandoned:  # Nothing to free on a worker left behind.
      return None
    return self._call('dispose', request)

  def dispose_executor(self, request):
    if self._abandoned:
      return None
    return self._call('dispose_executor', request)

  @property
  def is_ready(self) -> bool:
    return not self._abandoned and self._stub.is_ready


class _ReachabilityProbe:
  """Tracks when a worker last completed a fresh gRPC connection handshake.

  A daemon thread opens a new connection every `interval_seconds` (not one
  shared with the run's channels, so a connection that stays open to a
  stopped process does not count) and notes when it became ready.
  """

  def __init__(self, address: str, interval_seconds: float,
               attempt_seconds: float):
    self._address = address
    self._interval_seconds = interval_seconds
    self._attempt_seconds = attempt_seconds
    self._last_reached = time.monotonic()
    self._stopped = threading.Event()
    threading.Thread(target=self._run, name=f'probe {address}',
                     daemon=True).start()

  def _run(self) -> None:
    while not self._stopped.is_set():
      channel = grpc.insecure_channel(
          self._address, options=[('grpc.use_local_subchannel_pool', 1)])
      try:
        grpc.channel_ready_future(channel).result(
            timeout=self._attempt_seconds)
        self._last_reached = time.monotonic()
      except grpc.FutureTimeoutError:
        pass
      finally:
        channel.close()
      self._stopped.wait(self._interval_seconds)

  def silent_seconds(self) -> float:
    """Seconds since the worker last answered a handshake."""
    return time.monotonic() - self._last_reached

  def stop(self) -> None:
    self._stopped.set()


class _WorkerDied(Exception):
  """An owned worker's process ended (internal to `SupervisedContext`)."""

  def __init__(self, worker: LocalWorker, how: str):
    self.worker = worker
    self.how = how
    super().__init__(how)


def _describe_exit(returncode: int, is_isolated: bool = False) -> str:
  """How a worker ended, from its process's return code.

  An isolated worker's process is its forwarder, which exits with 128 + N
  when the worker was killed by signal N (as a shell does).
  """
  if is_isolated and returncode > 128:
    returncode = 128 - returncode
  if returncode < 0:
    try:
      return f'killed by {signal.Signals(-returncode).name}'
    except ValueError:
      return f'killed by signal {-returncode}'
  return f'exit code {returncode}'


class SupervisedContext(tff.framework.SyncContext):
  """A synchronous TFF context that watches its workers while a call runs.

  TFF's own contexts retry a dead worker forever, so a run would hang. Here
  each `invoke` runs the call of an inner context (built on one fresh
  `_AbandonableStub` per worker) on a daemon thread, and the calling thread
  checks before the call and then every `poll_seconds`:
  - an owned worker (`LocalWorker`) that died: the call is abandoned, the
    worker restarted in place (same port if free), a fresh inner context
    built, one warning logged, and the call run again from the same inputs.
    TFF computations are pure functions of their inputs (a round: the state
    it starts from and seeded client data), so the result equals that of an
    uninterrupted call. After `max_restarts` restarts within one call:
    `WorkerLostError`.
  - a worker not owned (`RemoteWorker`) that has answered no connection
    handshake for `worker_timeout_seconds`: the call is abandoned and
    `WorkerLostError` names it (restarting it is its owner's business).
  - `check_interrupt`: whatever it raises (e.g. `StopRequested`) abandons the
    call and propagates; so does KeyboardInterrupt.
  An abandoned call's thread and TFF's retry loop behind it end at their next
  attempt (their stubs fail fast). They are daemon threads, so they never
  keep the process from exiting.

  Attributes:
    activity: What the calls belong to, for messages (e.g. 'round 3'); see
      `describe_activity`.
  """

  def __init__(self, workers: list,
               build_context: Callable[[list], tff.framework.SyncContext],
               *,
               max_restarts: int = DEFAULT_MAX_RESTARTS,
               worker_timeout_seconds: float = DEFAULT_WORKER_TIMEOUT_SECONDS,
               check_interrupt: Optional[Callable[[], None]] = None,
               poll_seconds: float = 0.1):
    """Watches `workers`; nothing runs until the first `invoke`.

    Args:
      workers: `LocalWorker`s (owned, restarted in place) and
        `RemoteWorker`s (not owned), in the order `build_context` takes
        their stubs.
      build_context: Builds the inner context from one executor stub per
        worker.
      max_restarts: Restarts of owned workers allowed within one call, >= 0.
      worker_timeout_seconds: How long a worker not owned may go without
        answering before the run stops, > 0.
      check_interrupt: Called at every poll; may raise to stop the run.
      poll_seconds: Poll interval.

    Raises:
      ValueError: For a negative `max_restarts` or a timeout <= 0.
    """
    if max_restarts < 0:
      raise ValueError(f'max_restarts must be >= 0, got {max_restarts}.')
    if not worker_timeout_seconds > 0:
      raise ValueError('worker_timeout_seconds must be > 0, got '
                       f'{worker_timeout_seconds}.')
    self._workers = workers
    self._build_context = build_context
    self._max_restarts = max_restarts
    self._worker_timeout_seconds = worker_timeout_seconds
    self._check_interrupt = check_interrupt
    self._poll_seconds = poll_seconds
    self._generation = None  # (stubs, inner context), built on first use.
    self._probes = {
        _address_of(w): _ReachabilityProbe(
            _address_of(w), interval_seconds=min(2.0,
                                                 worker_timeout_seconds / 4),
            attempt_seconds=min(10.0, worker_timeout_seconds))
        for w in workers if not isinstance(w, LocalWorker)}
    self.activity = 'a TFF call'

  def invoke(self, comp: Any, arg: Any) -> Any:
    """Runs `comp(arg)` on the workers, restarting owned ones that die.

    Args:
      comp: The computation.
      arg: Its argument (None for none).

    Returns:
      The call's result.

    Raises:
      WorkerLostError: A worker not owned stopped answering, or an owned one
        died more than `max_restarts` times.
      Exception: Whatever the call or `check_interrupt` raises.
    """
    restarts = 0
    while True:
      try:
        return self._invoke_watched(comp, arg)
      except _WorkerDied as died:
        address = _name_of(died.worker)
        if restarts == self._max_restarts:
          again = f' again after {restarts} restarts' if restarts else ''
          raise WorkerLostError(
              address, f'TFF worker {address} died{again} during '
              f'{self.activity} ({died.how})') from None
        if self._check_interrupt is not None:
          self._check_interrupt()
        restarts += 1
        died.worker.restart()
        logging.warning(
            'TFF worker %s died (%s) during %s; restarted it on port %d and '
            're-running %s from its inputs (restart %d of %d).', address,
            died.how, self.activity, died.worker.port, self.activity,
            restarts, self._max_restarts)

  def _invoke_watched(self, comp: Any, arg: Any) -> Any:
    if self._check_interrupt is not None:
      self._check_interrupt()
    self._raise_if_lost()
    _, context = self._current_generation()
    outcome = {}
    finished = threading.Event()

    def call() -> None:
      try:
        outcome['result'] = context.invoke(comp, arg)
      except BaseException as error:  # pylint: disable=broad-except
        outcome['error'] = error
      finally:
        finished.set()

    threading.Thread(target=call, name='tff call', daemon=True).start()
    try:
      while not finished.wait(self._poll_seconds):
        if self._check_interrupt is not None:
          self._check_interrupt()
        self._raise_if_lost()
      if 'error' in outcome:
        self._raise_if_lost()  # A dead worker explains the error better.
    except BaseException:
      self._abandon()
      raise
    if 'error' in outcome:
      raise outcome['error']
    return outcome['result']

  def _raise_if_lost(self) -> None:
    for worker in self._workers:
      if isinstance(worker, LocalWorker):
        returncode = worker.process.poll()
        if returncode is not None:
          raise _WorkerDied(worker, _describe_exit(returncode,
                                                   worker.is_isolated))
      else:
        address = _address_of(worker)
        silent = self._probes[address].silent_seconds()
        if silent > self._worker_timeout_seconds:
          raise WorkerLostError(
              address, f'TFF worker {address} did not answer for '
              f'{silent:.0f} s during {self.activity} (it stopped or cannot '
              'be reached: restart it or change the worker list)')

  def _current_generation(self):
    if self._generation is None:
      stubs = [_AbandonableStub(_address_of(w)) for w in self._workers]
      self._generation = (stubs, self._build_context(stubs))
    return self._generation

  def _abandon(self) -> None:
    if self._generation is not None:
      for stub in self._generation[0]:
        stub.abandon()
      self._generation = None

  def close(self) -> None:
    """Abandons any call in flight and stops watching. Idempotent."""
    self._abandon()
    for probe in self._probes.values():
      probe.stop()


def _sync_context_on_first(stubs: list) -> tff.framework.SyncContext:
  return _context_for(stubs[0], tff.framework.SyncExecutionContext)


def _mergeable_context_on(stubs: list) -> tff.framework.SyncContext:
  """TFF's context that splits CLIENTS over one async context per stub."""
  return tff.backends.native.create_mergeable_comp_execution_context(
      [_context_for(stub, tff.framework.AsyncExecutionContext)
       for stub in stubs])


def describe_activity(label: str) -> None:
  """Names the work of the installed `SupervisedContext`, for its messages.

  Args:
    label: E.g. 'round 3'. Ignored when the current TFF context is not a
      `SupervisedContext`.
  """
  context = tff.framework.get_context_stack().current
  if isinstance(context, SupervisedContext):
    context.activity = label


@contextlib.contextmanager
def local_execution_context(
    max_concurrent_computation_calls: Optional[int] = None,
    *,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    check_interrupt: Optional[Callable[[], None]] = None,
) -> Iterator[LocalWorker]:
  """Runs TFF computations on an owned local worker inside a `with` block.

  The context is pushed on TFF's context stack, so whatever context was in
  force before (another run's, a test session's) is back in force on exit. On
  exit (normal, error or Ctrl-C) the worker process is ended. Calls are
  watched (`SupervisedContext`): a worker that dies is restarted in place and
  the call re-run.

  Args:
    max_concurrent_computation_calls: Worker concurrency limit; <= 0 is
      none; None is one call per CPU (`kernel_settings.concurrent_client_calls`).
    max_restarts: Restarts of the worker allowed within one TFF call.
    check_interrupt: Called while a TFF call runs; what it raises abandons
      the call and propagates.

  Yields:
    The `LocalWorker` in use.

  Raises:
    WorkerError: If the worker cannot be started.
  """
  worker = LocalWorker(
      max_concurrent_computation_calls=max_concurrent_computation_calls)
  context = None
  try:
    context = SupervisedContext(
        [worker], _sync_context_on_first, max_restarts=max_restarts,
        check_interrupt=check_interrupt)
    with tff.framework.get_context_stack().install(context):
      yield worker
  finally:
    if context is not None:
      context.close()
    worker.stop()


@contextlib.contextmanager
def distributed_execution_context(
    num_local_workers: int = 0,
    worker_addresses: Sequence[str] = (),
    *,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    worker_timeout_seconds: float = DEFAULT_WORKER_TIMEOUT_SECONDS,
    check_interrupt: Optional[Callable[[], None]] = None,
) -> Iterator[list]:
  """Runs TFF computations with clients spread over several workers.

  Each worker gets its own asynchronous context; TFF's mergeable-computation
  context splits the CLIENTS of a call across them and merges the partial
  aggregates (`federated_aggregate`'s merge), so a FedDST round runs its
  clients in parallel. Workers started here are owned (ended by PID on exit,
  also on error or Ctrl-C); workers given by address are left running. Calls
  are watched (`SupervisedContext`): an owned worker that dies is restarted
  and the call re-run; one not owned that stops answering ends the run with
  `WorkerLostError`.

  Args:
    num_local_workers: Owned workers to start here (`LocalWorker`).
    worker_addresses: host:port of workers started elsewhere.
    max_restarts: Restarts of owned workers allowed within one TFF call.
    worker_timeout_seconds: How long a worker given by address may go without
      answering before `WorkerLostError`.
    check_interrupt: Called while a TFF call runs; what it raises abandons
      the call and propagates.

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
  context = None
  try:
    for _ in range(num_local_workers):
      workers.append(LocalWorker(
          max_concurrent_computation_calls=kernel_settings.concurrent_client_calls(
              num_local_workers)))
    for address in worker_addresses:
      workers.append(RemoteWorker(address))
    context = SupervisedContext(
        workers, _mergeable_context_on,
        max_restarts=max_restarts,
        worker_timeout_seconds=worker_timeout_seconds,
        check_interrupt=check_interrupt)
    with tff.framework.get_context_stack().install(context):
      yield workers
  finally:
    if context is not None:
      context.close()
    for worker in workers:
      worker.stop()
