"""Tests for tff_feddst.running.execution: owned workers, nothing left behind."""

import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import portpicker
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from tests import fed_dst_test
from tff_feddst.running import execution
from tff_feddst.running import interruptions
from tff_feddst.running import worker_isolation


@tff.tensorflow.computation(np.int32)
def add_one(value):
  return value + 1


@tff.tensorflow.computation(np.int64)
def count_to(limit):
  """A call that keeps its worker busy for a while (seconds at 3e6)."""
  return tf.while_loop(lambda i: i < limit, lambda i: i + 1,
                       [tf.constant(0, tf.int64)])[0]


SLOW_COUNT = 3_000_000


def when_busy(pid: int, action, call_done: threading.Event,
              cpu_seconds: float = 0.2):
  """Runs `action` once process `pid` is computing (used more CPU).

  A worker only computes while a call runs, so `action` lands mid-call.
  Gives up when `call_done` is set first.

  Args:
    pid: The worker process.
    action: What to do.
    call_done: Set when the call is over.
    cpu_seconds: CPU time the worker must use first.

  Returns:
    The started thread.
  """
  def watch():
    process = psutil.Process(pid)
    start = sum(process.cpu_times()[:2])
    while not call_done.is_set():
      if sum(process.cpu_times()[:2]) > start + cpu_seconds:
        action()
        return
      time.sleep(0.01)
  thread = threading.Thread(target=watch)
  thread.start()
  return thread


def sigkill(pid: int):
  return lambda: os.kill(pid, signal.SIGKILL)


def start_plain_worker() -> tuple[subprocess.Popen, str]:
  """Starts a TFF worker this test owns but the code under test does not."""
  port = portpicker.pick_unused_port()
  process = subprocess.Popen(
      [execution.worker_binary_path(), f'--port={port}'],
      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  return process, f'127.0.0.1:{port}'


def non_loopback_address() -> str:
  """An IPv4 address of this machine off loopback, else 127.0.0.1.

  Preferably the address of the default route's interface (a UDP connect only
  picks the route; it sends nothing), else one the host name resolves to.
  """
  candidates = []
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    try:
      probe.connect(('198.51.100.1', 9))
      candidates.append(probe.getsockname()[0])
    except OSError:
      pass
  try:
    candidates += socket.gethostbyname_ex(socket.gethostname())[2]
  except OSError:
    pass
  for address in candidates:
    if not ipaddress.ip_address(address).is_loopback:
      return address
  return '127.0.0.1'


def start_unowned_worker(port: int) -> subprocess.Popen:
  """A plain worker_binary on every interface, as one started elsewhere."""
  return subprocess.Popen(
      worker_isolation.dying_with_this_process(
          [execution.worker_binary_path(), f'--port={port}']),
      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL, start_new_session=True)


def is_gone(pid: int) -> bool:
  return not psutil.pid_exists(pid) or (
      psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


class ExecutionTest(tf.test.TestCase):

  def test_context_runs_computations_and_ends_its_worker(self):
    with execution.local_execution_context() as worker:
      self.assertEqual(add_one(41), 42)
      pid = worker.process.pid
      self.assertTrue(psutil.pid_exists(pid))
    self.assertIsNotNone(worker.process.poll())
    self.assertFalse(psutil.pid_exists(pid) and
                     psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)

  def test_owned_worker_is_not_reachable_from_the_network(self):
    with execution.local_execution_context() as worker:
      if not worker.is_isolated:
        self.skipTest('No user namespaces here: the worker runs unisolated.')
      self.assertEqual(add_one(41), 42)
      # Its port exists only in its own network namespace: neither this
      # machine's network address nor even its loopback leads to it.
      for host in (non_loopback_address(), '127.0.0.1'):
        with self.assertRaises(ConnectionRefusedError, msg=host):
          socket.create_connection((host, worker.port), timeout=10).close()
      self.assertEqual(add_one(1), 2)
      socket_dir = os.path.dirname(worker.target[len('unix:'):])
      self.assertEqual(os.stat(socket_dir).st_mode & 0o777, 0o700)
      pids = (worker.process.pid, worker.worker_pid)
    self.assertTrue(is_gone(pids[0]))
    # The worker is the forwarder's child; the forwarder waited for it.
    self.assertTrue(is_gone(pids[1]))
    self.assertFalse(os.path.exists(socket_dir))

  def test_previous_context_is_back_after_the_block(self):
    before = tff.framework.get_context_stack().current
    with execution.local_execution_context():
      self.assertIsNot(tff.framework.get_context_stack().current, before)
    self.assertIs(tff.framework.get_context_stack().current, before)
    self.assertEqual(add_one(1), 2)  # The session's context still works.

  def test_worker_is_ended_on_error(self):
    with self.assertRaises(ZeroDivisionError):
      with execution.local_execution_context() as worker:
        _ = 1 / 0
    self.assertIsNotNone(worker.process.poll())

  def test_worker_runs_one_intra_op_thread_per_kernel(self):
    # With more, oneDNN splits kernels by the threads free at run time, and
    # identical seeds diverge under load; its AVX-512 kernels rarely do too.
    worker = execution.LocalWorker()
    try:
      with open(f'/proc/{worker.worker_pid}/environ', 'rb') as f:
        environment = f.read().split(b'\0')
    finally:
      worker.stop()
    expected = os.environ.get('TF_NUM_INTRAOP_THREADS', '1')  # Caller's wins.
    self.assertIn(f'TF_NUM_INTRAOP_THREADS={expected}'.encode(), environment)
    if os.environ.get('TF_ENABLE_ONEDNN_OPTS') != '0':
      expected = os.environ.get('ONEDNN_MAX_CPU_ISA', 'AVX2')
      self.assertIn(f'ONEDNN_MAX_CPU_ISA={expected}'.encode(), environment)
    # Two malloc arenas (the worker's memory), unless the caller chose.
    expected = os.environ.get('MALLOC_ARENA_MAX', '2')
    self.assertIn(f'MALLOC_ARENA_MAX={expected}'.encode(), environment)

  def test_worker_runs_one_client_call_per_cpu(self):
    cpus = len(os.sched_getaffinity(0))
    worker = execution.LocalWorker()
    try:
      with open(f'/proc/{worker.worker_pid}/cmdline', 'rb') as f:
        arguments = f.read().split(b'\0')
    finally:
      worker.stop()
    self.assertIn(f'--max_concurrent_computation_calls={cpus}'.encode(),
                  arguments)

  def test_stop_is_idempotent(self):
    worker = execution.LocalWorker()
    worker.stop()
    worker.stop()
    self.assertIsNotNone(worker.process.poll())


class DistributedExecutionTest(tf.test.TestCase):

  def test_two_workers_give_the_single_worker_result(self):
    def two_rounds():
      process, _ = fed_dst_test.build()
      state, metrics = fed_dst_test.run_rounds(process, 2)
      return process.get_model_weights(state), metrics

    with execution.local_execution_context():
      single_weights, single_metrics = two_rounds()
    with execution.distributed_execution_context(
        num_local_workers=2) as workers:
      weights, metrics = two_rounds()
      pids = [w.process.pid for w in workers]
    tf.nest.map_structure(self.assertAllEqual, metrics, single_metrics)
    tf.nest.map_structure(self.assertAllEqual, weights, single_weights)
    for worker in workers:
      self.assertIsNotNone(worker.process.poll())
    self.assertLen(set(pids), 2)

  def test_workers_given_by_address_are_used_and_left_running(self):
    port = portpicker.pick_unused_port()
    outside = start_unowned_worker(port)
    try:
      with self.assertNoLogs(level='WARNING'):  # Loopback: no warning.
        with execution.distributed_execution_context(
            worker_addresses=[f'127.0.0.1:{port}']):
          self.assertEqual(add_one(1), 2)
      self.assertIsNone(outside.poll())
    finally:
      outside.terminate()
      outside.wait()

  def test_non_loopback_worker_address_is_warned_about(self):
    address = non_loopback_address()
    if address == '127.0.0.1':
      self.skipTest('This machine has no address off loopback.')
    port = portpicker.pick_unused_port()
    outside = start_unowned_worker(port)
    try:
      with self.assertLogs(level='WARNING') as logs:
        worker = execution.RemoteWorker(f'{address}:{port}')
      self.assertLen(logs.output, 1)
      self.assertIn(f'Worker {address}:{port} is not a loopback address',
                    logs.output[0])
      self.assertIn('SSH tunnel', logs.output[0])
      with execution.distributed_execution_context(
          worker_addresses=[f'{address}:{port}']):
        self.assertEqual(add_one(1), 2)  # A warning, not a refusal.
      del worker
    finally:
      outside.terminate()
      outside.wait()

  def test_bad_requests_raise(self):
    with self.assertRaisesRegex(ValueError, 'at least one worker'):
      with execution.distributed_execution_context():
        pass
    with self.assertRaisesRegex(ValueError, 'host:port'):
      with execution.distributed_execution_context(
          worker_addresses=['localhost']):
        pass


class SupervisedContextTest(tf.test.TestCase):
  """Workers that die or stop answering while a call runs."""

  def test_owned_worker_killed_mid_call_is_restarted_and_call_rerun(self):
    with execution.local_execution_context() as worker:
      first_pid, port = worker.worker_pid, worker.port
      done = threading.Event()
      killer = when_busy(first_pid, sigkill(first_pid), done)
      with self.assertLogs(level='WARNING') as logs:
        result = count_to(SLOW_COUNT)
      done.set()
      killer.join()
      self.assertEqual(result, SLOW_COUNT)
      self.assertNotEqual(worker.worker_pid, first_pid)
      self.assertEqual(add_one(1), 2)  # The new worker serves on.
    self.assertLen(logs.output, 1)
    self.assertIn(f'on local port {port} died (killed by SIGKILL)',
                  logs.output[0])
    self.assertIn('restart 1 of 3', logs.output[0])
    self.assertIsNotNone(worker.process.poll())

  def test_owned_worker_dying_beyond_the_restart_limit_is_lost(self):
    with execution.local_execution_context(max_restarts=0) as worker:
      pid = worker.worker_pid
      done = threading.Event()
      killer = when_busy(pid, sigkill(pid), done)
      with self.assertRaisesRegex(
          execution.WorkerLostError,
          f'on local port {worker.port} died during a TFF call '
          r'\(killed by SIGKILL\)'):
        count_to(SLOW_COUNT)
      done.set()
      killer.join()

  def test_worker_not_owned_that_dies_mid_call_is_named_in_bounded_time(self):
    process, address = start_plain_worker()
    try:
      with execution.distributed_execution_context(
          worker_addresses=[address], worker_timeout_seconds=2):
        execution.describe_activity('round 7')
        done = threading.Event()
        killer = when_busy(process.pid, sigkill(process.pid), done)
        with self.assertRaisesRegex(
            execution.WorkerLostError,
            f'TFF worker {address} did not answer for [0-9]+ s during '
            'round 7') as raised:
          count_to(SLOW_COUNT)
        done.set()
        killer.join()
        self.assertEqual(raised.exception.address, address)
        self.assertIsInstance(raised.exception, interruptions.Interrupted)
    finally:
      process.kill()
      process.wait()

  def test_interrupt_abandons_the_call_and_the_context_goes_on(self):
    stop = threading.Event()

    def check_interrupt():
      if stop.is_set():
        raise interruptions.StopRequested(signal.SIGTERM)

    with execution.local_execution_context(
        check_interrupt=check_interrupt) as worker:
      pid = worker.process.pid
      done = threading.Event()
      stopper = when_busy(worker.worker_pid, stop.set, done)
      with self.assertRaises(interruptions.StopRequested):
        count_to(SLOW_COUNT)
      done.set()
      stopper.join()
      stop.clear()
      self.assertEqual(add_one(1), 2)
      self.assertEqual(worker.process.pid, pid)  # Not restarted.


if __name__ == '__main__':
  tf.test.main()
