"""Tests for tff_feddst.ondevice.signature_report on tiny converted modules.

The exported FedDST models are checked in tests/tflite_export_test.py; here
two small modules, one keeping the Java contract and one breaking each rule,
show that every rule can fail.
"""

import tensorflow as tf

from tff_feddst.ondevice import signature_report
from tff_feddst.ondevice import tflite_client


class _Good(tf.Module):

  def __init__(self):
    super().__init__()
    self.state = tf.Variable(tf.zeros([3]))
    self.step = tf.function(self._step, input_signature=[
        tf.TensorSpec([3], tf.float32, name='x')])
    self.read = tf.function(self._read, input_signature=[
        tf.TensorSpec([], tf.float32, name='scale')])

  def _step(self, x):
    self.state.assign_add(x)
    return {'total': tf.reshape(tf.reduce_sum(self.state), [1])}

  def _read(self, scale):
    return {'state': self.state * scale}


class _Bad(tf.Module):
  """No input, a scalar output, a float16 output, a select TF op."""

  def __init__(self):
    super().__init__()
    self.state = tf.Variable(tf.ones([4]))
    self.no_input = tf.function(self._no_input, input_signature=[])
    self.bits = tf.function(self._bits, input_signature=[
        tf.TensorSpec([4], tf.int32, name='x')])

  def _no_input(self):
    return {'half': tf.cast(self.state, tf.float16),
            'sum': tf.reduce_sum(self.state)}

  def _bits(self, x):
    return {'anded': tf.bitwise.bitwise_and(x, 6)}


def convert(module, names):
  return tflite_client.convert_module(
      module, {name: getattr(module, name).get_concrete_function()
               for name in names})


class SignatureReportTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.good = convert(_Good(), ('step', 'read'))
    cls.bad = convert(_Bad(), ('no_input', 'bits'))

  def test_good_module_keeps_the_contract(self):
    self.assertEqual(signature_report.contract_violations(self.good), [])
    self.assertEqual(signature_report.select_tf_ops(self.good),
                     {'step': (), 'read': ()})

  def test_each_rule_can_fail(self):
    self.assertCountEqual(signature_report.contract_violations(self.bad), [
        'no_input: no input',
        'no_input: output half is FLOAT16, which the Java Tensor API cannot '
        'hold',
        'no_input: output sum is a scalar (shape [])',
        'bits: select TF ops outside the allowed list: BitwiseAnd',
    ])

  def test_allowed_and_documented_exceptions(self):
    violations = signature_report.contract_violations(
        self.bad, allowed_select_tf_ops={'bits': ('BitwiseAnd',)},
        documented_scalar_outputs=[('no_input', 'sum')])
    self.assertCountEqual(violations, [
        'no_input: no input',
        'no_input: output half is FLOAT16, which the Java Tensor API cannot '
        'hold',
    ])

  def test_signature_tensors(self):
    tensors = signature_report.signature_tensors(self.good)
    self.assertEqual(tensors['step'], {'inputs': [('x', 'FLOAT32', (3,))],
                                       'outputs': [('total', 'FLOAT32', (1,))]})
    self.assertEqual(tensors['read']['inputs'], [('scale', 'FLOAT32', ())])

  def test_format_ops_lists_select_ops_first(self):
    lines = signature_report.format_ops(self.bad).splitlines()
    self.assertLen(lines, 2)
    self.assertTrue(lines[0].startswith(
        'bits: select TF ops: BitwiseAnd; builtins: '), lines[0])
    self.assertTrue(lines[1].startswith('no_input: select TF ops: none; '),
                    lines[1])


if __name__ == '__main__':
  tf.test.main()
