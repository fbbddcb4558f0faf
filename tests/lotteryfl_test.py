"""Tests of LotteryFL (methods/lotteryfl.py): prune step, server average,
personalised evaluation, and a run through bin/train.py with resume."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import lotteryfl
from tff_feddst.methods import registry
from tff_feddst.networks import models
from tff_feddst.process import aggregation
from tff_feddst.process import client_states
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.running import settings as settings_lib
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'bin', 'train.py')

# One prunable kernel of 4 positions and one bias.
LAYOUT = models.ModelLayout(
    kernel_indices=(0,), mask_indices=(0,), dense_trainable_indices=(1,),
    dense_non_trainable_indices=(), bookkeeping_indices=(),
    kernel_shapes=((4,),), layer_bias_sizes=(1,))


def global_weights(kernel=(1., 2., 3., 4.)):
  return tff.learning.models.ModelWeights(
      trainable=[np.array(kernel, np.float32), np.array([0.], np.float32)],
      non_trainable=[np.ones([4], np.float32)])


def hand_aggregate():
  # Sums 7, 14, 36, 0 over weighted votes 3, 4, 5, 0 (nobody holds the
  # last position); bias sum 15 over weight 6.
  return aggregation.SparseAggregate(
      weighted_kernel_sums=(np.array([7., 14., 36., 0.], np.float32),),
      weighted_votes=(np.array([3., 4., 5., 0.], np.float32),),
      votes=(np.array([2., 2., 2., 0.], np.float32),),
      weighted_dense_sums=(np.array([15.], np.float32),),
      total_weight=np.float32(6.), num_clients=np.int32(3),
      upload_bytes=np.int64(51))


def type_of(make_value):
  return tff.tensorflow.computation(
      lambda: tf.nest.map_structure(tf.constant, make_value())
  ).type_signature.result


class PruneStepTest(tf.test.TestCase):

  def test_prunes_the_smallest_active_weights_by_hand(self):
    kernel = tf.constant([0.5, -3., 0., 2., 1., -0.1])
    mask = tf.constant([1., 1., 0., 1., 1., 1.])
    # 5 active, rate 0.4: floor(2) go, the smallest |w|: -0.1 and 0.5.
    new_mask, = lotteryfl.prune_personal_masks([kernel], [mask], 0.4, [1])
    self.assertAllEqual(new_mask, [0., 1., 0., 1., 1., 0.])
    # A floor of 4 ones: only one goes.
    new_mask, = lotteryfl.prune_personal_masks([kernel], [mask], 0.4, [4])
    self.assertAllEqual(new_mask, [1., 1., 0., 1., 1., 0.])
    # At the floor already: nothing goes.
    new_mask, = lotteryfl.prune_personal_masks([kernel], [mask], 0.4, [5])
    self.assertAllEqual(new_mask, mask)

  def test_ties_drop_the_higher_index_first(self):
    kernel = tf.constant([[1., 1.], [1., 2.]])
    new_mask, = lotteryfl.prune_personal_masks(
        [kernel], [tf.ones([2, 2])], 0.5, [1])
    self.assertAllEqual(new_mask, [[1., 0.], [0., 1.]])

  def test_floor_is_the_target_density(self):
    config = lotteryfl.LotteryflConfig(target_sparsity=0.8)
    self.assertEqual(config.min_active([10, 7, 3]), [2, 2, 1])
    with self.assertRaisesRegex(ValueError, 'prune_rate'):
      lotteryfl.LotteryflConfig(prune_rate=1.0)


class ServerAverageTest(tf.test.TestCase):

  def test_each_weight_averaged_over_its_holders_by_hand(self):
    process = lotteryfl._build_finalizer(  # pylint: disable=protected-access
        LAYOUT, type_of(global_weights), type_of(hand_aggregate), 1.0, 0.0,
        None)
    output = process.next(process.initialize(), global_weights(),
                          hand_aggregate())
    new = output.result
    # 7/3, 14/4, 36/5 over their holders; nobody held the last: kept at 4.
    self.assertAllClose(new.trainable[0], [7. / 3., 3.5, 7.2, 4.])
    self.assertAllClose(new.trainable[1], [2.5])
    self.assertAllEqual(new.non_trainable[0], [1., 1., 1., 1.])
    self.assertEqual(output.measurements['mask_changed_positions'], 0)

  def test_keep_unheld_leaves_held_positions_alone(self):
    kept = lotteryfl.keep_unheld(hand_aggregate(), global_weights(), LAYOUT)
    self.assertAllEqual(kept.weighted_kernel_sums[0], [7., 14., 36., 4.])
    self.assertAllEqual(kept.weighted_votes[0], [3., 4., 5., 1.])
    self.assertAllEqual(kept.votes[0], [2., 2., 2., 1.])


class BuildRefusesTest(tf.test.TestCase):

  def test_an_encoding_that_leaves_masks_out_is_refused_before_building(self):
    # Nothing is built before the check, so no model is needed.
    with self.assertRaisesRegex(ValueError, 'masks_only_when_changed'):
      lotteryfl.build_lotteryfl(
          None, None, None, None, client_work.ClientConfig(), None,
          num_clients=4, clients_per_round=2,
          upload_encoding=encoding.PayloadEncoding.parse(
              'float16+rice+changed_masks_only'))


class PersonalisedEvaluationTest(fixtures.FashionMnistSliceTestCase):

  NUM_TRAIN = 200
  NUM_TEST = 100

  def test_zero_mask_scores_the_zero_models_prediction(self):
    # pylint: disable=g-import-not-at-top
    from tff_feddst.data import datasets
    from tff_feddst.data import federated
    from tff_feddst.methods import model_setup
    from tff_feddst.running import evaluation
    # pylint: enable=g-import-not-at-top
    settings = settings_lib.ExperimentSettings.from_flat(
        data_dir=self.data_dir, total_clients=4, clients_per_round=2,
        method='lotteryfl', seed=0).resolved()
    model_fn, initial_model = model_setup.build_model(settings, sparsity=0.0)
    data = datasets.load_dataset('fashion_mnist', self.data_dir)
    fed = federated.build_federated_data(data, 'iid', 4, seed=0)
    evaluator = evaluation.Evaluator(model_fn, fed)
    layout = initial_model.layout
    weights = initial_model.weights
    zero_masks = [np.zeros(s, np.float32) for s in layout.kernel_shapes]
    full_masks = [np.ones(s, np.float32) for s in layout.kernel_shapes]
    trainable = list(weights.trainable)
    non_trainable = list(weights.non_trainable)
    for kernel_index, mask_index in zip(layout.kernel_indices,
                                        layout.mask_indices):
      trainable[kernel_index] = np.zeros_like(trainable[kernel_index])
      non_trainable[mask_index] = np.zeros_like(non_trainable[mask_index])
    zero_model = tff.learning.models.ModelWeights(
        trainable=trainable, non_trainable=non_trainable)
    # Without kernels the net predicts one class c for every input (from
    # its biases): a client's accuracy is its share of c.
    evaluator.evaluate(zero_model)
    constant_class = evaluator._predictions(  # pylint: disable=protected-access
        data.x_test[:1])[0]
    shares = []
    for client_id in fed.client_ids:
      _, labels = fed.test_arrays(client_id)
      shares.append(np.mean(labels == constant_class))
    mean, std = evaluator.evaluate_personalised(
        weights, layout, lambda position: zero_masks)
    self.assertAllClose((mean, std), (np.mean(shares), np.std(shares)))
    # Full masks give each client the global model: its client accuracy.
    global_result = evaluator.evaluate(weights)
    mean, _ = evaluator.evaluate_personalised(
        weights, layout, lambda position: full_masks)
    self.assertAllClose(mean, global_result.client_test_accuracy)


class LotteryflTrainTest(fixtures.FashionMnistSliceTestCase):
  """bin/train.py --method=lotteryfl on a tiny slice, and resume bit-exact."""

  def run_args(self, output_dir: str) -> list[str]:
    return [sys.executable, TRAIN, '--noprogress',
            f'--data_dir={self.data_dir}', '--method=lotteryfl',
            '--data_distribution=dirichlet', '--dirichlet_beta=0.5',
            '--total_clients=4', '--clients_per_round=2', '--total_rounds=4',
            '--eval_every=2', '--checkpoint_every=2',
            '--target_sparsity=0.5', '--lotteryfl_accuracy_threshold=0.0',
            '--lotteryfl_prune_rate=0.3', '--tensorboard_dir=',
            f'--output_dir={output_dir}']

  def metrics(self, output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      return list(csv.DictReader(f))

  def test_run_prunes_personal_masks_and_resumes_bit_exact(self):
    root = self.create_tempdir().full_path
    whole, killed = os.path.join(root, 'whole'), os.path.join(root, 'killed')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    done = subprocess.run(self.run_args(whole), timeout=900, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    self.assertEqual(done.returncode, 0, done.stderr)
    rows = self.metrics(whole)
    self.assertEqual([r['round'] for r in rows], ['1', '2', '3', '4'])
    for row in rows[1::2]:  # Evaluated rounds.
      self.assertNotEqual(row['personal_test_accuracy'], '')
      self.assertNotEqual(row['personal_test_accuracy_std'], '')
    self.assertEqual(rows[0]['personal_test_accuracy'], '')
    # The global model stays dense; every client prunes (threshold 0), so
    # every round uploads less than dense payloads would.
    # pylint: disable=g-import-not-at-top
    from tff_feddst.methods import model_setup
    # pylint: enable=g-import-not-at-top
    settings = settings_lib.ExperimentSettings.from_flat(
        method='lotteryfl', seed=0).resolved()
    _, initial_model = model_setup.build_model(settings, sparsity=0.0)
    kernel_sizes = initial_model.layout.kernel_sizes
    dense_upload = lotteryfl.max_upload_num_bytes(
        kernel_sizes, model_setup.num_dense_parameters(initial_model),
        lotteryfl.full_capacity_encoding())
    self.assertEqual(float(rows[-1]['sparsity']), 0.0)
    for row in rows:
      self.assertLess(int(row['upload_bytes']),
                      int(row['clients_reported']) * dense_upload)
    with open(os.path.join(whole, 'summary.json')) as f:
      summary = json.load(f)
    self.assertEqual(summary['client_state_bytes_per_client'],
                     client_states.bytes_per_client(kernel_sizes))
    self.assertIsNotNone(summary['final_personal_test_accuracy'])

    fixtures.copy_killed_before_round_4(whole, killed)
    resumed = subprocess.run(self.run_args(killed) + ['--resume'],
                             timeout=900, env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    strip = lambda rows: [{k: v for k, v in r.items() if k != 'round_seconds'}
                          for r in rows]
    self.assertEqual(strip(self.metrics(killed)), strip(rows))
    with np.load(os.path.join(whole, 'global_model.npz')) as a, np.load(
        os.path.join(killed, 'global_model.npz')) as b:
      self.assertEqual(sorted(a.files), sorted(b.files))
      for name in a.files:
        self.assertEqual(a[name].tobytes(), b[name].tobytes(), name)

  def test_method_is_registered_and_refuses_replacement(self):
    self.assertIn('lotteryfl', registry.method_names())
    resolved = settings_lib.ExperimentSettings.from_flat(
        method='lotteryfl', target_sparsity=0.7, drop_fraction=0.2).resolved()
    self.assertEqual((resolved.network.target_sparsity,
                      resolved.readjustment.drop_fraction), (0.7, 0.0))
    with self.assertRaisesRegex(settings_lib.ConfigError,
                                '^--lotteryfl_prune_rate=1.5 is invalid'):
      settings_lib.ExperimentSettings.from_flat(
          method='lotteryfl', lotteryfl_prune_rate=1.5).validate()


if __name__ == '__main__':
  tf.test.main()
