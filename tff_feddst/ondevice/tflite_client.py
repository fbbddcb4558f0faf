"""FedDST's client for on-device training with TensorFlow Lite, converted.

`TFLiteClient` is a `tf.Module` around the same `client_work.ClientTrainer`
that the TFF client work runs, so the SGD step and the readjustment exist
once. Its `tf.function` signatures are converted into one `.tflite` file that
an app (Android: `Interpreter.runSignature`) drives one call at a time. The
payload tensors are named as in `device_payload`. Every signature has an
input and no scalar output (`signature_report.contract_violations`):

  set_weights(values_<l>, packed_masks, dense_<j>) -> num_active i32[L]
      Loads the broadcast payload in the run's download encoding exactly as
      the TFF client decodes it (`distributor.decode_model_weights`) and
      starts a round: momentum buffers and grow scores are reset to 0. The
      inputs are `device_payload.broadcast_specs`: float32 values (float16
      ones as int16 bits), the masks of the layers the encoding sends them
      for (dense layers' too under 'dense_masks', which runs that can thin
      a dense layer use), or `mask_code` u8 and `mask_code_bits` i32[1] for
      a Rice-coded broadcast; a mask may hold fewer ones than the capacity
      (the values are then zero-padded). `num_active` counts the ones.
  train(x, y) -> loss f32[1]
      One masked SGD step (`ClientTrainer.train_step`), adding this step's
      dense kernel gradients to the grow scores ('accumulated') or storing
      them ('last_batch').
  readjust(drop_fraction f32[]) -> num_regrown i32[1]
      `ClientTrainer.readjust`: per layer, prune the k smallest active
      weights and regrow k inactive ones by |grow score| (nnz unchanged),
      then clear the grow scores.
  get_weights(num_examples f32[]) -> values_<l>, packed_masks, dense_<j>,
                                     weight f32[1]
      The payload to upload, values in the configured upload dtype, float16
      ones bit-cast to int16 (`device_payload.to_wire`), and `num_examples`
      (the number of local examples in one epoch) echoed as the upload's
      aggregation weight. With a bitmap upload encoding, the `SparsePayload`
      (`ClientTrainer.payload`); with Rice-coded masks or changed-masks-only,
      the simulation's `CodedPayload` (`ClientTrainer.encoded_upload`, the
      masks left out when still those `set_weights` received): `mask_code`
      u8 and `mask_code_bits` i32[1] replace `packed_masks`.
  infer(x) -> logits, probabilities
  save(checkpoint_path string[]) / restore(checkpoint_path string[])
      -> num_tensors i32[1]
      The whole client state (model, momentum, grow scores, the global model
      kept for FedProx, the received masks of changed-masks-only) to and
      from a TF checkpoint file on the device, so a round survives the app
      being stopped; `num_tensors` counts the state tensors written or read.

How this matches the TF client. `ClientTrainer.update` (one TFF round) calls
`set_weights`, then `train_step` for every minibatch of E epochs, and on a
readjustment round calls `readjust(drop_fraction)` once, right after step
  readjust_step = clip(round(readjust_after_epochs * num_batches), 1,
                       E * num_batches),
where the grow scores hold the gradients of steps 1..readjust_step. On the
device `train` always updates the grow scores; an app that calls `train`
readjust_step times and then `readjust` hands the readjustment exactly the
scores the TF client uses. Scores gathered after the readjustment are never
read (the next `set_weights` clears them), so the rest of the round trains
exactly as in TF.

Select TF ops (measured with TF 2.14.1 on the MNIST and CIFAR-10 nets;
`signature_report.select_tf_ops` lists them for any converted model). The
converter uses a builtin wherever TFLite has one; the rest runs on the Flex
delegate (Android: `org.tensorflow:tensorflow-lite-select-tf-ops`):
  train        Conv2DBackpropFilter, MaxPoolGrad, ReluGrad,
               SparseSoftmaxCrossEntropyWithLogits: TFLite has no gradient
               kernels, nor the fused cross-entropy with its gradient;
  save/restore Save, Restore: checkpoint file I/O.
`set_weights`, `get_weights`, `readjust` and `infer` and the stripped
inference models use builtins only (mask bits are unpacked with FLOOR_DIV
and FLOOR_MOD, values padded before their cast to float16; the Rice encoder
of compact uploads also uses builtins only). The stable
argsorts of `masks` become TOPK_V2, whose ties go to the lower index as in
TF.
"""

import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.ondevice import device_payload
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding

TRAINING_SIGNATURES = ('train', 'infer', 'get_weights', 'set_weights',
                       'readjust', 'save', 'restore')
INFERENCE_SIGNATURES = ('infer',)


class TFLiteClient(tf.Module):
  """A FedDST client whose signatures convert to one TFLite training model.

  It owns a wrapped Keras model and the `client_work.ClientTrainer` that
  trains it; every signature delegates to the trainer (see the module
  docstring for what each one does and in which order an app calls them).
  Only the variables are tracked for saving; the Keras model itself is not
  serialised.
  """

  def __init__(self, model: tf.keras.Model, layout: models.ModelLayout,
               num_active: Sequence[int], config: client_work.ClientConfig,
               upload_encoding: Optional[encoding.PayloadEncoding] = None,
               download_encoding: Optional[encoding.PayloadEncoding] = None):
    """Builds the client and its signatures.

    Args:
      model: A built wrapped Keras model (from a `models` builder). Its
        current variable values become the initial state of the TFLite
        model; use `load_weights` to set them.
      layout: The model's `ModelLayout`.
      num_active: Active weights per prunable kernel.
      config: Local training hyper-parameters (baked into the signatures).
      upload_encoding: How `get_weights` encodes the upload (the run's
        upload encoding); None: bitmap masks, `config.value_dtype` values.
      download_encoding: How the broadcast `set_weights` takes is encoded
        (the run's download encoding, `ExperimentSettings.payload_encodings`);
        None: float32 values, bitmap masks, dense layers without mask.

    Raises:
      ValueError: If `download_encoding` would leave the masks out.
    """
    super().__init__(name='feddst_client')
    trainer = client_work.ClientTrainer(model, layout, num_active, config,
                                        upload_encoding=upload_encoding)
    # A plain Python object: tf.Module does not track it, so saving does not
    # try to serialise the Keras model; its variables are tracked below.
    self._trainer = trainer
    self._layout = layout
    self._num_active = tuple(int(n) for n in num_active)
    self._download_encoding = download_encoding or encoding.PayloadEncoding()
    self._num_layers = layout.num_prunable
    self._num_dense = (len(layout.dense_trainable_indices) +
                       len(layout.dense_non_trainable_indices))
    weights_spec = tff.learning.models.ModelWeights(
        trainable=[tf.TensorSpec(v.shape, v.dtype)
                   for v in model.trainable_variables],
        non_trainable=[tf.TensorSpec(v.shape, v.dtype)
                       for v in model.non_trainable_variables])
    self._weights_type = tff.types.tensorflow_to_type(weights_spec)

    named_state = []
    named_state += [(f'trainable_{i}', v)
                    for i, v in enumerate(model.trainable_variables)]
    named_state += [(f'non_trainable_{i}', v)
                    for i, v in enumerate(model.non_trainable_variables)]
    named_state += [(f'momentum_{i}', v) for i, v in enumerate(trainer.momenta)]
    named_state += [(f'grow_score_{l}', v)
                    for l, v in enumerate(trainer.grow_scores)]
    # The global model FedProx pulls towards; ClientTrainer keeps it only
    # when prox_mu > 0 and does not expose it publicly.
    global_variables = getattr(trainer, '_global_trainable', [])
    named_state += [(f'global_{i}', v) for i, v in enumerate(global_variables)]
    # With changed-masks-only uploads, the masks `set_weights` received: the
    # upload leaves its masks out when they are still these.
    self._upload_encoding = trainer.upload_encoding
    self._received_masks = ()
    if self._upload_encoding.masks_only_when_changed:
      self._received_masks = tuple(
          tf.Variable(tf.zeros(mask.shape, mask.dtype), trainable=False,
                      name=f'received_mask_{l}')
          for l, mask in enumerate(trainer.masks))
    named_state += [(f'received_mask_{l}', v)
                    for l, v in enumerate(self._received_masks)]
    self._state_names = tuple(name for name, _ in named_state)
    self.state_variables = tuple(v for _, v in named_state)

    input_shape = tuple(model.input_shape[1:])
    x_spec = tf.TensorSpec((None,) + input_shape, tf.float32, name='x')
    y_spec = tf.TensorSpec((None,), tf.int32, name='y')
    self._set_weights_specs = device_payload.broadcast_specs(
        model, layout, num_active, self._download_encoding)
    path_spec = tf.TensorSpec((), tf.string, name='checkpoint_path')
    num_examples_spec = tf.TensorSpec((), tf.float32,
                                      name=device_payload.NUM_EXAMPLES_NAME)

    self.train = tf.function(self._train, input_signature=[x_spec, y_spec])
    self.infer = tf.function(self._infer, input_signature=[x_spec])
    self.get_weights = tf.function(self._get_weights,
                                   input_signature=[num_examples_spec])
    self.set_weights = tf.function(
        self._set_weights, input_signature=list(self._set_weights_specs))
    self.readjust = tf.function(
        self._readjust,
        input_signature=[tf.TensorSpec((), tf.float32, name='drop_fraction')])
    self.save = tf.function(self._save, input_signature=[path_spec])
    self.restore = tf.function(self._restore, input_signature=[path_spec])

  @property
  def trainer(self) -> client_work.ClientTrainer:
    """The `ClientTrainer` every signature delegates to."""
    return self._trainer

  @property
  def set_weights_specs(self) -> tuple[tf.TensorSpec, ...]:
    """Named inputs of `set_weights`, in order."""
    return self._set_weights_specs

  @property
  def download_encoding(self) -> encoding.PayloadEncoding:
    """The broadcast encoding `set_weights` decodes."""
    return self._download_encoding

  def load_weights(self, weights: Any) -> None:
    """Eagerly loads global `ModelWeights` (resets optimizer state).

    Args:
      weights: `ModelWeights` of the global model (e.g. from a checkpoint).
    """
    self._trainer.set_weights(weights)

  def concrete_signatures(self) -> dict[str, Any]:
    """Returns `{signature name: concrete function}` for saving."""
    return {name: getattr(self, name).get_concrete_function()
            for name in TRAINING_SIGNATURES}

  # The signature bodies.

  def _train(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
    loss = self._trainer.train_step(x, y, update_grow_scores=True)
    return {'loss': tf.reshape(loss, [1])}

  def _infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
    logits = self._trainer.model(x, training=False)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits)}

  def _get_weights(self, num_examples: tf.Tensor) -> dict[str, tf.Tensor]:
    if self._upload_encoding.is_bitmap_payload:
      payload = self._trainer.payload()
    else:
      # What the TFF client uploads: Rice-coded masks and/or masks left out
      # when unchanged (`ClientTrainer.encoded_upload`).
      received = self._received_masks or self._trainer.masks
      payload = self._trainer.encoded_upload(
          [mask.read_value() for mask in received])
    named = device_payload.payload_to_dict(device_payload.to_wire(payload))
    if device_payload.MASK_CODE_BITS_NAME in named:
      named[device_payload.MASK_CODE_BITS_NAME] = tf.reshape(
          named[device_payload.MASK_CODE_BITS_NAME], [1])
    named[device_payload.WEIGHT_NAME] = tf.reshape(num_examples, [1])
    return named

  def _set_weights(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
    named = {spec.name: tensor
             for spec, tensor in zip(self._set_weights_specs, tensors)}
    payload = device_payload.broadcast_from_inputs(
        named, self._num_layers, self._num_dense, self._download_encoding)
    weights = distributor.decode_model_weights(
        payload, self._layout, self._weights_type, self._num_active,
        self._download_encoding)
    self._trainer.set_weights(weights)
    for received, mask in zip(self._received_masks, self._trainer.masks):
      received.assign(mask)
    return {'num_active': tf.stack(
        [tf.cast(tf.reduce_sum(mask), tf.int32)
         for mask in self._trainer.masks])}

  def _readjust(self, drop_fraction: tf.Tensor) -> dict[str, tf.Tensor]:
    num_regrown = self._trainer.readjust(drop_fraction)
    return {'num_regrown': tf.reshape(num_regrown, [1])}

  def _save(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
    tf.raw_ops.Save(
        filename=checkpoint_path,
        tensor_names=tf.constant(self._state_names),
        data=[v.read_value() for v in self.state_variables])
    return {'num_tensors': tf.constant([len(self.state_variables)], tf.int32)}

  def _restore(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
    for name, variable in zip(self._state_names, self.state_variables):
      value = tf.raw_ops.Restore(file_pattern=checkpoint_path,
                                 tensor_name=name, dt=variable.dtype)
      variable.assign(tf.reshape(value, variable.shape))
    return {'num_tensors': tf.constant([len(self.state_variables)], tf.int32)}


class _ModelHolder:
  """A plain (untracked) reference to a Keras model."""

  def __init__(self, model: tf.keras.Model):
    self.model = model


class InferenceModule(tf.Module):
  """A plain (stripped) Keras model behind one `infer` signature."""

  def __init__(self, model: tf.keras.Model):
    """Wraps `model`.

    Args:
      model: A built Keras model without pruning wrappers.
    """
    super().__init__(name='feddst_inference')
    # Held in a plain object so that saving tracks only the variables, not
    # the Keras model (whose own SavedModel serialisation is not needed).
    self._holder = _ModelHolder(model)
    self.model_variables = tuple(model.variables)
    x_spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32,
                           name='x')
    self.infer = tf.function(self._infer, input_signature=[x_spec])

  def _infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
    logits = self._holder.model(x, training=False)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits)}


# ---------------------------------------------------------------------------
# Conversion.


def convert_module(module: tf.Module, signatures: Mapping[str, Any], *,
                   allow_select_tf_ops: bool = True,
                   optimizations: Sequence[tf.lite.Optimize] = ()) -> bytes:
  """Saves a module as a SavedModel with signatures and converts it.

  Args:
    module: The `tf.Module` (its variables are saved with it).
    signatures: `{name: concrete function}`.
    allow_select_tf_ops: Also allow TF kernels (Flex) for ops without a
      TFLite builtin; the converter still uses builtins wherever one exists.
    optimizations: `tf.lite.Optimize` values (e.g. EXPERIMENTAL_SPARSITY).

  Returns:
    The `.tflite` flatbuffer.
  """
  saved_model_dir = tempfile.mkdtemp(prefix='feddst_saved_model_')
  try:
    tf.saved_model.save(module, saved_model_dir, signatures=dict(signatures))
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=list(signatures))
    supported = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_select_tf_ops:
      supported.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = supported
    converter.experimental_enable_resource_variables = True
    converter.optimizations = list(optimizations)
    return converter.convert()
  finally:
    shutil.rmtree(saved_model_dir, ignore_errors=True)


def convert_client(client: TFLiteClient) -> bytes:
  """Converts a `TFLiteClient` into the training model (all signatures).

  Args:
    client: The client, with the weights the model should start from.

  Returns:
    The `.tflite` flatbuffer (needs the select-TF-ops runtime).
  """
  return convert_module(client, client.concrete_signatures())


def strip_model(model_fn: models.ModelFn, weights: Any) -> tf.keras.Model:
  """Builds a model, loads `weights`, applies masks and removes wrappers.

  Args:
    model_fn: Builds the wrapped Keras model.
    weights: `ModelWeights` of it.

  Returns:
    The plain Keras model computing what the wrapped one does.
  """
  model = model_fn()
  for variable, value in zip(model.trainable_variables, weights.trainable):
    variable.assign(value)
  for variable, value in zip(model.non_trainable_variables,
                             weights.non_trainable):
    variable.assign(value)
  return pruning.strip(model)


def convert_inference(model: tf.keras.Model, sparse: bool) -> bytes:
  """Converts a stripped model's `infer` signature with builtins only.

  Args:
    model: A plain Keras model (see `strip_model`).
    sparse: Apply `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` (stores sparse
      constant tensors in TFLite's sparse format).

  Returns:
    The `.tflite` flatbuffer.
  """
  module = InferenceModule(model)
  optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
  return convert_module(
      module, {'infer': module.infer.get_concrete_function()},
      allow_select_tf_ops=False, optimizations=optimizations)
