"""Tests for tff_feddst.running.client_sampling: seeded ids with datasets."""

import numpy as np
import tensorflow as tf

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.running import client_sampling

NUM_CLIENTS = 8


def federated_data() -> federated.FederatedData:
  """8 clients of 5 examples; example i has label i, so data shows its owner.
  """
  num_examples = 5 * NUM_CLIENTS
  dataset = datasets.Dataset(
      name='fashion_mnist',
      x_train=np.arange(num_examples, dtype=np.float32).reshape(-1, 1, 1, 1),
      y_train=np.arange(num_examples, dtype=np.int32),
      x_test=np.zeros((NUM_CLIENTS, 1, 1, 1), np.float32),
      y_test=np.zeros(NUM_CLIENTS, np.int32), num_classes=num_examples)
  return federated.FederatedData(
      dataset, [np.arange(5 * c, 5 * c + 5) for c in range(NUM_CLIENTS)],
      [np.array([c]) for c in range(NUM_CLIENTS)])


def labels_of(dataset: tf.data.Dataset) -> list[int]:
  return sorted(int(y) for _, batch in dataset for y in batch.numpy())


class ClientSamplerTest(tf.test.TestCase):

  def test_same_ids_as_the_seeded_sampling_and_dropout(self):
    clients = federated_data()
    sampler = client_sampling.ClientSampler(clients, 4, batch_size=2, seed=7,
                                            dropout_rate=0.5)
    for round_num in (1, 2, 3):
      expected_sampled = client_sampling.sample_clients(
          clients.client_ids, 4, 7, round_num)
      expected_reporting = client_sampling.drop_out(expected_sampled, 0.5, 7,
                                                    round_num)
      got = sampler.sample(round_num)
      self.assertEqual(got.round_num, round_num)
      self.assertEqual(got.sampled_ids, tuple(expected_sampled))
      self.assertEqual(got.client_ids, tuple(expected_reporting))
      self.assertEqual(got.num_dropped,
                       len(expected_sampled) - len(expected_reporting))
    # The run seed changes the draw.
    other = client_sampling.ClientSampler(clients, 4, 2, seed=8)
    self.assertNotEqual(
        [other.sample(r).sampled_ids for r in (1, 2, 3)],
        [sampler.sample(r).sampled_ids for r in (1, 2, 3)])

  def test_each_dataset_is_the_data_of_its_client(self):
    clients = federated_data()
    sampler = client_sampling.ClientSampler(clients, 3, batch_size=2, seed=0)
    round_clients = sampler.sample(5)
    self.assertLen(round_clients.datasets, 3)
    self.assertEqual(round_clients.client_ids, round_clients.sampled_ids)
    # The shuffle order is that of `client_datasets` for the round (first
    # pass over fresh datasets: each pass reshuffles).
    expected = client_sampling.client_datasets(
        clients, round_clients.client_ids, 2, 0, 5)
    for got, want in zip(round_clients.datasets, expected):
      self.assertEqual([b.numpy().tolist() for _, b in got],
                       [b.numpy().tolist() for _, b in want])
    for client_id, dataset in zip(round_clients.client_ids,
                                  round_clients.datasets):
      # Client c holds examples 5c .. 5c+4, labelled by their index.
      first = 5 * int(client_id)
      self.assertEqual(labels_of(dataset), list(range(first, first + 5)))

  def test_every_client_dropped_is_an_empty_round_with_a_warning(self):
    sampler = client_sampling.ClientSampler(federated_data(), 2, 2, seed=0,
                                            dropout_rate=0.999999)
    with self.assertLogs(level='WARNING') as logs:
      round_clients = sampler.sample(1)
    self.assertLen(round_clients.sampled_ids, 2)
    self.assertEqual((round_clients.client_ids, round_clients.datasets),
                     ((), ()))
    self.assertIn('Round 1: none of the 2 sampled clients reported',
                  '\n'.join(logs.output))

  def test_with_replacement_draws_repeats_with_other_shuffles(self):
    clients = federated_data()
    # 8 of 8 with replacement: numpy's seeded draw for round 1 (seed 0).
    expected = [clients.client_ids[i] for i in np.random.default_rng(
        [0, 1]).choice(NUM_CLIENTS, size=NUM_CLIENTS, replace=True)]
    sampler = client_sampling.ClientSampler(clients, NUM_CLIENTS, 5, seed=0,
                                            with_replacement=True)
    round_clients = sampler.sample(1)
    self.assertEqual(round_clients.sampled_ids, tuple(expected))
    repeated = [c for c in set(expected) if expected.count(c) > 1]
    self.assertNotEmpty(repeated)  # 8 of 8 with replacement repeats here.
    client_id = repeated[0]
    first, second = [i for i, c in enumerate(expected) if c == client_id][:2]
    orders = [[b.numpy().tolist() for _, b in round_clients.datasets[i]]
              for i in (first, second)]
    # The same 5 examples, in another order the second time.
    self.assertEqual(sorted(orders[0][0]), sorted(orders[1][0]))
    self.assertNotEqual(orders[0], orders[1])
    # Without replacement: 8 distinct clients, as before the option.
    plain = client_sampling.ClientSampler(clients, NUM_CLIENTS, 5, seed=0)
    self.assertLen(set(plain.sample(1).sampled_ids), NUM_CLIENTS)

  def test_too_many_clients_per_round_raises_at_construction(self):
    with self.assertRaisesRegex(ValueError,
                                r'clients_per_round must be in \[1, 8\]'):
      client_sampling.ClientSampler(federated_data(), 9, 2, seed=0)


if __name__ == '__main__':
  tf.test.main()
