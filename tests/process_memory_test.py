"""Tests for tff_feddst.running.process_memory."""

import os
import subprocess
import sys
import time

from absl.testing import absltest

from tff_feddst.running import process_memory

# A child that starts a grandchild holding 64 MiB, then both wait to be
# killed; the child prints the grandchild's pid once the memory is touched.
_TREE_SCRIPT = r'''
import subprocess, sys
grandchild = subprocess.Popen(
    [sys.executable, '-c',
     'import sys, time\n'
     'block = bytearray(64 * 1024 * 1024)\n'
     'for i in range(0, len(block), 4096): block[i] = 1\n'
     'print("ready", flush=True)\n'
     'time.sleep(60)\n'],
    stdout=subprocess.PIPE, text=True)
grandchild.stdout.readline()
print(grandchild.pid, flush=True)
grandchild.wait()
'''


@absltest.skipUnless(os.path.isdir('/proc/self/task'), 'needs Linux /proc')
class ProcessMemoryTest(absltest.TestCase):

  def test_own_peak_covers_a_block_touched_and_freed(self):
    before = process_memory.peak_rss_mib()
    block = bytearray(96 * 1024 * 1024)
    for offset in range(0, len(block), 4096):
      block[offset] = 1
    del block
    # The peak stays after the block is freed, and grew by at least the
    # part of the block above the earlier peak.
    self.assertGreaterEqual(process_memory.peak_rss_mib(), before)
    self.assertGreater(process_memory.peak_rss_mib(), 96)

  def test_descendants_and_their_peaks(self):
    child = subprocess.Popen([sys.executable, '-c', _TREE_SCRIPT],
                             stdout=subprocess.PIPE, text=True)
    try:
      grandchild_pid = int(child.stdout.readline())
      descendants = process_memory.descendant_pids()
      self.assertIn(child.pid, descendants)
      self.assertIn(grandchild_pid, descendants)
      self.assertLess(descendants.index(child.pid),
                      descendants.index(grandchild_pid))
      self.assertEqual(process_memory.descendant_pids(grandchild_pid), [])
      self.assertGreaterEqual(process_memory.peak_rss_mib(grandchild_pid), 64)
      self.assertLess(process_memory.peak_rss_mib(child.pid), 64)
    finally:
      for pid in process_memory.descendant_pids(child.pid):
        os.kill(pid, 9)
      child.kill()
      child.wait()
      child.stdout.close()
    # A process that is gone has no peak to read.
    deadline = time.monotonic() + 10
    while (process_memory.peak_rss_mib(grandchild_pid) is not None and
           time.monotonic() < deadline):
      time.sleep(0.05)  # Until its parent, killed, no longer holds it.
    self.assertIsNone(process_memory.peak_rss_mib(grandchild_pid))

  def test_run_peak_counts_descendants_named_worker_binary(self):
    # The test process may own TFF workers already (conftest); a Python
    # started through a link named like TFF's worker adds one entry.
    before = process_memory.run_peak_rss_mib()
    self.assertGreater(before['training_process'], 0)
    link = os.path.join(self.create_tempdir().full_path,
                        process_memory.WORKER_EXECUTABLE)
    os.symlink(sys.executable, link)
    fake_worker = subprocess.Popen(
        [link, '-c', 'print("up", flush=True); import time; time.sleep(60)'],
        stdout=subprocess.PIPE, text=True)
    try:
      fake_worker.stdout.readline()
      during = process_memory.run_peak_rss_mib()
    finally:
      fake_worker.kill()
      fake_worker.wait()
      fake_worker.stdout.close()
    self.assertLen(during['workers'], len(before['workers']) + 1)
    self.assertTrue(all(peak > 0 for peak in during['workers']))


if __name__ == '__main__':
  absltest.main()
