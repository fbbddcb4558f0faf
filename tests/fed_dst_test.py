"""End-to-end tests of the FedDST LearningProcess on small synthetic data."""

import numpy as np
import tensorflow as tf

from tests import process_contract
from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import aggregator_feedback
from tff_feddst.process import encoding
from tff_feddst.process import robust_aggregation
from tff_feddst.sparse import schedules
from tff_feddst.sparse import sparsity_distribution

NUM_CLIENTS = 3


def learnable_client_data(seed: int) -> list[tf.data.Dataset]:
  """Each class is a fixed random 28x28 pattern plus noise: easy to learn."""
  rng = np.random.default_rng(0)
  patterns = rng.normal(size=(10, 28, 28, 1)).astype(np.float32)
  rng = np.random.default_rng(seed)
  datasets = []
  for client in range(NUM_CLIENTS):
    labels = rng.choice([client, client + 3, client + 6], size=24)
    images = patterns[labels] + 0.5 * rng.normal(size=(24, 28, 28, 1))
    datasets.append(tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), labels.astype(np.int32))).batch(8))
  return datasets


def build(target_sparsity=0.8, drop_fraction=0.3, seed=0,
          rounds_between_readjustments=1, **encodings):
  model_fn = models.get_model_fn('mnist_net', seed=seed)
  initial = fed_dst.build_initial_model(model_fn, target_sparsity, 'erk',
                                        seed=seed)
  schedule = schedules.ReadjustmentSchedule(
      drop_fraction=drop_fraction,
      rounds_between_readjustments=rounds_between_readjustments,
      end_round=10, annealing='constant')
  config = client_work.ClientConfig(num_epochs=2, learning_rate=0.02)
  process = fed_dst.build_fed_dst(
      model_fn, initial, learnable_client_data(0)[0].element_spec, schedule,
      config, **encodings)
  return process, initial


def run_rounds(process, num_rounds):
  state = process.initialize()
  metrics = []
  for round_num in range(num_rounds):
    output = process.next(state, learnable_client_data(round_num))
    state = output.state
    metrics.append(output.metrics)
  return state, metrics


class FedDstProcessTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.process, cls.initial = build()
    cls.state, cls.metrics = run_rounds(cls.process, 3)

  def test_loss_decreases(self):
    losses = [float(m['client_work']['train_loss']) for m in self.metrics]
    self.assertLess(losses[-1], losses[0])

  def test_meets_the_measurement_contract(self):
    process_contract.assert_meets_measurement_contract(
        self, self.process, self.metrics)

  def test_exact_nnz_per_layer_and_masked_weights_zero(self):
    weights = self.process.get_model_weights(self.state)
    layout = self.initial.layout
    for kernel_index, mask_index, count in zip(
        layout.kernel_indices, layout.mask_indices, self.initial.num_active):
      kernel = weights.trainable[kernel_index]
      mask = weights.non_trainable[mask_index]
      self.assertEqual(int(mask.sum()), count)
      self.assertTrue(np.all(kernel[mask == 0] == 0))
    for m in self.metrics:
      self.assertEqual(tuple(m['finalizer']['layer_num_active']),
                       self.initial.num_active)

  def test_mask_moves_on_readjustment_rounds(self):
    for m in self.metrics:
      self.assertTrue(m['client_work']['should_readjust'])
      self.assertGreater(m['client_work']['num_regrown'], 0)
      self.assertGreater(m['finalizer']['mask_changed_positions'], 0)

  def test_measured_bytes_equal_analytic(self):
    layout = self.initial.layout
    per_message = encoding.analytic_num_bytes(
        self.initial.num_active, layout.kernel_sizes,
        sum(layout.layer_bias_sizes))
    for m in self.metrics:
      self.assertEqual(m['distributor']['download_bytes'],
                       NUM_CLIENTS * per_message)
      # Each upload also carries its float32 example count.
      self.assertEqual(m['aggregator']['upload_bytes'],
                       NUM_CLIENTS * (per_message + 4))

  def test_identical_seeds_identical_results(self):
    state, metrics = run_rounds(self.process, 3)
    tf.nest.map_structure(self.assertAllEqual, metrics, self.metrics)
    tf.nest.map_structure(self.assertAllEqual,
                          self.process.get_model_weights(state),
                          self.process.get_model_weights(self.state))


class BaselinesFromTheSameProcessTest(tf.test.TestCase):

  def test_zero_sparsity_is_dense_fedavg(self):
    process, initial = build(target_sparsity=0.0)
    state, metrics = run_rounds(process, 2)
    weights = process.get_model_weights(state)
    for mask_index in initial.layout.mask_indices:
      self.assertTrue(np.all(weights.non_trainable[mask_index] == 1))
    self.assertEqual(metrics[-1]['finalizer']['sparsity'], 0.0)
    self.assertEqual(metrics[-1]['finalizer']['mask_changed_positions'], 0)

  def test_zero_drop_fraction_is_random_mask(self):
    process, initial = build(drop_fraction=0.0)
    state, metrics = run_rounds(process, 2)
    weights = process.get_model_weights(state)
    for mask_index in initial.layout.mask_indices:
      self.assertAllEqual(weights.non_trainable[mask_index],
                          initial.weights.non_trainable[mask_index])
    for m in metrics:
      self.assertFalse(m['client_work']['should_readjust'])
      self.assertEqual(m['finalizer']['mask_changed_positions'], 0)


class EncodingsTest(tf.test.TestCase):

  def test_compact_encodings_bytes_and_invariants(self):
    upload = encoding.PayloadEncoding.parse('float16+rice+changed_masks_only')
    download = encoding.PayloadEncoding.parse('float16+rice')
    # Round 1 readjusts, round 2 does not.
    process, initial = build(rounds_between_readjustments=2,
                             upload_encoding=upload,
                             download_encoding=download)
    layout, num_active = initial.layout, initial.num_active
    state = process.initialize()
    for round_num in range(2):
      global_weights = process.get_model_weights(state)
      output = process.next(state, learnable_client_data(round_num))
      state = output.state
      metrics = output.metrics
      # The broadcast, measured from the tensors each client received.
      broadcast = client_work.encode_weights(
          global_weights, layout, num_active, payload_encoding=download)
      self.assertEqual(metrics['distributor']['download_bytes'],
                       NUM_CLIENTS * int(encoding.payload_num_bytes(broadcast)))
      # float16 values, biases, code length and example count, per client.
      no_masks = 2 * sum(num_active) + 4 * 90 + 4 + 4
      upload_bytes = metrics['aggregator']['upload_bytes']
      if round_num == 0:
        self.assertTrue(metrics['client_work']['should_readjust'])
        self.assertGreater(metrics['finalizer']['mask_changed_positions'], 0)
        # Rice-coded masks, smaller than bitmaps (32,657 bytes each).
        self.assertBetween(upload_bytes - NUM_CLIENTS * no_masks,
                           NUM_CLIENTS * 20000, NUM_CLIENTS * 32657)
      else:
        self.assertFalse(metrics['client_work']['should_readjust'])
        self.assertEqual(upload_bytes, NUM_CLIENTS * no_masks)
      self.assertEqual(tuple(metrics['finalizer']['layer_num_active']),
                       num_active)
    weights = process.get_model_weights(state)
    for kernel_index, mask_index in zip(layout.kernel_indices,
                                        layout.mask_indices):
      mask = weights.non_trainable[mask_index]
      self.assertTrue(np.all(weights.trainable[kernel_index][mask == 0] == 0))

  def test_download_encoding_cannot_leave_masks_out(self):
    with self.assertRaisesRegex(ValueError, 'always carries the masks'):
      build(download_encoding=encoding.PayloadEncoding(
          masks_only_when_changed=True))


class RobustAggregationTest(tf.test.TestCase):
  """Clipped deltas and capped weights in the composed process."""

  def test_bounds_that_no_honest_client_reaches_change_nothing(self):
    # Multiplier 100 on the median and a cap above every client's 24
    # examples: nothing is clipped or capped, the bits are today's.
    robust = robust_aggregation.RobustAggregation(
        clip_norm_multiplier=100.0, max_client_weight=24.0)
    process, _ = build(robust=robust)
    plain_process, _ = build()
    state, metrics = run_rounds(process, 2)
    plain_state, plain_metrics = run_rounds(plain_process, 2)
    tf.nest.map_structure(self.assertAllEqual,
                          process.get_model_weights(state),
                          plain_process.get_model_weights(plain_state))
    for m, plain in zip(metrics, plain_metrics):
      self.assertEqual(m['aggregator']['clipped_clients'], 0)
      self.assertEqual(m['aggregator']['capped_weights'], 0)
      self.assertEqual(m['client_work']['train_loss'],
                       plain['client_work']['train_loss'])

  def test_reference_follows_the_global_model(self):
    # Uploads are bound to their round too: every honest client's digest
    # of the model it received matches the aggregator's reference.
    robust = robust_aggregation.RobustAggregation(clip_norm_multiplier=1.0,
                                                  reject_stale=True)
    process, initial = build(robust=robust)
    state = process.initialize()
    layout, num_active = initial.layout, initial.num_active

    def assert_reference_is_model(state):
      weights = process.get_model_weights(state)
      expected = aggregator_feedback.reference_of_weights(
          weights, layout, num_active)
      tf.nest.map_structure(self.assertAllEqual, state.aggregator.reference,
                            expected)

    assert_reference_is_model(state)
    output = process.next(state, learnable_client_data(0))
    # With the median as the bound, the clients above it were clipped.
    self.assertGreater(output.metrics['aggregator']['clipped_clients'], 0)
    self.assertGreater(output.metrics['aggregator']['update_norm_bound'], 0)
    self.assertEqual(output.metrics['aggregator']['rejected_clients'], 0)
    self.assertEqual(output.metrics['aggregator']['num_clients'],
                     NUM_CLIENTS)
    assert_reference_is_model(output.state)
    # The next round's clients answer the new model: none is stale.
    output = process.next(output.state, learnable_client_data(1))
    self.assertEqual(output.metrics['aggregator']['rejected_clients'], 0)
    reset = process.set_model_weights(output.state, initial.weights)
    assert_reference_is_model(reset)


class GrowingSparsityAndRememberOldTest(tf.test.TestCase):
  """--initial_sparsity (a per-round count table) and --remember_old."""

  def build_growing(self, **kwargs):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    # S_t = 0.5, 0.6, 0.7, 0.8 for t = 0..3; ERK leaves the first conv
    # dense at 0.5, so its mask must be sent once it thins.
    table = sparsity_distribution.num_active_by_round(
        models.model_layout(model_fn()).kernel_shapes,
        schedules.SparsitySchedule(0.5, 0.8, 3).sparsities(), 'erk')
    initial = fed_dst.build_initial_model(model_fn, 0.5, 'erk', seed=0)
    schedule = schedules.ReadjustmentSchedule(0.3, 1, 10, 'constant')
    config = client_work.ClientConfig(num_epochs=2, learning_rate=0.02)
    process = fed_dst.build_fed_dst(
        model_fn, initial, learnable_client_data(0)[0].element_spec, schedule,
        config, num_active_by_round=table, **kwargs)
    return process, initial, table

  def test_global_counts_follow_the_table_every_round(self):
    process, initial, table = self.build_growing()
    self.assertEqual(tuple(table[0]), initial.num_active)
    self.assertEqual(table[0][0], 250)  # Dense first conv at S = 0.5.
    self.assertLess(table[3][0], 250)
    state = process.initialize()
    layout = initial.layout
    for round_num in range(1, 6):  # Rounds 4 and 5 stay at row 3.
      output = process.next(state, learnable_client_data(round_num))
      state = output.state
      expected = tuple(int(n) for n in table[min(round_num, 3)])
      self.assertEqual(
          tuple(output.metrics['finalizer']['layer_num_active']), expected)
      # Every client's sparser upload passed validation and was averaged.
      self.assertEqual(output.metrics['finalizer']['num_clients_aggregated'],
                       NUM_CLIENTS)
      weights = process.get_model_weights(state)
      for kernel_index, mask_index, count in zip(
          layout.kernel_indices, layout.mask_indices, expected):
        mask = weights.non_trainable[mask_index]
        self.assertEqual(int(mask.sum()), count)
        self.assertTrue(np.all(weights.trainable[kernel_index][mask == 0] == 0))
    self.assertEqual(int(state.finalizer.round_num), 5)

  def test_reference_readjust_rule_is_refused(self):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    table = np.array([[10, 20, 30, 40], [5, 20, 30, 40]])
    initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)
    table[0] = initial.num_active
    table[1] = np.array(initial.num_active) - 1
    config = client_work.ClientConfig(readjust_rule='reference',
                                      reference_keep_after_prune=(1, 1, 1, 1))
    schedule = schedules.ReadjustmentSchedule(0.3, 1, 10)
    with self.assertRaisesRegex(ValueError, 'reference'):
      fed_dst.build_fed_dst(model_fn, initial,
                            learnable_client_data(0)[0].element_spec,
                            schedule, config, num_active_by_round=table)
    with self.assertRaisesRegex(ValueError, 'starts at'):
      fed_dst.build_fed_dst(model_fn, initial,
                            learnable_client_data(0)[0].element_spec,
                            schedule, client_work.ClientConfig(),
                            num_active_by_round=table[1:])

  def test_remember_old_runs_with_masks_left_out_of_uploads(self):
    # The expanding finalizer: remember_old sees the implied masks too.
    upload = encoding.PayloadEncoding.parse('float32+rice+changed_masks_only')
    process, initial, table = self.build_growing(upload_encoding=upload,
                                                 remember_old=True)
    state, metrics = run_rounds(process, 2)
    for round_num, m in enumerate(metrics, start=1):
      self.assertEqual(tuple(m['finalizer']['layer_num_active']),
                       tuple(int(n) for n in table[round_num]))
      self.assertEqual(m['finalizer']['num_clients_aggregated'], NUM_CLIENTS)
    self.assertTrue(np.all(np.isfinite(
        process.get_model_weights(state).trainable[0])))


class InitialModelTest(tf.test.TestCase):

  def test_initial_masks_are_seeded_with_exact_counts(self):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    first = fed_dst.build_initial_model(model_fn, 0.9, 'uniform', seed=5)
    second = fed_dst.build_initial_model(model_fn, 0.9, 'uniform', seed=5)
    other = fed_dst.build_initial_model(model_fn, 0.9, 'uniform', seed=6)
    layout = first.layout
    for position, mask_index in enumerate(layout.mask_indices):
      mask = first.weights.non_trainable[mask_index]
      self.assertEqual(int(mask.sum()),
                       round(0.1 * layout.kernel_sizes[position]))
      self.assertAllEqual(mask, second.weights.non_trainable[mask_index])
    self.assertNotAllEqual(first.weights.non_trainable[layout.mask_indices[2]],
                           other.weights.non_trainable[layout.mask_indices[2]])

  def test_magnitude_initial_mask_keeps_largest_weights(self):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.5, 'uniform', seed=0,
                                          initial_mask='magnitude')
    dense = model_fn().trainable_variables[0].numpy()
    mask = initial.weights.non_trainable[initial.layout.mask_indices[0]]
    self.assertGreaterEqual(np.abs(dense[mask == 1]).min(),
                            np.abs(dense[mask == 0]).max())

  def test_unknown_initial_mask_raises(self):
    with self.assertRaisesRegex(ValueError, 'initial_mask'):
      fed_dst.build_initial_model(models.get_model_fn('mnist_net'), 0.5,
                                  'erk', seed=0, initial_mask='lottery')


if __name__ == '__main__':
  tf.test.main()
