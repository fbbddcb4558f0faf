"""Tests for tff_feddst.execution: owned workers, nothing left behind."""

import os

import numpy as np
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from tests import fed_dst_test
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

  def test_worker_runs_deterministic_kernels(self):
    # Without TF_DETERMINISTIC_OPS the worker's oneDNN kernels split work by
    # the threads free at run time, and identical seeds diverge under load.
    # It is the worker's alone: this process traces the graphs without it.
    worker = execution.LocalWorker()
    try:
      with open(f'/proc/{worker.process.pid}/environ', 'rb') as f:
        environment = f.read().split(b'\0')
    finally:
      worker.stop()
    expected = os.environ.get('TF_DETERMINISTIC_OPS', '1')  # Caller's wins.
    self.assertIn(f'TF_DETERMINISTIC_OPS={expected}'.encode(), environment)

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
    outside = execution.LocalWorker()
    try:
      with execution.distributed_execution_context(
          worker_addresses=[f'127.0.0.1:{outside.port}']):
        self.assertEqual(add_one(1), 2)
      self.assertIsNone(outside.process.poll())
    finally:
      outside.stop()

  def test_bad_requests_raise(self):
    with self.assertRaisesRegex(ValueError, 'at least one worker'):
      with execution.distributed_execution_context():
        pass
    with self.assertRaisesRegex(ValueError, 'host:port'):
      with execution.distributed_execution_context(
          worker_addresses=['localhost']):
        pass


if __name__ == '__main__':
  tf.test.main()
