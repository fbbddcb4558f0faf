"""Tests for tff_feddst.process.server_root_step: the server's root step."""

import math

import numpy as np
import tensorflow as tf

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.methods import fed_dst
from tff_feddst.methods import model_setup
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import robust_aggregation as robust_lib
from tff_feddst.process import server_root_step
from tff_feddst.process import update_direction
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib


def partition() -> federated.FederatedData:
  """Three clients with 5, 3 and 4 examples; example i has label i % 10 and
  every pixel equal to i (so a drawn example says where it came from)."""
  labels = np.arange(12) % 10
  images = np.arange(12, dtype=np.float32)[:, None, None, None] * np.ones(
      [12, 28, 28, 1], np.float32)
  dataset = datasets.Dataset('fashion_mnist', images, labels.astype(np.int32),
                             images[:3], labels[:3].astype(np.int32), 10)
  return federated.FederatedData(
      dataset, [np.arange(0, 5), np.arange(5, 8), np.arange(8, 12)],
      [np.arange(0, 1), np.arange(1, 2), np.arange(2, 3)])


class DrawRootSetTest(tf.test.TestCase):

  def test_draws_distinct_examples_of_the_union(self):
    x, y = server_root_step.draw_root_set(partition(), 7, seed=3)
    self.assertEqual(x.shape, (7, 28, 28, 1))
    self.assertEqual(x.dtype, np.float32)
    self.assertEqual(y.dtype, np.int32)
    drawn = x[:, 0, 0, 0].astype(int)
    self.assertLen(set(drawn), 7)
    self.assertTrue(set(drawn) <= set(range(12)))
    # Each image comes with its own label.
    self.assertAllEqual(y, drawn % 10)

  def test_same_seed_same_set_other_seed_other_set(self):
    first, _ = server_root_step.draw_root_set(partition(), 6, seed=3)
    again, _ = server_root_step.draw_root_set(partition(), 6, seed=3)
    other, _ = server_root_step.draw_root_set(partition(), 6, seed=4)
    self.assertAllEqual(first, again)
    self.assertNotAllEqual(first, other)

  def test_all_examples_and_bad_counts(self):
    x, _ = server_root_step.draw_root_set(partition(), 12, seed=0)
    self.assertCountEqual(x[:, 0, 0, 0].astype(int), range(12))
    for count in (0, 13):
      with self.assertRaisesRegex(
          ValueError, rf'^num_examples={count} is invalid: expected an '
          r'integer in \[1, 12\]'):
        server_root_step.draw_root_set(partition(), count, seed=0)


class StepDirectionTest(tf.test.TestCase):

  def test_unit_step_by_hand(self):
    # Reference kernel [1, 0, 0, 2] (mask [1, 0, 0, 1]), bias 0.5; the step
    # moves the kernel to [4, 0, 0, 2] and the bias to 4.5: delta (3, 0, 0,
    # 0) and 4, norm 5.
    reference = robust_lib.Reference(
        kernels=(tf.constant([1., 0., 0., 2.]),),
        masks=(tf.constant([1., 0., 0., 1.]),), dense=(tf.constant([0.5]),))
    direction = update_direction.step_direction(
        [tf.constant([4., 0., 0., 2.])], [tf.constant([4.5])], reference)
    self.assertAllClose(direction.kernels[0], [0.6, 0., 0., 0.])
    self.assertAllClose(direction.dense[0], [0.8])
    still = update_direction.step_direction(
        [tf.constant([1., 0., 0., 2.])], [tf.constant([0.5])], reference)
    self.assertAllEqual(still.kernels[0], [0., 0., 0., 0.])

  def test_cosine_with_the_reference_as_it_is(self):
    # A client's delta (1, 1) on positions 0 and 3; the root step (0.6, 0,
    # 0, 0.8): cos = (0.6 + 0.8) / sqrt(2), the client's own part not taken
    # out. With includes_own the same sum would lose the client's unit
    # delta (s, s) first: (0.6 - s, -, -, 0.8 - s).
    reference = robust_lib.Reference(
        kernels=(tf.constant([1., 0., 0., 2.]),),
        masks=(tf.constant([1., 0., 0., 1.]),), dense=(tf.constant([0.5]),))
    root = update_direction.Direction(
        kernels=(tf.constant([0.6, 0., 0., 0.8]),),
        dense=(tf.constant([0.]),))
    values = [tf.constant([2., 3.])]
    masks = [tf.constant([1., 0., 0., 1.])]
    ref_values = [tf.constant([1., 2.])]
    cosine = update_direction.update_cosine(
        values, reference.dense, ref_values, reference.dense, masks, [2],
        root, includes_own=False)
    self.assertAllClose(cosine, 1.4 / math.sqrt(2), atol=1e-6)
    s = 1 / math.sqrt(2)
    others = np.array([0.6 - s, 0.8 - s])
    expected = others.sum() / (math.sqrt(2) * np.linalg.norm(others))
    self.assertAllClose(update_direction.update_cosine(
        values, reference.dense, ref_values, reference.dense, masks, [2],
        root), expected, atol=1e-6)


def tiny_step(batch_size: int = 4) -> tuple:
  """A root step of the MNIST net on 8 examples, and the initial model."""
  model_fn = models.get_model_fn('mnist_net', seed=0)
  initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
  rng = np.random.default_rng(0)
  root_x = rng.normal(size=(8, 28, 28, 1)).astype(np.float32)
  root_y = rng.integers(0, 10, size=8).astype(np.int32)
  config = client_work.ClientConfig(num_epochs=2, learning_rate=0.05)
  step = server_root_step.ServerRootStep(model_fn, initial.layout, config,
                                         root_x, root_y, batch_size)
  return step, initial


def reference_of(initial) -> robust_lib.Reference:
  weights, layout = initial.weights, initial.layout
  masks = tuple(tf.constant(weights.non_trainable[i], tf.float32)
                for i in layout.mask_indices)
  kernels = tuple(tf.constant(weights.trainable[i], tf.float32) * m
                  for i, m in zip(layout.kernel_indices, masks))
  dense = tuple(
      [tf.constant(weights.trainable[i], tf.float32)
       for i in layout.dense_trainable_indices] +
      [tf.constant(weights.non_trainable[i], tf.float32)
       for i in layout.dense_non_trainable_indices])
  return robust_lib.Reference(kernels=kernels, masks=masks, dense=dense)


class RootDirectionTest(tf.test.TestCase):

  def test_is_the_clients_training_on_the_root_set(self):
    step, initial = tiny_step()
    reference = reference_of(initial)
    direction = step.direction(step.new_trainer(), reference)
    # By hand: the same trainer, stepped eagerly over the root batches
    # (2 epochs of 2 batches of 4, in order), no readjustment.
    trainer = step.new_trainer()
    trainer.set_weights(initial.weights)
    for _ in range(2):
      for start in (0, 4):
        trainer.train_step(step.root_x[start:start + 4],
                           step.root_y[start:start + 4], False)
    layout = trainer.layout
    kernels = [trainer.model.trainable_variables[i].numpy()
               for i in layout.kernel_indices]
    deltas = [k - r.numpy() for k, r in zip(kernels, reference.kernels)]
    dense = ([trainer.model.trainable_variables[i].numpy()
              for i in layout.dense_trainable_indices] +
             [trainer.model.non_trainable_variables[i].numpy()
              for i in layout.dense_non_trainable_indices])
    deltas += [d - r.numpy() for d, r in zip(dense, reference.dense)]
    norm = math.sqrt(sum(float(np.sum(np.square(d.astype(np.float64))))
                         for d in deltas))
    self.assertGreater(norm, 0)
    got = list(direction.kernels) + list(direction.dense)
    for got_part, delta in zip(got, deltas):
      self.assertAllClose(got_part, delta / norm, atol=1e-5)
    total = sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                for g in got)
    self.assertAllClose(total, 1.0, atol=1e-5)
    # Only the global mask trains: the step is zero off it.
    off_mask = np.concatenate([
        np.asarray(kernel)[np.asarray(mask) == 0]
        for kernel, mask in zip(direction.kernels, reference.masks)])
    self.assertGreater(off_mask.size, 200000)
    self.assertAllEqual(off_mask, np.zeros_like(off_mask))

  def test_same_reference_same_bits(self):
    step, initial = tiny_step()
    reference = reference_of(initial)
    trainer = step.new_trainer()
    first = step.direction(trainer, reference)
    second = step.direction(trainer, reference)
    for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second)):
      self.assertAllEqual(a, b)

  def test_bad_root_sets(self):
    step, _ = tiny_step()
    with self.assertRaisesRegex(ValueError, 'as many labels as images'):
      server_root_step.ServerRootStep(step.model_fn, step.layout, step.config,
                                      step.root_x, step.root_y[:3], 4)
    with self.assertRaisesRegex(ValueError, 'batch_size must be >= 1'):
      server_root_step.ServerRootStep(step.model_fn, step.layout, step.config,
                                      step.root_x, step.root_y, 0)
    with self.assertRaisesRegex(ValueError, 'needs min_update_cosine'):
      robust_lib.RobustAggregation(server_root_step=step)


class SettingsTest(tf.test.TestCase):

  def test_flags_build_the_root_step(self):
    settings = settings_lib.ExperimentSettings.from_flat(
        reject_opposed_updates=True, direction_reference='server_root',
        server_root_examples=5, client_batch_size=2).resolved()
    model_fn, initial = model_setup.build_model(settings)
    config = model_setup.build_client_config(settings, initial)
    robust = model_setup.build_robust_aggregation(
        settings, partition(), model_fn, initial, config)
    step = robust.server_root_step
    self.assertEqual(step.num_examples, 5)
    self.assertEqual(step.batch_size, 2)
    self.assertIs(step.config, config)
    self.assertTrue(robust.checks_direction)
    self.assertFalse(robust.sums_unit_deltas)
    expected, _ = server_root_step.draw_root_set(partition(), 5,
                                                 settings.run.seed)
    self.assertAllEqual(step.root_x, expected)
    # The default compares with the round's other clients.
    settings = settings_lib.ExperimentSettings.from_flat(
        reject_opposed_updates=True)
    robust = model_setup.build_robust_aggregation(settings, partition())
    self.assertIsNone(robust.server_root_step)
    self.assertTrue(robust.sums_unit_deltas)

  def test_bad_values_are_one_line_errors(self):
    bad = [
        (dict(reject_opposed_updates=True, server_root_examples=0),
         r'^--server_root_examples=0 is invalid: expected an integer >= 1'),
        (dict(direction_reference='server_root'),
         r"^--direction_reference='server_root' is invalid: expected "
         r'round_others without --reject_opposed_updates'),
    ]
    for flat, message in bad:
      with self.assertRaisesRegex(errors.ConfigError, message) as raised:
        settings_lib.ExperimentSettings.from_flat(**flat).validate()
      self.assertNotIn('\n', str(raised.exception))
    settings = settings_lib.ExperimentSettings.from_flat(
        reject_opposed_updates=True, direction_reference='server_root',
        server_root_examples=13).resolved()
    model_fn, initial = model_setup.build_model(settings)
    config = model_setup.build_client_config(settings, initial)
    with self.assertRaisesRegex(
        errors.ConfigError, r'^--server_root_examples=13 is invalid: '
        r'expected an integer in \[1, 12\] \(the training examples\)\.$'):
      model_setup.build_robust_aggregation(settings, partition(), model_fn,
                                           initial, config)


if __name__ == '__main__':
  tf.test.main()
