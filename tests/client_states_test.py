"""Tests of the per-client state store (process/client_states.py)."""

import os

import numpy as np
import tensorflow as tf

from tff_feddst.outputs import checkpoints
from tff_feddst.process import client_states

SHAPES = ((2, 3), (5,))  # 11 positions: 2 packed bytes.


class PackingTest(tf.test.TestCase):

  def test_pack_by_hand(self):
    masks = [np.array([[1, 0, 1], [1, 0, 0]], np.float32),
             np.array([1, 1, 0, 0, 1], np.float32)]
    # Bits 1 0 1 1 0 0 1 1 | 0 0 1 (then 5 zero bits of padding).
    expected = np.array([0b10110011, 0b00100000], np.uint8)
    self.assertAllEqual(client_states.pack_masks_numpy(masks), expected)
    self.assertAllEqual(client_states.pack_masks(
        [tf.constant(m) for m in masks]), expected)
    for unpacked in (client_states.unpack_masks_numpy(expected, SHAPES),
                     [m.numpy() for m in client_states.unpack_masks(
                         tf.constant(expected), SHAPES)]):
      for got, want in zip(unpacked, masks):
        self.assertAllEqual(got, want)

  def test_round_trip_on_random_masks(self):
    rng = np.random.default_rng(0)
    shapes = ((3, 3, 1, 4), (7, 5), (13,))
    masks = [(rng.random(s) < 0.3).astype(np.float32) for s in shapes]
    packed = client_states.pack_masks([tf.constant(m) for m in masks])
    self.assertAllEqual(packed, client_states.pack_masks_numpy(masks))
    for got, want in zip(client_states.unpack_masks(packed, shapes), masks):
      self.assertAllEqual(got, want)

  def test_memory_bound_is_one_bit_per_position(self):
    sizes = [6, 5]
    self.assertEqual(client_states.packed_size(sizes), 2)
    self.assertEqual(client_states.bytes_per_client(sizes), 2 + 4)
    # The Fashion-MNIST net's 261,749 prunable positions: 32,719 bytes.
    self.assertEqual(client_states.packed_size([261749]), 32719)
    store = client_states.initial_states(10, SHAPES)
    self.assertEqual(store.mask_bits.nbytes + store.num_prunes.nbytes,
                     10 * client_states.bytes_per_client([6, 5]))


class RowsTest(tf.test.TestCase):

  def test_rows_of_disjoint_slots_sum_and_scatter(self):
    store = client_states.initial_states(4, SHAPES)
    new_a = client_states.pack_masks_numpy(
        [np.zeros((2, 3)), np.array([1, 0, 0, 0, 0])])
    new_b = client_states.pack_masks_numpy(
        [np.ones((2, 3)), np.array([0, 0, 0, 0, 1])])
    # Three slots: client 2 in slot 0, client 0 in slot 2, slot 1 unused.
    rows_a = client_states.slot_rows(tf.constant(0), 3, tf.constant(2),
                                     tf.constant(new_a), tf.constant(5))
    rows_b = client_states.slot_rows(tf.constant(2), 3, tf.constant(0),
                                     tf.constant(new_b), tf.constant(1))
    summed = tf.nest.map_structure(tf.add, rows_a, rows_b)
    self.assertAllEqual(summed.owner, [3, 0, 1])
    updated = client_states.scatter_rows(
        client_states.ClientStates(tf.constant(store.mask_bits),
                                   tf.constant(store.num_prunes)), summed)
    self.assertAllEqual(updated.mask_bits[2], new_a)
    self.assertAllEqual(updated.mask_bits[0], new_b)
    self.assertAllEqual(updated.mask_bits[1], store.mask_bits[1])
    self.assertAllEqual(updated.mask_bits[3], store.mask_bits[3])
    self.assertAllEqual(updated.num_prunes, [1, 0, 5, 0])

  def test_client_inputs_hand_each_client_its_row(self):
    store = client_states.initial_states(3, SHAPES)
    store.mask_bits[1] = [1, 2]
    store.num_prunes[1] = 7
    inputs = client_states.client_inputs(store, [1, 0], ['d1', 'd0'])
    self.assertEqual([i['data'] for i in inputs], ['d1', 'd0'])
    first = inputs[0]['state'].get_single_element()
    self.assertEqual(list(first), list(client_states.ClientInput._fields))
    self.assertEqual((int(first['slot']), int(first['client_index']),
                      int(first['num_prunes'])), (0, 1, 7))
    self.assertAllEqual(first['mask_bits'], [1, 2])
    with self.assertRaisesRegex(ValueError, 'sampled twice'):
      client_states.client_inputs(store, [1, 1], ['a', 'b'])

  def test_store_round_trips_through_a_checkpoint(self):
    store = client_states.initial_states(5, SHAPES)
    store.mask_bits[3] = [0b10100000, 0b01000000]
    store.num_prunes[3] = 2
    state = (np.arange(3, dtype=np.float32), store)
    directory = self.create_tempdir().full_path
    checkpoints.save_checkpoint(directory, 4, state, 10, 20)
    loaded = checkpoints.load_checkpoint(
        checkpoints.checkpoint_path(directory, 4), state)
    self.assertEqual(loaded.round_num, 4)
    self.assertAllEqual(loaded.state[1].mask_bits, store.mask_bits)
    self.assertEqual(loaded.state[1].mask_bits.dtype, np.uint8)
    self.assertAllEqual(loaded.state[1].num_prunes, store.num_prunes)
    self.assertTrue(os.path.exists(checkpoints.checkpoint_path(directory, 4)))


class EpochCountTest(tf.test.TestCase):
  """The lifetime epoch counts: inputs, rows, scatter and a checkpoint."""

  def test_counts_round_trip_over_rounds_with_repeated_draws(self):
    epochs = 2
    store = tf.constant(client_states.initial_epoch_counts(4))
    # Round 1: clients 1, 3, 1 (client 1 drawn twice); round 2: 3, 0.
    expected_starts = [[0, 0, 2], [2, 0]]
    for draws, starts in zip(([1, 3, 1], [3, 0]), expected_starts):
      inputs = client_states.epoch_count_inputs(
          store.numpy(), draws, [f'd{i}' for i in draws], epochs)
      self.assertEqual([i['data'] for i in inputs], [f'd{i}' for i in draws])
      rows = []
      got_starts = []
      for client_input in inputs:
        element = client_input['state'].get_single_element()
        self.assertEqual(list(element),
                         list(client_states.EpochCountInput._fields))
        got_starts.append(int(element['epochs_done']))
        # What a client sends back: its count after its epochs.
        rows.append(client_states.epoch_count_rows(
            element['slot'], 3, element['client_index'],
            element['epochs_done'] + epochs))
      self.assertEqual(got_starts, starts)
      summed = tf.nest.map_structure(lambda *r: tf.add_n(r), *rows)
      store = client_states.scatter_epoch_counts(store, summed)
    # Client 1: 2 draws x 2 epochs; client 3: 2 rounds; client 0: 1; 2: 0.
    self.assertAllEqual(store, [2, 4, 0, 4])
    state = (np.zeros(2, np.float32), store.numpy())
    directory = self.create_tempdir().full_path
    checkpoints.save_checkpoint(directory, 2, state, 10, 20)
    loaded = checkpoints.load_checkpoint(
        checkpoints.checkpoint_path(directory, 2), state)
    self.assertAllEqual(loaded.state[1], [2, 4, 0, 4])
    self.assertEqual(loaded.state[1].dtype, np.int32)


if __name__ == '__main__':
  tf.test.main()
