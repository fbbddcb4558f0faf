"""Tests for tff_feddst.networks.flops: FLOPs counted by hand on a tiny net."""

import numpy as np
import tensorflow as tf

from tff_feddst.networks import flops
from tff_feddst.networks import models
from tff_feddst.networks import pruning


def tiny_net() -> tf.keras.Model:
  """6x6x2 -> conv 3x3, 3 filters (valid) -> 4x4x3 -> flatten 48 -> dense 5."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(6, 6, 2)),
      pruning.wrap_layer(tf.keras.layers.Conv2D(3, 3)),
      tf.keras.layers.Flatten(),
      pruning.wrap_layer(tf.keras.layers.Dense(5)),
  ])


class FlopsTest(tf.test.TestCase):

  def test_tiny_net_by_hand(self):
    model = tiny_net()
    layout = models.model_layout(model)
    # Conv kernel 3*3*2*3 = 54 entries, each used at 4*4 = 16 output
    # positions: 864 multiply-adds. Dense kernel 48*5 = 240 entries, each
    # used once: 240. Dense forward: 2 * (864 + 240) = 2208 FLOPs.
    self.assertEqual(layout.kernel_sizes, (54, 240))
    uses = flops.kernel_uses(model)
    self.assertEqual(uses, (16, 1))
    self.assertEqual(flops.forward_flops(uses, layout.kernel_sizes), 2208)
    # Masks: 27 of 54 conv entries (density 0.5), 60 of 240 dense entries
    # (density 0.25): 2 * (16 * 27 + 60) = 2 * 492 = 984 FLOPs.
    conv_mask = np.zeros(54, np.float32)
    conv_mask[::2] = 1
    dense_mask = np.zeros(240, np.float32)
    dense_mask[::4] = 1
    masks = [conv_mask.reshape(3, 3, 2, 3), dense_mask.reshape(48, 5)]
    pruning.set_masks(model, masks)
    active = tuple(int(np.count_nonzero(p.mask.numpy()))
                   for p in pruning.prunable_weights(model))
    self.assertEqual(active, (27, 60))
    self.assertEqual(flops.forward_flops(uses, active), 984)
    # 10 examples, 4 of them also with the dense weight gradient:
    # sparse = 3 * 984 * 10 + (2208 - 984) * 4 = 29520 + 4896 = 34416;
    # dense = 3 * 2208 * 10 = 66240.
    self.assertEqual(
        flops.training_flops(uses, active, layout.kernel_sizes, 10, 4),
        flops.TrainingFlops(sparse=34416, dense=66240))
    # Density 1: the sparse count is the dense one.
    full = flops.training_flops(uses, layout.kernel_sizes,
                                layout.kernel_sizes, 10, 4)
    self.assertEqual(full.sparse, full.dense)

  def test_mnist_net_dense_forward(self):
    # conv1 24*24*(5*5*1*10) + conv2 18*18*(5*5*10*20) + 5120*50 + 50*10
    # = 144000 + 1620000 + 256000 + 500 = 2020500 multiply-adds.
    model = models.mnist_net(seed=0)
    uses = flops.kernel_uses(model)
    self.assertEqual(uses, (576, 324, 1, 1))
    self.assertEqual(flops.forward_flops(
        uses, models.model_layout(model).kernel_sizes), 2 * 2020500)

  def test_bad_counts_raise(self):
    with self.assertRaisesRegex(ValueError, '2 prunable layers but 1'):
      flops.forward_flops((16, 1), (27,))
    with self.assertRaisesRegex(ValueError, r'active counts \[55, 60\]'):
      flops.training_flops((16, 1), (55, 60), (54, 240), 10)
    with self.assertRaisesRegex(ValueError, 'dense_gradient_examples=11'):
      flops.training_flops((16, 1), (27, 60), (54, 240), 10, 11)

  def test_other_layer_types_are_refused(self):
    model = tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(6, 6, 2)),
        pruning.wrap_layer(tf.keras.layers.Conv2D(2, 3, groups=2)),
    ])
    with self.assertRaisesRegex(ValueError, 'Conv2D.*groups=1.*Dense'):
      flops.kernel_uses(model)


if __name__ == '__main__':
  tf.test.main()
