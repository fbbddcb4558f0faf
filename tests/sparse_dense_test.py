"""Tests for tff_feddst.benchmarks.sparse_dense (timed end to end in benchmark_test)."""

import numpy as np
import tensorflow as tf

from tff_feddst.benchmarks import sparse_dense
from tff_feddst.methods import feddst_methods
from tff_feddst.methods import model_setup
from tff_feddst.running import settings as settings_lib


def fake_round(times: dict[int, tuple[float, float]], name: str,
               calls: list) -> sparse_dense.TimedRound:
  """A round runner returning fixed (wall, CPU) seconds and logging calls."""

  def run_round(round_num):
    calls.append((name, round_num))
    return times[round_num]

  return run_round


class CompareRoundsTest(tf.test.TestCase):

  def test_alternates_skips_warmup_and_takes_ratios_by_hand(self):
    calls = []
    sparse = fake_round({1: (100.0, 100.0), 2: (3.0, 6.0), 3: (5.0, 2.0)},
                        'sparse', calls)
    dense = fake_round({1: (1.0, 1.0), 2: (4.0, 4.0), 3: (4.0, 4.0)},
                       'dense', calls)
    lines = []
    result = sparse_dense.compare_rounds(sparse, dense, warmup_rounds=1,
                                         timed_rounds=2, log=lines.append)
    self.assertEqual(calls, [('sparse', 1), ('dense', 1), ('sparse', 2),
                             ('dense', 2), ('sparse', 3), ('dense', 3)])
    self.assertEqual(result['rounds'], [2, 3])
    self.assertAllClose(
        [result['sparse_seconds_per_round'], result['dense_seconds_per_round'],
         result['sparse_cpu_seconds_per_round'],
         result['dense_cpu_seconds_per_round']], [4.0, 4.0, 4.0, 4.0])
    self.assertAlmostEqual(result['sparse_to_dense_round_ratio'], 1.0)
    self.assertAlmostEqual(result['sparse_to_dense_cpu_ratio'], 1.0)
    self.assertLen(lines, 3)
    self.assertIn('(warm-up)', lines[0])
    line = sparse_dense.format_line(result)
    self.assertIn('1.000 wall, 1.000 CPU', line)
    self.assertIn('not measured', sparse_dense.format_line(None))

  def test_ratio_by_hand_without_warmup(self):
    calls = []
    result = sparse_dense.compare_rounds(
        fake_round({1: (3.0, 1.0)}, 'sparse', calls),
        fake_round({1: (4.0, 2.0)}, 'dense', calls),
        warmup_rounds=0, timed_rounds=1)
    self.assertAlmostEqual(result['sparse_to_dense_round_ratio'], 0.75)
    self.assertAlmostEqual(result['sparse_to_dense_cpu_ratio'], 0.5)

  def test_refuses_no_timed_round(self):
    with self.assertRaisesRegex(ValueError, 'timed_rounds >= 1'):
      sparse_dense.compare_rounds(lambda r: (1.0, 1.0), lambda r: (1.0, 1.0),
                                  warmup_rounds=1, timed_rounds=0)


class DenseCounterpartTest(tf.test.TestCase):

  def test_is_the_run_at_sparsity_zero_that_never_readjusts(self):
    settings = settings_lib.ExperimentSettings.from_flat(
        model='mnist_net', target_sparsity=0.8, drop_fraction=0.3,
        annealing='constant', rounds_between_readjustments=2,
        client_epochs_per_round=3, clients_per_round=7).resolved()
    dense = sparse_dense.dense_counterpart(settings)
    self.assertEqual(dense.network.target_sparsity, 0.0)
    self.assertEqual(dense.readjustment.drop_fraction, 0.0)
    changed = {name for name, value in dense.flat().items()
               if value != settings.flat()[name]}
    self.assertEqual(changed, {'target_sparsity', 'drop_fraction'})
    schedule = feddst_methods.build_schedule(dense)
    self.assertFalse(any(bool(schedule.should_readjust(t))
                         for t in range(1, 8)))
    # Every mask all ones: the clients run FedAvg's dense local SGD.
    _, initial = model_setup.build_model(dense)
    for index in initial.layout.mask_indices:
      self.assertTrue(np.all(np.asarray(
          initial.weights.non_trainable[index]) == 1))


if __name__ == '__main__':
  tf.test.main()
