"""Where the TFLite clients of a round train: in this process or a pool.

`TFLiteRounds` (`tflite_rounds`) hands a round's clients to a runner and
reads their uploads back in client order, so the server sums them in the
order a serial run does and every number stays bit for bit the same:

  - `SerialClients` trains them one after another in this process;
  - `ClientPool` (`--tflite_client_processes` > 1) trains up to that many
    at once, each in a process of a `concurrent.futures.ProcessPoolExecutor`
    started with multiprocessing's 'spawn' context (TensorFlow is not
    fork-safe). Each process receives the exported model once, when it
    starts; each client still trains in a fresh interpreter on it
    (`device_client.DeviceClient`), as in this process.

Both take the same arguments (`run`) and are context managers; leaving one
after an exception (a client's error, a stop request) kills the pool's
processes at once instead of letting them finish their clients. Pool
processes ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process
group; the training process answers the stop and ends them) and end on
their own when the training process dies.
"""

import collections
import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

from tff_feddst.ondevice import device_client

# Seconds between stop-request checks while the next upload is awaited.
POLL_SECONDS = 0.2
# Clients handed to the pool ahead of the one whose upload is awaited, per
# process: enough to keep every process busy, few enough that a round's
# minibatches are not all held at once.
CLIENTS_AHEAD_PER_PROCESS = 2

Epochs = list[list[device_client.Batch]]
Upload = dict[str, np.ndarray]
CheckInterrupt = Optional[Callable[[], None]]

# TensorFlow's intra-op thread count, read when it starts its kernels.
INTRA_OP_THREADS_ENV = 'TF_NUM_INTRAOP_THREADS'

# The exported model in a pool process (set once, by `_load_model`).
_MODEL: Optional[bytes] = None


def _end_with_parent() -> None:
  """Ends this process when the process that started it dies."""
  parent = multiprocessing.parent_process()
  if parent is None:
    return
  multiprocessing.connection.wait([parent.sentinel])
  os._exit(1)  # pylint: disable=protected-access


def _load_model(tflite_model: bytes, intra_op_threads: int,
                inter_op_threads: int) -> None:
  """A pool process's initializer: keeps the model, takes the training
  process's TensorFlow thread counts, leaves stops to the training process
  and watches it."""
  global _MODEL
  _MODEL = tflite_model
  if intra_op_threads:
    # The interpreter's select TF ops take their thread count from here
    # (measured: with it unset they rounded otherwise than in the training
    # process; with it, the same bits).
    os.environ.setdefault(INTRA_OP_THREADS_ENV, str(intra_op_threads))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
  tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  threading.Thread(target=_end_with_parent, daemon=True).start()


def _train_client(broadcast: Mapping[str, np.ndarray],
                  instructions: Mapping[str, Any], epochs: Epochs) -> Upload:
  """One client's round in a pool process, in a fresh interpreter."""
  return device_client.DeviceClient(_MODEL).train_round(
      broadcast, instructions, epochs)


class SerialClients:
  """Trains a round's clients one after another in this process."""

  def __init__(self, tflite_model: bytes):
    """Keeps the model.

    Args:
      tflite_model: The exported training model (`training.tflite`).
    """
    self._tflite_model = tflite_model

  def __enter__(self) -> 'SerialClients':
    return self

  def __exit__(self, *unused_exception) -> None:
    pass

  def close(self, abandon: bool = False) -> None:
    """Nothing to end: the clients ran in this process (`ClientPool.close`
    ends processes; the rounds call `close` on either runner).

    Args:
      abandon: Unused; the pool's meaning.
    """
    del abandon

  def run(self, broadcast: Mapping[str, np.ndarray],
          instructions: Mapping[str, Any], client_epochs: Iterable[Epochs],
          check_interrupt: CheckInterrupt = None) -> Iterator[Upload]:
    """Trains each client and yields its upload, in client order.

    Args:
      broadcast: The round's `set_weights` inputs.
      instructions: The round's instructions (`DeviceClient.train_round`).
      client_epochs: Each client's minibatches per local epoch, in order
        (read lazily, one client at a time).
      check_interrupt: Called before each client; what it raises abandons
        the round.

    Yields:
      Each client's upload (`DeviceClient.train_round`).
    """
    for epochs in _checked(client_epochs, check_interrupt):
      yield device_client.DeviceClient(self._tflite_model).train_round(
          broadcast, instructions, epochs)


def _checked(client_epochs: Iterable[Epochs],
             check_interrupt: CheckInterrupt) -> Iterator[Epochs]:
  """`client_epochs`, with `check_interrupt` called before each client."""
  for epochs in client_epochs:
    if check_interrupt is not None:
      check_interrupt()
    yield epochs


class ClientPool:
  """Trains a round's clients in a pool of processes, uploads in order.

  Attributes:
    num_processes: The pool's size.
  """

  def __init__(self, tflite_model: bytes, num_processes: int):
    """Starts the pool's processes (they load TensorFlow meanwhile).

    Each process runs TensorFlow's kernels (the model's select TF ops) with
    this process's intra- and inter-op thread counts, which the environment
    does not carry (`kernel_settings.use_bit_exact_kernels` sets one intra-op
    thread): set with `TF_NUM_INTRAOP_THREADS` unless the environment has
    it. Without that the pool's clients' uploads differed from this
    process's in the last bit (biases, a few float16 values) on 2 of 3
    clients of round 1 of the test configuration. Other environment
    variables (e.g. `ONEDNN_MAX_CPU_ISA`) are inherited.

    Args:
      tflite_model: The exported training model, sent once to each process.
      num_processes: How many processes, >= 1.
    """
    if num_processes < 1:
      raise ValueError(f'num_processes={num_processes}: expected >= 1')
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.num_processes = num_processes
    self._executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=num_processes,
        mp_context=multiprocessing.get_context('spawn'),
        initializer=_load_model,
        initargs=(tflite_model,
                  tf.config.threading.get_intra_op_parallelism_threads(),
                  tf.config.threading.get_inter_op_parallelism_threads()))
    # Start every process now (each starts on a task that finds no idle
    # process) rather than at the first clients.
    for _ in range(num_processes):
      self._executor.submit(os.getpid)

  def __enter__(self) -> 'ClientPool':
    return self

  def __exit__(self, exception_type, *unused_exception) -> None:
    self.close(abandon=exception_type is not None)

  def _processes(self) -> list[multiprocessing.Process]:
    # The executor's own table (Python 3.14 adds terminate_workers(); before
    # it, this is the way to end a process that is still training).
    return list((getattr(self._executor, '_processes', None) or {}).values())

  def process_ids(self) -> list[int]:
    """The ids of the pool's live processes."""
    return sorted(process.pid for process in self._processes()
                  if process.is_alive())

  def close(self, abandon: bool = False) -> None:
    """Ends the pool's processes and waits for them.

    Args:
      abandon: Kill them at once (their clients are not needed), else let
        them finish what they were given.
    """
    if not abandon:
      self._executor.shutdown(wait=True)
      return
    processes = self._processes()
    self._executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
      if process.is_alive():
        process.kill()
    for process in processes:
      process.join()
    self._executor.shutdown(wait=True)

  def run(self, broadcast: Mapping[str, np.ndarray],
          instructions: Mapping[str, Any], client_epochs: Iterable[Epochs],
          check_interrupt: CheckInterrupt = None) -> Iterator[Upload]:
    """Trains the clients in the pool and yields their uploads in order.

    Args:
      broadcast: The round's `set_weights` inputs.
      instructions: The round's instructions (`DeviceClient.train_round`).
      client_epochs: Each client's minibatches per local epoch, in order,
        read as the pool takes them (at most `CLIENTS_AHEAD_PER_PROCESS`
        clients per process ahead of the awaited upload).
      check_interrupt: Called before each client is handed out and while an
        upload is awaited; what it raises abandons the round.

    Yields:
      Each client's upload (`DeviceClient.train_round`), in the order of
      `client_epochs`.

    Raises:
      What a client raised, re-raised here, or
      `concurrent.futures.process.BrokenProcessPool` if a process died.
    """
    broadcast, instructions = dict(broadcast), dict(instructions)
    clients = _checked(client_epochs, check_interrupt)
    ahead = CLIENTS_AHEAD_PER_PROCESS * self.num_processes
    pending = collections.deque()
    try:
      while True:
        while len(pending) < ahead:
          epochs = next(clients, None)
          if epochs is None:
            break
          pending.append(self._executor.submit(_train_client, broadcast,
                                               instructions, epochs))
        if not pending:
          return
        yield self._result(pending.popleft(), check_interrupt)
    finally:
      for future in pending:
        future.cancel()

  @staticmethod
  def _result(future: concurrent.futures.Future,
              check_interrupt: CheckInterrupt) -> Upload:
    """The future's upload, checking for a stop request while it runs."""
    while True:
      try:
        return future.result(timeout=POLL_SECONDS)
      except concurrent.futures.TimeoutError:
        if check_interrupt is not None:
          check_interrupt()


def client_runner(tflite_model: bytes, num_processes: int):
  """The runner for `--tflite_client_processes`.

  Args:
    tflite_model: The exported training model.
    num_processes: 1: `SerialClients` (this process); more: a `ClientPool`
      of that many processes.

  Returns:
    A `SerialClients` or a started `ClientPool` (a context manager; leave it
    to end the pool).
  """
  if num_processes == 1:
    return SerialClients(tflite_model)
  return ClientPool(tflite_model, num_processes)
