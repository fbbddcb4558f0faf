"""Tests for tff_feddst.running.worker_isolation: private workers, relay, fallback."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import portpicker
import psutil
import tensorflow as tf

from tff_feddst.running import execution
from tff_feddst.running import worker_isolation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in worker: echoes every TCP connection on 127.0.0.1:argv[1].
ECHO_SERVER = '''
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
  connection, _ = server.accept()
  while data := connection.recv(65536):
    connection.sendall(data)
  connection.close()
'''

# Starts a worker through `worker_isolation.start` the way LocalWorker does,
# prints what started, then waits to be killed.
OWNER = '''
import os, signal, sys
from tff_feddst.running import worker_isolation
port = int(sys.argv[2])
started = worker_isolation.start(
    [sys.argv[1], f"--port={port}"], port, dict(os.environ),
    timeout_seconds=60)
print(started.process.pid, started.worker_pid, started.is_isolated,
      started.target, started.socket_dir or "-", flush=True)
signal.pause()
'''


def _connect(target: str) -> socket.socket:
  """Connects a plain socket to a `StartedWorker.target`."""
  if target.startswith('unix:'):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(target[len('unix:'):])
    return connection
  host, _, port = target.rpartition(':')
  return socket.create_connection((host, int(port)))


def _wait_until_gone(pid: int, timeout_seconds: float = 30.0) -> bool:
  """Whether `pid` ended (or is an unreaped zombie) within the time."""
  deadline = time.monotonic() + timeout_seconds
  while time.monotonic() < deadline:
    try:
      if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
        return True
    except psutil.NoSuchProcess:
      return True
    time.sleep(0.1)
  return False


def _start_echo_worker() -> worker_isolation.StartedWorker:
  port = portpicker.pick_unused_port()
  return worker_isolation.start(
      [sys.executable, '-c', ECHO_SERVER, str(port)], port,
      dict(os.environ), timeout_seconds=60)


def _stop(started: worker_isolation.StartedWorker) -> None:
  started.process.terminate()
  started.process.wait()
  started.remove_socket_dir()


def _start_owner(command_prefix=()) -> tuple[subprocess.Popen, list[str]]:
  """Runs OWNER in a child Python; returns it and its printed fields."""
  port = portpicker.pick_unused_port()
  owner = subprocess.Popen(
      [*command_prefix, sys.executable, '-c', OWNER,
       execution.worker_binary_path(), str(port)],
      cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  fields = owner.stdout.readline().split()
  if len(fields) != 5:
    owner.kill()
    raise AssertionError(f'Owner failed: {owner.communicate()[1]}')
  return owner, fields + [str(port)]


class WorkerIsolationTest(tf.test.TestCase):

  def test_relay_carries_megabytes_both_ways_unchanged(self):
    started = _start_echo_worker()
    try:
      payload = os.urandom(8 << 20)
      with _connect(started.target) as connection:
        def send():
          connection.sendall(payload)
          connection.shutdown(socket.SHUT_WR)  # Must reach the echo server.
        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while chunk := connection.recv(1 << 20):
          received += chunk
        sender.join()
      self.assertEqual(bytes(received), payload)
    finally:
      _stop(started)

  def test_forwarder_exits_with_the_worker_and_removes_the_socket(self):
    started = _start_echo_worker()
    if not started.is_isolated:
      _stop(started)
      self.skipTest('No user namespaces here: the worker runs unisolated.')
    os.kill(started.worker_pid, signal.SIGKILL)
    # The owner sees the worker's death in the process it watches.
    self.assertEqual(started.process.wait(timeout=30), 128 + signal.SIGKILL)
    self.assertFalse(os.path.exists(started.socket_dir))

  def test_sigkill_of_the_owner_leaves_nothing_behind(self):
    owner, (forwarder_pid, worker_pid, _, _, socket_dir, _) = _start_owner()
    owner.kill()
    owner.communicate()
    self.assertTrue(_wait_until_gone(int(forwarder_pid)))
    self.assertTrue(_wait_until_gone(int(worker_pid)))
    self.assertFalse(socket_dir != '-' and os.path.exists(socket_dir))

  def test_without_user_namespaces_the_worker_is_exposed_with_a_warning(self):
    # Inside a user namespace with no id mapping, this user cannot create a
    # nested one, as where the platform forbids them.
    if shutil.which('unshare') is None or subprocess.run(
        ['unshare', '-U', 'true'], check=False).returncode != 0:
      self.skipTest('Needs unshare -U to simulate a platform without them.')
    owner, fields = _start_owner(command_prefix=['unshare', '-U'])
    _, worker_pid, is_isolated, target, socket_dir, port = fields
    try:
      self.assertEqual((is_isolated, target, socket_dir),
                       ('False', f'127.0.0.1:{port}', '-'))
    finally:
      owner.kill()
      _, stderr = owner.communicate()
    warnings = [line for line in stderr.splitlines() if 'WARNING' in line]
    self.assertLen(warnings, 1)
    self.assertIn(f'port {port} listens on ALL network interfaces',
                  warnings[0])
    self.assertTrue(_wait_until_gone(int(worker_pid)))

  def test_loopback_hosts(self):
    for host in ('localhost', '127.0.0.1', '127.0.0.2', '[::1]', '::1',
                 '::ffff:127.0.0.1'):
      self.assertTrue(worker_isolation.is_loopback_host(host), host)
    for host in ('192.0.2.1', '0.0.0.0', '[2001:db8::1]', '10.0.0.1'):
      self.assertFalse(worker_isolation.is_loopback_host(host), host)


if __name__ == '__main__':
  tf.test.main()
