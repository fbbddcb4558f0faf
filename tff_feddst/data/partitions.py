"""Ways to share a data set's examples out among simulated clients.

The splits the FedDST reference code makes, here with exact counts:

* `iid`: shuffle, then cut into equal slices (`partition_iid`).
* `dirichlet`: for every class, split its examples among the clients in
  proportions drawn from Dirichlet(beta); small beta gives each client a few
  dominant classes (`partition_dirichlet`).
* `pathological` (the reference calls it 'lotteryfl'): every client gets
  exactly `classes_per_client` distinct classes with exactly
  `examples_per_class` examples of each (`partition_pathological`).
* `natural`: for data sets whose examples come with their client (federated
  EMNIST: the writer of each character), every client is one such natural
  client, with its own training and its own test examples
  (`partition_natural`).

In the other splits, each client also gets a local test split drawn from
the global test set with the client's own training class proportions
(`client_test_indices`, of size `proportional_test_size` by default), so
that per-client accuracy measures how well a model serves that client's
distribution.

Every function takes labels or index arrays and a `np.random.Generator` and
returns index arrays; none touches images.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tff_feddst.data import datasets

DISTRIBUTIONS = ('dirichlet', 'iid', 'natural', 'pathological')


def _as_labels(labels: np.ndarray) -> np.ndarray:
  """Validates class labels and returns them as an int64 array.

  Raises:
    ValueError: If `labels` is not 1-D, not integer, or has negative values.
  """
  array = np.asarray(labels)
  if array.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {array.shape}')
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {array.dtype}')
  if array.size and array.min() < 0:
    raise ValueError(f'labels must be >= 0, found {array.min()}')
  return array.astype(np.int64)


def check_num_clients(num_clients: int) -> None:
  """Raises ValueError unless `num_clients` is a positive integer.

  Args:
    num_clients: The number of clients asked for.

  Raises:
    ValueError: If `num_clients` < 1.
  """
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}')


def _indices_by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
  """Maps every class present in `labels` to its example indices, ascending."""
  return {
      int(label): np.flatnonzero(labels == label)
      for label in np.unique(labels)
  }


def partition_iid(labels: np.ndarray,
                  num_clients: int,
                  rng: np.random.Generator,
                  examples_per_client: Optional[int] = None
                 ) -> list[np.ndarray]:
  """Shuffles the examples and cuts them into equal client slices.

  Args:
    labels: 1-D integer labels of the training set (only its length matters).
    num_clients: Number of clients.
    rng: Source of randomness.
    examples_per_client: Examples per client; the first
      `num_clients * examples_per_client` shuffled examples are used. None
      shares out all examples, client sizes differing by at most one.

  Returns:
    One sorted int64 index array per client; the arrays are disjoint.

  Raises:
    ValueError: If there are too few examples or the arguments are invalid.
  """
  labels = _as_labels(labels)
  check_num_clients(num_clients)
  num_examples = len(labels)
  if examples_per_client is None:
    if num_examples < num_clients:
      raise ValueError(
          f'cannot split {num_examples} examples among {num_clients} clients '
          'with at least one example each')
    parts = np.array_split(rng.permutation(num_examples), num_clients)
  else:
    if examples_per_client < 1:
      raise ValueError(
          f'examples_per_client must be >= 1, got {examples_per_client}')
    needed = num_clients * examples_per_client
    if needed > num_examples:
      raise ValueError(
          f'need {num_clients} clients x {examples_per_client} examples = '
          f'{needed} examples, but only {num_examples} are available')
    parts = rng.permutation(num_examples)[:needed].reshape(
        num_clients, examples_per_client)
  return [np.sort(part).astype(np.int64) for part in parts]


def _dirichlet_counts(class_sizes: np.ndarray, num_clients: int, beta: float,
                      rng: np.random.Generator) -> Optional[np.ndarray]:
  """Draws how many examples of each class every client gets.

  Each class's examples are cut at the floored cumulative Dirichlet
  proportions, so every example goes to exactly one client.

  Returns:
    int64 array of shape (num_classes, num_clients) whose rows sum to
    `class_sizes`, or None if the draw was not finite.
  """
  proportions = rng.dirichlet(
      np.full(num_clients, beta), size=len(class_sizes))
  if not np.all(np.isfinite(proportions)):
    return None
  cut_points = np.floor(
      np.cumsum(proportions, axis=1) * class_sizes[:, np.newaxis])
  cut_points = np.minimum(cut_points.astype(np.int64),
                          class_sizes[:, np.newaxis])
  cut_points[:, -1] = class_sizes
  return np.diff(cut_points, axis=1, prepend=0)


def partition_dirichlet(labels: np.ndarray,
                        num_clients: int,
                        beta: float,
                        rng: np.random.Generator,
                        min_examples_per_client: int = 1,
                        max_attempts: int = 10_000) -> list[np.ndarray]:
  """Splits every class among the clients in Dirichlet(beta) proportions.

  As in the reference, one proportion vector p_c ~ Dirichlet(beta, ..., beta)
  is drawn per class c, and client k receives a p_c[k] share of class c's
  (here shuffled) examples; every example is assigned. The reference keeps
  clients that end up empty and later skips them; here the whole draw is
  repeated until every client has at least `min_examples_per_client`
  examples, so all `num_clients` clients are usable.

  Args:
    labels: 1-D integer labels of the training set.
    num_clients: Number of clients.
    beta: Dirichlet concentration, > 0. Small values (e.g. 0.1) give each
      client a few dominant classes; large values approach an IID split.
    rng: Source of randomness.
    min_examples_per_client: Fewest examples any client may get.
    max_attempts: How many Dirichlet draws to try before giving up.

  Returns:
    One sorted int64 index array per client; the arrays are disjoint and
    together cover every example.

  Raises:
    ValueError: If the arguments are invalid or no draw within
      `max_attempts` gives every client its minimum.
  """
  labels = _as_labels(labels)
  check_num_clients(num_clients)
  if not beta > 0:
    raise ValueError(f'beta must be > 0, got {beta}')
  if min_examples_per_client < 0:
    raise ValueError(
        f'min_examples_per_client must be >= 0, got {min_examples_per_client}')
  if len(labels) == 0:
    raise ValueError('labels is empty; there is nothing to partition')
  if num_clients * min_examples_per_client > len(labels):
    raise ValueError(
        f'{num_clients} clients x {min_examples_per_client} examples minimum '
        f'exceeds the {len(labels)} available examples')
  class_indices = _indices_by_class(labels)
  class_sizes = np.array([len(indices) for indices in class_indices.values()],
                         dtype=np.int64)
  for _ in range(max_attempts):
    counts = _dirichlet_counts(class_sizes, num_clients, beta, rng)
    if counts is not None and (counts.sum(axis=0).min() >=
                               min_examples_per_client):
      break
  else:
    raise ValueError(
        f'no Dirichlet(beta={beta}) draw in {max_attempts} attempts gave all '
        f'{num_clients} clients >= {min_examples_per_client} examples; use a '
        'larger beta, fewer clients or a smaller min_examples_per_client')
  client_parts = [[] for _ in range(num_clients)]
  for indices, class_counts in zip(class_indices.values(), counts):
    shuffled = rng.permutation(indices)
    for client_index, part in enumerate(
        np.split(shuffled, np.cumsum(class_counts)[:-1])):
      client_parts[client_index].append(part)
  return [np.sort(np.concatenate(parts)).astype(np.int64)
          for parts in client_parts]


def _can_serve(capacities: np.ndarray, num_clients: int,
               classes_per_client: int) -> bool:
  """Whether `num_clients` clients can each get distinct classes.

  Each client needs `classes_per_client` distinct classes and class c can
  serve `capacities[c]` clients. By the Gale-Ryser theorem (all clients
  asking for the same number of classes) this is possible exactly when
  sum_c min(capacities[c], num_clients) >= num_clients * classes_per_client.
  """
  return (np.minimum(capacities, num_clients).sum() >=
          num_clients * classes_per_client)


def _choose_client_classes(capacities: np.ndarray, classes_per_client: int,
                           clients_after: int,
                           rng: np.random.Generator) -> np.ndarray:
  """Picks distinct classes for one client, keeping the rest servable.

  Classes are drawn with probability proportional to how many more clients
  they can serve, which keeps usage balanced; if a few such draws would leave
  the remaining `clients_after` clients unservable, the classes with most
  capacity left are taken (ties broken at random), which always keeps them
  servable.

  Returns:
    The chosen class positions, ascending.
  """
  for _ in range(16):
    chosen = rng.choice(
        len(capacities),
        size=classes_per_client,
        replace=False,
        p=capacities / capacities.sum())
    remaining = capacities.copy()
    remaining[chosen] -= 1
    if _can_serve(remaining, clients_after, classes_per_client):
      return np.sort(chosen)
  tie_break = rng.permutation(len(capacities))
  by_capacity = tie_break[np.argsort(-capacities[tie_break], kind='stable')]
  return np.sort(by_capacity[:classes_per_client])


def partition_pathological(labels: np.ndarray, num_clients: int,
                           classes_per_client: int, examples_per_class: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
  """Gives every client a few classes with a fixed number of examples each.

  The reference ('lotteryfl') hands out random label-sorted shards; here
  each client gets exactly `classes_per_client` distinct classes and exactly
  `examples_per_class` examples of each, no example going to two clients.

  Args:
    labels: 1-D integer labels of the training set.
    num_clients: Number of clients.
    classes_per_client: Distinct classes per client.
    examples_per_class: Examples of each of its classes a client gets.
    rng: Source of randomness.

  Returns:
    One sorted int64 index array per client, of length
    `classes_per_client * examples_per_class`; the arrays are disjoint.

  Raises:
    ValueError: If the arguments are invalid or there are not enough
      examples to serve every client.
  """
  labels = _as_labels(labels)
  check_num_clients(num_clients)
  class_indices = _indices_by_class(labels)
  num_classes = len(class_indices)
  if not 1 <= classes_per_client <= num_classes:
    raise ValueError(
        f'classes_per_client must be in [1, {num_classes}] (the number of '
        f'classes present), got {classes_per_client}')
  if examples_per_class < 1:
    raise ValueError(
        f'examples_per_class must be >= 1, got {examples_per_class}')
  capacities = np.array(
      [len(indices) // examples_per_class
       for indices in class_indices.values()],
      dtype=np.int64)
  if not _can_serve(capacities, num_clients, classes_per_client):
    class_sizes = {label: len(indices)
                   for label, indices in class_indices.items()}
    raise ValueError(
        f'not enough examples for {num_clients} clients x '
        f'{classes_per_client} classes x {examples_per_class} examples: the '
        f'class sizes {class_sizes} allow only '
        f'{np.minimum(capacities, num_clients).sum()} of the '
        f'{num_clients * classes_per_client} client-class slots')
  clients_of_class = [[] for _ in range(num_classes)]
  for client_index in range(num_clients):
    chosen = _choose_client_classes(capacities, classes_per_client,
                                    num_clients - client_index - 1, rng)
    capacities[chosen] -= 1
    for class_position in chosen:
      clients_of_class[class_position].append(client_index)
  client_parts = [[] for _ in range(num_clients)]
  for indices, clients in zip(class_indices.values(), clients_of_class):
    shuffled = rng.permutation(indices)
    for slot, client_index in enumerate(clients):
      client_parts[client_index].append(
          shuffled[slot * examples_per_class:(slot + 1) * examples_per_class])
  return [np.sort(np.concatenate(parts)).astype(np.int64)
          for parts in client_parts]


def partition_natural(natural_clients: datasets.NaturalClients,
                      num_clients: int, rng: np.random.Generator
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Makes every client one natural client (e.g. one EMNIST writer).

  Only natural clients with at least one training example are eligible.
  When there are more of them than `num_clients`, a uniformly random subset
  is used; the clients keep the order of `natural_clients.names`.

  Args:
    natural_clients: The client of every example.
    num_clients: How many natural clients to use, in [1, eligible].
    rng: Source of randomness (only used to pick a subset).

  Returns:
    `(train_indices, test_indices)`: per client, the sorted int64 indices of
    its own training and its own test examples.

  Raises:
    ValueError: If `num_clients` is < 1 or exceeds the eligible clients.
  """
  check_num_clients(num_clients)
  num_names = len(natural_clients.names)
  train_clients = np.asarray(natural_clients.train_clients, dtype=np.int64)
  test_clients = np.asarray(natural_clients.test_clients, dtype=np.int64)
  eligible = np.flatnonzero(np.bincount(train_clients, minlength=num_names))
  if num_clients > len(eligible):
    raise ValueError(
        f'{num_clients} clients requested but the data has only '
        f'{len(eligible)} natural clients with training examples')
  chosen = eligible if num_clients == len(eligible) else np.sort(
      rng.choice(eligible, size=num_clients, replace=False))

  def grouped(clients: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(clients, kind='stable')  # Ascending within a client.
    bounds = np.concatenate(
        [[0], np.cumsum(np.bincount(clients, minlength=num_names))])
    return [order[bounds[c]:bounds[c + 1]].astype(np.int64) for c in chosen]

  return grouped(train_clients), grouped(test_clients)


def _allocate_proportionally(total: int,
                             weights: np.ndarray) -> np.ndarray:
  """Splits `total` into integers proportional to `weights`.

  Uses the largest-remainder method in exact integer arithmetic: every part
  gets floor(total * w / sum(w)), then the leftover units go one each to the
  parts with the largest fractional remainders (earlier parts win ties).
  """
  weight_sum = int(weights.sum())
  scaled = total * weights.astype(np.int64)
  parts = scaled // weight_sum
  leftover = total - int(parts.sum())
  order = np.argsort(-(scaled % weight_sum), kind='stable')
  parts[order[:leftover]] += 1
  return parts


def client_test_indices(client_train_labels: np.ndarray,
                        test_labels: np.ndarray, num_examples: int,
                        rng: np.random.Generator) -> np.ndarray:
  """Draws a client's local test split with its training class proportions.

  The `num_examples` test examples are allotted to the classes in proportion
  to the client's training examples of each class (largest-remainder
  rounding, so the total is exact and every class gets its share rounded up
  or down), then drawn without replacement from the global test examples of
  that class. Different clients draw independently, so their test splits may
  overlap, as in the reference's 'lotteryfl' split, where every client holding
  a class gets all of that class's test examples.

  Args:
    client_train_labels: Labels of the client's training examples.
    test_labels: Labels of the global test set.
    num_examples: Size of the client's test split.
    rng: Source of randomness.

  Returns:
    Sorted int64 indices into the test set, `num_examples` of them, no index
    repeated.

  Raises:
    ValueError: If `num_examples` is negative or positive while the client
      has no training examples, or a class does not have enough test
      examples for its share.
  """
  client_train_labels = _as_labels(client_train_labels)
  test_labels = _as_labels(test_labels)
  if num_examples < 0:
    raise ValueError(f'num_examples must be >= 0, got {num_examples}')
  if num_examples == 0:
    return np.zeros(0, dtype=np.int64)
  if len(client_train_labels) == 0:
    raise ValueError(
        'cannot draw test examples with the class proportions of a client '
        'that has no training examples')
  classes, train_counts = np.unique(client_train_labels, return_counts=True)
  test_counts = _allocate_proportionally(num_examples, train_counts)
  parts = []
  for label, count in zip(classes, test_counts):
    candidates = np.flatnonzero(test_labels == label)
    if count > len(candidates):
      raise ValueError(
          f'class {label} needs {count} test examples for this client but the '
          f'test set has only {len(candidates)}')
    parts.append(rng.choice(candidates, size=count, replace=False))
  return np.sort(np.concatenate(parts)).astype(np.int64)


def proportional_test_size(client_train_labels: np.ndarray,
                           test_labels: np.ndarray,
                           total_train_examples: int) -> int:
  """Default size of a client's test split: its share of the test set.

  A client holding a fraction f of all training examples handed out gets
  round(f * len(test_labels)) test examples (at least one), so client test
  splits together are about as large as the test set. This matches the
  reference: its Dirichlet split cuts the test set with the same proportions
  as the training set (a client gets about len(test) / len(train) of its
  training count), and its IID split divides the whole test set evenly. The
  size is capped so that every class's share stays within the test examples
  of that class, as `client_test_indices` requires.

  Args:
    client_train_labels: Labels of the client's training examples.
    test_labels: Labels of the global test set.
    total_train_examples: Training examples handed out to all clients.

  Returns:
    The number of test examples; 0 if the client has no training examples.

  Raises:
    ValueError: If `total_train_examples` is smaller than the client's
      training set.
  """
  client_train_labels = _as_labels(client_train_labels)
  test_labels = _as_labels(test_labels)
  num_train = len(client_train_labels)
  if num_train == 0:
    return 0
  if total_train_examples < num_train:
    raise ValueError(
        f'total_train_examples ({total_train_examples}) is smaller than the '
        f'client training set ({num_train})')
  target = max(1, (num_train * len(test_labels) + total_train_examples // 2) //
               total_train_examples)
  classes, train_counts = np.unique(client_train_labels, return_counts=True)
  available = np.array([np.count_nonzero(test_labels == label)
                        for label in classes])
  # A class's share target * count / num_train must not exceed its supply.
  cap = int(np.min(available * num_train // train_counts))
  return min(target, cap)
