"""Tests for tff_feddst.networks.models: architectures, layout, seeding."""

import numpy as np
import tensorflow as tf

from tff_feddst.networks import models
from tff_feddst.networks import pruning


class ModelsTest(tf.test.TestCase):

  def test_mnist_net_matches_the_paper(self):
    model = models.mnist_net(seed=0)
    layout = models.model_layout(model)
    # conv5 1->10, conv5 10->20, dense 20*16*16=5120 -> 50, dense 50 -> 10.
    self.assertEqual(layout.kernel_shapes,
                     ((5, 5, 1, 10), (5, 5, 10, 20), (5120, 50), (50, 10)))
    self.assertEqual(layout.layer_bias_sizes, (10, 20, 50, 10))
    # 250+10 + 5000+20 + 256000+50 + 500+10 trainable parameters.
    self.assertEqual(
        sum(int(np.prod(v.shape)) for v in model.trainable_variables), 261840)
    self.assertEqual(model(tf.zeros((2, 28, 28, 1))).shape, (2, 10))

  def test_cifar_nets_shapes(self):
    cifar10 = models.model_layout(models.cifar10_net(seed=0))
    self.assertEqual(cifar10.kernel_shapes,
                     ((5, 5, 3, 6), (5, 5, 6, 16), (6400, 120), (120, 84),
                      (84, 10)))
    cifar100 = models.model_layout(models.cifar100_net(seed=0))
    self.assertEqual(cifar100.kernel_shapes[-1], (120, 100))

  def test_layout_roles_partition_the_variables(self):
    model = models.mnist_net(seed=0)
    layout = models.model_layout(model)
    self.assertEqual(
        sorted(layout.kernel_indices + layout.dense_trainable_indices),
        list(range(len(model.trainable_variables))))
    self.assertEqual(
        sorted(layout.mask_indices + layout.bookkeeping_indices +
               layout.dense_non_trainable_indices),
        list(range(len(model.non_trainable_variables))))
    for kernel_index, mask_index in zip(layout.kernel_indices,
                                        layout.mask_indices):
      self.assertEqual(model.trainable_variables[kernel_index].shape,
                       model.non_trainable_variables[mask_index].shape)

  def test_every_kernel_is_wrapped(self):
    model = models.cifar10_net(seed=0)
    self.assertLen(pruning.prunable_weights(model), 5)

  def test_same_seed_same_weights(self):
    first = models.get_model_fn('mnist_net', seed=3)()
    second = models.get_model_fn('mnist_net', seed=3)()
    other = models.get_model_fn('mnist_net', seed=4)()
    for a, b in zip(first.trainable_variables, second.trainable_variables):
      self.assertAllEqual(a, b)
    self.assertNotAllClose(first.trainable_variables[0],
                           other.trainable_variables[0])

  def test_pytorch_default_init_bounds(self):
    model = models.mnist_net(seed=0)
    dense_kernel = model.trainable_variables[4].numpy()
    # U(-1/sqrt(5120), 1/sqrt(5120)).
    self.assertLessEqual(np.abs(dense_kernel).max(), 1 / np.sqrt(5120))

  def test_unknown_model_raises(self):
    with self.assertRaisesRegex(ValueError, 'Unknown model .*mnist_net'):
      models.get_model_fn('resnet')


if __name__ == '__main__':
  tf.test.main()
