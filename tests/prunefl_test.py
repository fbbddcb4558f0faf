"""Tests of PruneFL: the mask rule, client importance, bytes, end to end."""

import csv
import json
import math
import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.methods import prunefl
from tff_feddst.methods import registry
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import robust_means
from tff_feddst.process import sum_factory
from tff_feddst.running import experiment
from tff_feddst.running import settings as settings_lib
from tests import fed_dst_test
from tests import fixtures
from tests import process_contract

# Three clients of easy synthetic data, shared with the FedDST process tests.
NUM_CLIENTS = fed_dst_test.NUM_CLIENTS
learnable_client_data = fed_dst_test.learnable_client_data


def as_numpy(tensors):
  return [np.asarray(t) for t in tensors]


class SelectMasksTest(tf.test.TestCase):

  def test_two_layers_by_hand(self):
    # Layer 0: 4 positions, t=1; layer 1: 2 positions, t=2. c = 0.5 *
    # (4*1 + 2*2) = 4. f = 0.5: layer 0 has 2 active, floor(1) = 1 removable,
    # the smaller |w| (index 1, |-0.1|); layer 1 has 1 active, 0 removable.
    # Kept: L0[0] (z=1, t=1), L1[0] (z=2, t=2): N = 3, D = 4 + 3 = 7.
    # Candidates by z/t: L0[2] 3/1 > 3/7 -> N=6, D=8; L1[1] 4/2=2 > 0.75 ->
    # N=10, D=10; L0[1] 0.2 < 1 -> stop. Objective 10/10 = 1.
    selection = prunefl.select_masks(
        weights=[tf.constant([0.5, -0.1, 0.0, 0.0]), tf.constant([0.3, 0.0])],
        masks=[tf.constant([1., 1., 0., 0.]), tf.constant([1., 0.])],
        importances=[tf.constant([1.0, 0.2, 3.0, 0.1]),
                     tf.constant([2.0, 4.0])],
        layer_times=[1.0, 2.0], round_cost=0.5, max_remove_fraction=0.5)
    first, second = as_numpy(selection.masks)
    self.assertAllEqual(first, [1., 0., 1., 0.])
    self.assertAllEqual(second, [1., 1.])
    self.assertEqual(int(selection.num_kept), 2)
    self.assertEqual(int(selection.num_added), 2)
    self.assertAllClose(float(selection.objective), 1.0)

  def test_removable_weight_competes_with_inactive_ones(self):
    # 6 positions, t = 1, c = (1/6) * 6 = 1; index 0 active.
    # f = 0: index 0 kept, N = 1, D = 2: add z=5 (N=6, D=3: 2), z=4 (N=10,
    # D=4: 2.5), then 0.5 < 2.5 stops -> {0, 1, 2}, objective 2.5.
    # f = 1: index 0 removable, N = 0, D = 1: add 5 (2.5), 4 (9/3 = 3), then
    # z=1 (index 0) < 3 stops -> {1, 2}: the active weight left the mask.
    weights = [tf.constant([1.0, 0, 0, 0, 0, 0])]
    masks = [tf.constant([1.0, 0, 0, 0, 0, 0])]
    importances = [tf.constant([1.0, 5.0, 4.0, 0.5, 0.1, 0.0])]
    kept = prunefl.select_masks(weights, masks, importances, [1.0], 1 / 6, 0.0)
    self.assertAllEqual(as_numpy(kept.masks), [[1, 1, 1, 0, 0, 0]])
    self.assertAllClose(float(kept.objective), 2.5)
    removed = prunefl.select_masks(weights, masks, importances, [1.0], 1 / 6,
                                   1.0)
    self.assertAllEqual(as_numpy(removed.masks), [[0, 1, 1, 0, 0, 0]])
    self.assertEqual(int(removed.num_kept), 0)
    self.assertAllClose(float(removed.objective), 3.0)

  def test_invariants_on_random_inputs(self):
    rng = np.random.default_rng(3)
    shapes = [(5, 5, 1, 4), (40, 6)]
    weights = [tf.constant(rng.normal(size=s), tf.float32) for s in shapes]
    masks = [tf.constant((rng.random(size=s) < 0.4).astype(np.float32))
             for s in shapes]
    importances = [tf.constant(rng.exponential(size=s), tf.float32)
                   for s in shapes]
    counts = []
    for round_cost in (0.01, 0.1, 1.0, 10.0):
      selection = prunefl.select_masks(weights, masks, importances,
                                       [3.0, 1.0], round_cost, 0.3)
      new_masks = as_numpy(selection.masks)
      for old, new in zip(as_numpy(masks), new_masks):
        self.assertTrue(np.all((new == 0) | (new == 1)))
        # At most floor(0.3 * active) of a layer's active weights leave.
        left = np.sum((old == 1) & (new == 0))
        self.assertLessEqual(left, math.floor(0.3 * old.sum()))
      self.assertEqual(
          sum(int(m.sum()) for m in new_masks),
          int(selection.num_kept) + int(selection.num_added))
      counts.append(sum(int(m.sum()) for m in new_masks))
    # A larger fixed cost per round makes every parameter relatively
    # cheaper: the model never gets smaller.
    self.assertEqual(counts, sorted(counts))

  def test_layer_times_must_fit_the_model(self):
    with self.assertRaisesRegex(ValueError, '2 values but the model has 4'):
      prunefl.PruneflConfig(layer_times=(1.0, 2.0)).times_for(4)
    self.assertEqual(prunefl.parse_layer_times('uniform'), ())
    self.assertEqual(prunefl.parse_layer_times('1,2.5'), (1.0, 2.5))
    with self.assertRaises(ValueError):
      prunefl.parse_layer_times('1,-2')


class ClientImportanceTest(tf.test.TestCase):

  def test_importance_is_the_squared_sum_of_step_gradients(self):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.5, 'erk', seed=0)
    layout = initial.layout
    config = client_work.ClientConfig(num_epochs=2, learning_rate=0.02)
    dataset = learnable_client_data(1)[0]
    trainer = prunefl.ImportanceTrainer(model_fn(), layout,
                                        layout.kernel_sizes, config)
    upload, weight, _ = trainer.update_with_importance(
        initial.weights, dataset, tf.constant(True))
    self.assertEqual(float(weight), 24.0)
    self.assertEqual(int(upload.has_importance), 1)
    # The same steps one at a time, each minibatch gradient summed in numpy.
    reference = client_work.ClientTrainer(
        model_fn(), layout, layout.kernel_sizes,
        client_work.ClientConfig(num_epochs=2, learning_rate=0.02,
                                 grow_score='last_batch'))
    reference.set_weights(initial.weights)
    sums = [np.zeros(s, np.float64) for s in layout.kernel_shapes]
    for x, y in dataset.repeat(2):
      reference.train_step(x, y, tf.constant(True))
      for total, gradient in zip(sums, reference.grow_scores):
        total += gradient.numpy()
    for importance, total in zip(upload.importance, sums):
      self.assertAllClose(importance, np.square(total), rtol=1e-4,
                          atol=1e-10)
    for kernel, expected in zip(trainer.kernels, reference.kernels):
      self.assertAllClose(kernel, expected, atol=1e-6)

    upload, _, _ = trainer.update_with_importance(
        initial.weights, dataset, tf.constant(False))
    self.assertEqual(int(upload.has_importance), 0)
    for importance in upload.importance:
      self.assertAllEqual(importance, tf.zeros_like(importance))


# Three PruneFL clients, one kernel of 4 positions (capacity 4, the global
# mask has 2 ones), one bias; importance z per position, flag 1.
#   client  weight  mask        kernel values    bias  importance
#   A       1       [1,1,0,0]   [1, 2, 0, 0]     1     [1, 0, 2, 0]
#   B       3       [1,1,0,0]   [4, 6, 0, 0]     2     [0, 1, 0, 1]
#   C       2       [1,1,0,0]   [3, 9, 0, 0]     4     [2, 2, 0, 0]
UPLOAD_MASK = [1., 1., 0., 0.]
UPLOAD_KERNELS = [[1., 2., 0., 0.], [4., 6., 0., 0.], [3., 9., 0., 0.]]
UPLOAD_BIASES = [[1.], [2.], [4.]]
UPLOAD_IMPORTANCE = [[1., 0., 2., 0.], [0., 1., 0., 1.], [2., 2., 0., 0.]]
UPLOAD_WEIGHTS = [1., 3., 2.]


def prunefl_payload(kernel, mask=UPLOAD_MASK, bias=(2.,)):
  return encoding.encode([np.array(kernel, np.float32)],
                         [np.array(mask, np.float32)],
                         [np.array(bias, np.float32)], [4],
                         omit_dense_masks=False)


def prunefl_upload(client, payload=None, importance=None, flag=1):
  return prunefl.PruneflUpload(
      payload=payload or prunefl_payload(UPLOAD_KERNELS[client],
                                         bias=UPLOAD_BIASES[client]),
      importance=(np.array(importance or UPLOAD_IMPORTANCE[client],
                           np.float32),),
      has_importance=np.int32(flag))


def type_of(value):
  """The TFF type of a structure of arrays (or eager tensors)."""
  return tff.types.tensorflow_to_type(tf.nest.map_structure(
      lambda t: tf.TensorSpec(np.shape(t), tf.as_dtype(np.asarray(t).dtype)),
      value))


class PruneflUploadValidationTest(tf.test.TestCase, parameterized.TestCase):
  """Malformed PruneFL uploads are dropped and counted as FedDST's are."""

  def aggregate(self, uploads, weights, checks=None):
    process = prunefl.build_aggregator_factory(
        [(4,)], prunefl.full_capacity_encoding(), [2], checks).create(
            type_of(prunefl_upload(0)), tff.TensorType(np.float32))
    return process.next(process.initialize(), uploads, weights)

  def assert_honest_sums(self, aggregate):
    # Kernel: 1*[1,2] + 3*[4,6] + 2*[3,9] = [19, 38]; bias 1 + 6 + 8 = 15.
    self.assertAllClose(aggregate.sums.weighted_kernel_sums[0],
                        [19., 38., 0., 0.])
    self.assertAllClose(aggregate.sums.weighted_dense_sums[0], [15.])
    self.assertEqual(aggregate.sums.num_clients, 3)
    # Importance: 1*[1,0,2,0] + 3*[0,1,0,1] + 2*[2,2,0,0] = [5, 7, 2, 3].
    self.assertAllClose(aggregate.extra.importance_sums[0], [5., 7., 2., 3.])
    self.assertAllClose(aggregate.extra.importance_weight, 6.)

  def test_honest_uploads_are_summed(self):
    output = self.aggregate([prunefl_upload(c) for c in range(3)],
                            UPLOAD_WEIGHTS)
    self.assert_honest_sums(output.result)
    self.assertEqual(output.measurements['rejected_clients'], 0)
    # Per client: 2 values (8 B) + bitmap (1 B) + bias (4 B) + weight (4 B)
    # + flag (4 B) + importance (16 B) = 37 B.
    self.assertEqual(output.measurements['upload_bytes'], 3 * 37)

  def test_robust_median_of_prunefl_uploads(self):
    # Medians: kernel {1, 4, 3} -> 3, {2, 6, 9} -> 6; bias {1, 2, 4} -> 2.
    robust = robust_aggregation.RobustAggregation(
        clip_updates=False, reject_replays=False, max_weight_multiple=None,
        robust_mean=robust_means.RobustMean('median', clients_per_round=3))
    process = prunefl.build_aggregator_factory(
        [(4,)], prunefl.full_capacity_encoding(), [2], None, robust).create(
            type_of(prunefl_upload(0)), tff.TensorType(np.float32))
    output = process.next(process.initialize(),
                          [prunefl_upload(c) for c in range(3)],
                          UPLOAD_WEIGHTS)
    self.assert_honest_sums(output.result)
    values = output.result.sums.robust_values
    self.assertAllEqual(values.kernels[0], [3., 6., 0., 0.])
    self.assertAllEqual(values.dense[0], [2.])

  @parameterized.named_parameters(
      ('nan_value', dict(payload=prunefl_payload([np.nan, 6., 0., 0.])), 3.,
       'nonfinite'),
      ('mask_count_too_high', dict(payload=prunefl_payload(
          [4., 6., 5., 0.], mask=[1., 1., 1., 0.])), 3., 'mask_count'),
      ('mask_count_too_low', dict(payload=prunefl_payload(
          [4., 0., 0., 0.], mask=[1., 0., 0., 0.])), 3., 'mask_count'),
      ('weight_zero', {}, 0., 'weight'),
      ('weight_nan', {}, np.nan, 'weight'),
      # Issue 13: every kind of bad upload, as the FedDST aggregator's test
      # (aggregation_test.HostilePayloadTest) has them.
      ('dense_too_long', dict(payload=prunefl_payload([4., 6., 0., 0.],
                                                      bias=(2., 2.))), 3.,
       'shape'),
      ('inf_value', dict(payload=prunefl_payload([4., np.inf, 0., 0.])), 3.,
       'nonfinite'),
      ('inf_dense', dict(payload=prunefl_payload([4., 6., 0., 0.],
                                                 bias=(-np.inf,))), 3.,
       'nonfinite'),
      ('weight_negative', {}, -3., 'weight'),
      ('weight_inf', {}, np.inf, 'weight'),
  )
  def test_malformed_payload_is_rejected_as_for_feddst(self, parts, weight,
                                                       kind):
    upload = prunefl_upload(1, **parts)
    honest = [prunefl_upload(c) for c in range(3)]
    output = self.aggregate([honest[0], upload] + honest[1:],
                            [UPLOAD_WEIGHTS[0], weight] + UPLOAD_WEIGHTS[1:])
    self.assert_honest_sums(output.result)
    self.assertEqual(output.measurements['rejected_clients'], 1)
    self.assertEqual(output.measurements[f'rejected_{kind}'], 1)
    # FedDST's aggregator (capacity 4, target 2 ones) rejects the same
    # payload for the same reason.
    feddst = sum_factory.SparseSumFactory(
        [(4,)], [4], prunefl.full_capacity_encoding(),
        payload_validation.PayloadChecks(num_active_by_round=[[2]])).create(
                type_of(upload.payload), tff.TensorType(np.float32))
    feddst_output = feddst.next(
        feddst.initialize(), [honest[0].payload, upload.payload],
        [UPLOAD_WEIGHTS[0], weight])
    for name in ['rejected_clients'] + [
        f'rejected_{k}' for k in payload_validation.REJECTION_KINDS]:
      self.assertEqual(feddst_output.measurements[name],
                       output.measurements[name], name)

  @parameterized.named_parameters(
      ('values_too_long', dict(values=(np.array([4., 6., 0., 0., 1.],
                                                np.float32),))),
      ('values_too_short', dict(values=(np.array([4., 6., 0.],
                                                 np.float32),))),
      ('mask_buffer_too_long', dict(packed_masks=np.array([192, 0],
                                                          np.uint8))),
  )
  def test_wrong_shape_is_rejected(self, parts):
    # (FedDST's aggregator cannot even be built for these payload types.)
    upload = prunefl_upload(
        1, payload=prunefl_payload([4., 6., 0., 0.])._replace(**parts))
    honest = [prunefl_upload(c) for c in range(3)]
    output = self.aggregate([honest[0], upload] + honest[1:],
                            [UPLOAD_WEIGHTS[0], 3.] + UPLOAD_WEIGHTS[1:])
    self.assert_honest_sums(output.result)
    self.assertEqual(output.measurements['rejected_clients'], 1)
    self.assertEqual(output.measurements['rejected_shape'], 1)

  def test_norm_above_bound_is_rejected(self):
    # Honest payload norms: A sqrt(1+4+1) = 2.4, B sqrt(16+36+4) = 7.5,
    # C sqrt(9+81+16) = 10.3; B doubled: sqrt(64+144+16) = 15.0 > 11.
    checks = payload_validation.PayloadChecks(max_norm=11.0)
    honest = [prunefl_upload(c) for c in range(3)]
    large = prunefl_upload(1, payload=prunefl_payload([8., 12., 0., 0.],
                                                      bias=(4.,)))
    output = self.aggregate([honest[0], large] + honest[1:],
                            [UPLOAD_WEIGHTS[0], 3.] + UPLOAD_WEIGHTS[1:],
                            checks)
    self.assert_honest_sums(output.result)
    self.assertEqual(output.measurements['rejected_clients'], 1)
    self.assertEqual(output.measurements['rejected_norm'], 1)
    # Without the bound it would have counted.
    output = self.aggregate([honest[0], large] + honest[1:],
                            [UPLOAD_WEIGHTS[0], 3.] + UPLOAD_WEIGHTS[1:])
    self.assertEqual(output.measurements['rejected_clients'], 0)
    self.assertEqual(output.result.sums.num_clients, 4)

  @parameterized.named_parameters(
      ('nan_importance', dict(importance=[0., np.nan, 0., 1.]), 'nonfinite'),
      ('inf_importance', dict(importance=[0., 1., np.inf, 1.]), 'nonfinite'),
      ('importance_too_long', dict(importance=[0., 1., 0., 1., 0.]), 'shape'),
      ('flag_not_0_or_1', dict(flag=2), 'shape'),
  )
  def test_malformed_importance_is_rejected(self, parts, kind):
    honest = [prunefl_upload(c) for c in range(3)]
    output = self.aggregate(
        [honest[0], prunefl_upload(1, **parts)] + honest[1:],
        [UPLOAD_WEIGHTS[0], 3.] + UPLOAD_WEIGHTS[1:])
    self.assert_honest_sums(output.result)
    self.assertEqual(output.measurements['rejected_clients'], 1)
    self.assertEqual(output.measurements[f'rejected_{kind}'], 1)


class InitialPruningTest(tf.test.TestCase):

  def test_prunes_gradually_and_is_seeded(self):
    model_fn = models.get_model_fn('mnist_net', seed=0)
    initial = fed_dst.build_initial_model(model_fn, 0.0, 'erk', seed=0)
    layout = initial.layout
    config = prunefl.PruneflConfig(initial_rounds=2, initial_steps=3,
                                   max_remove_fraction=0.3)
    client_config = client_work.ClientConfig(learning_rate=0.02)
    results = [prunefl.run_initial_pruning(
        model_fn, initial.weights, layout, learnable_client_data(0)[0],
        client_config, config) for _ in range(2)]
    first = results[0]
    self.assertLen(first.densities, 2)
    # Each reconfiguration keeps at least 70 % of the active weights.
    self.assertGreaterEqual(first.densities[0], 0.7 - 1e-6)
    self.assertGreaterEqual(first.densities[1], 0.7 * first.densities[0] - 1e-6)
    self.assertLess(first.densities[1], 1.0)
    for kernel_index, mask_index in zip(layout.kernel_indices,
                                        layout.mask_indices):
      mask = first.weights.non_trainable[mask_index]
      self.assertAllEqual(first.weights.trainable[kernel_index] * (1 - mask),
                          np.zeros_like(mask))
    self.assertEqual(first.layer_num_active, results[1].layer_num_active)
    for a, b in zip(first.weights.trainable, results[1].weights.trainable):
      self.assertAllEqual(a, b)
    # TF-MOT bookkeeping is the initial model's, not the trained model's.
    for index in layout.bookkeeping_indices:
      self.assertAllEqual(first.weights.non_trainable[index],
                          initial.weights.non_trainable[index])

  def test_initial_client_is_seeded(self):
    ids = [str(i) for i in range(50)]
    self.assertEqual(prunefl.choose_initial_client(ids, 4),
                     prunefl.choose_initial_client(ids, 4))
    self.assertGreater(
        len({prunefl.choose_initial_client(ids, s) for s in range(10)}), 1)


class PruneflProcessTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model_fn = models.get_model_fn('mnist_net', seed=0)
    cls.initial = fed_dst.build_initial_model(model_fn, 0.5, 'erk', seed=0)
    cls.process = prunefl.build_prunefl(
        model_fn, cls.initial.layout, cls.initial.weights,
        learnable_client_data(0)[0].element_spec,
        client_work.ClientConfig(learning_rate=0.02),
        prunefl.PruneflConfig(reconfigure_every=2))
    state = cls.process.initialize()
    cls.metrics, cls.weights, cls.states = [], [], []
    for round_num in range(3):
      output = cls.process.next(state, learnable_client_data(round_num))
      state = output.state
      cls.states.append(state)
      cls.metrics.append(output.metrics)
      cls.weights.append(cls.process.get_model_weights(state))

  def masks(self, weights):
    return [np.asarray(weights.non_trainable[i])
            for i in self.initial.layout.mask_indices]

  def test_mask_fixed_between_reconfigurations(self):
    finals = [m['finalizer'] for m in self.metrics]
    self.assertEqual([bool(f['reconfigured']) for f in finals],
                     [False, True, False])
    self.assertEqual(finals[0]['mask_changed_positions'], 0)
    self.assertGreater(finals[1]['mask_changed_positions'], 0)
    self.assertEqual(finals[2]['mask_changed_positions'], 0)
    initial_masks = [np.asarray(self.initial.weights.non_trainable[i])
                     for i in self.initial.layout.mask_indices]
    for got, expected in zip(self.masks(self.weights[0]), initial_masks):
      self.assertAllEqual(got, expected)
    for got, expected in zip(self.masks(self.weights[2]),
                             self.masks(self.weights[1])):
      self.assertAllEqual(got, expected)
    for weights in self.weights:
      for kernel_index, mask in zip(self.initial.layout.kernel_indices,
                                    self.masks(weights)):
        self.assertAllEqual(np.asarray(weights.trainable[kernel_index]) *
                            (1 - mask), np.zeros_like(mask))

  def test_importance_bytes_only_on_reconfiguration_rounds(self):
    layout = self.initial.layout
    positions = sum(layout.kernel_sizes)
    dense = sum(np.size(self.initial.weights.trainable[i])
                for i in layout.dense_trainable_indices)

    def client_bytes(num_active, with_importance):
      # values of the mask's ones + bitmap of every position + biases +
      # example count + importance flag (+ importance).
      return (4 * num_active + math.ceil(positions / 8) + 4 * dense + 4 + 4
              + (4 * positions if with_importance else 0))

    before = sum(self.initial.num_active)
    after = sum(int(n) for n in self.metrics[1]['finalizer'][
        'layer_num_active'])
    uploads = [int(m['aggregator']['upload_bytes']) for m in self.metrics]
    self.assertEqual(uploads, [NUM_CLIENTS * client_bytes(before, False),
                               NUM_CLIENTS * client_bytes(before, True),
                               NUM_CLIENTS * client_bytes(after, False)])
    # The per-round budget bound is exact for the bitmap encoding.
    bounds = [prunefl.max_upload_num_bytes(
        layout.kernel_sizes, dense, encoding.PayloadEncoding(),
        num_active_total=num_active,
        with_importance=prunefl.is_reconfiguration_round(round_num, 2))
              for round_num, num_active in ((1, before), (2, before),
                                            (3, after))]
    self.assertEqual([NUM_CLIENTS * b for b in bounds], uploads)
    downloads = [int(m['distributor']['download_bytes'])
                 for m in self.metrics]
    self.assertEqual(downloads[2], NUM_CLIENTS * (
        client_bytes(after, False) - 8))

  def test_upload_checks_follow_the_global_mask(self):
    # Every honest upload passed, in rounds before and after the mask moved.
    for metrics in self.metrics:
      self.assertEqual(metrics['aggregator']['rejected_clients'], 0)
      self.assertEqual(metrics['finalizer']['num_clients_aggregated'],
                       NUM_CLIENTS)
    # The aggregator's targets are the counts of the new global mask.
    for state, metrics in zip(self.states, self.metrics):
      self.assertAllEqual(state.aggregator,
                          metrics['finalizer']['layer_num_active'])
    self.assertNotEqual(list(self.states[0].aggregator),
                        list(self.states[1].aggregator))
    # set_model_weights sets them from the weights it is given.
    reset = self.process.set_model_weights(self.states[2],
                                           self.initial.weights)
    self.assertAllEqual(reset.aggregator, self.initial.num_active)

  def test_loss_decreases(self):
    losses = [float(m['client_work']['train_loss']) for m in self.metrics]
    self.assertLess(losses[-1], losses[0])

  def test_meets_the_measurement_contract(self):
    process_contract.assert_meets_measurement_contract(
        self, self.process, self.metrics)


class PruneflExperimentTest(fixtures.FashionMnistSliceTestCase):

  def config(self, **overrides):
    settings = dict(
        data_dir=self.data_dir, data_distribution='dirichlet',
        dirichlet_beta=0.5, total_clients=8, clients_per_round=3,
        total_rounds=2, eval_every=2, method='prunefl',
        prunefl_initial_rounds=2, prunefl_initial_steps=3,
        prunefl_reconfigure_every=2, tensorboard_dir='', seed=0)
    settings.update(overrides)
    return settings_lib.ExperimentSettings.from_flat(**settings)

  def test_run_writes_metrics(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    # Bitmap masks: the bound of a round's upload is then its size, which
    # the budget run below relies on (a Rice code's bound is its longest).
    rows = experiment.run_experiment(
        self.config(upload_encoding='float32+bitmap'), output_dir)
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      written = list(csv.DictReader(f))
    self.assertEqual([r['round'] for r in written], ['1', '2'])
    self.assertNotEqual(written[1]['test_accuracy'], '')
    # Starts dense, initial pruning made it sparse.
    self.assertGreater(rows[0]['sparsity'], 0.0)
    # Round 2 reconfigures: its upload carries the importance.
    self.assertGreater(rows[1]['upload_bytes'], rows[0]['upload_bytes'])
    with open(os.path.join(output_dir, 'flags.txt')) as f:
      flags = f.read().splitlines()
    self.assertIn('--method=prunefl', flags)
    self.assertIn('--prunefl_reconfigure_every=2', flags)
    self.assertIn('--target_sparsity=0.0', flags)
    with open(os.path.join(output_dir, 'prunefl_initial_pruning.json')) as f:
      record = json.load(f)
    self.assertLen(record['densities'], 2)

    # A budget of exactly these two rounds' upload runs both of them (each
    # round is bounded from the mask it starts from and whether it carries
    # importance) and stops before a third.
    budget = rows[1]['upload_bytes_cumulative']
    budget_dir = os.path.join(self.create_tempdir().full_path, 'budget')
    budget_rows = experiment.run_experiment(
        self.config(total_rounds=3, upload_budget_bytes=budget,
                    upload_encoding='float32+bitmap'), budget_dir)
    self.assertEqual([r['upload_bytes'] for r in budget_rows],
                     [r['upload_bytes'] for r in rows])
    with open(os.path.join(budget_dir, 'summary.json')) as f:
      self.assertEqual(json.load(f)['stop_reason'], 'upload_budget')

  def test_method_starts_dense_without_readjustment(self):
    resolved = self.config(target_sparsity=0.8, drop_fraction=0.1).resolved()
    self.assertEqual((resolved.network.target_sparsity,
                      resolved.readjustment.drop_fraction), (0.0, 0.0))
    self.assertIn('prunefl', registry.method_names())

  def test_bad_prunefl_settings_name_the_flag(self):
    with self.assertRaisesRegex(experiment.ConfigError,
                                "^--prunefl_layer_times='1,x' is invalid"):
      self.config(prunefl_layer_times='1,x').validate()
    with self.assertRaisesRegex(experiment.ConfigError,
                                '^--prunefl_round_cost=0 is invalid'):
      self.config(prunefl_round_cost=0).validate()
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    with self.assertRaisesRegex(experiment.ConfigError,
                                '^--prunefl_layer_times=1,2 is invalid'):
      experiment.run_experiment(self.config(prunefl_layer_times='1,2'),
                                output_dir)
    self.assertFalse(os.path.exists(os.path.join(output_dir, 'flags.txt')))
