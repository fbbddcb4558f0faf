"""The federated view of a data set: which examples each client holds.

`build_federated_data` partitions a `datasets.Dataset` with one of
`partitions.DISTRIBUTIONS` and gives every client a local test split;
`FederatedData` answers per client id, and wraps a split as TFF's
`ClientData`.
"""

from __future__ import annotations

import collections
from typing import Any, Optional, Sequence

import numpy as np

from tff_feddst.data import datasets
from tff_feddst.data import normalized_images
from tff_feddst.data import partitions


class FederatedData:
  """A data set shared out among clients with ids '0' .. 'num_clients-1'.

  Each client has training examples (indices into `dataset.x_train`) and a
  local test split (indices into `dataset.x_test`). The global test set is
  the whole of `dataset.x_test`.
  """

  def __init__(self, dataset: datasets.Dataset,
               train_indices: Sequence[np.ndarray],
               test_indices: Sequence[np.ndarray]):
    """Builds the federated view.

    Args:
      dataset: The centralised data set.
      train_indices: One integer index array into `dataset.x_train` per
        client.
      test_indices: One integer index array into `dataset.x_test` per
        client.

    Raises:
      ValueError: If there are no clients, the two lists differ in length, or
        an index array is not 1-D integer or out of range.
    """
    if len(train_indices) < 1:
      raise ValueError('FederatedData needs at least one client')
    if len(train_indices) != len(test_indices):
      raise ValueError(
          f'{len(train_indices)} train index arrays but {len(test_indices)} '
          'test index arrays; need one of each per client')
    self._dataset = dataset
    self._train_indices = tuple(
        self._checked_indices(indices, len(dataset.y_train), 'train')
        for indices in train_indices)
    self._test_indices = tuple(
        self._checked_indices(indices, len(dataset.y_test), 'test')
        for indices in test_indices)
    self._client_ids = [str(index) for index in range(len(train_indices))]
    self._positions = {
        client_id: position
        for position, client_id in enumerate(self._client_ids)
    }

  @staticmethod
  def _checked_indices(indices: np.ndarray, size: int,
                       split: str) -> np.ndarray:
    """Returns `indices` as a read-only int64 array after range checks."""
    array = np.asarray(indices)
    if array.ndim != 1 or (array.size and
                           not np.issubdtype(array.dtype, np.integer)):
      raise ValueError(
          f'{split} indices must be a 1-D integer array, got {array.dtype} '
          f'{array.shape}')
    if array.size and (array.min() < 0 or array.max() >= size):
      raise ValueError(
          f'{split} indices must lie in [0, {size}), found '
          f'{array.min()}..{array.max()}')
    array = array.astype(np.int64)
    array.setflags(write=False)
    return array

  def _position(self, client_id: str) -> int:
    """Returns the position of `client_id`, raising KeyError if unknown."""
    if client_id not in self._positions:
      raise KeyError(
          f'unknown client id {client_id!r}; ids are the strings '
          f"'0' .. '{len(self._client_ids) - 1}'")
    return self._positions[client_id]

  @property
  def dataset(self) -> datasets.Dataset:
    """The centralised data set the indices point into."""
    return self._dataset

  @property
  def client_ids(self) -> list[str]:
    """Client ids '0' .. 'num_clients-1' (a fresh list)."""
    return list(self._client_ids)

  @property
  def num_clients(self) -> int:
    """Number of clients."""
    return len(self._client_ids)

  def train_indices(self, client_id: str) -> np.ndarray:
    """Returns the client's read-only indices into `dataset.x_train`.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      int64 index array.

    Raises:
      KeyError: If the client id is unknown.
    """
    return self._train_indices[self._position(client_id)]

  def test_indices(self, client_id: str) -> np.ndarray:
    """Returns the client's read-only indices into `dataset.x_test`.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      int64 index array.

    Raises:
      KeyError: If the client id is unknown.
    """
    return self._test_indices[self._position(client_id)]

  def train_arrays(self, client_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the client's training images and labels.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      `(x, y)`: float32 images (n, H, W, C) and int32 labels (n,).

    Raises:
      KeyError: If the client id is unknown.
    """
    indices = self.train_indices(client_id)
    return self._dataset.x_train[indices], self._dataset.y_train[indices]

  def test_arrays(self, client_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the client's local test images and labels.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      `(x, y)`: float32 images (n, H, W, C) and int32 labels (n,).

    Raises:
      KeyError: If the client id is unknown.
    """
    indices = self.test_indices(client_id)
    return self._dataset.x_test[indices], self._dataset.y_test[indices]

  def num_train_examples(self, client_id: str) -> int:
    """Returns how many training examples the client has.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      The count.

    Raises:
      KeyError: If the client id is unknown.
    """
    return len(self.train_indices(client_id))

  def num_test_examples(self, client_id: str) -> int:
    """Returns how many local test examples the client has.

    Args:
      client_id: A client id from `client_ids`.

    Returns:
      The count.

    Raises:
      KeyError: If the client id is unknown.
    """
    return len(self.test_indices(client_id))

  def to_client_data(self, split: str = 'train') -> Any:
    """Wraps one split as a `tff.simulation.datasets.ClientData`.

    Elements are `OrderedDict(x=float32 image (H, W, C), y=int32 label)`,
    unbatched and in index order. The dataset function accepts a Python
    string or a tf.string tensor (it parses the numeric client id), so it
    also works inside `tf.function`, e.g. in
    `create_tf_dataset_from_all_clients`. Images are captured as eager
    tensors, except when the function is traced into a plain graph (TFF's
    `dataset_computation`), where they must become graph constants: that
    path copies the whole split into the graph, so keep it to small data.

    Args:
      split: 'train' for the clients' training examples, 'test' for their
        local test splits.

    Returns:
      A `tff.simulation.datasets.ClientData` with ids `client_ids`.

    Raises:
      ValueError: If `split` is not 'train' or 'test'.
    """
    if split == 'train':
      images, labels = self._dataset.x_train, self._dataset.y_train
      per_client = self._train_indices
    elif split == 'test':
      images, labels = self._dataset.x_test, self._dataset.y_test
      per_client = self._test_indices
    else:
      raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    import tensorflow_federated as tff
    # pylint: enable=g-import-not-at-top

    # The graph needs float32 values: normalise uint8 pixels
    # (`NormalizedImages`) once here.
    images = normalized_images.as_float32_array(images)
    eager_images = tf.convert_to_tensor(images, dtype=tf.float32)
    eager_labels = tf.convert_to_tensor(labels, dtype=tf.int32)
    all_indices = np.concatenate(per_client).astype(np.int64)
    offsets = np.cumsum([0] + [len(indices) for indices in per_client])

    def serializable_dataset_fn(client_id: Any) -> tf.data.Dataset:
      if tf.executing_eagerly() or tf.inside_function():
        source_images, source_labels = eager_images, eager_labels
      else:
        # A plain graph (TFF's `dataset_computation`) cannot capture eager
        # tensors, so the arrays become graph constants there.
        source_images = tf.constant(images, dtype=tf.float32)
        source_labels = tf.constant(labels, dtype=tf.int32)
      position = tf.strings.to_number(client_id, out_type=tf.int64)
      start = tf.gather(offsets, position)
      stop = tf.gather(offsets, position + 1)
      indices = tf.slice(all_indices, [start], [stop - start])
      return tf.data.Dataset.from_tensor_slices(
          collections.OrderedDict(
              x=tf.gather(source_images, indices),
              y=tf.gather(source_labels, indices)))

    return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
        self.client_ids, serializable_dataset_fn)


def build_federated_data(dataset: datasets.Dataset,
                         distribution: str,
                         num_clients: int,
                         seed: int,
                         *,
                         beta: float = 0.1,
                         classes_per_client: int = 2,
                         examples_per_class: int = 20,
                         examples_per_client: Optional[int] = None,
                         min_examples_per_client: int = 1,
                         test_examples_per_client: Optional[int] = None
                        ) -> FederatedData:
  """Partitions a data set among clients and gives each a local test split.

  Args:
    dataset: The centralised data set.
    distribution: One of `partitions.DISTRIBUTIONS`: 'iid'
      (`partitions.partition_iid`), 'dirichlet'
      (`partitions.partition_dirichlet`), 'pathological'
      (`partitions.partition_pathological`) or 'natural'
      (`partitions.partition_natural`: each client is one of the data set's
      own clients, whose local test split is its own test examples; only for
      data sets with `natural_clients`).
    num_clients: Number of clients, >= 1 (for 'natural': how many of the
      natural clients to use, a seeded random subset when fewer than all).
    seed: Seed; the same seed gives the same partition and test splits.
    beta: Dirichlet concentration ('dirichlet' only).
    classes_per_client: Classes per client ('pathological' only).
    examples_per_class: Examples per class per client ('pathological' only).
    examples_per_client: Examples per client ('iid' only); None shares out
      the whole training set.
    min_examples_per_client: Minimum client size ('dirichlet' only).
    test_examples_per_client: Size of every client's local test split. None
      gives each client its share of the test set
      (`partitions.proportional_test_size`). Not used by 'natural'.

  Returns:
    The federated data.

  Raises:
    ValueError: If `distribution` is unknown, `num_clients` < 1, or the
      partition cannot be made.
  """
  partitions.check_num_clients(num_clients)
  partition_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
  partition_rng = np.random.default_rng(partition_seed)
  if distribution == 'natural':
    if dataset.natural_clients is None:
      raise ValueError(
          f"distribution 'natural' needs a data set whose examples come with "
          f'their clients ({", ".join(datasets.NATURAL_DATASET_NAMES)}); '
          f'{dataset.name} has none')
    train_indices, test_indices = partitions.partition_natural(
        dataset.natural_clients, num_clients, partition_rng)
    return FederatedData(dataset, train_indices, test_indices)
  if distribution == 'iid':
    train_indices = partitions.partition_iid(dataset.y_train, num_clients,
                                             partition_rng, examples_per_client)
  elif distribution == 'dirichlet':
    train_indices = partitions.partition_dirichlet(dataset.y_train,
                                                   num_clients, beta,
                                                   partition_rng,
                                                   min_examples_per_client)
  elif distribution == 'pathological':
    train_indices = partitions.partition_pathological(dataset.y_train,
                                                      num_clients,
                                                      classes_per_client,
                                                      examples_per_class,
                                                      partition_rng)
  else:
    raise ValueError(
        f'unknown distribution {distribution!r}; expected one of '
        f'{", ".join(partitions.DISTRIBUTIONS)}')
  test_rng = np.random.default_rng(test_seed)
  total_train_examples = sum(len(indices) for indices in train_indices)
  test_indices = []
  for indices in train_indices:
    client_labels = dataset.y_train[indices]
    if test_examples_per_client is None:
      num_test = partitions.proportional_test_size(client_labels,
                                                   dataset.y_test,
                                                   total_train_examples)
    else:
      num_test = test_examples_per_client if len(indices) else 0
    test_indices.append(
        partitions.client_test_indices(client_labels, dataset.y_test,
                                       num_test, test_rng))
  return FederatedData(dataset, train_indices, test_indices)
