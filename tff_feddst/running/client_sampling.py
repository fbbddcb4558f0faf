"""Seeded client sampling: each round's client ids with their datasets.

Which clients a round samples, which of them drop out, and how each one's
data is shuffled depend only on the run seed and the round number (and the
client's position), so a run is reproducible and a resumed run redraws
exactly the clients an uninterrupted one would, with no random-generator
state to checkpoint.

`tff.program.FederatedDataSourceIterator` (e.g. `ClientIdDataSource`) is
not used: its `select(k)` draws from a generator that advances with every
call, so a resumed run would have to checkpoint the iterator; ours is a
pure function of `(seed, round_num)`. `ClientSampler.sample` returns the
ids with the datasets (`RoundClients`), so that the round loop, and a
method that keeps per-client state, know whose data each dataset is.
"""

import logging
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tff_feddst.data import client_files as client_files_lib
from tff_feddst.data import federated
from tff_feddst.data import pipelines


def sample_clients(client_ids: Sequence[str], clients_per_round: int,
                   seed: int, round_num: int,
                   with_replacement: bool = False) -> list[str]:
  """Samples clients for a round uniformly, by default WITHOUT replacement.

  Args:
    client_ids: All client ids.
    clients_per_round: How many to sample, in [1, len(client_ids)].
    seed: Run seed.
    round_num: 1-based round.
    with_replacement: Draw with replacement, as the reference
      (`rng.choice(clients, size=K)`): a client may be drawn more than once
      and then trains (and reports) once per draw.

  Returns:
    The sampled ids, in sampling order.

  Raises:
    ValueError: If `clients_per_round` is out of range.
  """
  if not 1 <= clients_per_round <= len(client_ids):
    raise ValueError(f'clients_per_round must be in [1, {len(client_ids)}], '
                     f'got {clients_per_round}.')
  rng = np.random.default_rng([seed, round_num])
  chosen = rng.choice(len(client_ids), size=clients_per_round,
                      replace=with_replacement)
  return [client_ids[i] for i in chosen]


def drop_out(sampled: Sequence[str], dropout_rate: float, seed: int,
             round_num: int) -> list[str]:
  """Returns the sampled clients that report, each failing w.p. dropout_rate.

  Args:
    sampled: The round's sampled clients.
    dropout_rate: Probability in [0, 1) that a client fails to report.
    seed: Run seed.
    round_num: 1-based round.

  Returns:
    The reporting clients, in sampling order.
  """
  if not dropout_rate:
    return list(sampled)
  rng = np.random.default_rng([seed, round_num, 1])
  failures = rng.random(len(sampled)) < dropout_rate
  return [client for client, failed in zip(sampled, failures) if not failed]


def _shuffle_seed(seed: int, round_num: int, client_position: int,
                  draw: int = 0) -> int:
  # A client's first draw of a round keeps the entropy of runs without
  # replacement; a further draw (with replacement) shuffles differently.
  entropy = [seed, round_num, client_position] + ([draw] if draw else [])
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def client_datasets(federated_data: federated.FederatedData,
                    client_ids: Sequence[str], batch_size: int, seed: int,
                    round_num: int,
                    client_files: Optional[client_files_lib.ClientFiles] = None
                    ) -> list[tf.data.Dataset]:
  """Builds the sampled clients' shuffled, batched training datasets.

  Args:
    federated_data: The partitioned data.
    client_ids: The sampled clients.
    batch_size: Client minibatch size.
    seed: Run seed.
    round_num: 1-based round (the shuffle order depends on it).
    client_files: If given, the datasets read the examples from its files
      (the same batches, without the examples in the datasets' graphs);
      None: from the arrays in memory.

  Returns:
    One `tf.data.Dataset` of `(x, y)` batches per client; a client listed
    twice (sampling with replacement) gets another order the second time.
  """
  datasets = []
  draws = {}
  for client_id in client_ids:
    position = federated_data.client_ids.index(client_id)
    draw = draws.get(client_id, 0)
    draws[client_id] = draw + 1
    shuffle_seed = _shuffle_seed(seed, round_num, position, draw)
    if client_files is None:
      x, y = federated_data.train_arrays(client_id)
      datasets.append(pipelines.make_client_dataset(
          x, y, batch_size, shuffle_seed=shuffle_seed))
    else:
      examples, num_examples = client_files.examples(client_id)
      datasets.append(pipelines.batch_client_examples(
          examples, num_examples, batch_size, shuffle_seed=shuffle_seed))
  return datasets


class RoundClients(NamedTuple):
  """The clients of one round.

  Attributes:
    round_num: The 1-based round.
    sampled_ids: Every sampled client, in sampling order (they all receive
      the model).
    client_ids: Those that report (the sampled ones less the dropouts), in
      sampling order.
    datasets: The training dataset of each of `client_ids`, in that order:
      the clients' data of `process.next(state, list(datasets))`.
  """
  round_num: int
  sampled_ids: tuple[str, ...]
  client_ids: tuple[str, ...]
  datasets: tuple[tf.data.Dataset, ...]

  @property
  def num_dropped(self) -> int:
    """How many sampled clients dropped out (received, never reported)."""
    return len(self.sampled_ids) - len(self.client_ids)


class ClientSampler:
  """Draws each round's clients, seeded by the run seed and the round."""

  def __init__(self, federated_data: federated.FederatedData,
               clients_per_round: int, batch_size: int, seed: int,
               dropout_rate: float = 0.0, with_replacement: bool = False,
               client_files: Optional[client_files_lib.ClientFiles] = None):
    """Checks the settings; nothing is drawn yet.

    Args:
      federated_data: The partitioned data.
      clients_per_round: Clients sampled per round, in [1, number of
        clients].
      batch_size: Client minibatch size.
      seed: Run seed.
      dropout_rate: Probability in [0, 1) that a sampled client fails to
        report (seeded per round and client).
      with_replacement: Sample with replacement (`sample_clients`).
      client_files: If given, datasets read their examples from its files
        (`client_datasets`).

    Raises:
      ValueError: If `clients_per_round` is out of range.
    """
    num_clients = len(federated_data.client_ids)
    if not 1 <= clients_per_round <= num_clients:
      raise ValueError(f'clients_per_round must be in [1, {num_clients}], '
                       f'got {clients_per_round}.')
    self._federated_data = federated_data
    self._clients_per_round = clients_per_round
    self._batch_size = batch_size
    self._seed = seed
    self._dropout_rate = dropout_rate
    self._with_replacement = with_replacement
    self._client_files = client_files

  def sample(self, round_num: int) -> RoundClients:
    """Returns round `round_num`'s clients and the reporters' datasets.

    Args:
      round_num: 1-based round.

    Returns:
      The same `RoundClients` for the same seed and round, in any process.
      If every sampled client drops out, a warning is logged (the round
      then leaves the global model as it is).
    """
    sampled = sample_clients(self._federated_data.client_ids,
                             self._clients_per_round, self._seed, round_num,
                             self._with_replacement)
    reporting = drop_out(sampled, self._dropout_rate, self._seed, round_num)
    logging.debug('Round %d: sampled clients %s, reporting %s.', round_num,
                  sampled, reporting)
    if not reporting:
      logging.warning('Round %d: none of the %d sampled clients reported; '
                      'the global model stays as it is.', round_num,
                      len(sampled))
    datasets = client_datasets(self._federated_data, reporting,
                               self._batch_size, self._seed, round_num,
                               self._client_files)
    return RoundClients(round_num, tuple(sampled), tuple(reporting),
                        tuple(datasets))
