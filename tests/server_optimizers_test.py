"""Tests for tff_feddst.process.server_optimizers: Adam/Yogi steps by hand."""

import collections
import os

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import experiment_test
from tests import finalizer_test
from tests import fixtures
from tff_feddst.outputs import run_files
from tff_feddst.process import finalizer
from tff_feddst.process import server_optimizers
from tff_feddst.process import server_step
from tff_feddst.running import experiment

LAYOUT = finalizer_test.LAYOUT
LR, BETA_1, BETA_2, EPSILON = 0.1, 0.9, 0.99, 1e-3


def run_update(optimizer_name, state=None, weights=None, aggregate=None,
               num_active=(2,)):
  """One server step of the hand model with an adaptive optimizer."""
  optimizer = server_optimizers.build_server_optimizer(
      optimizer_name, LR, BETA_1, BETA_2, EPSILON)
  update = finalizer.server_update_fn(LAYOUT, num_active,
                                      server_optimizer=optimizer)
  weights = weights or finalizer_test.global_weights()
  if state is None:
    state = finalizer.initial_finalizer_state(
        [((4,), tf.float32), ((1,), tf.float32)], optimizer)
  return update(state, tff.learning.models.ModelWeights(
      trainable=[tf.constant(t) for t in weights.trainable],
      non_trainable=[tf.constant(t) for t in weights.non_trainable]),
                aggregate or finalizer_test.hand_aggregate())


class AdaptiveStepTest(tf.test.TestCase):
  """The hand aggregate: kernel [1, 2, 0, 0] on mask [1, 1, 0, 0], bias 0.

  Targets (finalizer_test): 7/3, 3.5, 7.2, 0; bias 15/6 = 2.5. Pseudo-
  gradients g = w - target on the mask: -4/3, -1.5 (p2, p3: 0, outside);
  bias -2.5. Step 1: normalized lr = 0.1 * sqrt(1 - 0.99) / (1 - 0.9) = 0.1.
  """

  def test_one_adam_step_by_hand(self):
    new_state, new_weights, measurements = run_update('adam')
    # a = 0.1 g, p = 0.01 g^2, so a / (sqrt(p) + eps) = 0.1 g / (0.1 |g| +
    # 0.001): p0 -0.133333 / 0.134333 = -0.992556, w = 1.0992556; p1 -0.15 /
    # 0.151 = -0.993377, w = 2.0993377; bias -0.25 / 0.251, b = 0.0996016.
    # p2 enters with its average 7.2 (no step from 0). Re-prune to 2 by
    # |w|: 7.2 (p2) and 2.0993 (p1); p0 leaves.
    self.assertAllClose(new_weights.trainable[0],
                        [0., 2.0993377, 7.2, 0.], atol=1e-6)
    self.assertAllClose(new_weights.trainable[1], [0.0996016], atol=1e-6)
    self.assertAllEqual(new_weights.non_trainable[0], [0., 1., 1., 0.])
    self.assertEqual(int(measurements['mask_changed_positions']), 2)
    state = new_state.optimizer_state
    self.assertEqual(int(state['step']), 1)
    # p0 left the mask: its state is reset to 0; p1 keeps 0.1 g and
    # 0.01 g^2; p2 entered with the initial (zero) state; bias kept.
    self.assertAllClose(state['accumulator'][0], [0., -0.15, 0., 0.])
    self.assertAllClose(state['preconditioner'][0], [0., 0.0225, 0., 0.])
    self.assertAllClose(state['accumulator'][1], [-0.25])
    self.assertAllClose(state['preconditioner'][1], [0.0625])

  def test_entered_position_starts_from_the_initial_state(self):
    state, weights, _ = run_update('adam')
    # Round 2: p2's target 8.2 (g = 7.2 - 8.2 = -1); p1 and the bias get
    # their own values back (g = 0). p2's state was the initial one, so
    # a = 0.1 * -1, p = 0.01; normalized lr at step 2 = 0.1 *
    # sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.0742460; w = 7.2 + 0.0742460 *
    # 0.1 / (0.1 + 0.001) = 7.2735109.
    kernel = weights.trainable[0].numpy()
    aggregate = finalizer_test.hand_aggregate()._replace(
        weighted_kernel_sums=(np.array([0., kernel[1], 8.2, 0.], np.float32),),
        weighted_votes=(np.array([0., 1., 1., 0.], np.float32),),
        votes=(np.array([0., 2., 2., 0.], np.float32),),
        weighted_dense_sums=(weights.trainable[1].numpy() * 6,))
    new_state, new_weights, _ = run_update('adam', state, weights, aggregate)
    self.assertAllClose(new_weights.trainable[0][2], 7.2735109, atol=1e-5)
    self.assertAllClose(new_state.optimizer_state['accumulator'][0][2], -0.1)
    self.assertAllClose(new_state.optimizer_state['preconditioner'][0][2],
                        0.01)
    # p1 (g = 0) decays: a = -0.15 * 0.9, p = 0.0225 * 0.99.
    self.assertAllClose(new_state.optimizer_state['accumulator'][0][1],
                        -0.135)
    self.assertAllClose(new_state.optimizer_state['preconditioner'][0][1],
                        0.022275)

  def test_one_yogi_step_by_hand(self):
    new_state, new_weights, _ = run_update('yogi')
    # a = 0.1 g; p = 1e-6 + 0.01 * sign(g^2 - 1e-6) * g^2 = 1e-6 + 0.01 g^2:
    # p0 0.01777878, sqrt + eps 0.1343371, ratio -0.9925418; p1 0.022501,
    # 0.1510033, -0.9933556, w = 2.0993356; bias 0.062501, 0.2510020,
    # -0.9960080, b = 0.0996008.
    self.assertAllClose(new_weights.trainable[0],
                        [0., 2.0993356, 7.2, 0.], atol=1e-6)
    self.assertAllClose(new_weights.trainable[1], [0.0996008], atol=1e-6)
    state = new_state.optimizer_state
    # Off the new mask [0, 1, 1, 0] the preconditioner is Yogi's initial
    # 1e-6 (p0 left: reset; p2 entered and p3: never stepped), not 0.
    self.assertAllClose(state['preconditioner'][0],
                        [1e-6, 0.022501, 1e-6, 1e-6], rtol=1e-5)
    self.assertAllClose(state['accumulator'][0], [0., -0.15, 0., 0.])

  def test_adagrad_step_and_reset(self):
    new_state, new_weights, _ = run_update('adagrad')
    # p = 0.1 + g^2; w = w - 0.1 g / sqrt(p + 1e-3): p1 2.35, sqrt(2.351) =
    # 1.5332971, w = 2 + 0.15 / 1.5332971 = 2.0978286.
    self.assertAllClose(new_weights.trainable[0][1], 2.0978286, atol=1e-6)
    self.assertAllClose(new_state.optimizer_state['preconditioner'][0],
                        [0.1, 2.35, 0.1, 0.1])

  def test_no_clients_changes_nothing(self):
    state, weights, _ = run_update('adam')
    new_state, new_weights, _ = run_update(
        'adam', state, weights, finalizer_test.hand_aggregate(0.0))
    self.assertAllEqual(new_weights.trainable[0], weights.trainable[0])
    for key in ('accumulator', 'preconditioner'):
      self.assertAllEqual(new_state.optimizer_state[key][0],
                          state.optimizer_state[key][0])
    self.assertEqual(int(new_state.optimizer_state['step']), 1)

  def test_non_finite_step_keeps_the_old_state(self):
    state, weights, _ = run_update('adam')
    aggregate = finalizer_test.hand_aggregate()._replace(
        weighted_dense_sums=(np.array([np.nan], np.float32),))
    new_state, new_weights, measurements = run_update('adam', state, weights,
                                                      aggregate)
    self.assertEqual(int(measurements['server_update_failed']), 1)
    self.assertAllEqual(new_weights.trainable[0], weights.trainable[0])
    self.assertAllEqual(new_state.optimizer_state['accumulator'][1],
                        state.optimizer_state['accumulator'][1])

  def test_momentum_buffers_are_tffs_sgdm_bit_for_bit(self):
    # sgd/sgdm are the finalizer's buffers: buffer = -accumulator of
    # build_sgdm, and the same weights on the kept positions.
    buffers = [np.array([1., 1., 0., 0.], np.float32),
               np.array([0.5], np.float32)]
    new_buffers, new_weights, _ = server_step.apply_aggregate(
        buffers, finalizer_test.global_weights(),
        finalizer_test.hand_aggregate(), LAYOUT, (2,), 0.5, 0.5)
    sgdm = tff.learning.optimizers.build_sgdm(learning_rate=0.5,
                                              momentum=0.5)
    # Targets 7/3, 14/4, 36/5, 0 (nobody holds p3) and 15/6, in float32.
    kernel_target = (finalizer_test.hand_aggregate().weighted_kernel_sums[0] /
                     np.array([3., 4., 5., 1.], np.float32))
    kernel_target[3] = 0.
    targets = [kernel_target, np.float32([15.]) / np.float32(6.)]
    weights = [tf.constant(w) for w in
               finalizer_test.global_weights().trainable]
    state = sgdm.initialize(tuple(tf.TensorSpec(w.shape) for w in weights))
    state['accumulator'] = tuple(tf.constant(-b) for b in buffers)
    state, stepped = sgdm.next(state, tuple(weights),
                               tuple(w - t for w, t in zip(weights, targets)))
    mask = new_weights.non_trainable[0]
    self.assertAllEqual(new_weights.trainable[0], stepped[0] * mask)
    self.assertAllEqual(new_weights.trainable[1], stepped[1])
    self.assertAllEqual(new_buffers[0], -state['accumulator'][0] * mask)
    self.assertAllEqual(new_buffers[1], -state['accumulator'][1])


class BuildTest(tf.test.TestCase):

  def test_sgd_and_sgdm_build_no_optimizer(self):
    for name in ('sgd', 'sgdm'):
      self.assertIsNone(server_optimizers.build_server_optimizer(
          name, 1.0, 0.9, 0.99, 1e-3))
    with self.assertRaisesRegex(ValueError, 'server optimizer'):
      server_optimizers.build_server_optimizer('rmsprop', 1.0, 0.9, 0.99,
                                               1e-3)

  def test_reset_off_masks_restores_initial_values(self):
    optimizer = server_optimizers.build_server_optimizer(
        'yogi', LR, BETA_1, BETA_2, EPSILON)
    initial = server_optimizers.initial_state(optimizer, [((3,), tf.float32)])
    state = collections.OrderedDict(initial)
    state['step'] = tf.constant(7)
    state['accumulator'] = (tf.constant([1., 2., 3.]),)
    state['preconditioner'] = (tf.constant([4., 5., 6.]),)
    reset = server_optimizers.reset_off_masks(
        state, initial, {0: tf.constant([1., 0., 1.])})
    self.assertAllEqual(reset['accumulator'][0], [1., 0., 3.])
    self.assertAllClose(reset['preconditioner'][0], [4., 1e-6, 6.])
    self.assertEqual(int(reset['step']), 7)

  def test_finalizer_process_carries_the_state(self):
    optimizer = server_optimizers.build_server_optimizer(
        'adam', LR, BETA_1, BETA_2, EPSILON)
    process = finalizer_test.build(server_optimizer=optimizer)
    output = process.next(process.initialize(),
                          finalizer_test.global_weights(),
                          finalizer_test.hand_aggregate())
    # As the plain step above.
    self.assertAllClose(output.result.trainable[0], [0., 2.0993377, 7.2, 0.],
                        atol=1e-6)
    self.assertEqual(output.state.optimizer_state['step'], 1)
    self.assertAllClose(output.state.optimizer_state['accumulator'][0],
                        [0., -0.15, 0., 0.])


class AdaptiveResumeTest(fixtures.FashionMnistSliceTestCase):

  def test_resume_continues_with_the_checkpointed_optimizer_state(self):
    root = self.create_tempdir().full_path
    config = experiment_test.small_config(
        self.data_dir, total_rounds=4, eval_every=4, checkpoint_every=2,
        tensorboard_dir='', server_optimizer='adam',
        server_learning_rate=0.01)
    whole = os.path.join(root, 'whole')
    experiment.run_experiment(config, whole)
    # Killed after round 3 (last checkpoint: round 2's); rounds 3 and 4
    # need round 2's Adam moments and step to come out the same.
    killed = os.path.join(root, 'killed')
    fixtures.copy_killed_before_round_4(whole, killed)
    experiment.run_experiment(config, killed, resume=True)
    self.assertEqual(experiment_test.metrics_without_timing(killed),
                     experiment_test.metrics_without_timing(whole))
    resumed, original = (
        run_files.load_model_weights(os.path.join(d, 'global_model.npz'))
        for d in (killed, whole))
    for a, b in zip(resumed.trainable + resumed.non_trainable,
                    original.trainable + original.non_trainable):
      self.assertAllEqual(a, b)


if __name__ == '__main__':
  tf.test.main()
