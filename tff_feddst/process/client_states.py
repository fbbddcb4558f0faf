"""Per-client state of a simulation: one row per client id, kept by the server.

Some methods keep something on each client between the rounds it takes
part in (LotteryFL: the client's own mask and how often it has pruned). In
a simulation the devices do not exist between rounds, so the server side of
the simulation keeps that state for them, one row per client id, and hands
a client its row when it is sampled. The store is bounded: a mask is kept
as bits (`pack_masks`: one bit per prunable position, packed 8 to a byte,
in the order of `numpy.packbits`), so a client costs
`bytes_per_client(kernel_sizes)` bytes however many rounds run.

Where the store lives, and why. It is part of the `LearningProcess` state
(the client work's state, at SERVER), not a Python dict beside the loop:
- `--resume` stays bit-exact for free: the process state is checkpointed
  leaf by leaf with the run (`outputs/checkpoints`), so the store is saved
  in the same atomic file as the global model it belongs to; a store kept
  outside could be saved at a different round than the model.
- `LearningProcess.next` returns its state at SERVER, so the clients'
  new rows must come back through an aggregate. Each reporting client gets
  its slot k in the round (0 <= k < K = clients per round) with its row, as
  client data (`client_inputs`: its dataset and a one-element dataset of
  its `ClientInput`; TFF's client work takes only sequences as client
  data), and writes its new row into row k of `[K, ...]` tensors that
  are otherwise zero (`RoundRows`). Slots are disjoint, so
  `tff.federated_sum` of those tensors is exact (integers, no rounding) and
  holds every reporter's row; `scatter_rows` then writes them into the
  store, on the server, by client index. This works unchanged when the
  clients are split across TFF workers: partial sums of disjoint rows merge
  exactly.
- A client only ever receives its own row (the round loop reads it from
  the state it is about to pass to `next`): no client sees another's mask,
  and nothing in the store is broadcast.
Sampling with replacement would give one client two slots and two
conflicting new rows, so a method with client state refuses it.

The lifetime epoch count (FedDST with `--readjust_counter=client_lifetime`,
as the authors' `Client.curr_epoch`) is a smaller store beside it: one
int32 per client, the local epochs the client has trained over all the
rounds it took part in (`EpochCountInput`, `EpochCountRows`). A count only
grows by the epochs trained, so it does support sampling with replacement:
the k-th draw of a client in a round starts from its stored count plus k
rounds' epochs (as the authors' clients, which train their draws one after
the other), and the store keeps the largest new count of a client's slots.
"""

import collections
from typing import Any, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

# Bytes of the int32 prune count kept beside each client's mask bits.
PRUNE_COUNT_BYTES = 4


class ClientStates(NamedTuple):
  """The store: row c belongs to client index c (client id str(c)).

  Attributes:
    mask_bits: uint8 [num_clients, packed_size]: each client's masks of
      all prunable kernels, flattened in layer order and packed.
    num_prunes: int32 [num_clients]: pruning steps the client has done.
  """
  mask_bits: Any
  num_prunes: Any


class ClientInput(NamedTuple):
  """What one reporting client receives beside its dataset.

  Attributes:
    slot: int32 scalar: its row in the round's `RoundRows`.
    client_index: int32 scalar: its row in `ClientStates`.
    mask_bits: uint8 [packed_size]: its stored mask bits.
    num_prunes: int32 scalar: its stored prune count.
  """
  slot: Any
  client_index: Any
  mask_bits: Any
  num_prunes: Any


class RoundRows(NamedTuple):
  """The reporters' new rows, one slot each; unused slots are all zero.

  Attributes:
    owner: int32 [K]: client index + 1 of the slot's client (0: unused).
    mask_bits: int32 [K, packed_size]: new mask bits (0..255).
    num_prunes: int32 [K]: new prune counts.
  """
  owner: Any
  mask_bits: Any
  num_prunes: Any


class EpochCountInput(NamedTuple):
  """What one reporting client receives beside its dataset (lifetime count).

  Attributes:
    slot: int32 scalar: its row in the round's `EpochCountRows`.
    client_index: int32 scalar: its row in the store.
    epochs_done: int32 scalar: local epochs it trained before this draw.
  """
  slot: Any
  client_index: Any
  epochs_done: Any


class EpochCountRows(NamedTuple):
  """The reporters' new epoch counts, one slot each; unused slots are 0.

  Attributes:
    owner: int32 [K]: client index + 1 of the slot's client (0: unused).
    epochs_done: int32 [K]: the slot's count after this round's epochs.
  """
  owner: Any
  epochs_done: Any


def packed_size(kernel_sizes: Sequence[int]) -> int:
  """Bytes of one client's packed masks: ceil(total positions / 8)."""
  return (int(sum(kernel_sizes)) + 7) // 8


def bytes_per_client(kernel_sizes: Sequence[int]) -> int:
  """Bytes the store keeps per client (mask bits and prune count)."""
  return packed_size(kernel_sizes) + PRUNE_COUNT_BYTES


def pack_masks_numpy(masks: Sequence[np.ndarray]) -> np.ndarray:
  """uint8 [packed_size]: 0/1 `masks` flattened, concatenated and packed."""
  flat = np.concatenate([np.asarray(m).reshape(-1) for m in masks])
  return np.packbits(flat != 0)


def unpack_masks_numpy(bits: np.ndarray,
                       kernel_shapes: Sequence[Sequence[int]]
                       ) -> list[np.ndarray]:
  """The float32 masks of `bits` (as `pack_masks_numpy` packed them)."""
  sizes = [int(np.prod(shape)) for shape in kernel_shapes]
  flat = np.unpackbits(np.asarray(bits, np.uint8), count=sum(sizes))
  masks, start = [], 0
  for size, shape in zip(sizes, kernel_shapes):
    masks.append(flat[start:start + size].astype(np.float32).reshape(shape))
    start += size
  return masks


_BIT_VALUES = (128, 64, 32, 16, 8, 4, 2, 1)  # numpy.packbits' bit order.


def pack_masks(masks: Sequence[tf.Tensor]) -> tf.Tensor:
  """TF version of `pack_masks_numpy` (same bytes): uint8 [packed_size]."""
  flat = tf.concat([tf.reshape(tf.cast(tf.not_equal(m, 0), tf.int32), [-1])
                    for m in masks], axis=0)
  total = int(flat.shape[0])
  padded = tf.pad(flat, [[0, (-total) % 8]])
  grouped = tf.reshape(padded, [-1, 8])
  return tf.cast(tf.reduce_sum(grouped * tf.constant(_BIT_VALUES, tf.int32),
                               axis=1), tf.uint8)


def unpack_masks(bits: tf.Tensor, kernel_shapes: Sequence[Sequence[int]],
                 dtype: tf.DType = tf.float32) -> list[tf.Tensor]:
  """TF version of `unpack_masks_numpy`: the masks in `dtype`."""
  sizes = [int(np.prod(shape)) for shape in kernel_shapes]
  values = tf.cast(bits, tf.int32)[:, tf.newaxis]
  shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.int32)
  flat = tf.reshape(tf.bitwise.bitwise_and(
      tf.bitwise.right_shift(values, shifts), 1), [-1])
  masks, start = [], 0
  for size, shape in zip(sizes, kernel_shapes):
    masks.append(tf.reshape(tf.cast(flat[start:start + size], dtype), shape))
    start += size
  return masks


def initial_states(num_clients: int,
                   kernel_shapes: Sequence[Sequence[int]]) -> ClientStates:
  """Every client with all-ones masks and no pruning (numpy arrays)."""
  row = pack_masks_numpy([np.ones(shape, np.float32)
                          for shape in kernel_shapes])
  return ClientStates(
      mask_bits=np.tile(row[np.newaxis, :], (num_clients, 1)),
      num_prunes=np.zeros([num_clients], np.int32))


def client_inputs(states: ClientStates, client_indices: Sequence[int],
                  datasets: Sequence[Any]) -> list[collections.OrderedDict]:
  """The client data of a round: each reporter's dataset and its row.

  Args:
    states: The store as the round starts (numpy or tensors).
    client_indices: The reporters' client indices, in slot order.
    datasets: Their datasets, in the same order.

  Returns:
    One `OrderedDict(data=dataset, state=one-element dataset of the
    ClientInput as an OrderedDict)` per reporter (TFF serialises dataset
    elements with named fields only as OrderedDicts).

  Raises:
    ValueError: If a client index repeats (sampling with replacement).
  """
  if len(set(client_indices)) != len(client_indices):
    raise ValueError('a client with per-client state was sampled twice in '
                     'one round; sample without replacement.')
  mask_bits = np.asarray(states.mask_bits)
  num_prunes = np.asarray(states.num_prunes)
  return [collections.OrderedDict(
      data=dataset,
      state=tf.data.Dataset.from_tensors(collections.OrderedDict(
          slot=np.int32(slot), client_index=np.int32(index),
          mask_bits=mask_bits[index],
          num_prunes=np.int32(num_prunes[index]))))
          for slot, (index, dataset) in enumerate(zip(client_indices,
                                                      datasets))]


def slot_rows(slot: tf.Tensor, num_slots: int, client_index: tf.Tensor,
              mask_bits: tf.Tensor, num_prunes: tf.Tensor) -> RoundRows:
  """One client's new row placed in `slot` of otherwise zero `RoundRows`."""
  one_hot = tf.one_hot(slot, num_slots, dtype=tf.int32)
  return RoundRows(
      owner=one_hot * (tf.cast(client_index, tf.int32) + 1),
      mask_bits=one_hot[:, tf.newaxis] *
      tf.cast(mask_bits, tf.int32)[tf.newaxis, :],
      num_prunes=one_hot * tf.cast(num_prunes, tf.int32))


def scatter_rows(states: ClientStates, rows: RoundRows) -> ClientStates:
  """The store with the summed round rows written in (unused slots skipped)."""
  used = rows.owner > 0
  indices = tf.boolean_mask(rows.owner - 1, used)[:, tf.newaxis]
  return ClientStates(
      mask_bits=tf.tensor_scatter_nd_update(
          states.mask_bits, indices,
          tf.cast(tf.boolean_mask(rows.mask_bits, used), tf.uint8)),
      num_prunes=tf.tensor_scatter_nd_update(
          states.num_prunes, indices,
          tf.boolean_mask(rows.num_prunes, used)))


def initial_epoch_counts(num_clients: int) -> np.ndarray:
  """int32 [num_clients] zeros: no client has trained an epoch yet."""
  return np.zeros([num_clients], np.int32)


def epoch_count_inputs(epochs_done: Any, client_indices: Sequence[int],
                       datasets: Sequence[Any], epochs_per_round: int
                       ) -> list[collections.OrderedDict]:
  """The client data of a round with lifetime epoch counts.

  Args:
    epochs_done: int32 [num_clients] store as the round starts.
    client_indices: The reporters' client indices, in slot (sampling)
      order; an index may repeat (sampling with replacement).
    datasets: Their datasets, in the same order.
    epochs_per_round: Local epochs a client trains per draw.

  Returns:
    One `OrderedDict(data=dataset, state=one-element dataset of the
    EpochCountInput as an OrderedDict)` per reporter. A client's k-th draw
    (k = 0, 1, ...) in the round starts at its stored count plus
    k * epochs_per_round.
  """
  counts = np.asarray(epochs_done)
  draws = collections.Counter()
  inputs = []
  for slot, (index, dataset) in enumerate(zip(client_indices, datasets)):
    start = int(counts[index]) + draws[index] * epochs_per_round
    draws[index] += 1
    inputs.append(collections.OrderedDict(
        data=dataset,
        state=tf.data.Dataset.from_tensors(collections.OrderedDict(
            slot=np.int32(slot), client_index=np.int32(index),
            epochs_done=np.int32(start)))))
  return inputs


def epoch_count_rows(slot: tf.Tensor, num_slots: int,
                     client_index: tf.Tensor,
                     epochs_done: tf.Tensor) -> EpochCountRows:
  """One client's new count placed in `slot` of otherwise zero rows."""
  one_hot = tf.one_hot(slot, num_slots, dtype=tf.int32)
  return EpochCountRows(
      owner=one_hot * (tf.cast(client_index, tf.int32) + 1),
      epochs_done=one_hot * tf.cast(epochs_done, tf.int32))


def scatter_epoch_counts(epochs_done: tf.Tensor,
                         rows: EpochCountRows) -> tf.Tensor:
  """The store with the summed round rows written in.

  Unused slots are skipped; a client with several slots (drawn more than
  once) keeps the largest of its new counts, that of its last draw.

  Args:
    epochs_done: int32 [num_clients] store.
    rows: The round's `EpochCountRows`, summed over the reporters.

  Returns:
    The new int32 [num_clients] store.
  """
  used = rows.owner > 0
  indices = tf.boolean_mask(rows.owner - 1, used)[:, tf.newaxis]
  return tf.tensor_scatter_nd_max(
      epochs_done, indices, tf.boolean_mask(rows.epochs_done, used))
