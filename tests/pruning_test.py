"""Tests for tff_feddst.networks.pruning: TF-MOT wrappers driven only by FedDST."""

import numpy as np
import tensorflow as tf

from tff_feddst.networks import pruning


def _tiny_model() -> tf.keras.Model:
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(4,)),
      pruning.wrap_layer(tf.keras.layers.Dense(3)),
      pruning.wrap_layer(tf.keras.layers.Dense(2)),
  ])


class PruningTest(tf.test.TestCase):

  def test_never_prune_schedule_never_fires(self):
    should_prune, sparsity = pruning.NeverPrune()(tf.constant(10**6, tf.int64))
    self.assertFalse(bool(should_prune))
    self.assertEqual(float(sparsity), 0.0)

  def test_prunable_weights_pairs_kernels_with_masks(self):
    model = _tiny_model()
    pairs = pruning.prunable_weights(model)
    self.assertLen(pairs, 2)
    self.assertEqual(pairs[0].weight.shape, (4, 3))
    self.assertEqual(pairs[0].mask.shape, (4, 3))
    self.assertIn('mask', pairs[1].mask.name)

  def test_masks_set_from_outside_survive_training_steps(self):
    model = _tiny_model()
    pruning.start_pruning_steps(model)
    mask = np.zeros((4, 3), np.float32)
    mask[0, 0] = mask[3, 2] = 1.0
    pruning.set_masks(model, [mask, np.ones((3, 2), np.float32)])
    optimizer = tf.keras.optimizers.SGD(0.1)
    x = tf.random.stateless_normal((8, 4), seed=(1, 2))
    for _ in range(3):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
      optimizer.apply_gradients(
          zip(tape.gradient(loss, model.trainable_variables),
              model.trainable_variables))
    pair = pruning.prunable_weights(model)[0]
    # TF-MOT never rewrote the mask: still exactly the two positions set.
    self.assertAllEqual(pair.mask.numpy(), mask)
    self.assertEqual(int(model.layers[0].pruning_step.numpy()), 3)

  def test_set_masks_zeroes_masked_out_weights(self):
    model = _tiny_model()
    mask = np.eye(4, 3, dtype=np.float32)
    pruning.set_masks(model, [mask, np.ones((3, 2), np.float32)])
    kernel = pruning.prunable_weights(model)[0].weight.numpy()
    self.assertTrue(np.all(kernel[mask == 0] == 0))

  def test_set_masks_wrong_count_raises(self):
    with self.assertRaisesRegex(ValueError, '2 prunable weights, got 1'):
      pruning.set_masks(_tiny_model(), [np.ones((4, 3), np.float32)])

  def test_strip_applies_masks(self):
    model = _tiny_model()
    pair = pruning.prunable_weights(model)[0]
    mask = np.eye(4, 3, dtype=np.float32)
    pair.mask.assign(mask)  # The stored kernel is still dense here.
    stripped = pruning.strip(model)
    self.assertFalse(any(pruning.is_wrapped(l) for l in stripped.layers))
    kernel = stripped.layers[0].kernel.numpy()
    self.assertTrue(np.all(kernel[mask == 0] == 0))
    x = tf.ones((2, 4))
    self.assertAllClose(stripped(x), model(x, training=False))

  def test_wrap_layer_rejects_other_layers(self):
    with self.assertRaisesRegex(TypeError, 'Conv2D'):
      pruning.wrap_layer(tf.keras.layers.Flatten())


if __name__ == '__main__':
  tf.test.main()
