"""Tests for lifetime_work: the authors' lifetime epoch counter as a process.

begin 3, interval 4, 2 local epochs per draw, 6 clients, 3 slots per round,
every round a readjustment round. A client readjusts after an epoch whose
lifetime count c (before it) is 3, 7, 11, ...:
  round 1, clients 4, 1, 4 (4 drawn twice; counts 0, 0, then 2 for the
    second draw): only the second draw of client 4 (epochs 2, 3) readjusts,
    after its epoch 3; the store becomes [0, 2, 0, 0, 4, 0] (a client drawn
    twice keeps its last draw's count).
  round 2, clients 1, 0, 5 (counts 2, 0, 0): client 1 (epochs 2, 3)
    readjusts; the store becomes [2, 4, 0, 0, 4, 2].
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.methods import fed_dst
from tff_feddst.process import client_states
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import lifetime_work
from tff_feddst.sparse import schedules

NUM_CLIENTS = 6
NUM_SLOTS = 3
EPOCHS = 2


class LifetimeClientWorkTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model_fn = staticmethod(models.get_model_fn('mnist_net', seed=1))
    cls.initial = fed_dst.build_initial_model(cls.model_fn, 0.8, 'erk',
                                              seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=20).astype(np.int32)
    cls.dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    cls.config = client_work.ClientConfig(
        num_epochs=EPOCHS, readjust_counter='client_lifetime',
        readjust_counter_begin=3, readjust_counter_interval=4)
    cls.schedule = schedules.ReadjustmentSchedule(
        drop_fraction=0.2, rounds_between_readjustments=1, end_round=10,
        annealing='constant')
    cls.weights_type = distributor.initial_weights_computation(
        cls.initial.weights).type_signature.result
    cls.data_type = tff.SequenceType(
        tff.types.tensorflow_to_type(cls.dataset.element_spec))

  def build(self, **overrides):
    arguments = dict(
        model_fn=self.model_fn, layout=self.initial.layout,
        num_active=self.initial.num_active, schedule=self.schedule,
        config=self.config, model_weights_type=self.weights_type,
        data_type=self.data_type, upload_encoding=None,
        num_clients=NUM_CLIENTS, num_slots=NUM_SLOTS)
    arguments.update(overrides)
    return lifetime_work.build_lifetime_client_work(**arguments)

  def run_round(self, work, state, client_indices):
    inputs = client_states.epoch_count_inputs(
        state.epochs_done, client_indices,
        [self.dataset] * len(client_indices), EPOCHS)
    return work.next(state, [self.initial.weights] * len(client_indices),
                     inputs)

  def changed_masks(self, results) -> list[bool]:
    """Per client: does its upload's mask differ from the global mask?"""
    global_masks = [self.initial.weights.non_trainable[i]
                    for i in self.initial.layout.mask_indices]
    changed = []
    for result in results:
      _, upload_masks, _ = encoding.decode(
          result.update, self.initial.layout.kernel_shapes)
      changed.append(any(
          not np.array_equal(np.asarray(got), np.asarray(want))
          for got, want in zip(upload_masks, global_masks)))
    return changed

  def test_counts_and_readjustments_over_two_rounds(self):
    work = self.build()
    state = work.initialize()
    self.assertEqual(int(state.round_num), 0)
    self.assertAllEqual(state.epochs_done, [0] * NUM_CLIENTS)

    first = self.run_round(work, state, [4, 1, 4])
    self.assertEqual(int(first.state.round_num), 1)
    self.assertAllEqual(first.state.epochs_done, [0, 2, 0, 0, 4, 0])
    self.assertEqual(int(first.measurements['clients_readjusted']), 1)
    # 'accumulated' scores: both minibatches of the readjusting epoch.
    self.assertEqual(int(first.measurements['grow_score_examples']), 20)
    self.assertEqual(float(first.measurements['num_examples']), 60.0)
    self.assertEqual(self.changed_masks(first.result), [False, False, True])
    self.assertGreater(int(first.measurements['num_regrown']), 0)

    second = self.run_round(work, first.state, [1, 0, 5])
    self.assertEqual(int(second.state.round_num), 2)
    self.assertAllEqual(second.state.epochs_done, [2, 4, 0, 0, 4, 2])
    self.assertEqual(int(second.measurements['clients_readjusted']), 1)
    self.assertEqual(self.changed_masks(second.result), [True, False, False])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'num_clients and num_slots'):
      self.build(num_slots=0)
    with self.assertRaisesRegex(ValueError, 'build_lifetime_client_work'):
      client_work.build_client_work(
          self.model_fn, self.initial.layout, self.initial.num_active,
          self.schedule, self.config, self.weights_type, self.data_type)


if __name__ == '__main__':
  tf.test.main()
