"""Local TFF workers that no other host can reach.

TFF 0.87's `worker_binary` serves gRPC on `[::]:PORT` (every interface) with
insecure credentials and has no flag or environment variable for its bind
address, so any host that reaches the port can run TensorFlow graphs, file
I/O included, as the user who started it. Here a worker is started inside a
new user and network namespace of its own: its `[::]:PORT` exists only there,
on a loopback of its own, and is reached from outside only through a Unix
socket in a private (0700) directory, which crosses network namespaces
because it lives in the file system:

  this process --gRPC--> unix:<dir>/worker.sock
    --> forwarder (this file run as a script, inside the namespaces)
    --> 127.0.0.1:PORT in the namespace --> worker_binary (its child)

The forwarder relays bytes with `os.splice` (kernel to kernel, no copies in
Python), dies with this process (parent-death signal), ends the worker when it
ends, exits with the worker's exit code when the worker dies, and removes the
socket on the way out. It uses the standard library only, so it starts in
tens of milliseconds.

Where the platform allows no user namespace (for example
`kernel.unprivileged_userns_clone=0`, `user.max_user_namespaces=0`, a seccomp
filter, or AppArmor's restriction on unprivileged namespaces), the worker is
started as before, on every interface, and a one-line warning names the risk
and the port.
"""

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional, Sequence

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
# First argument that makes this module exec a command that dies with its
# parent (`dying_with_this_process`).
_DIE_WITH = '--die-with'
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_SOCKET_NAME = 'worker.sock'
# A Unix socket path holds at most 107 bytes on Linux.
_MAX_SOCKET_PATH_BYTES = 107
_RELAY_CHUNK_BYTES = 1 << 20
_WORKER_STOP_SECONDS = 10.0
_READY = 'ready'
_UNAVAILABLE = 'unavailable'

# Why isolation failed, once it has: later workers skip the attempt.
_unavailable_reason: Optional[str] = None


@dataclasses.dataclass
class StartedWorker:
  """A worker process started by `start`.

  Attributes:
    process: The process to watch and stop: the forwarder when isolated (it
      exits when the worker does, with its exit code), else the worker.
    worker_pid: PID of the `worker_binary` process itself.
    target: gRPC target of the worker: `unix:<path>` when isolated, else
      `127.0.0.1:<port>`.
    is_isolated: Whether the worker is unreachable from the network.
    socket_dir: The private directory of the Unix socket, or None.
  """
  process: subprocess.Popen
  worker_pid: int
  target: str
  is_isolated: bool
  socket_dir: Optional[str] = None

  def remove_socket_dir(self) -> None:
    """Removes the socket directory (the forwarder also does). Idempotent."""
    if self.socket_dir is not None:
      shutil.rmtree(self.socket_dir, ignore_errors=True)


class IsolationUnavailable(Exception):
  """The platform cannot give the worker a network namespace of its own."""


def start(worker_command: Sequence[str], port: int, env: dict[str, str],
          timeout_seconds: float) -> StartedWorker:
  """Starts `worker_command` (serving on `port`) where only we can reach it.

  Args:
    worker_command: The worker's argv; it must serve gRPC on `port`.
    port: The worker's port (inside its namespace when isolated).
    env: The worker's environment (the forwarder passes it on unchanged).
    timeout_seconds: How long the isolated worker may take to listen.

  Returns:
    The started worker. Not isolated only where the platform allows no
    namespace; then a warning naming the port has been logged.

  Raises:
    RuntimeError: If the isolated worker exits or does not listen in time.
  """
  global _unavailable_reason
  if _unavailable_reason is None:
    try:
      return _start_isolated(worker_command, port, env, timeout_seconds)
    except IsolationUnavailable as e:
      _unavailable_reason = str(e)
  logging.warning(
      'TFF worker on port %d listens on ALL network interfaces without '
      'authentication: any host that reaches this machine\'s port %d can run '
      'code as this user (no user namespace for isolation here: %s); '
      'firewall the port or enable user namespaces (README, "Workers and '
      'the network").',
      port, port, _unavailable_reason)
  process = subprocess.Popen(
      dying_with_this_process(worker_command), stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      start_new_session=True, env=env)
  return StartedWorker(process=process, worker_pid=process.pid,
                       target=f'127.0.0.1:{port}', is_isolated=False)


def dying_with_this_process(command: Sequence[str]) -> list[str]:
  """`command` run so that it gets SIGTERM when this process dies.

  Start it with `start_new_session=True` and no `preexec_fn`: a child
  forked from a process with TF's threads must not run Python code before
  exec (it sometimes aborted in `threading._after_fork`). This module, run
  as `--die-with PID -- COMMAND...`, asks for the parent-death signal and
  then execs `command` in the same process (same pid).

  Args:
    command: The argv to run.

  Returns:
    The argv to start instead.
  """
  return [sys.executable, '-I', '-S', os.path.abspath(__file__),
          _DIE_WITH, str(os.getpid()), '--', *command]


def _private_socket_dir() -> str:
  """Creates a 0700 directory whose socket path fits a sockaddr_un."""
  socket_dir = tempfile.mkdtemp(prefix='tff_feddst_worker_')
  if len(os.fsencode(os.path.join(socket_dir, _SOCKET_NAME))) > (
      _MAX_SOCKET_PATH_BYTES):
    os.rmdir(socket_dir)
    socket_dir = tempfile.mkdtemp(prefix='tff_feddst_worker_', dir='/tmp')
  return socket_dir


def _start_isolated(worker_command: Sequence[str], port: int,
                    env: dict[str, str], timeout_seconds: float,
                    retry_silent_exit: bool = True) -> StartedWorker:
  """Starts the forwarder and waits for its one-line report.

  No Python code runs between fork and exec (no `preexec_fn`): this process
  has TF's threads, and a forked child that ran Python code there sometimes
  aborted in `threading._after_fork` (seen in CI as a forwarder that ended
  without a report). The forwarder gets its own session from `Popen` and
  asks for its parent-death signal itself, first thing.
  """
  socket_dir = _private_socket_dir()
  socket_path = os.path.join(socket_dir, _SOCKET_NAME)
  try:
    # -I -S: the standard library only, whatever PYTHONPATH says; fast start.
    process = subprocess.Popen(
        [sys.executable, '-I', '-S', os.path.abspath(__file__), socket_path,
         str(port), str(os.getpid()), '--', *worker_command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, start_new_session=True, env=env)
  except BaseException:
    os.rmdir(socket_dir)
    raise
  try:
    report = _read_report(process, timeout_seconds)
  except BaseException:
    _end(process)
    shutil.rmtree(socket_dir, ignore_errors=True)
    raise
  finally:
    process.stdout.close()
  kind, _, detail = report.partition(' ')
  if kind == _READY:
    return StartedWorker(process=process, worker_pid=int(detail),
                         target=f'unix:{socket_path}', is_isolated=True,
                         socket_dir=socket_dir)
  _end(process)
  shutil.rmtree(socket_dir, ignore_errors=True)
  if kind == _UNAVAILABLE:
    raise IsolationUnavailable(detail)
  if not report and retry_silent_exit:
    # The forwarder ended without a word: start it once more before giving
    # up.
    return _start_isolated(worker_command, port, env, timeout_seconds,
                           retry_silent_exit=False)
  raise RuntimeError(
      f'TFF worker {worker_command[0]} (port {port}, in its own network '
      f'namespace) {detail or "exited before it listened"}.')


def _read_report(process: subprocess.Popen, timeout_seconds: float) -> str:
  """Reads the forwarder's first stdout line, or says why there is none."""
  deadline = time.monotonic() + timeout_seconds
  fd = process.stdout.fileno()
  data = b''
  while not data.endswith(b'\n'):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return f'did not listen within {timeout_seconds:g} s'
    readable, _, _ = select.select([fd], [], [], remaining)
    if readable:
      chunk = os.read(fd, 4096)
      if not chunk:
        break
      data += chunk
  return data.decode(errors='replace').strip()


def _end(process: subprocess.Popen) -> None:
  if process.poll() is None:
    process.terminate()
    try:
      process.wait(timeout=_WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def is_loopback_host(host: str) -> bool:
  """Whether every address `host` resolves to is a loopback address.

  Args:
    host: A host name or IP address (IPv6 may be in brackets).

  Returns:
    True for e.g. `localhost`, `127.0.0.1`, `[::1]`; False for any other
    address and for names that do not resolve.
  """
  host = host.strip('[]')
  try:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
  except (socket.gaierror, UnicodeError):
    return False
  for info in infos:
    address = ipaddress.ip_address(info[4][0].split('%')[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
      address = address.ipv4_mapped
    if not address.is_loopback:
      return False
  return bool(infos)


def warn_if_not_loopback(host: str, address: str) -> None:
  """Logs one warning line when a worker address leaves this machine.

  Args:
    host: The host part of `address`.
    address: The worker's host:port, as the user gave it.
  """
  if not is_loopback_host(host):
    logging.warning(
        'Worker %s is not a loopback address: TFF workers speak gRPC without '
        'authentication or encryption, so anyone who reaches that port can '
        'run code on its host and read the model; reach it through an SSH '
        'tunnel instead (ssh -N -L 8000:localhost:PORT HOST, then '
        '--workers=127.0.0.1:8000; README, "Remote workers, safely").',
        address)


# Everything below runs in the forwarder process (standard library only).


def _libc() -> ctypes.CDLL:
  return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
  if _libc().unshare(flags) != 0:
    code = ctypes.get_errno()
    raise OSError(code, f'unshare: {os.strerror(code)}')


def _write(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


def _enter_private_network() -> None:
  """Moves this process into new user + network namespaces, `lo` up.

  Inside, this user maps to itself (so files the worker writes belong to the
  user as before) and nothing else is mapped; the new network namespace has
  only a loopback interface, which starts down.

  Raises:
    OSError: If the namespaces cannot be created or `lo` brought up.
  """
  uid, gid = os.geteuid(), os.getegid()
  try:
    _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
  except OSError:
    if uid != 0:
      raise
    # Root where user namespaces are off (e.g. some containers): a network
    # namespace alone still isolates the worker.
    _unshare(_CLONE_NEWNET)
  else:
    try:
      with contextlib.suppress(FileNotFoundError):  # Kernels before 3.19.
        _write('/proc/self/setgroups', 'deny')
      _write('/proc/self/uid_map', f'{uid} {uid} 1\n')
      _write('/proc/self/gid_map', f'{gid} {gid} 1\n')
    except OSError as e:
      raise OSError(e.errno, f'user namespace id maps: {e.strerror}') from e
  try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
      request = struct.pack('16sH14x', b'lo', 0)
      flags = struct.unpack('16sH14x',
                            fcntl.ioctl(control, _SIOCGIFFLAGS, request))[1]
      fcntl.ioctl(control, _SIOCSIFFLAGS,
                  struct.pack('16sH14x', b'lo', flags | _IFF_UP))
  except OSError as e:
    raise OSError(e.errno, f'bringing up lo: {e.strerror}') from e


def _worker_preexec(forwarder_pid: int) -> Callable[[], None]:
  def preexec():
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != forwarder_pid:  # The forwarder died before prctl.
      os._exit(1)
  return preexec


def _connect_to_worker(port: int) -> socket.socket:
  """Connects to the worker's port inside the namespace (IPv4, else IPv6)."""
  try:
    upstream = socket.create_connection(('127.0.0.1', port))
  except OSError:
    upstream = socket.create_connection(('::1', port))
  upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  return upstream


def _splice_all(source: socket.socket, sink: socket.socket) -> None:
  """Moves bytes from `source` to `sink` through a pipe, in the kernel."""
  read_end, write_end = os.pipe()
  try:
    with contextlib.suppress(OSError):
      fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _RELAY_CHUNK_BYTES)
    while True:
      pending = os.splice(source.fileno(), write_end, _RELAY_CHUNK_BYTES)
      if not pending:
        return
      while pending:
        pending -= os.splice(read_end, sink.fileno(), pending)
  finally:
    os.close(read_end)
    os.close(write_end)


def _copy_all(source: socket.socket, sink: socket.socket) -> None:
  """Moves bytes from `source` to `sink` through one reused buffer."""
  buffer = bytearray(_RELAY_CHUNK_BYTES)
  view = memoryview(buffer)
  while True:
    received = source.recv_into(buffer)
    if not received:
      return
    sink.sendall(view[:received])


def _pump(source: socket.socket, sink: socket.socket) -> None:
  """Relays one direction until end of stream, then half-closes `sink`."""
  try:
    try:
      _splice_all(source, sink)
    except OSError as e:
      # splice refuses some socket kinds up front, before moving a byte.
      if e.errno not in (errno.EINVAL, errno.ENOSYS):
        raise
      _copy_all(source, sink)
    with contextlib.suppress(OSError):
      sink.shutdown(socket.SHUT_WR)
  except OSError:  # Reset by either side: end both directions.
    for end in (source, sink):
      with contextlib.suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)


def _relay(client: socket.socket, port: int) -> None:
  """Joins one accepted Unix connection to the worker's TCP port."""
  with client:
    try:
      upstream = _connect_to_worker(port)
    except OSError:
      return
    with upstream:
      backward = threading.Thread(target=_pump, args=(upstream, client),
                                  daemon=True)
      backward.start()
      _pump(client, upstream)
      backward.join()


def _accept_forever(listener: socket.socket, port: int) -> None:
  while True:
    try:
      client, _ = listener.accept()
    except OSError:  # Closed on the way out.
      return
    threading.Thread(target=_relay, args=(client, port), daemon=True).start()


def _wait_until_listening(worker: subprocess.Popen, port: int) -> bool:
  """Polls the worker's port until it accepts; False if the worker died."""
  while worker.poll() is None:
    try:
      _connect_to_worker(port).close()
      return True
    except OSError:
      time.sleep(0.05)
  return False


def _report(line: str) -> None:
  """Writes the one-line report to the parent, then lets go of stdout."""
  os.write(1, (line + '\n').encode())
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  os.close(devnull)


def _forwarder_main(argv: Sequence[str]) -> int:
  """`worker_isolation.py SOCKET_PATH PORT PARENT_PID -- WORKER_ARGV...`."""
  socket_path, port, parent_pid = argv[0], int(argv[1]), int(argv[2])
  worker_command = list(argv[4:])
  # SIGTERM (which ends the worker, below) when the run's process dies.
  _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  if os.getppid() != parent_pid:  # The parent died before our prctl.
    return 1
  try:
    _enter_private_network()
  except OSError as e:
    _report(f'{_UNAVAILABLE} {e.strerror}')
    return 1

  worker = subprocess.Popen(
      worker_command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL, preexec_fn=_worker_preexec(os.getpid()))

  def end_worker(signum, frame):
    del signum, frame
    with contextlib.suppress(ProcessLookupError):
      os.kill(worker.pid, signal.SIGTERM)
    escalation = threading.Timer(_WORKER_STOP_SECONDS, _kill_quietly,
                                 (worker.pid,))
    escalation.daemon = True
    escalation.start()

  for signum in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, end_worker)
  # Ctrl-C ends the worker as it would end a worker started directly, unless
  # SIGINT was ignored for us (then the worker inherits that too).
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, end_worker)

  listener = None
  try:
    if _wait_until_listening(worker, port):
      with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # A previous forwarder's, on a restart.
      listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      listener.bind(socket_path)
      listener.listen(16)
      threading.Thread(target=_accept_forever, args=(listener, port),
                       daemon=True).start()
      _report(f'{_READY} {worker.pid}')
    else:
      _report(f'exited with code {worker.returncode} before it listened')
    returncode = worker.wait()
  finally:
    if listener is not None:
      listener.close()
    with contextlib.suppress(OSError):
      os.unlink(socket_path)
    with contextlib.suppress(OSError):
      os.rmdir(os.path.dirname(socket_path))
  return 128 - returncode if returncode < 0 else returncode


def _kill_quietly(pid: int) -> None:
  with contextlib.suppress(ProcessLookupError):
    os.kill(pid, signal.SIGKILL)


def _die_with_main(argv: Sequence[str]) -> int:
  """`worker_isolation.py --die-with PARENT_PID -- COMMAND...`."""
  parent_pid, command = int(argv[0]), list(argv[2:])
  _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  if os.getppid() != parent_pid:  # The parent died before our prctl.
    return 1
  os.execv(command[0], command)


if __name__ == '__main__':
  if sys.argv[1:2] == [_DIE_WITH]:
    sys.exit(_die_with_main(sys.argv[2:]))
  sys.exit(_forwarder_main(sys.argv[1:]))
