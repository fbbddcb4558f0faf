"""Tests for tff_feddst.data.client_files: examples read back from files."""

import os
import subprocess

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.data import client_files
from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.running import client_sampling
from tff_feddst.running import execution

NUM_CLIENTS = 4


def federated_data() -> federated.FederatedData:
  """4 clients of 7 random 3x2x2 images (client 3 has none), scattered."""
  rng = np.random.default_rng(0)
  x_train = rng.standard_normal((21, 3, 2, 2)).astype(np.float32)
  x_train[0, 0, 0, 0] = -0.0  # The bits, not only the values, must survive.
  dataset = datasets.Dataset(
      name='fashion_mnist', x_train=x_train,
      y_train=rng.integers(0, 10, 21).astype(np.int32),
      x_test=np.zeros((NUM_CLIENTS, 3, 2, 2), np.float32),
      y_test=np.zeros(NUM_CLIENTS, np.int32), num_classes=10)
  order = rng.permutation(21)
  train_indices = [order[0:7], order[7:14], order[14:21],
                   np.array([], np.int64)]
  return federated.FederatedData(
      dataset, train_indices, [np.array([c]) for c in range(NUM_CLIENTS)])


def batches(dataset: tf.data.Dataset) -> list[tuple[bytes, list[int]]]:
  return [(x.numpy().tobytes(), y.numpy().tolist()) for x, y in dataset]


class ClientFilesTest(tf.test.TestCase):

  def test_examples_are_the_arrays_bit_for_bit_in_order(self):
    clients = federated_data()
    with client_files.ClientFiles(clients, self.get_temp_dir()) as files:
      for client_id in clients.client_ids:
        examples, count = files.examples(client_id)
        x, y = clients.train_arrays(client_id)
        self.assertEqual(count, len(x))
        got = list(examples.as_numpy_iterator())
        self.assertEqual([image.tobytes() for image, _ in got],
                         [image.tobytes() for image in x])
        self.assertEqual([int(label) for _, label in got], y.tolist())
        self.assertEqual(
            examples.element_spec,
            tf.data.Dataset.from_tensor_slices((x, y)).element_spec)

  def test_round_datasets_give_the_same_batches_as_in_memory(self):
    clients = federated_data()
    ids = ['2', '0', '2', '3']  # A repeated client draws another order.
    with client_files.ClientFiles(clients, self.get_temp_dir()) as files:
      from_files = client_sampling.client_datasets(clients, ids, 3, 5, 2,
                                                   files)
      in_memory = client_sampling.client_datasets(clients, ids, 3, 5, 2)
      for got, want in zip(from_files, in_memory):
        self.assertEqual(got.element_spec, want.element_spec)
        # Two passes: each pass reshuffles, alike.
        self.assertEqual(batches(got), batches(want))
        self.assertEqual(batches(got), batches(want))
      sampler = client_sampling.ClientSampler(clients, 2, 3, seed=1,
                                              client_files=files)
      plain = client_sampling.ClientSampler(clients, 2, 3, seed=1)
      for got, want in zip(sampler.sample(4).datasets,
                           plain.sample(4).datasets):
        self.assertEqual(batches(got), batches(want))

  def test_a_worker_reads_the_same_batches(self):
    clients = federated_data()
    with client_files.ClientFiles(clients, self.get_temp_dir()) as files:
      dataset = client_sampling.client_datasets(clients, ['1'], 2, 3, 1,
                                                files)[0]
      element = tff.types.tensorflow_to_type(dataset.element_spec)

      @tff.tensorflow.computation(tff.types.SequenceType(element))
      def checksum(data):
        # Exact (integer) and order-sensitive: bits times batch number.
        return data.enumerate().reduce(
            tf.constant(0, tf.int64),
            lambda total, item: total + (item[0] + 1) * tf.reduce_sum(
                tf.cast(tf.bitcast(item[1][0], tf.int32), tf.int64)))

      with execution.local_execution_context():
        from_worker = checksum(dataset)
      expected = sum(
          (number + 1) * int(np.sum(x.view(np.int32).astype(np.int64)))
          for number, (x, _) in enumerate(dataset.as_numpy_iterator()))
      self.assertEqual(int(from_worker), expected)

  def test_directories_of_dead_runs_are_removed_and_live_ones_kept(self):
    parent = self.create_tempdir().full_path
    finished = subprocess.Popen(['true'])
    finished.wait()
    dead = os.path.join(parent, f'tff_feddst_clients_{finished.pid}_abc')
    live = os.path.join(parent, f'tff_feddst_clients_{os.getppid()}_abc')
    other = os.path.join(parent, 'tff_feddst_clients_x')
    for path in (dead, live, other):
      os.mkdir(path)
    with open(os.path.join(dead, 'client_0.images'), 'wb') as f:
      f.write(b'1234')
    with client_files.ClientFiles(federated_data(), parent) as files:
      self.assertFalse(os.path.exists(dead))
      self.assertTrue(os.path.isdir(live))
      self.assertTrue(os.path.isdir(other))
      self.assertTrue(os.path.basename(files.directory).startswith(
          f'tff_feddst_clients_{os.getpid()}_'))

  def test_close_removes_the_files(self):
    files = client_files.ClientFiles(federated_data(), self.get_temp_dir())
    files.examples('0')
    self.assertNotEmpty(os.listdir(files.directory))
    files.close()
    self.assertFalse(os.path.exists(files.directory))
    files.close()  # Idempotent.
    with self.assertRaisesRegex(ValueError, 'removed'):
      files.examples('0')


if __name__ == '__main__':
  tf.test.main()
