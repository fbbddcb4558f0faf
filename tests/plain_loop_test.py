"""Tests for tff_feddst.benchmarks.plain_loop: the plain TF rounds equal the TFF ones."""

import numpy as np
import tensorflow as tf

from tff_feddst.benchmarks import plain_loop
from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import server_root_step
from tff_feddst.running import settings as settings_lib
from tff_feddst.sparse import schedules
from tff_feddst.sparse import sparsity_distribution

NUM_ROUNDS = 3
# The clients' local training in `build_both`.
ROUND_CONFIG = client_work.ClientConfig(num_epochs=2, learning_rate=0.02)


def client_datasets(round_num: int) -> list[tf.data.Dataset]:
  """Two clients; each class is a random pattern plus noise (learnable)."""
  patterns = np.random.default_rng(0).normal(size=(10, 28, 28, 1))
  rng = np.random.default_rng(round_num)
  datasets = []
  for client in range(2):
    labels = rng.choice([client, client + 2, client + 4], size=20)
    images = patterns[labels] + 0.5 * rng.normal(size=(20, 28, 28, 1))
    datasets.append(tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), labels.astype(np.int32))).shuffle(
            20, seed=round_num).batch(8))
  return datasets


def build_both(upload_encoding=None, download_encoding=None, **settings):
  """The TFF process and the plain loop for the same settings.

  `settings` are further keyword arguments of both (`min_votes`,
  `remember_old`, `num_active_by_round`, `payload_checks`).
  """
  model_fn = models.get_model_fn('mnist_net', seed=0)
  initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
  # Readjust in rounds 1 and 3.
  schedule = schedules.ReadjustmentSchedule(
      drop_fraction=0.2, rounds_between_readjustments=2, end_round=10,
      annealing='constant')
  config = ROUND_CONFIG
  element_spec = client_datasets(0)[0].element_spec
  # The plain loop first: it traces its Keras model before TFF does.
  if settings.get('num_active_by_round') == 'growing':
    # From S = 0.8 to 0.9 over rounds 1-3 (ERK), row 0 the initial counts.
    settings['num_active_by_round'] = sparsity_distribution.num_active_by_round(
        initial.layout.kernel_shapes, [0.8, 0.85, 0.9, 0.9], 'erk')
  plain = plain_loop.PlainFedDst(
      model_fn, initial, element_spec, schedule, config,
      server_momentum=0.5, upload_encoding=upload_encoding,
      download_encoding=download_encoding, **settings)
  process = fed_dst.build_fed_dst(
      model_fn, initial, element_spec, schedule, config, server_momentum=0.5,
      upload_encoding=upload_encoding, download_encoding=download_encoding,
      **settings)
  return process, plain, initial


class PlainLoopEqualsTffTest(tf.test.TestCase):

  def assert_same_rounds(self, upload_encoding=None, download_encoding=None,
                         **settings):
    process, plain, initial = build_both(upload_encoding, download_encoding,
                                         **settings)
    tff_state, plain_state = process.initialize(), plain.initialize()
    traces = client_work.update_trace_count()
    self.rejected_by_round = []
    for round_num in range(1, NUM_ROUNDS + 1):
      output = process.next(tff_state, client_datasets(round_num))
      tff_state = output.state
      timer = plain_loop.PhaseTimer()
      plain_state, metrics = plain.next(plain_state,
                                        client_datasets(round_num), timer)
      self.assertCountEqual(timer.seconds, plain_loop.PHASES)
      self.assertEqual(metrics['should_readjust'], round_num != 2)
      self.assertEqual(metrics['upload_bytes'],
                       output.metrics['aggregator']['upload_bytes'])
      self.assertEqual(metrics['download_bytes'],
                       output.metrics['distributor']['download_bytes'])
      self.assertEqual(metrics['num_regrown'],
                       output.metrics['client_work']['num_regrown'])
      self.assertEqual(metrics['mask_changed_positions'],
                       output.metrics['finalizer']['mask_changed_positions'])
      self.assertEqual(metrics['rejected_clients'],
                       output.metrics['aggregator']['rejected_clients'])
      self.rejected_by_round.append(
          (metrics['rejected_clients'], metrics['rejected_direction']))
      self.assertEqual(metrics['server_update_failed'],
                       output.metrics['finalizer']['server_update_failed'])
      self.assertAllClose(metrics['sparsity'],
                          output.metrics['finalizer']['sparsity'])
      self.assertAllClose(metrics['train_loss'],
                          output.metrics['client_work']['train_loss'])
    tff_weights = process.get_model_weights(tff_state)
    plain_weights = plain.get_model_weights(plain_state)
    for index in initial.layout.mask_indices:
      self.assertAllEqual(tff_weights.non_trainable[index],
                          plain_weights.non_trainable[index])
    # Same ops, but local training runs in the TFF worker in one and in
    # this process in the other, where oneDNN picks its kernels for graphs
    # that TFF and tf.function optimise differently: last-bit differences
    # that grow over the rounds (measured after 3 rounds: up to 1.7e-6 on
    # weights of about 0.15 with the default oneDNN kernels, 5e-8 with
    # Eigen's), and float16 values may then round to neighbouring float16
    # numbers. The masks, bytes and counts above are equal.
    float16 = any(e is not None and e.value_dtype == 'float16'
                  for e in (upload_encoding, download_encoding))
    atol, rtol = (1e-5, 1e-3) if float16 else (1e-5, 0)
    for got, want in zip(tff_weights.trainable, plain_weights.trainable):
      self.assertAllClose(got, want, atol=atol, rtol=rtol)
    # Nothing is traced while rounds run, in either path.
    self.assertEqual(client_work.update_trace_count(), traces)
    self.assertEqual(plain.client_update_tracing_count(), 1)
    return metrics

  def test_default_encoding(self):
    self.assert_same_rounds()

  def test_compact_encodings(self):
    metrics = self.assert_same_rounds(
        encoding.PayloadEncoding.parse('float16+rice+changed_masks_only'),
        encoding.PayloadEncoding.parse('float16+rice'))
    self.assertGreater(metrics['mask_changed_positions'], 0)

  def test_remember_old_min_votes_and_norm_bound(self):
    # min_votes=2 of 2 clients: only positions both hold are eligible, so
    # layers may end sparser (checks 'at_most'); every upload is within the
    # norm bound.
    metrics = self.assert_same_rounds(
        remember_old=True, min_votes=2,
        payload_checks=payload_validation.default_checks(
            min_votes=2, max_norm=1e4))
    self.assertEqual(metrics['rejected_clients'], 0)

  def test_new_positions_need_both_clients(self):
    # min_new_position_votes=2 of 2 clients: a position enters the global
    # mask only if both grew it (layers keep their counts: the exact count
    # checks reject nobody); no update fails.
    metrics = self.assert_same_rounds(min_new_position_votes=2)
    self.assertEqual(metrics['rejected_clients'], 0)
    self.assertEqual(metrics['server_update_failed'], 0)

  def test_growing_sparsity_is_refused(self):
    # Not reproduced to the tolerance above (plain_loop module docstring).
    with self.assertRaisesRegex(ValueError,
                                '^PlainFedDst does not reproduce '
                                'num_active_by_round'):
      build_both(num_active_by_round='growing')

  def test_direction_check_against_the_server_root_step(self):
    # The server's root step (`server_root_step`) as the direction check's
    # reference: 12 examples of the six classes the clients hold. A
    # threshold of 0.2 rejects one update, in round 2 (as do 0.1 and 0.3;
    # -1 none), in both paths alike.
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
    patterns = np.random.default_rng(0).normal(size=(10, 28, 28, 1))
    rng = np.random.default_rng(99)
    root_y = np.arange(12) % 6
    root_x = patterns[root_y] + 0.5 * rng.normal(size=(12, 28, 28, 1))
    step = server_root_step.ServerRootStep(
        model_fn, initial.layout, ROUND_CONFIG, root_x.astype(np.float32),
        root_y.astype(np.int32), 8)
    robust = robust_aggregation.RobustAggregation(
        min_update_cosine=0.2, server_root_step=step)
    self.assert_same_rounds(robust=robust)
    self.assertEqual(self.rejected_by_round, [(0, 0), (1, 1), (0, 0)])

  def test_rejected_uploads(self):
    # A norm bound no model meets: every upload is rejected, and both keep
    # the initial model (re-pruned to the round's counts, a no-op here).
    metrics = self.assert_same_rounds(
        payload_checks=payload_validation.PayloadChecks(max_norm=1e-3))
    self.assertEqual(metrics['rejected_clients'], 2)
    self.assertEqual(metrics['mask_changed_positions'], 0)


class UploadHookTest(tf.test.TestCase):

  def test_hook_sees_every_client_and_what_it_returns_is_aggregated(self):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
    schedule = schedules.ReadjustmentSchedule(
        drop_fraction=0.2, rounds_between_readjustments=2, end_round=10,
        annealing='constant')
    plain = plain_loop.PlainFedDst(
        model_fn, initial, client_datasets(0)[0].element_spec, schedule,
        client_work.ClientConfig(num_epochs=1, learning_rate=0.02))
    start = plain.initialize()
    without_hook, metrics = plain.next(start, client_datasets(1))
    seen = []

    def identity(client_index, upload, weight, broadcast):
      seen.append(client_index)
      for got, want in zip(broadcast.trainable, start.weights.trainable):
        self.assertAllEqual(got, want)
      self.assertIsInstance(weight, np.float32)
      return [(upload, weight)]

    with_identity, identity_metrics = plain.next(start, client_datasets(1),
                                                 upload_hook=identity)
    self.assertEqual(seen, [0, 1])
    self.assertEqual(identity_metrics, metrics)
    for got, want in zip(with_identity.weights.trainable,
                         without_hook.weights.trainable):
      self.assertAllEqual(got, want)
    # Client 1 sends nothing, client 0 twice: two accepted uploads of its.
    uploads = []

    def doubled(client_index, upload, weight, broadcast):
      del broadcast
      uploads.append(upload)
      return [(upload, weight)] * 2 if client_index == 0 else []

    _, doubled_metrics = plain.next(start, client_datasets(1),
                                    upload_hook=doubled)
    self.assertEqual(doubled_metrics['rejected_clients'], 0)
    # Bitmap uploads at exact counts all have the same size: 2 of them.
    self.assertEqual(doubled_metrics['upload_bytes'], metrics['upload_bytes'])
    self.assertLen(uploads, 2)
    for kind in payload_validation.REJECTION_KINDS:
      self.assertEqual(doubled_metrics[f'rejected_{kind}'], 0)


if __name__ == '__main__':
  tf.test.main()
