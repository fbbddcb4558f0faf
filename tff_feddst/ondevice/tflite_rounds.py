"""Simulated rounds whose clients train through the exported TFLite model.

`--client_runtime=tflite` (bin/train.py) runs the round loop of
`training_loop.run_training` unchanged, with a `TFLiteRounds` in place of
the TFF process. One round (`next`):

  1. the server encodes the global model with the run's download encoding
     (`plain_loop.PlainServer.encode_global`, the TFF distributor's call);
  2. each of the round's reporting clients (the same clients, sampled by
     `client_sampling.ClientSampler`, as the TF run's) trains in a fresh
     TFLite interpreter of `training.tflite` (`tflite_client`, exported from
     the run's settings), through its signatures only, as an app does
     (`device_client.DeviceClient`): `set_weights` with the broadcast,
     `train` per minibatch, `readjust` when the round says so,
     `get_weights`. Its minibatches are its training dataset's, in the
     order the TF client trains them (`client_epochs`);
  3. each upload goes through the server's device-upload check
     (`device_payload.accept_device_upload`: the `get_weights` outputs
     decoded, checked with `payload_validation.check_upload_arrays`, bound
     to the round's model digest) and, if accepted, into the aggregator's
     sums (`PlainServer.accumulate`, or both screening passes when the run
     clips updates or rejects replays);
  4. the finalizer's step re-prunes and steps the global model
     (`PlainServer.server_update`).

`next` reports the TF process's measurements under the same names
(`measurements.REQUIRED_MEASUREMENTS`, checked every round), so metrics.csv,
the upload budget, evaluation, checkpoints and `--resume` work as with the
TF clients. The state is a `plain_loop.PlainState` (round number, global
model, server momentum buffers): a checkpoint holds all of it, so a resumed
run continues bit for bit. An upload refused by the device-upload check is
counted in `rejected_clients` and its kind, but not in `upload_bytes` (it
never reached the aggregator's byte count).

Clients run one after another in this process, or with
`--tflite_client_processes` > 1 in a pool of processes
(`client_pool.ClientPool`) whose uploads the server still takes in client
order, so the numbers are the same bit for bit; the rounds then own the
pool: leave them as a context manager (`close`). What the TFLite runtime
cannot run is refused when the settings are checked
(`setting_checks.check_tflite_runtime`).
"""

import collections
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.benchmarks import plain_loop
from tff_feddst.methods import feddst_methods
from tff_feddst.methods import model_setup
from tff_feddst.ondevice import client_pool
from tff_feddst.ondevice import device_client
from tff_feddst.ondevice import device_payload
from tff_feddst.ondevice import tflite_client
from tff_feddst.process import payload_validation
from tff_feddst.running import measurements
from tff_feddst.running import settings as settings_lib
from tff_feddst.sparse import exact_sum


def client_epochs(dataset: tf.data.Dataset,
                  num_epochs: int) -> list[list[device_client.Batch]]:
  """A client's minibatches per local epoch, in the TF client's order.

  `client_work.ClientTrainer.update` makes one counting pass over the
  dataset and then trains on `dataset.repeat(num_epochs)`; a shuffled
  dataset takes its next order at each pass, so this makes the same passes.

  Args:
    dataset: The client's batched `(x, y)` training dataset of the round.
    num_epochs: Local epochs.

  Returns:
    `num_epochs` lists of `(x float32, y int32)` numpy minibatches.
  """
  num_batches = sum(1 for _ in dataset)  # The counting pass.
  batches = [(np.asarray(x, np.float32), np.asarray(y, np.int32))
             for x, y in dataset.repeat(num_epochs)]
  return [batches[epoch * num_batches:(epoch + 1) * num_batches]
          for epoch in range(num_epochs)]


def _as_state(state: plain_loop.PlainState) -> plain_loop.PlainState:
  """A state as `PlainServer` takes it (a checkpoint's leaves are numpy)."""
  return plain_loop.PlainState(
      round_num=int(state.round_num),
      weights=tff.learning.models.ModelWeights(
          trainable=[tf.convert_to_tensor(v) for v in state.weights.trainable],
          non_trainable=[tf.convert_to_tensor(v)
                         for v in state.weights.non_trainable]),
      buffers=tuple(tf.convert_to_tensor(b) for b in state.buffers))


class TFLiteRounds:
  """Rounds of TFLite clients and the plain server, shaped like a process.

  It has the parts of a `tff.learning.templates.LearningProcess` the round
  loop calls: `initialize`, `next` and `get_model_weights`.

  Attributes:
    tflite_model: The training model the clients run (`training.tflite`).
  """

  def __init__(self, settings: settings_lib.ExperimentSettings,
               model_fn: Callable[[], tf.keras.Model], initial_model: Any,
               federated_data: Any,
               check_interrupt: Optional[Callable[[], None]] = None,
               tflite_model: Optional[bytes] = None):
    """Builds the server and exports the clients' training model.

    Args:
      settings: The run's resolved, validated settings (with
        `--client_runtime=tflite` checked).
      model_fn: The method's model function (`registry.MethodPlan`).
      initial_model: Its `fed_dst.InitialModel`.
      federated_data: The run's `data.FederatedData` (the default weight
        cap).
      check_interrupt: Called between clients (and, with a pool, while an
        upload is awaited); what it raises (a stop request) abandons the
        round.
      tflite_model: The training model converted before from the same
        settings and initial model (`kept_model`); None: convert it here.
    """
    client_config = model_setup.build_client_config(settings, initial_model)
    self._client_config = client_config
    self._server = plain_loop.PlainServer(
        initial_model, feddst_methods.build_schedule(settings), client_config,
        **model_setup.plain_server_arguments(settings, client_config,
                                             federated_data, model_fn,
                                             initial_model))
    server = self._server
    self._spec = payload_validation.payload_spec(
        initial_model.layout.kernel_shapes, initial_model.num_active,
        server.dense_shapes, server.upload_encoding)
    if tflite_model is None:
      client = tflite_client.TFLiteClient(
          model_fn(), initial_model.layout, initial_model.num_active,
          client_config, server.upload_encoding, server.download_encoding)
      client.load_weights(initial_model.weights)
      tflite_model = tflite_client.convert_client(client)
    self.tflite_model = tflite_model
    self._check_interrupt = check_interrupt
    self._clients = client_pool.client_runner(
        self.tflite_model, settings.execution.tflite_client_processes)

  def __enter__(self) -> 'TFLiteRounds':
    return self

  def __exit__(self, exception_type, *unused_exception) -> None:
    """Ends the client pool, at once when leaving on an exception."""
    self.close(abandon=exception_type is not None)

  def close(self, abandon: bool = False) -> None:
    """Ends the client runner's processes, if it has any
    (`client_pool.ClientPool.close`; serial clients have none)."""
    self._clients.close(abandon=abandon)

  @property
  def server(self) -> plain_loop.PlainServer:
    """The `PlainServer` the rounds aggregate and step with."""
    return self._server

  def initialize(self) -> plain_loop.PlainState:
    """The state before round 1: the initial model, zero buffers."""
    return self._server.initialize()

  @staticmethod
  def get_model_weights(state: plain_loop.PlainState
                        ) -> tff.learning.models.ModelWeights:
    """The global model of `state` as numpy arrays."""
    return plain_loop.PlainFedDst.get_model_weights(state)

  def _instructions(self, round_num: int,
                    round_digest: Optional[tf.Tensor]) -> dict[str, Any]:
    """The round's instructions as a device reads them."""
    instructions = self._server.instructions(round_num)
    return {
        'should_readjust': bool(instructions.should_readjust),
        'drop_fraction': np.float32(instructions.drop_fraction),
        'readjust_after_epochs':
            self._client_config.effective_readjust_after_epochs,
        'model_digest': None if round_digest is None else int(round_digest),
    }

  def next(self, state: plain_loop.PlainState,
           datasets: Sequence[tf.data.Dataset]
           ) -> tff.learning.templates.LearningProcessOutput:
    """Runs one round on the reporting clients' datasets.

    Args:
      state: From `initialize`, a previous `next` or a checkpoint.
      datasets: One batched `(x, y)` training dataset per reporting client.

    Returns:
      `LearningProcessOutput(state, metrics)`, the metrics nested by part
      as the TF process's (`measurements.REQUIRED_MEASUREMENTS`).
    """
    server = self._server
    state = _as_state(state)
    round_num = state.round_num + 1
    targets = server.targets(round_num)
    payload, payload_bytes = server.encode_global(state.weights)
    broadcast = device_payload.broadcast_inputs(payload)
    round_digest = server.round_digest(state.weights)
    instructions = self._instructions(round_num, round_digest)
    num_epochs = self._client_config.num_epochs
    aggregate = server.zero_aggregate()
    accepted, rejections = [], collections.Counter()
    loss_terms, num_regrown = exact_sum.zero_mean_terms(), 0
    num_examples = np.float32(0.0)
    examples = []

    def client_epochs_in_order():
      for dataset in datasets:
        epochs = client_epochs(dataset, num_epochs)
        examples.append(np.float32(
            sum(len(y) for _, y in epochs[0]) if epochs else 0))
        yield epochs

    uploads = self._clients.run(broadcast, instructions,
                                client_epochs_in_order(),
                                self._check_interrupt)
    for client, outputs in enumerate(uploads):
      client_examples = examples[client]
      loss_terms = exact_sum.add(loss_terms, exact_sum.mean_terms(
          tf.constant(outputs[device_client.TRAIN_LOSS_NAME][0]),
          tf.constant(client_examples)))
      num_examples += client_examples
      num_regrown += int(outputs[device_client.NUM_REGROWN_NAME][0])
      upload, rejection = device_payload.accept_device_upload(
          outputs, self._spec, round_digest)
      if rejection is not None:
        rejections[rejection[0]] += 1
        continue
      upload, weight, _ = upload
      if server.screens_uploads:
        accepted.append((upload, weight))
      else:
        aggregate = server.accumulate(aggregate, upload, weight, targets,
                                      None, round_digest)
    if server.screens_uploads:
      aggregate = server.aggregate_screened(aggregate, accepted,
                                            state.weights, targets,
                                            round_digest)
    new_state, server_metrics = server.server_update(state, aggregate)
    metrics = self._round_metrics(round_num, instructions, datasets,
                                  payload_bytes, loss_terms, num_examples,
                                  num_regrown, server_metrics, rejections)
    measurements.check_metrics(metrics)
    return tff.learning.templates.LearningProcessOutput(new_state, metrics)

  @staticmethod
  def _round_metrics(round_num: int, instructions: dict[str, Any],
                     datasets: Sequence[Any], payload_bytes: Any,
                     loss_terms: Any, num_examples: np.float32,
                     num_regrown: int, server_metrics: dict,
                     rejections: collections.Counter
                     ) -> collections.OrderedDict:
    """The round's measurements, named as the TF process names them."""
    rejected = server_metrics['rejected_clients'] + sum(rejections.values())
    aggregator = collections.OrderedDict(
        upload_bytes=server_metrics['upload_bytes'],
        num_clients=len(datasets) - rejected,
        rejected_clients=rejected)
    for kind in payload_validation.REJECTION_KINDS:
      aggregator[f'rejected_{kind}'] = (server_metrics[f'rejected_{kind}'] +
                                        rejections[kind])
    aggregator['clipped_clients'] = server_metrics['clipped_clients']
    aggregator['capped_weights'] = server_metrics['capped_weights']
    finalizer = collections.OrderedDict(
        mask_changed_positions=server_metrics['mask_changed_positions'],
        sparsity=server_metrics['sparsity'],
        server_update_failed=server_metrics['server_update_failed'])
    for key in plain_loop.MASK_MOVEMENT_KEYS:
      finalizer[key] = server_metrics[key]
    return collections.OrderedDict(
        distributor=collections.OrderedDict(
            download_bytes=int(payload_bytes) * len(datasets)),
        client_work=collections.OrderedDict(
            round_num=round_num,
            train_loss=(np.float32(exact_sum.mean_of(loss_terms))
                        if len(datasets) else np.float32(0.0)),
            num_examples=num_examples, num_regrown=num_regrown,
            should_readjust=instructions['should_readjust']),
        aggregator=aggregator, finalizer=finalizer)
