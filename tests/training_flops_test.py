"""Tests for tff_feddst.running.training_flops and the FLOPs columns."""

import collections
import csv
import os

import numpy as np
import tensorflow as tf

from tff_feddst.methods import model_setup
from tff_feddst.networks import flops
from tff_feddst.networks import models
from tff_feddst.outputs import comparison
from tff_feddst.outputs import metrics_csv
from tff_feddst.running import experiment
from tff_feddst.running import settings as settings_lib
from tff_feddst.running import training_flops
from tff_feddst.running import training_loop
from tests import fixtures

# Two layers: 10 and 4 uses per entry, 6 and 8 entries.
COUNTER = training_flops.RoundFlopsCounter(
    uses=(10, 4), kernel_sizes=(6, 8), mask_indices=(0, 1), num_epochs=2,
    readjust_epochs=1.0, grow_score='accumulated', batch_size=32)


def round_metrics(num_examples=100.0, **client_work):
  return collections.OrderedDict(
      client_work=collections.OrderedDict(
          num_examples=np.float32(num_examples), **client_work),
      aggregator=collections.OrderedDict(num_clients=np.int32(2),
                                         rejected_clients=np.int32(1)))


class CounterTest(tf.test.TestCase):

  def test_round_by_hand(self):
    # Active 3 of 6 and 2 of 8: f_S = 2 * (10*3 + 4*2) = 76,
    # f_D = 2 * (10*6 + 4*8) = 184. 100 examples an epoch, 2 epochs: 200.
    # No readjustment: sparse 3 * 76 * 200 = 45600, dense 3 * 184 * 200.
    self.assertEqual(COUNTER.count(round_metrics(should_readjust=False),
                                   (3, 2)),
                     flops.TrainingFlops(45600, 110400))
    # Readjusting after 1 epoch with accumulated scores: the first 100
    # examples need the dense gradient: + (184 - 76) * 100 = 10800.
    self.assertEqual(COUNTER.count(round_metrics(should_readjust=True),
                                   (3, 2)).sparse, 45600 + 10800)
    # 'last_batch': one batch for each of the 3 clients that trained
    # (2 aggregated + 1 rejected): 96 examples.
    last_batch = COUNTER.__class__(**{**vars(COUNTER),
                                      'grow_score': 'last_batch'})
    self.assertEqual(last_batch.count(round_metrics(should_readjust=True),
                                      (3, 2)).sparse, 45600 + 108 * 96)
    # A PruneFL reconfiguration: every example.
    self.assertEqual(COUNTER.count(round_metrics(should_reconfigure=True),
                                   (3, 2)).sparse, 45600 + 108 * 200)
    # Lifetime epoch counts: only the examples the readjusting clients
    # counted (here 40), whatever the grow score; none off a readjustment
    # round.
    for counter in (COUNTER, last_batch):
      self.assertEqual(counter.count(round_metrics(
          should_readjust=True, grow_score_examples=np.int32(40)),
                                     (3, 2)).sparse, 45600 + 108 * 40)
      self.assertEqual(counter.count(round_metrics(
          should_readjust=False, grow_score_examples=np.int32(0)),
                                     (3, 2)).sparse, 45600)
    # Full masks: sparse equals dense, readjusting or not.
    for readjust in (False, True):
      full = COUNTER.count(round_metrics(should_readjust=readjust), (6, 8))
      self.assertEqual(full.sparse, full.dense)

  def test_process_without_example_count_gives_none(self):
    metrics = round_metrics()
    del metrics['client_work']['num_examples']
    self.assertIsNone(COUNTER.count(metrics, (3, 2)))

  def test_active_counts_read_the_masks(self):
    weights = collections.namedtuple('W', 'trainable non_trainable')(
        [], [np.array([1., 0., 1.]), np.ones((2, 2)), np.zeros(4)])
    counter = COUNTER.__class__(**{**vars(COUNTER), 'mask_indices': (2, 0)})
    self.assertEqual(counter.active_counts(weights), (0, 2))

  def test_resumed_rows_without_flops_leave_the_cumulative_unknown(self):
    row = {column: None for column in metrics_csv.METRICS_COLUMNS}
    self.assertEqual(training_loop._flops_so_far([]),
                     {'training_flops': 0, 'training_flops_dense': 0})
    self.assertEqual(training_loop._flops_so_far([row]),
                     {'training_flops': None, 'training_flops_dense': None})

  def test_metrics_file_from_before_the_flops_columns_resumes(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    old_columns = [c for c in metrics_csv.METRICS_COLUMNS
                   if c not in metrics_csv.FLOPS_COLUMNS]
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=old_columns)
      writer.writeheader()
      for round_num in (1, 2):
        writer.writerow({c: 0 for c in old_columns} | {'round': round_num})
    rows = metrics_csv.truncate_metrics(path, last_round=1)
    self.assertLen(rows, 1)
    self.assertIsNone(rows[0]['training_flops_cumulative'])
    with open(path, newline='') as f:
      self.assertEqual(tuple(next(csv.reader(f))),
                       metrics_csv.METRICS_COLUMNS)
    self.assertIsNone(training_loop._flops_so_far(rows)['training_flops'])


class FlopsColumnsTest(fixtures.FashionMnistSliceTestCase):

  def run_method(self, method: str) -> tuple[list[dict], str]:
    output_dir = os.path.join(self.create_tempdir().full_path, method)
    settings = settings_lib.ExperimentSettings.from_flat(
        data_dir=self.data_dir, data_distribution='dirichlet',
        dirichlet_beta=0.5, total_clients=6, clients_per_round=2,
        total_rounds=2, eval_every=2, client_epochs_per_round=1,
        target_sparsity=0.8, drop_fraction=0.2,
        rounds_between_readjustments=1, annealing='constant', seed=0,
        method=method)
    rows = experiment.run_experiment(settings, output_dir)
    with open(os.path.join(output_dir, 'metrics.csv'), newline='') as f:
      self.assertContainsSubset(metrics_csv.FLOPS_COLUMNS,
                                next(csv.reader(f)))
    return rows, output_dir

  def test_columns_are_cumulative_and_dense_methods_pay_dense(self):
    model = models.mnist_net(seed=0)
    uses = flops.kernel_uses(model)
    dense_forward = flops.forward_flops(
        uses, models.model_layout(model).kernel_sizes)
    fedavg_rows, _ = self.run_method('fedavg')
    feddst_rows, feddst_dir = self.run_method('feddst')
    for rows in (fedavg_rows, feddst_rows):
      self.assertEqual(
          [r['training_flops_cumulative'] for r in rows],
          list(np.cumsum([r['training_flops'] for r in rows])))
      self.assertEqual(
          [r['training_flops_dense_cumulative'] for r in rows],
          list(np.cumsum([r['training_flops_dense'] for r in rows])))
      for row in rows:  # Dense: 3 f_D per example trained (1 epoch).
        self.assertEqual(row['training_flops_dense'] % (3 * dense_forward), 0)
        self.assertGreater(row['training_flops_dense'], 0)
    for row in fedavg_rows:
      self.assertEqual(row['training_flops'], row['training_flops_dense'])
    # FedDST at S=0.8 readjusts in round 1 only (annealing ends at T/2 = 1),
    # after half an epoch with accumulated scores: 3 f_S x + (f_D - f_S) *
    # x / 2 (within a minibatch per client); round 2: 3 f_S x.
    settings = settings_lib.ExperimentSettings.from_flat(
        target_sparsity=0.8, method='feddst').resolved()
    _, initial_model = model_setup.build_model(settings)
    sparse_forward = flops.forward_flops(uses, initial_model.num_active)
    for row in feddst_rows:
      examples = row['training_flops_dense'] // (3 * dense_forward)
      extra = row['training_flops'] - 3 * sparse_forward * examples
      if row['round'] == 1:
        self.assertBetween(extra / (dense_forward - sparse_forward),
                           examples / 2 - 2 * 32, examples / 2 + 2 * 32)
      else:
        self.assertEqual(extra, 0)
      self.assertLess(row['training_flops'], row['training_flops_dense'] / 2)
    summary = comparison.summarize_run(feddst_dir)
    self.assertEqual(summary['training_flops_cumulative'],
                     feddst_rows[-1]['training_flops_cumulative'])
    self.assertEqual(summary['training_flops_dense_cumulative'],
                     feddst_rows[-1]['training_flops_dense_cumulative'])


if __name__ == '__main__':
  tf.test.main()
