"""Tests for tff_feddst.ondevice.tflite_client: `set_weights` takes every
broadcast the TF client takes, and the client ends with the same weights
and masks, bit for bit.

The broadcasts that carry the masks of dense layers (the run's download
encoding has 'dense_masks') are those of runs whose server can thin a dense
layer: the authors' server rule, `min_votes` > 1, a growing sparsity and
PruneFL. Their masks differ from what a client would derive by itself: a
layer of full capacity may have zeros, and any mask may hold fewer ones than
its capacity. Each kind is built from its run settings (capacity, encodings)
with masks thinned as such a server thins them, and fed to the TF client
(`distributor.decode_model_weights`, `ClientTrainer.set_weights`) and to the
converted TFLite client; the test compares what both then hold.

A Keras model built after a TFF computation was traced cannot be called, so
setUpClass builds and runs everything; the tests read the records.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import model_setup
from tff_feddst.methods import prunefl
from tff_feddst.networks import models
from tff_feddst.ondevice import device_payload
from tff_feddst.ondevice import signature_report
from tff_feddst.ondevice import tflite_client
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.running import settings as settings_lib
from tests import tflite_export_test

# Uploads float32+bitmap: the tests compare the device's upload with the TF
# client's raw payload (compact device uploads: tflite_export_test).
BASE_SETTINGS = dict(dataset='cifar10', target_sparsity=0.8, seed=1,
                     upload_encoding='float32+bitmap')
# Per broadcast kind: its run settings and the share of each mask's ones the
# server keeps (below 1 everywhere, dense layers included).
BROADCAST_KINDS = {
    'reference_server_rule': (dict(server_rule='reference'), 0.9),
    'min_votes_2': (dict(min_votes=2), 0.6),
    'growing_sparsity': (dict(initial_sparsity=0.0), 0.5),
    'prunefl': (dict(method='prunefl'), 0.3),
    'float16_rice_download': (dict(server_rule='reference',
                                   download_encoding='float16+rice'), 0.7),
}
# The TFLite select-TF ops of the training model, as the MNIST model's (the
# CIFAR-10 net needs the same): taking these broadcasts adds none.
SELECT_TF_OPS = tflite_export_test.MNIST_SELECT_TF_OPS


def kind_setup(kind: str):
  """The run of a broadcast kind: settings, model, capacity, encodings."""
  flat, _ = BROADCAST_KINDS[kind]
  run_config = settings_lib.ExperimentSettings.from_flat(
      **BASE_SETTINGS, **flat).resolved()
  run_config.validate()
  model_fn, initial = model_setup.build_model(run_config)
  upload, download = run_config.payload_encodings()
  capacity = initial.num_active
  if run_config.method == 'prunefl':
    # PruneFL broadcasts at every layer's full size (`prunefl.build_prunefl`).
    capacity = initial.layout.kernel_sizes
    upload = prunefl.full_capacity_encoding(upload)
    download = prunefl.full_capacity_encoding(download)
  config = model_setup.build_client_config(run_config, initial)
  capacity = tuple(int(n) for n in capacity)
  return model_fn, initial, capacity, upload, download, config


def thinned_weights(weights, layout: models.ModelLayout, keep_share: float,
                    seed: int):
  """The global model with each mask keeping `keep_share` of its ones.

  The positions kept are drawn at random (seeded); kernels are zero off the
  new masks, as the server stores them.
  """
  rng = np.random.default_rng(seed)
  trainable = [np.array(v) for v in weights.trainable]
  non_trainable = [np.array(v) for v in weights.non_trainable]
  for kernel_index, mask_index in zip(layout.kernel_indices,
                                      layout.mask_indices):
    mask = non_trainable[mask_index]
    ones = np.flatnonzero(mask.reshape(-1) > 0.5)
    kept = rng.choice(ones, size=max(int(keep_share * ones.size), 1),
                      replace=False)
    thinned = np.zeros(mask.size, mask.dtype)
    thinned[kept] = 1
    thinned = thinned.reshape(mask.shape)
    non_trainable[mask_index] = thinned
    # Distinct non-zero values so a misplaced value cannot go unnoticed.
    trainable[kernel_index] = (
        rng.uniform(0.5, 1.5, size=mask.shape).astype(np.float32) *
        rng.choice([-1.0, 1.0], size=mask.shape).astype(np.float32) * thinned)
  return tff.learning.models.ModelWeights(trainable=trainable,
                                          non_trainable=non_trainable)


def weights_type_of(model: tf.keras.Model):
  return tff.types.tensorflow_to_type(tff.learning.models.ModelWeights(
      trainable=[tf.TensorSpec(v.shape, v.dtype)
                 for v in model.trainable_variables],
      non_trainable=[tf.TensorSpec(v.shape, v.dtype)
                     for v in model.non_trainable_variables]))


def record_kind(kind: str, seed: int, converted: dict) -> dict:
  """Feeds one kind's broadcast to the TF and the TFLite client.

  Args:
    kind: A key of `BROADCAST_KINDS`.
    seed: Seeds the thinned masks and values.
    converted: Training models already converted, keyed by what shapes
      `set_weights` and `get_weights` (capacity and encodings); kinds that
      share them share one conversion (the client config baked into `train`
      plays no part in `set_weights`).

  Returns:
    What the tests compare.
  """
  model_fn, initial, capacity, upload, download, config = kind_setup(kind)
  layout = initial.layout
  key = (capacity, upload, download)
  if key not in converted:
    client = tflite_client.TFLiteClient(model_fn(), layout, capacity, config,
                                        upload, download)
    client.load_weights(initial.weights)
    converted[key] = tflite_client.convert_client(client)
  tflite_model = converted[key]
  global_weights = thinned_weights(initial.weights, layout,
                                   BROADCAST_KINDS[kind][1], seed)
  payload = client_work.encode_weights(global_weights, layout, capacity,
                                       payload_encoding=download)
  # The TF client: what the distributor hands it, loaded by the trainer.
  trainer = client_work.ClientTrainer(model_fn(), layout, capacity, config,
                                      upload_encoding=upload)
  decoded = distributor.decode_model_weights(
      payload, layout, weights_type_of(trainer.model), capacity, download)
  tf.function(trainer.set_weights)(decoded)
  interpreter = tf.lite.Interpreter(model_content=tflite_model)
  set_weights = interpreter.get_signature_runner('set_weights')
  get_weights = interpreter.get_signature_runner('get_weights')
  num_active = set_weights(**device_payload.broadcast_inputs(payload))
  device_upload = get_weights(num_examples=np.float32(1.0))
  device_upload.pop(device_payload.WEIGHT_NAME)
  return {
      'layout': layout,
      'capacity': capacity,
      'upload': upload,
      'download': download,
      'global_weights': global_weights,
      'tf_trainable': [v.numpy() for v in trainer.model.trainable_variables],
      'tf_non_trainable': [
          v.numpy() for v in trainer.model.non_trainable_variables],
      'tf_upload': {k: np.asarray(v) for k, v in device_payload.payload_to_dict(
          trainer.payload()).items()},
      'device_upload': device_upload,
      'num_active': num_active['num_active'],
      'set_weights_inputs': interpreter.get_signature_runner(
          'set_weights').get_input_details(),
      'select_tf_ops': signature_report.select_tf_ops(tflite_model),
      'contract_violations': signature_report.contract_violations(
          tflite_model),
  }


class BroadcastKindsTest(tf.test.TestCase):
  """Each broadcast kind through the TF and the TFLite client."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    converted = {}
    cls.records = {kind: record_kind(kind, seed, converted)
                   for seed, kind in enumerate(BROADCAST_KINDS)}
    cls.num_conversions = len(converted)

  def test_every_kind_sends_the_masks_of_dense_layers(self):
    # The premise: these runs' download encodings carry dense layers' masks,
    # and the thinned broadcast has zeros in a layer of full capacity.
    for kind, record in self.records.items():
      self.assertFalse(record['download'].omit_dense_masks, kind)
      layout = record['layout']
      full = [position for position, (count, size) in enumerate(
          zip(record['capacity'], layout.kernel_sizes)) if count == size]
      self.assertNotEmpty(full, kind)
      for position in full:
        mask = record['global_weights'].non_trainable[
            layout.mask_indices[position]]
        self.assertLess(int(mask.sum()), mask.size, kind)

  def test_tflite_client_holds_what_the_tf_client_holds(self):
    for kind, record in self.records.items():
      layout = record['layout']
      # The TF client took the server's masks and masked kernels as sent.
      for index in layout.mask_indices:
        self.assertAllEqual(record['tf_non_trainable'][index],
                            record['global_weights'].non_trainable[index])
      # The device's upload (float32 values, every mask: the TF client's
      # encoding) is the TF client's, to the byte: same masks, same active
      # values, same dense parameters.
      self.assertCountEqual(record['device_upload'], record['tf_upload'],
                            kind)
      for name, array in record['tf_upload'].items():
        got = record['device_upload'][name]
        self.assertEqual(got.dtype, array.dtype, (kind, name))
        self.assertEqual(got.tobytes(), array.tobytes(), (kind, name))

  def test_device_weights_decode_to_the_tf_clients_weights(self):
    for kind, record in self.records.items():
      layout = record['layout']
      named = {k: tf.constant(v) for k, v in record['device_upload'].items()}
      payload = device_payload.payload_from_dict(
          named, layout.num_prunable,
          len(layout.dense_trainable_indices) +
          len(layout.dense_non_trainable_indices))
      kernels, masks, dense = encoding.decode(payload, layout.kernel_shapes,
                                              omit_dense_masks=False)
      for position, (kernel_index, mask_index) in enumerate(
          zip(layout.kernel_indices, layout.mask_indices)):
        self.assertEqual(
            kernels[position].numpy().tobytes(),
            record['tf_trainable'][kernel_index].tobytes(), (kind, position))
        self.assertAllEqual(masks[position],
                            record['tf_non_trainable'][mask_index])
      for position, index in enumerate(layout.dense_trainable_indices):
        self.assertEqual(dense[position].numpy().tobytes(),
                         record['tf_trainable'][index].tobytes())

  def test_num_active_counts_the_received_ones(self):
    for kind, record in self.records.items():
      layout = record['layout']
      counts = [int(record['global_weights'].non_trainable[index].sum())
                for index in layout.mask_indices]
      self.assertAllEqual(record['num_active'], counts, kind)
      self.assertTrue(all(count < capacity for count, capacity in
                          zip(counts, record['capacity'])), kind)

  def test_set_weights_inputs_follow_the_download_encoding(self):
    rice = self.records['float16_rice_download']['set_weights_inputs']
    self.assertEqual(rice['values_0']['dtype'], np.int16)
    self.assertEqual(tuple(rice['mask_code_bits']['shape']), (1,))
    self.assertNotIn('packed_masks', rice)
    bitmap = self.records['min_votes_2']['set_weights_inputs']
    self.assertEqual(bitmap['values_0']['dtype'], np.float32)
    self.assertIn('packed_masks', bitmap)

  def test_java_contract_and_select_tf_ops_unchanged(self):
    for kind, record in self.records.items():
      self.assertEqual(record['contract_violations'], [], kind)
      self.assertEqual(record['select_tf_ops'], SELECT_TF_OPS, kind)


class BroadcastSpecsTest(tf.test.TestCase):
  """`device_payload.broadcast_specs` against the server's encoding."""

  def test_a_download_that_leaves_masks_out_is_refused(self):
    model_fn = models.get_model_fn('cifar10_net', seed=0)
    model = model_fn()
    layout = models.model_layout(model)
    with self.assertRaisesRegex(ValueError, 'changed_masks_only'):
      device_payload.broadcast_specs(
          model, layout, layout.kernel_sizes,
          encoding.PayloadEncoding(masks_only_when_changed=True))
