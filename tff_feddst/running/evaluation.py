"""Accuracy of a global model, in plain TensorFlow (no TFF round trip).

Two numbers, as the paper reports them: accuracy on the global test set, and
the mean over clients of accuracy on each client's local test split (which
has that client's class proportions). For methods with a personal model per
client (LotteryFL: the global model under the client's own mask),
`evaluate_personalised` scores each client's own model on its local test
split: the mean and the standard deviation over clients.

The local test split (`data.federated`, built by `partitions`) is seeded and
deterministic: each client's test examples are drawn from the global test
set with that client's class proportions, so a personal model is scored on
the distribution it was trained for.

Build the `Evaluator` before any TFF process: its Keras model must exist
before TFF traces the client model (a later Keras build can fail).
"""

from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.data import federated
from tff_feddst.networks import models


class EvalResult(NamedTuple):
  test_accuracy: float
  client_test_accuracy: float
  personal_test_accuracy: Optional[float] = None
  personal_test_accuracy_std: Optional[float] = None


class Evaluator:
  """Evaluates `ModelWeights` on the global and the client-local test sets."""

  def __init__(self, model_fn: models.ModelFn,
               federated_data: federated.FederatedData,
               batch_size: int = 1000):
    """Builds the evaluation model and gathers the test sets.

    Args:
      model_fn: Builds the wrapped Keras model trained by the process.
      federated_data: The run's clients and global test set.
      batch_size: Examples per forward pass.
    """
    self._model = model_fn()
    self._batch_size = batch_size
    dataset = federated_data.dataset
    self._x_test, self._y_test = dataset.x_test, dataset.y_test
    client_indices = [federated_data.test_indices(c)
                      for c in federated_data.client_ids]
    self._client_of_example = np.concatenate(
        [np.full(len(ix), i, np.int64) for i, ix in enumerate(client_indices)]
    ) if client_indices else np.zeros([0], np.int64)
    self._client_example_indices = (
        np.concatenate(client_indices) if client_indices
        else np.zeros([0], np.int64))
    self._num_clients = len(client_indices)

    # Traced now, with a batch-agnostic signature: calling Keras layers
    # after TFF has traced its own copy of the model can fail, calling an
    # already traced function does not.
    @tf.function(input_signature=[tf.TensorSpec(
        (None,) + self._x_test.shape[1:], tf.float32)])
    def predict(x):
      return tf.argmax(self._model(x, training=False), axis=-1,
                       output_type=tf.int32)
    self._predict = predict.get_concrete_function()

  def _predictions(self, x: np.ndarray) -> np.ndarray:
    outputs = [self._predict(x[start:start + self._batch_size]).numpy()
               for start in range(0, len(x), self._batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros([0], np.int32)

  def evaluate(self, weights: tff.learning.models.ModelWeights) -> EvalResult:
    """Returns the global and mean client-local test accuracy of `weights`.

    Args:
      weights: `ModelWeights` of the global model (e.g. from
        `process.get_model_weights(state)`).

    Returns:
      An `EvalResult`. Clients with no local test example are left out of
      the mean.
    """
    tff.learning.models.ModelWeights(
        trainable=list(weights.trainable),
        non_trainable=list(weights.non_trainable)).assign_weights_to(
            self._model)
    test_predictions = self._predictions(self._x_test)
    test_accuracy = float(np.mean(test_predictions == self._y_test))
    # Each global test example is predicted once; client splits reuse them.
    correct = (test_predictions[self._client_example_indices] ==
               self._y_test[self._client_example_indices])
    per_client_correct = np.bincount(self._client_of_example, weights=correct,
                                     minlength=self._num_clients)
    per_client_count = np.bincount(self._client_of_example,
                                   minlength=self._num_clients)
    has_examples = per_client_count > 0
    client_accuracy = float(np.mean(
        per_client_correct[has_examples] / per_client_count[has_examples])
    ) if has_examples.any() else float('nan')
    return EvalResult(test_accuracy, client_accuracy)

  def evaluate_personalised(
      self, weights: tff.learning.models.ModelWeights,
      layout: models.ModelLayout,
      masks_of_client: Callable[[int], Sequence[np.ndarray]]
  ) -> tuple[float, float]:
    """Mean and std over clients of each personal model's local accuracy.

    Client c's personal model is `weights` with every prunable kernel
    multiplied by, and every mask replaced with, `masks_of_client(c)`.

    Args:
      weights: The global `ModelWeights`.
      layout: The model's `ModelLayout`.
      masks_of_client: Client position -> its masks (one per prunable
        kernel, in layout order).

    Returns:
      `(mean, std)` over the clients with local test examples (population
      std); NaNs if there are none.
    """
    accuracies = []
    for position in range(self._num_clients):
      selected = self._client_of_example == position
      if not selected.any():
        continue
      masks = masks_of_client(position)
      trainable = [np.asarray(v) for v in weights.trainable]
      non_trainable = [np.asarray(v) for v in weights.non_trainable]
      for mask, kernel_index, mask_index in zip(
          masks, layout.kernel_indices, layout.mask_indices):
        trainable[kernel_index] = trainable[kernel_index] * mask
        non_trainable[mask_index] = mask.astype(non_trainable[mask_index].dtype)
      tff.learning.models.ModelWeights(
          trainable=trainable, non_trainable=non_trainable).assign_weights_to(
              self._model)
      indices = self._client_example_indices[selected]
      predictions = self._predictions(self._x_test[indices])
      accuracies.append(float(np.mean(predictions == self._y_test[indices])))
    if not accuracies:
      return float('nan'), float('nan')
    return float(np.mean(accuracies)), float(np.std(accuracies))
