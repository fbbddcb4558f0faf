"""Peak resident memory of a run: its own process and the TFF workers it started.

Linux keeps each process's peak resident set size (`VmHWM` in
`/proc/PID/status`) for as long as the process lives, so the run reads its
workers' peaks before it stops them. Where `/proc` is missing (not Linux),
the workers' figures are left out and this process's peak comes from
`getrusage`.
"""

import os
import resource
import sys
from typing import Optional

# The executable of TFF's worker process (`execution.worker_binary_path`).
WORKER_EXECUTABLE = 'worker_binary'


def peak_rss_mib(pid: Optional[int] = None) -> Optional[float]:
  """The peak resident set size of one process, in MiB.

  Args:
    pid: A process id; None for this process.

  Returns:
    The peak in MiB, or None if the process is gone or its peak cannot be
    read (for another process without `/proc`).
  """
  path = f'/proc/{"self" if pid is None else pid}/status'
  try:
    with open(path) as status:
      for line in status:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0  # In KiB.
  except OSError:
    pass
  if pid is None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # KiB on Linux, bytes on macOS.
    return peak / (1024.0 * 1024.0 if sys.platform == 'darwin' else 1024.0)
  return None


def descendant_pids(pid: Optional[int] = None) -> list[int]:
  """The ids of a process's living descendants, children first.

  Args:
    pid: A process id; None for this process.

  Returns:
    Children, grandchildren and so on, from `/proc` (an empty list where
    `/proc` does not list children).
  """
  found = []
  parents = [os.getpid() if pid is None else pid]
  while parents:
    parent = parents.pop(0)
    try:
      threads = os.listdir(f'/proc/{parent}/task')
    except OSError:
      continue
    for thread in threads:
      try:
        with open(f'/proc/{parent}/task/{thread}/children') as children:
          new = [int(child) for child in children.read().split()]
      except OSError:
        continue
      found += new
      parents += new
  return found


def _executable_name(pid: int) -> str:
  """The file name of a process's first command-line word, or ''."""
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as cmdline:
      first = cmdline.read().split(b'\0', 1)[0]
  except OSError:
    return ''
  return os.path.basename(first.decode(errors='replace'))


def run_peak_rss_mib() -> dict:
  """Peak resident memory of this process and of each local TFF worker.

  Workers are the `worker_binary` processes among this process's
  descendants, read while they live: a worker that was restarted during
  the run counts with its replacement's peak only, and workers on other
  machines (`--workers`) are not seen.

  Returns:
    {'training_process': MiB, 'workers': [MiB per local worker, by pid]}.
  """
  workers = [
      peak_rss_mib(pid) for pid in sorted(descendant_pids())
      if _executable_name(pid) == WORKER_EXECUTABLE]
  return {
      'training_process': round(peak_rss_mib(), 1),
      'workers': [round(peak, 1) for peak in workers if peak is not None],
  }
