"""Tests for ondevice/client_pool.py: a client's error reaches the caller and
leaves no pool process behind; a normal end ends them too. (Uploads in
client order, bit for bit as serial, through bin/train.py:
tests/tflite_rounds_test.py.)"""

import os
import time

from absl.testing import absltest

from tff_feddst.ondevice import client_pool


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a reaped process is gone)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


class ClientPoolTest(absltest.TestCase):

  def test_a_client_error_is_raised_and_ends_the_pool(self):
    # Not a model: the interpreter of the pool's first client refuses it.
    with self.assertRaisesRegex(ValueError, 'odel'):
      with client_pool.ClientPool(b'not a tflite model', 2) as pool:
        # Both processes are started before any client is handed out.
        deadline = time.monotonic() + 300
        while (len(pool.process_ids()) < 2 and
               time.monotonic() < deadline):
          time.sleep(0.1)
        pids = pool.process_ids()
        self.assertLen(pids, 2)
        list(pool.run({}, {}, [[[]], [[]], [[]]]))
    self.assertEqual([pid for pid in pids if _alive(pid)], [])

  def test_a_normal_end_ends_the_processes(self):
    with client_pool.ClientPool(b'', 1) as pool:
      deadline = time.monotonic() + 300
      while not pool.process_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
      pids = pool.process_ids()
      self.assertLen(pids, 1)
      self.assertEqual(list(pool.run({}, {}, [])), [])
    self.assertEqual([pid for pid in pids if _alive(pid)], [])

  def test_one_process_trains_in_this_process(self):
    self.assertIsInstance(client_pool.client_runner(b'', 1),
                          client_pool.SerialClients)
    with self.assertRaisesRegex(ValueError, 'num_processes=0'):
      client_pool.ClientPool(b'', 0)

  def test_serial_clients_close_like_a_pool(self):
    # The rounds close either runner the same way; serial has nothing to end.
    runner = client_pool.client_runner(b'', 1)
    runner.close()
    runner.close(abandon=True)
    self.assertEqual(list(runner.run({}, {}, [])), [])


if __name__ == '__main__':
  absltest.main()
