"""Tests for tff_feddst.ondevice.tflite_export and tflite_client: TFLite client
parity with the TF client, the Java contract of every exported signature.

Each class converts once in setUpClass and runs everything that calls a Keras
model there too (a Keras model built before a TFF computation is traced in
the same process cannot be called afterwards; one test here traces the TFF
aggregator). The tests compare the recorded numpy results.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.methods import model_setup
from tff_feddst.networks import models
from tff_feddst.ondevice import device_payload
from tff_feddst.ondevice import signature_report
from tff_feddst.ondevice import tflite_client
from tff_feddst.ondevice import tflite_export
from tff_feddst.outputs import run_files
from tff_feddst.process import aggregation
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import server_step
from tff_feddst.process import payload_validation
from tff_feddst.process import sum_factory
from tff_feddst.running import settings as settings_lib

PARITY_ATOL = 1e-5
NUM_STEPS_BEFORE_READJUST = 5
DROP_FRACTION = 0.3
# Ops of the MNIST training model that run on the Flex delegate (README:
# "On-device training"); update the README when this changes.
MNIST_SELECT_TF_OPS = {
    'train': ('Conv2DBackpropFilter', 'MaxPoolGrad', 'ReluGrad',
              'SparseSoftmaxCrossEntropyWithLogits'),
    'readjust': (),
    'set_weights': (),
    'get_weights': (),
    'save': ('Save',),
    'restore': ('Restore',),
    'infer': (),
}


def random_batches(input_shape, sizes, seed):
  rng = np.random.default_rng(seed)
  return [(rng.uniform(size=(n,) + tuple(input_shape)).astype(np.float32),
           rng.integers(0, 10, size=n).astype(np.int32)) for n in sizes]


def numpy_payload(payload: encoding.SparsePayload) -> dict:
  return {k: np.asarray(v) for k, v in
          device_payload.payload_to_dict(payload).items()}


def payload_of(named: dict,
               layout: models.ModelLayout) -> encoding.SparsePayload:
  return device_payload.payload_from_dict(
      {k: tf.constant(v) for k, v in named.items()}, layout.num_prunable,
      len(layout.dense_trainable_indices) +
      len(layout.dense_non_trainable_indices))


def max_abs_difference(first: dict, second: dict) -> float:
  return max(float(np.max(np.abs(first[k].astype(np.float64) -
                                 second[k].astype(np.float64))))
             for k in first)


def runners(tflite_model: bytes) -> dict:
  """A fresh interpreter (one variable state) and its signature runners."""
  interpreter = tf.lite.Interpreter(model_content=tflite_model)
  return {name: interpreter.get_signature_runner(name)
          for name in tflite_client.TRAINING_SIGNATURES}


def uploaded(run: dict, num_examples: float = 1.0) -> dict:
  """`get_weights` outputs without the echoed weight."""
  outputs = run['get_weights'](num_examples=np.float32(num_examples))
  return {k: v for k, v in outputs.items() if k != device_payload.WEIGHT_NAME}


class MnistTrainingModelTest(tf.test.TestCase):
  """The MNIST net at sparsity 0.8 (ERK): TFLite against `ClientTrainer`."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model_fn = models.get_model_fn('mnist_net', seed=1)
    cls.initial = fed_dst.build_initial_model(cls.model_fn, 0.8, 'erk',
                                              seed=2)
    layout, num_active = cls.initial.layout, cls.initial.num_active
    cls.config = client_work.ClientConfig(
        learning_rate=0.05, momentum=0.9, weight_decay=1e-3, prox_mu=0.01)
    client = tflite_client.TFLiteClient(cls.model_fn(), layout, num_active,
                                        cls.config)
    client.load_weights(cls.initial.weights)
    cls.tflite_model = tflite_client.convert_client(client)
    cls.broadcast = numpy_payload(client_work.encode_weights(
        cls.initial.weights, layout, num_active))
    # Uneven batch sizes: the last batch of an epoch is usually smaller.
    cls.batches = random_batches((28, 28, 1), (32, 32, 17, 32, 5, 32, 9),
                                 seed=3)
    cls.other_batches = random_batches((28, 28, 1), (32, 32, 20), seed=4)
    cls.record_tf_and_tflite_rounds()
    cls.record_infer()

  @classmethod
  def record_tf_and_tflite_rounds(cls):
    """One client round, TF and TFLite: 5 steps, readjust, 2 more steps."""
    layout, num_active = cls.initial.layout, cls.initial.num_active
    trainer = client_work.ClientTrainer(cls.model_fn(), layout, num_active,
                                        cls.config)
    tf_step = tf.function(lambda x, y: trainer.train_step(x, y, True))
    tf_readjust = tf.function(trainer.readjust)
    tf.function(trainer.set_weights)(cls.initial.weights)
    run = runners(cls.tflite_model)
    cls.set_weights_output = run['set_weights'](**cls.broadcast)
    cls.after_set_weights = uploaded(run)
    cls.tf_losses, cls.tflite_losses = [], []
    for x, y in cls.batches[:NUM_STEPS_BEFORE_READJUST]:
      cls.tf_losses.append(float(tf_step(x, y)))
      cls.tflite_losses.append(float(run['train'](x=x, y=y)['loss'][0]))
    cls.tf_before_readjust = numpy_payload(trainer.payload())
    cls.tflite_before_readjust = uploaded(run)
    cls.tf_regrown = int(tf_readjust(tf.constant(DROP_FRACTION)))
    cls.tflite_regrown = int(run['readjust'](
        drop_fraction=np.float32(DROP_FRACTION))['num_regrown'][0])
    cls.tf_after_readjust = numpy_payload(trainer.payload())
    cls.tflite_after_readjust = uploaded(run)
    for x, y in cls.batches[NUM_STEPS_BEFORE_READJUST:]:
      tf_step(x, y)
      run['train'](x=x, y=y)
    cls.tf_final = numpy_payload(trainer.payload())
    cls.tflite_upload = run['get_weights'](num_examples=np.float32(156.))
    cls.tflite_final = {k: v for k, v in cls.tflite_upload.items()
                        if k != device_payload.WEIGHT_NAME}
    # A second client, trained in TF, to aggregate with the first one.
    other = client_work.ClientTrainer(cls.model_fn(), layout, num_active,
                                      cls.config)
    other_step = tf.function(lambda x, y: other.train_step(x, y, True))
    tf.function(other.set_weights)(cls.initial.weights)
    for x, y in cls.other_batches:
      other_step(x, y)
    cls.other_final = numpy_payload(other.payload())

  @classmethod
  def record_infer(cls):
    """A fresh interpreter (the exported start state) against Keras."""
    model = cls.model_fn()
    for variable, value in zip(model.trainable_variables,
                               cls.initial.weights.trainable):
      variable.assign(value)
    for variable, value in zip(model.non_trainable_variables,
                               cls.initial.weights.non_trainable):
      variable.assign(value)
    x = cls.batches[0][0]
    logits = model(x, training=False)
    cls.keras_infer = {'logits': logits.numpy(),
                       'probabilities': tf.nn.softmax(logits).numpy()}
    run = runners(cls.tflite_model)
    cls.fresh_weights = uploaded(run)
    cls.tflite_infer = run['infer'](x=x)

  def masks_of(self, named: dict) -> list[np.ndarray]:
    _, masks, _ = encoding.decode(payload_of(named, self.initial.layout),
                                  self.initial.layout.kernel_shapes)
    return [m.numpy() for m in masks]

  def kernels_of(self, named: dict) -> list[np.ndarray]:
    kernels, _, _ = encoding.decode(payload_of(named, self.initial.layout),
                                    self.initial.layout.kernel_shapes)
    return [k.numpy() for k in kernels]

  def test_signatures_and_their_tensors(self):
    interpreter = tf.lite.Interpreter(model_content=self.tflite_model)
    signatures = interpreter.get_signature_list()
    self.assertCountEqual(signatures, tflite_client.TRAINING_SIGNATURES)
    self.assertCountEqual(signatures['train']['inputs'], ['x', 'y'])
    self.assertEqual(signatures['train']['outputs'], ['loss'])
    self.assertCountEqual(signatures['infer']['outputs'],
                          ['logits', 'probabilities'])
    self.assertCountEqual(signatures['set_weights']['inputs'], self.broadcast)
    self.assertEqual(signatures['get_weights']['inputs'], ['num_examples'])
    self.assertCountEqual(signatures['get_weights']['outputs'],
                          list(self.broadcast) + ['weight'])
    self.assertEqual(signatures['save']['outputs'], ['num_tensors'])
    inputs = interpreter.get_signature_runner('set_weights').get_input_details()
    for name, array in self.broadcast.items():
      self.assertEqual(inputs[name]['dtype'], array.dtype, name)
      self.assertEqual(tuple(inputs[name]['shape']), array.shape, name)
    x = interpreter.get_signature_runner('train').get_input_details()['x']
    self.assertEqual(tuple(x['shape_signature']), (-1, 28, 28, 1))
    self.assertEqual(x['dtype'], np.float32)

  def test_select_tf_ops_per_signature(self):
    self.assertEqual(signature_report.select_tf_ops(self.tflite_model),
                     MNIST_SELECT_TF_OPS)

  def test_every_signature_keeps_the_java_contract(self):
    self.assertEqual(signature_report.contract_violations(self.tflite_model),
                     [])
    tensors = signature_report.signature_tensors(self.tflite_model)
    self.assertEqual(tensors['train']['outputs'], [('loss', 'FLOAT32', (1,))])
    self.assertEqual(tensors['readjust']['outputs'],
                     [('num_regrown', 'INT32', (1,))])
    self.assertEqual(tensors['get_weights']['inputs'],
                     [('num_examples', 'FLOAT32', ())])

  def test_get_weights_echoes_the_weight_and_passes_the_upload_check(self):
    self.assertEqual(self.tflite_upload['weight'].dtype, np.float32)
    self.assertAllEqual(self.tflite_upload['weight'], [156.])
    layout, num_active = self.initial.layout, self.initial.num_active
    dense_shapes = [self.broadcast[device_payload.dense_name(j)].shape
                    for j in range(len(layout.dense_trainable_indices))]
    spec = payload_validation.payload_spec(layout.kernel_shapes, num_active,
                                           dense_shapes)
    verdict = device_payload.check_device_upload(self.tflite_upload, spec)
    self.assertIsNone(verdict.rejection, verdict.reason)
    self.assertEqual(verdict.weight, np.float32(156.))
    for name, array in numpy_payload(verdict.payload).items():
      self.assertEqual(array.tobytes(), self.tflite_final[name].tobytes())

  def test_exported_start_state_is_the_initial_model(self):
    for name, array in self.broadcast.items():
      self.assertEqual(self.fresh_weights[name].dtype, array.dtype)
      self.assertAllEqual(self.fresh_weights[name], array)

  def test_set_weights_then_get_weights_gives_the_same_bytes(self):
    for name, array in self.broadcast.items():
      self.assertEqual(self.after_set_weights[name].tobytes(), array.tobytes(),
                       name)
    self.assertAllEqual(self.set_weights_output['num_active'],
                        self.initial.num_active)

  def test_train_steps_match_tf_client(self):
    self.assertAllClose(self.tflite_losses, self.tf_losses, atol=PARITY_ATOL)
    self.assertLess(max_abs_difference(self.tflite_before_readjust,
                                       self.tf_before_readjust), PARITY_ATOL)
    self.assertAllEqual(self.tflite_before_readjust['packed_masks'],
                        self.broadcast['packed_masks'])

  def test_readjust_matches_tf_client(self):
    # The acceptance test: same start, masks and batches; 5 steps, readjust.
    self.assertEqual(self.tflite_regrown, self.tf_regrown)
    self.assertGreater(self.tf_regrown, 0)
    self.assertAllEqual(self.tflite_after_readjust['packed_masks'],
                        self.tf_after_readjust['packed_masks'])
    self.assertLess(max_abs_difference(self.tflite_after_readjust,
                                       self.tf_after_readjust), PARITY_ATOL)
    tflite_masks = self.masks_of(self.tflite_after_readjust)
    start_masks = self.masks_of(self.broadcast)
    for layer, (mask, start, count) in enumerate(
        zip(tflite_masks, start_masks, self.initial.num_active)):
      self.assertEqual(int(mask.sum()), count, layer)
      if count < mask.size:  # ERK leaves the last layer dense: nothing to swap.
        self.assertGreater(int(np.sum(mask != start)), 0, layer)
    for kernel, mask in zip(self.kernels_of(self.tflite_after_readjust),
                            tflite_masks):
      self.assertTrue(np.all(kernel[mask == 0] == 0))

  def test_steps_after_readjust_match_tf_client(self):
    # Momentum at changed positions was reset identically.
    self.assertAllEqual(self.tflite_final['packed_masks'],
                        self.tf_final['packed_masks'])
    self.assertLess(max_abs_difference(self.tflite_final, self.tf_final),
                    PARITY_ATOL)

  def test_server_aggregates_tflite_payload_like_tf_payload(self):
    layout, num_active = self.initial.layout, self.initial.num_active
    dense_shapes = [self.broadcast[device_payload.dense_name(j)].shape
                    for j in range(len(layout.dense_trainable_indices))]
    buffers = [tf.zeros_like(v) for v in self.initial.weights.trainable]

    def next_global_model(first_payload):
      aggregate = aggregation._zero_aggregate(layout.kernel_shapes,  # pylint: disable=protected-access
                                              dense_shapes)
      for named, weight in ((first_payload, 156.), (self.other_final, 84.)):
        aggregate = aggregation.accumulate_payload(
            aggregate, payload_of(named, layout), tf.constant(weight),
            layout.kernel_shapes)
      _, weights, changed = server_step.apply_aggregate(
          buffers, self.initial.weights, aggregate, layout, num_active,
          server_learning_rate=1.0, server_momentum=0.0)
      return weights, int(changed)

    from_tflite, tflite_changed = next_global_model(self.tflite_final)
    from_tf, tf_changed = next_global_model(self.tf_final)
    self.assertEqual(tflite_changed, tf_changed)
    self.assertGreater(tf_changed, 0)
    for index in layout.mask_indices:
      self.assertAllEqual(from_tflite.non_trainable[index],
                          from_tf.non_trainable[index])
    for got, want in zip(from_tflite.trainable, from_tf.trainable):
      self.assertAllClose(got, want, atol=PARITY_ATOL, rtol=0)

  def test_tff_aggregation_process_takes_the_tflite_payload(self):
    layout = self.initial.layout
    tf_payload = payload_of(self.tf_final, layout)

    @tff.tensorflow.computation
    def payload_example():
      return tf.nest.map_structure(tf.constant, tf_payload)

    process = sum_factory.SparseSumFactory(layout.kernel_shapes).create(
        payload_example.type_signature.result, tff.TensorType(np.float32))

    def aggregate(first):
      return process.next(process.initialize(),
                          [payload_of(first, layout),
                           payload_of(self.other_final, layout)],
                          [156.0, 84.0]).result

    from_tflite = aggregate(self.tflite_final)
    from_tf = aggregate(self.tf_final)
    self.assertEqual(from_tflite.upload_bytes, from_tf.upload_bytes)
    self.assertAllClose(from_tflite, from_tf, atol=1e-3, rtol=0)
    for got, want in zip(from_tflite.votes, from_tf.votes):
      self.assertAllEqual(got, want)

  def test_infer_matches_keras(self):
    for name in ('logits', 'probabilities'):
      self.assertAllClose(self.tflite_infer[name], self.keras_infer[name],
                          atol=PARITY_ATOL, rtol=0)

  def test_save_and_restore_round_trip(self):
    path = os.path.join(self.create_tempdir().full_path, 'client.ckpt')
    run = runners(self.tflite_model)
    run['set_weights'](**self.broadcast)
    for x, y in self.batches[:2]:
      run['train'](x=x, y=y)
    num_saved = run['save'](checkpoint_path=np.array(path.encode()))
    saved = uploaded(run)
    x, y = self.batches[2]
    run['train'](x=x, y=y)
    trained_once = uploaded(run)
    self.assertGreater(max_abs_difference(trained_once, saved), 0)
    num_restored = run['restore'](checkpoint_path=np.array(path.encode()))
    self.assertEqual(max_abs_difference(uploaded(run), saved), 0)
    # Weights, masks, momentum, grow scores and FedProx's global weights.
    self.assertGreater(int(num_saved['num_tensors'][0]), 0)
    self.assertAllEqual(num_restored['num_tensors'], num_saved['num_tensors'])
    # Momentum and grow scores came back too: the same step, the same result.
    run['train'](x=x, y=y)
    self.assertEqual(max_abs_difference(uploaded(run), trained_once), 0)
    # A new interpreter (the app restarted) resumes from the file.
    restarted = runners(self.tflite_model)
    restarted['restore'](checkpoint_path=np.array(path.encode()))
    self.assertEqual(max_abs_difference(uploaded(restarted), saved), 0)

  def test_restore_of_a_missing_file_fails(self):
    run = runners(self.tflite_model)
    missing = os.path.join(self.create_tempdir().full_path, 'none.ckpt')
    with self.assertRaises(Exception):
      run['restore'](checkpoint_path=np.array(missing.encode()))


class InferenceModelsTest(tf.test.TestCase):
  """Stripped MNIST models: builtins only, sparse format smaller."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model_fn = models.get_model_fn('mnist_net', seed=1)
    initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=2)
    stripped = tflite_client.strip_model(model_fn, initial.weights)
    cls.plain = tflite_client.convert_inference(stripped, sparse=False)
    cls.sparse = tflite_client.convert_inference(stripped, sparse=True)
    cls.x = random_batches((28, 28, 1), (16,), seed=5)[0][0]
    cls.keras_logits = stripped(cls.x, training=False).numpy()
    cls.wrapped_count = sum(
        1 for layer in stripped.layers if 'prune_low_magnitude' in layer.name)

  def test_no_wrappers_left(self):
    self.assertEqual(self.wrapped_count, 0)

  def test_builtins_only(self):
    for model in (self.plain, self.sparse):
      self.assertEqual(signature_report.select_tf_ops(model), {'infer': ()})
      self.assertEqual(signature_report.contract_violations(model), [])
    self.assertIn('DENSIFY',
                  signature_report.signature_ops(self.sparse)['infer'])

  def test_sparse_format_is_smaller(self):
    # Dense float32 storage of 261,840 parameters is about 1.05 MB.
    self.assertGreater(len(self.plain), 4 * 261840)
    self.assertLess(len(self.sparse), 0.4 * len(self.plain))

  def test_both_compute_the_masked_model(self):
    for model in (self.plain, self.sparse):
      runner = tf.lite.Interpreter(model_content=model).get_signature_runner(
          'infer')
      output = runner(x=self.x)
      self.assertAllClose(output['logits'], self.keras_logits,
                          atol=PARITY_ATOL, rtol=0)


class Cifar10TrainingModelTest(tf.test.TestCase):
  """A light CIFAR-10 check, with the other client options: float16 upload,
  last-batch grow scores and the reference readjust rule."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    run_config = settings_lib.ExperimentSettings.from_flat(
        dataset='cifar10', target_sparsity=0.8, seed=1, drop_fraction=0.2,
        readjust_rule='reference', grow_score='last_batch',
        upload_encoding='float16+bitmap')
    model_fn, initial = tflite_export.build_initial_for(run_config)
    config = model_setup.build_client_config(run_config, initial)
    cls.config, cls.initial = config, initial
    client = tflite_client.TFLiteClient(model_fn(), initial.layout,
                                        initial.num_active, config)
    client.load_weights(initial.weights)
    cls.tflite_model = tflite_client.convert_client(client)
    batches = random_batches((32, 32, 3), (8, 8), seed=6)
    trainer = client_work.ClientTrainer(model_fn(), initial.layout,
                                        initial.num_active, config)
    tf.function(trainer.set_weights)(initial.weights)
    run = runners(cls.tflite_model)
    cls.tflite_infer = run['infer'](x=batches[0][0])['logits']
    cls.tf_infer = trainer.model(batches[0][0], training=False).numpy()
    for x, y in batches:
      trainer.train_step(x, y, True)
      run['train'](x=x, y=y)
    cls.tf_regrown = int(trainer.readjust(tf.constant(0.2)))
    cls.tflite_regrown = int(run['readjust'](
        drop_fraction=np.float32(0.2))['num_regrown'][0])
    cls.tf_payload = numpy_payload(trainer.payload())
    cls.tflite_outputs = run['get_weights'](num_examples=np.float32(16.))
    # The server's reading of the device's outputs (float16 from int16).
    layout = initial.layout
    dense_shapes = [v.shape for v in cls.tf_payload.values()][
        layout.num_prunable + 1:]
    cls.spec = payload_validation.payload_spec(
        layout.kernel_shapes, initial.num_active, dense_shapes,
        encoding.PayloadEncoding(value_dtype='float16'))
    cls.verdict = device_payload.check_device_upload(cls.tflite_outputs,
                                                     cls.spec)
    cls.tflite_payload = (numpy_payload(cls.verdict.payload)
                          if cls.verdict.payload is not None else None)

  def test_config_from_run_settings(self):
    self.assertEqual(self.config.readjust_rule, 'reference')
    self.assertLen(self.config.reference_keep_after_prune,
                   self.initial.layout.num_prunable)

  def test_infer_matches_keras(self):
    self.assertAllClose(self.tflite_infer, self.tf_infer, atol=PARITY_ATOL,
                        rtol=0)

  def test_java_contract_and_select_tf_ops(self):
    self.assertEqual(signature_report.contract_violations(self.tflite_model),
                     [])
    self.assertEqual(signature_report.select_tf_ops(self.tflite_model),
                     MNIST_SELECT_TF_OPS)

  def test_float16_values_cross_the_boundary_as_int16(self):
    self.assertEqual(self.tflite_outputs['values_0'].dtype, np.int16)
    self.assertIsNone(self.verdict.rejection, self.verdict.reason)
    self.assertEqual(self.verdict.weight, np.float32(16.))
    self.assertEqual(self.tflite_payload['values_0'].tobytes(),
                     self.tflite_outputs['values_0'].tobytes())

  def test_float16_payload_and_readjust_match_tf(self):
    self.assertEqual(self.tflite_regrown, self.tf_regrown)
    self.assertAllEqual(self.tflite_payload['packed_masks'],
                        self.tf_payload['packed_masks'])
    for name, array in self.tf_payload.items():
      self.assertEqual(self.tflite_payload[name].dtype, array.dtype, name)
    self.assertEqual(self.tflite_payload['values_0'].dtype, np.float16)
    # Values may differ by one float16 rounding step.
    self.assertLess(max_abs_difference(self.tflite_payload, self.tf_payload),
                    2e-3)


class CompactUploadTest(tf.test.TestCase):
  """CIFAR-10 with the simulation's compact upload: float16 values, Rice-coded
  masks, masks left out while unchanged."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    run_config = settings_lib.ExperimentSettings.from_flat(
        dataset='cifar10', target_sparsity=0.8, seed=1, drop_fraction=0.2,
        upload_encoding='float16+rice+changed_masks_only')
    model_fn, initial = tflite_export.build_initial_for(run_config)
    config = model_setup.build_client_config(run_config, initial)
    cls.upload_encoding = run_config.payload_encodings()[0]
    layout, num_active = initial.layout, initial.num_active
    client = tflite_client.TFLiteClient(model_fn(), layout, num_active,
                                        config, cls.upload_encoding)
    client.load_weights(initial.weights)
    cls.tflite_model = tflite_client.convert_client(client)
    broadcast = numpy_payload(client_work.encode_weights(
        initial.weights, layout, num_active))
    trainer = client_work.ClientTrainer(model_fn(), layout, num_active,
                                        config,
                                        upload_encoding=cls.upload_encoding)
    tf.function(trainer.set_weights)(initial.weights)
    received = [tf.constant(m.numpy()) for m in trainer.masks]
    tf_step = tf.function(lambda x, y: trainer.train_step(x, y, True))
    tf_upload = tf.function(lambda: trainer.encoded_upload(received))
    run = runners(cls.tflite_model)
    run['set_weights'](**broadcast)
    batches = random_batches((32, 32, 3), (8, 8, 8), seed=7)
    for x, y in batches[:2]:
      tf_step(x, y)
      run['train'](x=x, y=y)
    cls.tf_unchanged = tf.nest.map_structure(np.asarray, tf_upload())
    cls.unchanged = run['get_weights'](num_examples=np.float32(24.))
    trainer.readjust(tf.constant(0.2))
    run['readjust'](drop_fraction=np.float32(0.2))
    x, y = batches[2]
    tf_step(x, y)
    run['train'](x=x, y=y)
    cls.tf_changed = tf.nest.map_structure(np.asarray, tf_upload())
    cls.changed = run['get_weights'](num_examples=np.float32(24.))
    cls.masks = [m.numpy() for m in trainer.masks]
    cls.received = [m.numpy() for m in received]
    dense_shapes = [np.shape(d) for d in cls.tf_changed.dense]
    cls.spec = payload_validation.payload_spec(
        layout.kernel_shapes, num_active, dense_shapes, cls.upload_encoding)

  def test_java_contract_and_select_tf_ops(self):
    self.assertEqual(signature_report.contract_violations(self.tflite_model),
                     [])
    self.assertEqual(signature_report.select_tf_ops(self.tflite_model),
                     MNIST_SELECT_TF_OPS)
    tensors = signature_report.signature_tensors(self.tflite_model)
    outputs = {name: (dtype, shape)
               for name, dtype, shape in tensors['get_weights']['outputs']}
    self.assertEqual(outputs['mask_code_bits'], ('INT32', (1,)))
    self.assertEqual(outputs['mask_code'][0], 'UINT8')
    self.assertNotIn('packed_masks', outputs)

  def assert_same_upload(self, device_outputs, tf_payload):
    verdict = device_payload.check_device_upload(device_outputs, self.spec)
    self.assertIsNone(verdict.rejection, verdict.reason)
    self.assertEqual(verdict.weight, np.float32(24.))
    self.assertIsInstance(verdict.payload, encoding.CodedPayload)
    self.assertEqual(int(verdict.payload.mask_code_bits),
                     int(tf_payload.mask_code_bits))
    self.assertEqual(verdict.payload.mask_code.tobytes(),
                     tf_payload.mask_code.tobytes())
    for got, want in zip(verdict.payload.values, tf_payload.values):
      self.assertEqual(got.dtype, np.float16)
      # Values may differ by one float16 rounding step.
      self.assertAllClose(got.astype(np.float32), want.astype(np.float32),
                          atol=2e-3, rtol=0)
    return verdict.payload

  def test_unchanged_masks_are_left_out(self):
    payload = self.assert_same_upload(self.unchanged, self.tf_unchanged)
    self.assertEqual(int(payload.mask_code_bits), 0)

  def test_changed_masks_are_rice_coded_as_in_tf(self):
    self.assertTrue(any(np.any(m != r)
                        for m, r in zip(self.masks, self.received)))
    payload = self.assert_same_upload(self.changed, self.tf_changed)
    self.assertGreater(int(payload.mask_code_bits), 0)

  def test_bytes_counted_as_the_simulation_counts_them(self):
    for outputs, tf_payload, masks in (
        (self.unchanged, self.tf_unchanged, self.received),
        (self.changed, self.tf_changed, self.masks)):
      payload = device_payload.check_device_upload(outputs, self.spec).payload
      device_bytes = int(encoding.payload_num_bytes(
          tf.nest.map_structure(tf.constant, payload),
          [tf.constant(m) for m in masks]))
      tf_bytes = int(encoding.payload_num_bytes(
          tf.nest.map_structure(tf.constant, tf_payload),
          [tf.constant(m) for m in masks]))
      self.assertEqual(device_bytes, tf_bytes)
    unchanged_bytes = int(encoding.payload_num_bytes(tf.nest.map_structure(
        tf.constant, self.tf_unchanged)))
    changed_bytes = int(encoding.payload_num_bytes(tf.nest.map_structure(
        tf.constant, self.tf_changed)))
    self.assertLess(unchanged_bytes, changed_bytes)


class RunFilesTest(tf.test.TestCase):
  """Reading a run's settings and weights; errors: one line naming the file."""

  def write_run(self, flag_lines=None, weights=None):
    run_dir = self.create_tempdir().full_path
    config = settings_lib.ExperimentSettings.from_flat(model='mnist_net',
                                                       seed=0)
    with open(os.path.join(run_dir, 'flags.txt'), 'w') as f:
      f.write('\n'.join(flag_lines or config.to_flag_lines()) + '\n')
    if weights is None:
      _, initial = tflite_export.build_initial_for(config)
      weights = initial.weights
    run_files.save_model_weights(os.path.join(run_dir, 'global_model.npz'),
                                 weights)
    return run_dir

  def assert_one_line_error(self, function, *args, names):
    with self.assertRaises(tflite_export.ExportError) as caught:
      function(*args)
    message = str(caught.exception)
    self.assertNotIn('\n', message)
    self.assertIn(names, message)

  def test_flags_file_round_trip(self):
    config = settings_lib.ExperimentSettings.from_flat(
        dataset='cifar10', readjust_after_epochs=0.5, examples_per_client=7,
        prox_mu=0.01)
    path = os.path.join(self.create_tempdir().full_path, 'flags.txt')
    with open(path, 'w') as f:
      f.write('\n'.join(config.to_flag_lines()) + '\n')
    self.assertEqual(tflite_export.read_flags_file(path), config)

  def test_bad_flags_files(self):
    directory = self.create_tempdir().full_path
    for name, content in (('unknown', '--no_such_setting=1\n'),
                          ('badtype', '--total_rounds=many\n'),
                          ('invalid', '--target_sparsity=1.5\n'),
                          ('binary', '\x00\xff garbage')):
      path = os.path.join(directory, name)
      with open(path, 'w') as f:
        f.write(content)
      self.assert_one_line_error(tflite_export.read_flags_file, path,
                                 names=path)
    missing = os.path.join(directory, 'missing.txt')
    self.assert_one_line_error(tflite_export.read_flags_file, missing,
                               names=missing)

  def test_checkpoint_directory_or_file(self):
    run_dir = self.write_run()
    npz = os.path.join(run_dir, 'global_model.npz')
    flags_path = os.path.join(run_dir, 'flags.txt')
    self.assertEqual(tflite_export.resolve_checkpoint(run_dir),
                     (npz, flags_path))
    self.assertEqual(tflite_export.resolve_checkpoint(npz), (npz, flags_path))
    self.assert_one_line_error(tflite_export.resolve_checkpoint,
                               os.path.join(run_dir, 'nope'), names='nope')

  def test_bad_checkpoints(self):
    config = settings_lib.ExperimentSettings.from_flat(model='mnist_net',
                                                       seed=0)
    _, initial = tflite_export.build_initial_for(config)
    good = initial.weights
    loaded = tflite_export.load_checkpoint(
        os.path.join(self.write_run(), 'global_model.npz'), initial)
    tf.nest.map_structure(self.assertAllEqual, loaded, good)

    def with_trainable(index, value):
      trainable = list(good.trainable)
      trainable[index] = value
      return tff.learning.models.ModelWeights(
          trainable=trainable, non_trainable=list(good.non_trainable))

    def with_non_trainable(index, value):
      non_trainable = list(good.non_trainable)
      non_trainable[index] = value
      return tff.learning.models.ModelWeights(
          trainable=list(good.trainable), non_trainable=non_trainable)

    layout = initial.layout
    nan_kernel = good.trainable[0].copy()
    nan_kernel.flat[0] = np.nan
    full_mask = np.ones_like(good.non_trainable[layout.mask_indices[2]])
    bad_weights = [
        with_trainable(0, np.zeros((3, 3), np.float32)),
        with_trainable(0, nan_kernel),
        with_non_trainable(layout.mask_indices[2], full_mask),
        tff.learning.models.ModelWeights(trainable=list(good.trainable[:2]),
                                         non_trainable=[]),
    ]
    for weights in bad_weights:
      npz = os.path.join(self.write_run(weights=weights), 'global_model.npz')
      self.assert_one_line_error(tflite_export.load_checkpoint, npz, initial,
                                 names=npz)
    corrupt = os.path.join(self.create_tempdir().full_path, 'global_model.npz')
    with open(corrupt, 'wb') as f:
      f.write(b'PK\x03\x04 not really a zip')
    self.assert_one_line_error(tflite_export.load_checkpoint, corrupt, initial,
                               names=corrupt)

  def test_existing_output_files_are_refused(self):
    output_dir = self.create_tempdir().full_path
    path = os.path.join(output_dir, tflite_export.INFERENCE_FILE)
    with open(path, 'w') as f:
      f.write('keep me')
    self.assert_one_line_error(tflite_export.check_output_dir, output_dir,
                               names=path)
    self.assert_one_line_error(tflite_export.check_output_dir, path,
                               names=path)


if __name__ == '__main__':
  tf.test.main()
