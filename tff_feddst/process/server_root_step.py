"""The server's own step on a small root set: the direction check's reference.

The direction check (`update_direction`) drops an upload that points
against a reference direction. Its first reference, the sum of the round's
OTHER clients' unit deltas, drops honest clients too on a non-iid split: a
client whose classes no other client of the round holds points away from
the others (README, "Sign flip over 8 seeds"). Here the reference is a step
the server takes itself, as in FLTrust (Cao et al., NDSS 2021): the server
holds a small root set drawn iid from the training data, trains the
broadcast model on it exactly as a client trains (`ClientTrainer`:
`num_epochs` epochs of masked SGD with the clients' hyper-parameters, no
readjustment, so on the global mask), and the check compares each upload's
delta with this step's delta on the upload's support. An iid step moves
every class, so an honest client's step shares its part and a reversed
step opposes it.

Measured before building this (10 rounds of
`configs/fashion_mnist_quick.cfg` with the default defences, seeds 0 and 1,
every upload's cosine printed; not in the code): against a 500-example root
step the honest uploads' cosines had a 5 % quantile of +0.10 and a
smallest of -0.10, the sign-flipped ones a median of -0.32 and a largest
of -0.05, so a threshold of 0 dropped 1.3 % of honest uploads and every
flipped one. Against the round's other clients the same runs put 10 % of
honest uploads below 0 and the 5 % quantile at -0.09. A 100-example root
step was worse than the others' sum (5 % quantile -0.13): its 8 steps are
too noisy.

The root set is fixed for the run (the same batches each round, in a fixed
order: the step is deterministic) and lives in the server's computation as
constants. The step needs no upload, so it also works where the aggregator
has no first pass; the one-pass (multi-worker) form still runs no direction
check (`robust_aggregation.RobustAggregation.checks_direction`).
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import robust_aggregation
from tff_feddst.process import update_direction


def draw_root_set(federated_data: Any, num_examples: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Draws the server's root set: examples drawn iid from the training data.

  Args:
    federated_data: The run's partition (`data.FederatedData`): the root set
      is drawn uniformly, without replacement, from the union of the
      clients' training examples (as FLTrust's experiments draw it).
    num_examples: Root set size, >= 1 and at most the training examples.
    seed: The run's seed (the same seed draws the same root set).

  Returns:
    `(x, y)`: float32 images and int32 labels, in drawing order.

  Raises:
    ValueError: If `num_examples` is not in [1, training examples].
  """
  arrays = [federated_data.train_arrays(client_id)
            for client_id in federated_data.client_ids]
  num_train = sum(len(y) for _, y in arrays)
  if not 1 <= num_examples <= num_train:
    raise ValueError(f'num_examples={num_examples} is invalid: expected an '
                     f'integer in [1, {num_train}] (the training examples).')
  # A stream of its own, so drawing the root set moves no other draw.
  rng = np.random.default_rng([seed, 0x5007])
  picked = np.sort(rng.choice(num_train, num_examples, replace=False))
  starts = np.cumsum([0] + [len(y) for _, y in arrays])
  x_parts, y_parts = [], []
  for index in rng.permutation(picked):
    client = int(np.searchsorted(starts, index, side='right')) - 1
    x, y = arrays[client]
    x_parts.append(x[index - starts[client]])
    y_parts.append(y[index - starts[client]])
  return (np.stack(x_parts).astype(np.float32),
          np.asarray(y_parts, np.int32))


def _weights_of_reference(trainer: client_work.ClientTrainer,
                          reference: robust_aggregation.Reference):
  """The broadcast model as `ModelWeights` of the trainer's model."""
  layout = trainer.layout
  trainable = list(trainer.model.trainable_variables)
  non_trainable = list(trainer.model.non_trainable_variables)
  trainable_values = [None] * len(trainable)
  non_trainable_values = [tf.zeros_like(v) for v in non_trainable]
  for index, kernel in zip(layout.kernel_indices, reference.kernels):
    trainable_values[index] = kernel
  for index, mask in zip(layout.mask_indices, reference.masks):
    non_trainable_values[index] = mask
  num_dense_trainable = len(layout.dense_trainable_indices)
  for position, index in enumerate(layout.dense_trainable_indices):
    trainable_values[index] = reference.dense[position]
  for position, index in enumerate(layout.dense_non_trainable_indices):
    non_trainable_values[index] = reference.dense[num_dense_trainable +
                                                  position]
  return tff.learning.models.ModelWeights(
      trainable=[tf.cast(value, v.dtype)
                 for value, v in zip(trainable_values, trainable)],
      non_trainable=[tf.cast(value, v.dtype)
                     for value, v in zip(non_trainable_values, non_trainable)])


@tf.function  # Loops over the root batches in the graph, as `update`.
def root_direction(trainer: client_work.ClientTrainer,
                   reference: robust_aggregation.Reference,
                   root_x: Any, root_y: Any, batch_size: int
                   ) -> update_direction.Direction:
  """The server's step on its root set, as a unit direction.

  A `tf.function` (as `ClientTrainer.update`): call it eagerly, in a
  `tf.function` or in a TFF TensorFlow computation.

  Args:
    trainer: A `ClientTrainer` (its model and optimizer state are
      overwritten).
    reference: The round's broadcast model (`robust_aggregation.Reference`).
    root_x: The root set's images (a tensor or array).
    root_y: Its int32 labels.
    batch_size: The clients' minibatch size.

  Returns:
    float32 `update_direction.Direction`: the step's delta from the
    reference (on the global mask and in the dense parameters) at unit norm.
  """
  trainer.set_weights(_weights_of_reference(trainer, reference))
  batches = tf.data.Dataset.from_tensor_slices((root_x, root_y)).batch(
      batch_size).repeat(trainer.config.num_epochs)
  for x, y in iter(batches):
    trainer.train_step(x, y, False)
  layout = trainer.layout
  trainable = list(trainer.model.trainable_variables)
  non_trainable = list(trainer.model.non_trainable_variables)
  kernels = [tf.identity(trainable[i]) for i in layout.kernel_indices]
  dense = ([tf.identity(trainable[i]) for i in layout.dense_trainable_indices]
           + [tf.identity(non_trainable[i])
              for i in layout.dense_non_trainable_indices])
  return update_direction.step_direction(kernels, dense, reference)


@dataclasses.dataclass(frozen=True, eq=False)
class ServerRootStep:
  """What the server needs for its root step.

  Attributes:
    model_fn: Builds the wrapped Keras model.
    layout: Its `ModelLayout`.
    config: The clients' `ClientConfig` (the step trains as they do).
    root_x: float32 root images (`draw_root_set`).
    root_y: int32 root labels.
    batch_size: The clients' minibatch size, >= 1.
  """
  model_fn: Callable[[], Any]
  layout: models.ModelLayout
  config: client_work.ClientConfig
  root_x: np.ndarray
  root_y: np.ndarray
  batch_size: int

  def __post_init__(self):
    if len(self.root_x) != len(self.root_y) or not len(self.root_y):
      raise ValueError('the root set needs as many labels as images, at '
                       f'least one; got {len(self.root_x)} images and '
                       f'{len(self.root_y)} labels.')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {self.batch_size}.')

  @property
  def num_examples(self) -> int:
    return len(self.root_y)

  def new_trainer(self) -> client_work.ClientTrainer:
    """A fresh model and `ClientTrainer` (creates variables)."""
    return client_work.ClientTrainer(self.model_fn(), self.layout,
                                     self.layout.kernel_sizes, self.config)

  def direction(self, trainer: client_work.ClientTrainer,
                reference: robust_aggregation.Reference
                ) -> update_direction.Direction:
    """`root_direction` of this root set with `trainer`."""
    return root_direction(trainer, reference, self.root_x, self.root_y,
                          self.batch_size)
