"""tf.data pipelines over a client's arrays: training and evaluation batches."""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf


def make_client_dataset(x: np.ndarray,
                        y: np.ndarray,
                        batch_size: int,
                        shuffle_seed: Optional[int],
                        num_epochs: int = 1) -> tf.data.Dataset:
  """Builds a client's local training dataset of `(x_batch, y_batch)` tuples.

  Examples are shuffled with `shuffle_seed` (the same seed gives the same
  order on every run), batched keeping the last partial batch, and repeated
  `num_epochs` times; each epoch is reshuffled and ends with its own partial
  batch, like one pass of a PyTorch DataLoader per epoch.

  Args:
    x: Images, cast to float32.
    y: Labels, cast to int32.
    batch_size: Batch size, >= 1.
    shuffle_seed: Seed of the shuffle; None keeps the given order.
    num_epochs: Number of passes over the data, >= 1.

  Returns:
    A `tf.data.Dataset` of `(float32 images, int32 labels)` batches.

  Raises:
    ValueError: If `x` and `y` differ in length, or `batch_size` or
      `num_epochs` is < 1.
  """
  return batch_client_examples(_example_dataset(x, y, batch_size), len(x),
                               batch_size, shuffle_seed, num_epochs)


def batch_client_examples(examples: tf.data.Dataset,
                          num_examples: int,
                          batch_size: int,
                          shuffle_seed: Optional[int],
                          num_epochs: int = 1) -> tf.data.Dataset:
  """Shuffles, batches and repeats examples as `make_client_dataset` does.

  Args:
    examples: The client's unbatched `(image, label)` examples, e.g. from
      `client_files.ClientFiles.examples`.
    num_examples: How many there are (the shuffle buffer holds them all).
    batch_size: Batch size, >= 1.
    shuffle_seed: Seed of the shuffle; None keeps the given order.
    num_epochs: Number of passes over the data, >= 1.

  Returns:
    A `tf.data.Dataset` of `(images, labels)` batches; the same examples in
    the same order give the same batches as `make_client_dataset`.

  Raises:
    ValueError: If `batch_size` or `num_epochs` is < 1.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if num_epochs < 1:
    raise ValueError(f'num_epochs must be >= 1, got {num_epochs}')
  dataset = examples
  if shuffle_seed is not None:
    dataset = dataset.shuffle(
        max(num_examples, 1), seed=shuffle_seed, reshuffle_each_iteration=True)
  dataset = dataset.batch(batch_size)
  if num_epochs > 1:
    dataset = dataset.repeat(num_epochs)
  return dataset


def make_eval_dataset(x: np.ndarray, y: np.ndarray,
                      batch_size: int) -> tf.data.Dataset:
  """Builds an evaluation dataset of `(x_batch, y_batch)` tuples, in order.

  Args:
    x: Images, cast to float32.
    y: Labels, cast to int32.
    batch_size: Batch size, >= 1; the last batch may be smaller.

  Returns:
    A `tf.data.Dataset` of `(float32 images, int32 labels)` batches.

  Raises:
    ValueError: If `x` and `y` differ in length or `batch_size` < 1.
  """
  return _example_dataset(x, y, batch_size).batch(batch_size)


def _example_dataset(x: np.ndarray, y: np.ndarray,
                     batch_size: int) -> tf.data.Dataset:
  """Validates the arguments and returns the unbatched `(x, y)` examples."""
  if len(x) != len(y):
    raise ValueError(f'x has {len(x)} examples but y has {len(y)}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  return tf.data.Dataset.from_tensor_slices(
      (np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int32)))
