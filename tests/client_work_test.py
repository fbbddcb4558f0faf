"""Tests for tff_feddst.process.client_work: masked local SGD and readjustment."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.process import client_work
from tff_feddst.process import encoding


def softmax_regression() -> tf.keras.Model:
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(3,)),
      pruning.wrap_layer(tf.keras.layers.Dense(
          2, kernel_initializer='zeros', bias_initializer='zeros')),
  ])


def numpy_client_update(kernel, bias, mask, batches, lr, momentum, wd, mu,
                        epochs):
  """Independent numpy version of the client optimizer on softmax regression.

  Gradients of mean cross-entropy: dW = x^T (softmax(xW + b) - onehot) / B.
  """
  global_kernel, global_bias = kernel.copy(), bias.copy()
  kernel_buffer, bias_buffer = np.zeros_like(kernel), np.zeros_like(bias)
  for _ in range(epochs):
    for x, y in batches:
      logits = x @ kernel + bias
      probabilities = np.exp(logits - logits.max(1, keepdims=True))
      probabilities /= probabilities.sum(1, keepdims=True)
      delta = (probabilities - np.eye(2)[y]) / len(y)
      kernel_grad = x.T @ delta + wd * kernel + mu * (kernel - global_kernel)
      bias_grad = delta.sum(0) + wd * bias + mu * (bias - global_bias)
      kernel_grad *= mask
      kernel_buffer = momentum * kernel_buffer + kernel_grad
      bias_buffer = momentum * bias_buffer + bias_grad
      kernel = (kernel - lr * kernel_buffer) * mask
      bias = bias - lr * bias_buffer
  return kernel, bias


def initial_weights_of(model, kernel, bias, mask):
  pruning.start_pruning_steps(model)
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in model.non_trainable_variables])
  layout = models.model_layout(model)
  weights.trainable[layout.kernel_indices[0]] = kernel
  weights.trainable[layout.dense_trainable_indices[0]] = bias
  weights.non_trainable[layout.mask_indices[0]] = mask
  return weights, layout


NO_READJUST = client_work.RoundInstructions(
    should_readjust=tf.constant(False), drop_fraction=tf.constant(0.0))


class ClientTrainerTest(tf.test.TestCase):

  def test_optimizer_matches_numpy_reference(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], np.int32)
    mask = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    kernel = rng.normal(size=(3, 2)).astype(np.float32) * mask
    bias = np.array([0.1, -0.2], np.float32)
    model = softmax_regression()
    weights, layout = initial_weights_of(model, kernel, bias, mask)
    config = client_work.ClientConfig(
        learning_rate=0.1, momentum=0.9, weight_decay=0.01, prox_mu=0.5,
        num_epochs=2)
    trainer = client_work.ClientTrainer(model, layout, [4], config)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    payload, num_examples, stats = trainer.update(weights, dataset,
                                                  NO_READJUST)
    expected_kernel, expected_bias = numpy_client_update(
        kernel, bias, mask, [(x[:4], y[:4]), (x[4:], y[4:])], lr=0.1,
        momentum=0.9, wd=0.01, mu=0.5, epochs=2)
    got_kernels, got_masks, got_dense = encoding.decode(payload, [(3, 2)])
    self.assertAllClose(got_kernels[0], expected_kernel, atol=1e-6)
    self.assertAllClose(got_dense[0], expected_bias, atol=1e-6)
    self.assertAllEqual(got_masks[0], mask)
    self.assertEqual(float(num_examples), 6.0)
    self.assertEqual(int(stats.num_regrown), 0)


class ReadjustmentTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model_fn = models.get_model_fn('mnist_net', seed=1)
    self.initial = fed_dst.build_initial_model(self.model_fn, 0.8, 'erk',
                                               seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=40).astype(np.int32)
    self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)

  def run_client(self, readjust_after_epochs, should_readjust=True,
                 drop_fraction=0.2):
    config = client_work.ClientConfig(
        num_epochs=2, readjust_after_epochs=readjust_after_epochs)
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active, config)
    instructions = client_work.RoundInstructions(
        should_readjust=tf.constant(should_readjust),
        drop_fraction=tf.constant(drop_fraction))
    payload, _, stats = trainer.update(self.initial.weights, self.dataset,
                                       instructions)
    kernels, masks, _ = encoding.decode(payload,
                                        self.initial.layout.kernel_shapes)
    return kernels, masks, stats

  def global_masks(self):
    return [self.initial.weights.non_trainable[i]
            for i in self.initial.layout.mask_indices]

  def test_readjust_keeps_nnz_and_masked_weights_zero(self):
    kernels, masks, stats = self.run_client(readjust_after_epochs=1)
    expected_regrown = 0
    for kernel, mask, old_mask, count in zip(
        kernels, masks, self.global_masks(), self.initial.num_active):
      self.assertEqual(int(np.sum(mask)), count)
      self.assertTrue(np.all(kernel.numpy()[mask.numpy() == 0] == 0))
      changed = int(np.sum(mask.numpy() != old_mask)) // 2
      expected_regrown += changed
      # k = round(0.2 * nnz), capped by the inactive count.
      self.assertEqual(changed, min(round(0.2 * count), mask.numpy().size -
                                    count))
    self.assertEqual(int(stats.num_regrown), expected_regrown)

  def test_regrown_weights_train_before_upload(self):
    kernels, masks, _ = self.run_client(readjust_after_epochs=1)
    grown = (masks[2].numpy() == 1) & (self.global_masks()[2] == 0)
    self.assertGreater(np.sum(grown), 0)
    # One epoch of SGD after the readjustment moved the regrown weights.
    self.assertGreater(np.count_nonzero(kernels[2].numpy()[grown]),
                       0.9 * np.sum(grown))

  def test_readjusting_after_last_epoch_uploads_regrown_as_zero(self):
    kernels, masks, _ = self.run_client(readjust_after_epochs=2)
    grown = (masks[2].numpy() == 1) & (self.global_masks()[2] == 0)
    self.assertGreater(np.sum(grown), 0)
    self.assertTrue(np.all(kernels[2].numpy()[grown] == 0))

  def test_no_readjustment_keeps_the_global_mask(self):
    _, masks, stats = self.run_client(readjust_after_epochs=1,
                                      should_readjust=False)
    for mask, old_mask in zip(masks, self.global_masks()):
      self.assertAllEqual(mask, old_mask)
    self.assertEqual(int(stats.num_regrown), 0)

  def test_update_traces_once_for_all_clients_and_rounds(self):
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active,
        client_work.ClientConfig(num_epochs=1))
    rng = np.random.default_rng(5)
    before = client_work.update_trace_count()
    for size, readjust in ((40, True), (13, False), (25, True)):
      x = rng.normal(size=(size, 28, 28, 1)).astype(np.float32)
      y = rng.integers(0, 10, size=size).astype(np.int32)
      trainer.update(
          self.initial.weights,
          tf.data.Dataset.from_tensor_slices((x, y)).batch(10),
          client_work.RoundInstructions(
              should_readjust=tf.constant(readjust),
              drop_fraction=tf.constant(0.1 * size)))
    self.assertEqual(trainer.update.experimental_get_tracing_count(), 1)
    self.assertEqual(client_work.update_trace_count() - before, 1)

  def test_masks_are_uploaded_only_when_changed(self):
    upload_encoding = encoding.PayloadEncoding(
        mask_code='rice', masks_only_when_changed=True)
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active,
        client_work.ClientConfig(num_epochs=2), upload_encoding)
    layout, num_active = self.initial.layout, self.initial.num_active
    for should_readjust in (False, True):
      payload, _, _ = trainer.update(
          self.initial.weights, self.dataset,
          client_work.RoundInstructions(
              should_readjust=tf.constant(should_readjust),
              drop_fraction=tf.constant(0.2)))
      self.assertIsInstance(payload, encoding.CodedPayload)
      self.assertEqual(int(payload.mask_code_bits) > 0, should_readjust)
      kernels, masks, _ = encoding.decode_payload(
          payload, layout.kernel_shapes, num_active, upload_encoding,
          global_masks=self.global_masks())
      for kernel, mask, variable, mask_variable in zip(
          kernels, masks, trainer.kernels, trainer.masks):
        self.assertAllEqual(mask, mask_variable)
        self.assertAllEqual(kernel, variable)

  def test_upload_encoding_conflicting_with_value_dtype_raises(self):
    config = client_work.ClientConfig(value_dtype='float16')
    self.assertEqual(
        client_work.resolve_upload_encoding(config, None),
        encoding.PayloadEncoding(value_dtype='float16'))
    with self.assertRaisesRegex(ValueError, 'conflicts'):
      client_work.resolve_upload_encoding(
          config, encoding.PayloadEncoding(mask_code='rice'))

  def test_identical_inputs_identical_results(self):
    first, _, _ = self.run_client(readjust_after_epochs=1)
    second, _, _ = self.run_client(readjust_after_epochs=1)
    for a, b in zip(first, second):
      self.assertAllEqual(a, b)


class ClientConfigTest(tf.test.TestCase):

  def test_default_readjust_point(self):
    self.assertEqual(client_work.ClientConfig(
        num_epochs=5).effective_readjust_after_epochs, 4.0)
    self.assertEqual(client_work.ClientConfig(
        num_epochs=1).effective_readjust_after_epochs, 0.5)

  def test_non_positive_values_count_back_from_the_end(self):
    self.assertEqual(client_work.ClientConfig(
        num_epochs=10, readjust_after_epochs=0).effective_readjust_after_epochs,
                     10.0)
    self.assertEqual(client_work.ClientConfig(
        num_epochs=10, readjust_after_epochs=-2
    ).effective_readjust_after_epochs, 8.0)

  def test_bad_values_raise(self):
    with self.assertRaisesRegex(ValueError, 'readjust_after_epochs'):
      client_work.ClientConfig(num_epochs=2, readjust_after_epochs=3)
    with self.assertRaisesRegex(ValueError, 'readjust_after_epochs'):
      client_work.ClientConfig(num_epochs=2, readjust_after_epochs=-2)
    with self.assertRaisesRegex(ValueError, 'grow_score'):
      client_work.ClientConfig(grow_score='random')
    with self.assertRaisesRegex(ValueError, 'momentum'):
      client_work.ClientConfig(momentum=1.0)


if __name__ == '__main__':
  tf.test.main()
