"""Tests for bin/export_tflite.py, run as a program (as users run it).

Its flags share names with bin/train.py's, so it is not imported into the
test process (absl would refuse the duplicate definitions).
"""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tests import fixtures

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.ondevice import tflite_export
from tff_feddst.outputs import run_files
from tff_feddst.running import settings as settings_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = os.path.join(ROOT, 'bin', 'export_tflite.py')


def run_export(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, EXPORT, *args], capture_output=True, text=True,
      timeout=300, stdin=subprocess.DEVNULL,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


def write_run(run_dir: str, config: settings_lib.ExperimentSettings,
              weights_config: settings_lib.ExperimentSettings) -> None:
  """A run directory: `config`'s flags.txt, `weights_config`'s initial model."""
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'flags.txt'), 'w') as f:
    f.write('\n'.join(config.to_flag_lines()) + '\n')
  initial = fed_dst.build_initial_model(
      models.get_model_fn(weights_config.model_name, weights_config.run.seed),
      weights_config.network.target_sparsity,
      weights_config.network.sparsity_distribution,
      seed=weights_config.run.seed)
  run_files.save_model_weights(os.path.join(run_dir, 'global_model.npz'),
                                initial.weights)


MNIST_RUN = settings_lib.ExperimentSettings.from_flat(
    dataset='mnist', target_sparsity=0.8, seed=3, client_learning_rate=0.02)


class ExportTflitePathsTest(tf.test.TestCase):

  def test_export_from_a_run_directory(self):
    root = self.create_tempdir().full_path
    run_dir = os.path.join(root, 'run')
    write_run(run_dir, MNIST_RUN, MNIST_RUN)
    output = os.path.join(root, 'tflite')
    result = run_export(f'--checkpoint={run_dir}', f'--output={output}')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertCountEqual(os.listdir(output), tflite_export.OUTPUT_FILES)
    with open(os.path.join(output, 'metadata.json')) as f:
      metadata = json.load(f)
    self.assertEqual(metadata['model'], 'mnist_net')
    self.assertEqual(metadata['source'],
                     os.path.join(run_dir, 'global_model.npz'))
    self.assertEqual(metadata['client_config']['learning_rate'], 0.02)
    self.assertEqual(metadata['input']['shape'], [-1, 28, 28, 1])
    for name in (tflite_export.TRAINING_FILE, tflite_export.INFERENCE_FILE,
                 tflite_export.SPARSE_INFERENCE_FILE):
      self.assertEqual(metadata['sizes'][name],
                       os.path.getsize(os.path.join(output, name)))
      self.assertIn(name, result.stdout)
    self.assertLess(metadata['sizes'][tflite_export.SPARSE_INFERENCE_FILE],
                    metadata['sizes'][tflite_export.INFERENCE_FILE])
    self.assertIn('Conv2DBackpropFilter', metadata['select_tf_ops']['train'])
    self.assertEqual(metadata['select_tf_ops']['set_weights'], [])
    self.assertEqual(metadata['contract_violations'], [])
    self.assertIn('Java contract: kept', result.stdout)
    self.assertIn('  get_weights: none\n', result.stdout)
    # --list_ops reads the written model back: the same lists.
    listing = run_export(
        f'--list_ops={os.path.join(output, tflite_export.TRAINING_FILE)}')
    self.assertEqual(listing.returncode, 0, listing.stderr)
    self.assertIn('get_weights: select TF ops: none; builtins: ',
                  listing.stdout)
    self.assertIn('train: select TF ops: Conv2DBackpropFilter, MaxPoolGrad, '
                  'ReluGrad, SparseSoftmaxCrossEntropyWithLogits; builtins: ',
                  listing.stdout)
    self.assertIn('Java contract: kept', listing.stdout)
    # The training model starts from the checkpoint, and its inference
    # agrees with the stripped models.
    with np.load(os.path.join(run_dir, 'global_model.npz')) as archive:
      checkpoint_bias = archive['trainable_1']
    outputs = {}
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(
        np.float32)
    for name in (tflite_export.TRAINING_FILE, tflite_export.INFERENCE_FILE,
                 tflite_export.SPARSE_INFERENCE_FILE):
      interpreter = tf.lite.Interpreter(
          model_path=os.path.join(output, name))
      outputs[name] = interpreter.get_signature_runner('infer')(x=x)['logits']
      if name == tflite_export.TRAINING_FILE:
        weights = interpreter.get_signature_runner('get_weights')(
            num_examples=np.float32(1))
        self.assertAllEqual(weights['dense_0'], checkpoint_bias)
    for name in (tflite_export.INFERENCE_FILE,
                 tflite_export.SPARSE_INFERENCE_FILE):
      self.assertAllClose(outputs[name], outputs[tflite_export.TRAINING_FILE],
                          atol=1e-5, rtol=0)

  def test_fresh_export_of_the_cifar10_net(self):
    output = os.path.join(self.create_tempdir().full_path, 'fresh')
    result = run_export('--model=cifar10_net', '--target_sparsity=0.9',
                        '--seed=4', f'--output={output}')
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(os.path.join(output, 'metadata.json')) as f:
      metadata = json.load(f)
    self.assertEqual(metadata['model'], 'cifar10_net')
    self.assertEqual(metadata['input']['shape'], [-1, 32, 32, 3])
    initial = fed_dst.build_initial_model(
        models.get_model_fn('cifar10_net', seed=4), 0.9, 'erk', seed=4)
    self.assertEqual(metadata['num_active'], list(initial.num_active))


class ExportTfliteBadInputTest(tf.test.TestCase):
  """Each bad input: exit code 1, one line on stderr naming it, no traceback,
  nothing written."""

  def assert_one_line_error(self, result, *expected_words):
    fixtures.assert_one_line_error(self, result, *expected_words)

  def test_missing_corrupt_and_mismatched_checkpoints(self):
    root = self.create_tempdir().full_path
    output = os.path.join(root, 'never')
    missing = os.path.join(root, 'no_such_run')
    corrupt_dir = os.path.join(root, 'corrupt')
    write_run(corrupt_dir, MNIST_RUN, MNIST_RUN)
    with open(os.path.join(corrupt_dir, 'global_model.npz'), 'wb') as f:
      f.write(b'\x00' * 100)
    mismatched_dir = os.path.join(root, 'mismatched')
    write_run(mismatched_dir,
              settings_lib.ExperimentSettings.from_flat(dataset='cifar10',
                                                        seed=3),
              MNIST_RUN)
    cases = [
        (missing, missing),
        (corrupt_dir, os.path.join(corrupt_dir, 'global_model.npz')),
        (mismatched_dir, os.path.join(mismatched_dir, 'global_model.npz')),
    ]
    for checkpoint, named_file in cases:
      result = run_export(f'--checkpoint={checkpoint}', f'--output={output}')
      self.assert_one_line_error(result, named_file)
      self.assertFalse(os.path.exists(output), checkpoint)

  def test_existing_output_file_is_not_overwritten(self):
    output = self.create_tempdir().full_path
    kept = os.path.join(output, tflite_export.INFERENCE_FILE)
    with open(kept, 'w') as f:
      f.write('keep me')
    result = run_export('--model=mnist_net', f'--output={output}')
    self.assert_one_line_error(result, kept)
    self.assertEqual(os.listdir(output), [tflite_export.INFERENCE_FILE])
    with open(kept) as f:
      self.assertEqual(f.read(), 'keep me')

  def test_bad_flags(self):
    output = os.path.join(self.create_tempdir().full_path, 'never')
    result = run_export('--target_sparsity=1.5', f'--output={output}')
    self.assert_one_line_error(result, '--target_sparsity')
    result = run_export('--checkpoint=/some/run', '--model=mnist_net',
                        f'--output={output}')
    self.assert_one_line_error(result, '--model', '--checkpoint')
    result = run_export('--model=mnist_net')
    self.assert_one_line_error(result, '--output')
    result = run_export('--initial_mask=foo', f'--output={output}')
    self.assert_one_line_error(result, 'flag --initial_mask=foo: value should '
                               'be one of <random|magnitude>')
    result = run_export('--prox_mu=inf', f'--output={output}')
    self.assert_one_line_error(result, '--prox_mu=inf is invalid: expected a '
                               'finite number')
    missing = os.path.join(os.path.dirname(output), 'none.tflite')
    result = run_export(f'--list_ops={missing}')
    self.assert_one_line_error(result, f'--list_ops={missing}')
    garbage = os.path.join(os.path.dirname(output), 'garbage.tflite')
    with open(garbage, 'wb') as f:
      f.write(b'not a flatbuffer' * 3)
    result = run_export(f'--list_ops={garbage}')
    self.assert_one_line_error(result, f'--list_ops={garbage}', 'not a '
                               'readable .tflite model')
    result = run_export(f'--list_ops={garbage}', f'--output={output}')
    self.assert_one_line_error(result, '--output', '--list_ops')
    self.assertFalse(os.path.exists(output))


if __name__ == '__main__':
  tf.test.main()
