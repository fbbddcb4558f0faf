"""One device's round, driven through the exported TFLite training model.

`DeviceClient` does in Python what an app does on a phone, through the
signatures of `training.tflite` in a `tf.lite.Interpreter` and nothing else:

  1. `set_weights` with the round's broadcast (`device_server` writes it);
  2. `train` once per minibatch, for the round's local epochs;
  3. on a readjustment round, `readjust(drop_fraction)` right after
     minibatch `readjust_step` = clip(round(readjust_after_epochs *
     num_batches), 1, num_epochs * num_batches), as the TF client does;
  4. `get_weights(num_examples)`, whose outputs (plus the round's model
     digest, echoed, and the mean train loss) are the upload.

The TF client (`client_work.ClientTrainer.update`) trains the same
minibatches in the same order, so a device's upload equals the simulated
client's to float rounding; a readjustment's top-k may still choose
differently where two magnitudes nearly tie (measured on the quick
flagfile's round 1, ten clients: train loss within 2e-6 of the TF clients',
the global mask 9,594 changed positions against 9,592).
"""

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

# Names an upload file holds besides the `get_weights` outputs.
MODEL_DIGEST_NAME = 'model_digest'
TRAIN_LOSS_NAME = 'train_loss'
NUM_REGROWN_NAME = 'num_regrown'

Batch = tuple[np.ndarray, np.ndarray]


def readjust_step(readjust_after_epochs: float, num_batches: int,
                  num_epochs: int) -> int:
  """The minibatch after which a readjusting client readjusts (1-based).

  Args:
    readjust_after_epochs: The client config's effective value.
    num_batches: Minibatches in one local epoch.
    num_epochs: Local epochs.

  Returns:
    clip(round(readjust_after_epochs * num_batches), 1, num_epochs *
    max(num_batches, 1)), rounding half to even as `tf.round` does.
  """
  step = int(np.round(np.float64(readjust_after_epochs) * num_batches))
  return int(np.clip(step, 1, num_epochs * max(num_batches, 1)))


class DeviceClient:
  """A `training.tflite` interpreter and the app's call order around it."""

  def __init__(self, tflite_model: bytes):
    """Loads the model.

    Args:
      tflite_model: The exported training model (`tflite_export`).
    """
    self._interpreter = tf.lite.Interpreter(model_content=tflite_model)
    self._runners = {
        name: self._interpreter.get_signature_runner(name)
        for name in ('set_weights', 'train', 'readjust', 'get_weights')}

  def train_round(self, broadcast: Mapping[str, np.ndarray],
                  instructions: Mapping[str, Any],
                  epochs: Sequence[Sequence[Batch]]) -> dict[str, np.ndarray]:
    """Runs one round as an app would and returns the upload.

    Args:
      broadcast: The `set_weights` inputs (`device_server` broadcast file).
      instructions: The round's instructions (`device_server`):
        `should_readjust`, `drop_fraction`, `readjust_after_epochs`,
        `model_digest` (None: not echoed).
      epochs: The minibatches `(x float32, y int32)` of each local epoch, in
        training order (as many epochs as the instructions' `num_epochs`).

    Returns:
      `{get_weights output name: array}` plus `train_loss` float32[1] (the
      example-weighted mean loss over all steps), `num_regrown` int32[1]
      and, when the round binds uploads, `model_digest` int32[1].
    """
    run = self._runners
    run['set_weights'](**dict(broadcast))
    num_batches = len(epochs[0]) if epochs else 0
    num_examples = sum(int(np.shape(y)[0]) for _, y in epochs[0]) if epochs \
        else 0
    step_to_readjust = readjust_step(instructions['readjust_after_epochs'],
                                     num_batches, len(epochs))
    step, num_regrown = 0, 0
    loss_sum = np.float32(0.0)
    for batches in epochs:
      for x, y in batches:
        step += 1
        loss = run['train'](x=np.asarray(x, np.float32),
                            y=np.asarray(y, np.int32))['loss'][0]
        loss_sum += np.float32(loss) * np.float32(np.shape(y)[0])
        if instructions['should_readjust'] and step == step_to_readjust:
          num_regrown += int(run['readjust'](drop_fraction=np.float32(
              instructions['drop_fraction']))['num_regrown'][0])
    trained = np.float32(num_examples) * np.float32(len(epochs))
    upload = dict(run['get_weights'](num_examples=np.float32(num_examples)))
    upload[TRAIN_LOSS_NAME] = np.array(
        [loss_sum / trained if trained else 0.0], np.float32)
    upload[NUM_REGROWN_NAME] = np.array([num_regrown], np.int32)
    digest: Optional[int] = instructions.get('model_digest')
    if digest is not None:
      upload[MODEL_DIGEST_NAME] = np.array([digest], np.int32)
    return upload
