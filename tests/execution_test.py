"""Tests for tff_feddst.execution: owned workers, nothing left behind."""

import numpy as np
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst import execution


@tff.tensorflow.computation(np.int32)
def add_one(value):
  return value + 1


class ExecutionTest(tf.test.TestCase):

  def test_context_runs_computations_and_ends_its_worker(self):
    with execution.local_execution_context() as worker:
      self.assertEqual(add_one(41), 42)
      pid = worker.process.pid
      self.assertTrue(psutil.pid_exists(pid))
    self.assertIsNotNone(worker.process.poll())
    self.assertFalse(psutil.pid_exists(pid) and
                     psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)

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

  def test_stop_is_idempotent(self):
    worker = execution.LocalWorker()
    worker.stop()
    worker.stop()
    self.assertIsNotNone(worker.process.poll())


if __name__ == '__main__':
  tf.test.main()
