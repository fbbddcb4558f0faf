"""Tests for tff_feddst.running.kernel_settings: the bit-exact kernel settings.

That a worker started here gets them is tested in execution_test.
"""

import os
from unittest import mock

import tensorflow as tf

from tff_feddst.running import kernel_settings


class KernelSettingsTest(tf.test.TestCase):

  def test_one_client_call_per_cpu(self):
    cpus = len(os.sched_getaffinity(0))
    self.assertEqual(kernel_settings.concurrent_client_calls(), cpus)
    self.assertEqual(kernel_settings.concurrent_client_calls(2),
                     max(1, cpus // 2))
    self.assertEqual(kernel_settings.concurrent_client_calls(cpus + 1), 1)

  def test_a_worker_gets_one_thread_avx2_and_two_arenas(self):
    with mock.patch.dict(os.environ, {}):
      for name in ('TF_NUM_INTRAOP_THREADS', 'ONEDNN_MAX_CPU_ISA',
                   'MALLOC_ARENA_MAX', 'TF_ENABLE_ONEDNN_OPTS'):
        os.environ.pop(name, None)
      environment = kernel_settings.worker_environment()
    self.assertEqual(environment['TF_NUM_INTRAOP_THREADS'], '1')
    self.assertEqual(environment['ONEDNN_MAX_CPU_ISA'], 'AVX2')
    self.assertEqual(environment['MALLOC_ARENA_MAX'], '2')

  def test_kernel_settings_the_user_chose_are_kept(self):
    with mock.patch.dict(os.environ, {'ONEDNN_MAX_CPU_ISA': 'ALL',
                                      'TF_NUM_INTRAOP_THREADS': '2',
                                      'MALLOC_ARENA_MAX': '8'}):
      environment = kernel_settings.worker_environment()
      with self.assertLogs(level='WARNING'):
        self.assertFalse(kernel_settings.use_bit_exact_kernels())
      self.assertEqual(os.environ['ONEDNN_MAX_CPU_ISA'], 'ALL')
    self.assertEqual(environment['ONEDNN_MAX_CPU_ISA'], 'ALL')
    self.assertEqual(environment['TF_NUM_INTRAOP_THREADS'], '2')
    self.assertEqual(environment['MALLOC_ARENA_MAX'], '8')

  def test_this_process_uses_the_workers_kernels(self):
    # conftest called `use_bit_exact_kernels`, as `run_experiment` does.
    self.assertEqual(os.environ.get('ONEDNN_MAX_CPU_ISA'),
                     kernel_settings.worker_environment().get('ONEDNN_MAX_CPU_ISA'))
    if os.environ.get('TF_ENABLE_ONEDNN_OPTS') != '0':
      self.assertEqual(os.environ.get('ONEDNN_MAX_CPU_ISA'), 'AVX2')

  def test_eigen_kernels_keep_their_instruction_set(self):
    # Eigen's matmuls call oneDNN's sgemm: AVX2 would change their bits.
    with mock.patch.dict(os.environ, {'TF_ENABLE_ONEDNN_OPTS': '0'}):
      os.environ.pop('ONEDNN_MAX_CPU_ISA', None)
      self.assertNotIn('ONEDNN_MAX_CPU_ISA', kernel_settings.worker_environment())
      self.assertTrue(kernel_settings.use_bit_exact_kernels())
      self.assertNotIn('ONEDNN_MAX_CPU_ISA', os.environ)


if __name__ == '__main__':
  tf.test.main()
