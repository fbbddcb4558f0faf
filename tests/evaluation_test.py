"""Tests for tff_feddst.running.evaluation: global and client-local accuracy."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.data import datasets
from tff_feddst.data import federated
from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.running import evaluation

# Ten test examples of 3 features, 3 classes. With the identity kernel and a
# zero bias, the model predicts argmax(x), which is the index of the 1.
X_TEST = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
PREDICTED = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
Y_TEST = np.array([0, 1, 2, 1, 1, 0, 0, 2, 2, 0], np.int32)
# Right:           y  y  y  n  y  n  y  n  y  y  -> 7 of 10.


def identity_net() -> tf.keras.Model:
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(3,)),
      pruning.wrap_layer(tf.keras.layers.Dense(3)),
  ])


def weights_with(kernel: np.ndarray, bias: np.ndarray):
  """`ModelWeights` of `identity_net` with this kernel, bias, a full mask."""
  model = identity_net()
  layout = models.model_layout(model)
  trainable = [v.numpy() for v in model.trainable_variables]
  non_trainable = [v.numpy() for v in model.non_trainable_variables]
  trainable[layout.kernel_indices[0]] = kernel
  trainable[layout.dense_trainable_indices[0]] = bias
  non_trainable[layout.mask_indices[0]] = np.ones((3, 3), np.float32)
  return tff.learning.models.ModelWeights(trainable=trainable,
                                          non_trainable=non_trainable)


def federated_data(test_indices) -> federated.FederatedData:
  dataset = datasets.Dataset(
      name='mnist', x_train=np.zeros((4, 3), np.float32),
      y_train=np.zeros(4, np.int32), x_test=X_TEST, y_test=Y_TEST,
      num_classes=3)
  return federated.FederatedData(
      dataset, [np.arange(4)] * len(test_indices),
      [np.asarray(ix, np.int64) for ix in test_indices])


class EvaluatorTest(tf.test.TestCase):

  def test_global_and_client_accuracy_by_hand(self):
    # Client 0: examples 0-3 (right, right, right, wrong): 3/4.
    # Client 1: examples 3, 4, 5 (wrong, right, wrong): 1/3; example 3 is
    #   shared with client 0 (client splits may reuse test examples).
    # Client 2: no test example: left out of the mean.
    # Client 3: examples 6, 8, 9 (all right): 3/3.
    # Mean over clients 0, 1, 3 (unweighted by their sizes):
    #   (3/4 + 1/3 + 1) / 3 = 25/36.
    evaluator = evaluation.Evaluator(
        identity_net,
        federated_data([[0, 1, 2, 3], [3, 4, 5], [], [6, 8, 9]]),
        batch_size=4)  # Three forward passes: 4 + 4 + 2 examples.
    result = evaluator.evaluate(weights_with(np.eye(3, dtype=np.float32),
                                             np.zeros(3, np.float32)))
    self.assertAlmostEqual(result.test_accuracy, 0.7)
    self.assertAlmostEqual(result.client_test_accuracy, 25 / 36)

  def test_accuracy_follows_the_weights(self):
    # A bias of 5 on class 0 dominates the inputs (at most 1): every example
    # is predicted 0. Labels 0 at examples 0, 5, 6, 9: 4 of 10. Client 0
    # (examples 0, 1): 1/2; client 1 (5, 6, 7): 2/3; mean 7/12.
    evaluator = evaluation.Evaluator(
        identity_net, federated_data([[0, 1], [5, 6, 7]]))
    result = evaluator.evaluate(weights_with(
        np.eye(3, dtype=np.float32), np.array([5.0, 0.0, 0.0], np.float32)))
    self.assertAlmostEqual(result.test_accuracy, 0.4)
    self.assertAlmostEqual(result.client_test_accuracy, 7 / 12)
    # The same evaluator with the identity weights again: 7 of 10.
    result = evaluator.evaluate(weights_with(np.eye(3, dtype=np.float32),
                                             np.zeros(3, np.float32)))
    self.assertAlmostEqual(result.test_accuracy, 0.7)
    # Client 0: 2/2; client 1: examples 5, 6, 7 wrong, right, wrong: 1/3.
    self.assertAlmostEqual(result.client_test_accuracy, (1 + 1 / 3) / 2)

  def test_no_client_test_example_gives_nan(self):
    evaluator = evaluation.Evaluator(identity_net,
                                     federated_data([[], []]))
    result = evaluator.evaluate(weights_with(np.eye(3, dtype=np.float32),
                                             np.zeros(3, np.float32)))
    self.assertAlmostEqual(result.test_accuracy, 0.7)
    self.assertTrue(np.isnan(result.client_test_accuracy))


if __name__ == '__main__':
  tf.test.main()
