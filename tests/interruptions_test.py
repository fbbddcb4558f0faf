"""Tests for tff_feddst.running.interruptions: stop signals become stop requests."""

import os
import signal

from absl.testing import absltest

from tff_feddst.running import interruptions


class SignalWatchTest(absltest.TestCase):

  def test_signal_is_recorded_not_raised_and_checked_later(self):
    watch = interruptions.SignalWatch()
    with watch.installed():
      watch.check()  # Nothing yet.
      os.kill(os.getpid(), signal.SIGTERM)  # The handler only records it.
      os.kill(os.getpid(), signal.SIGINT)  # The first signal is kept.
      with self.assertRaises(interruptions.StopRequested) as raised:
        watch.check()
    self.assertEqual(raised.exception.signal_name, 'SIGTERM')
    self.assertEqual(raised.exception.exit_code, 143)
    self.assertEqual(str(raised.exception), 'stopped by SIGTERM')
    self.assertIsInstance(raised.exception, interruptions.Interrupted)
    self.assertIsNone(raised.exception.completed_round)

  def test_ctrl_c_exits_130_and_handlers_are_restored(self):
    before = signal.getsignal(signal.SIGINT)
    watch = interruptions.SignalWatch()
    with watch.installed():
      self.assertIsNot(signal.getsignal(signal.SIGINT), before)
      os.kill(os.getpid(), signal.SIGINT)
    self.assertIs(signal.getsignal(signal.SIGINT), before)
    with self.assertRaises(interruptions.StopRequested) as raised:
      watch.check()
    self.assertEqual(raised.exception.exit_code, 130)


if __name__ == '__main__':
  absltest.main()
