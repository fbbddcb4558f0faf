"""FedDST's client for on-device training with TensorFlow Lite, and its export.

`TFLiteClient` is a `tf.Module` around the same `client_work.ClientTrainer`
that the TFF client work runs, so the SGD step and the readjustment exist
once. Its `tf.function` signatures are converted into one `.tflite` file that
an app (Android: `Interpreter.runSignature`) drives one call at a time:

  set_weights(values_<l>, packed_masks, dense_<j>) -> num_active
      Loads the broadcast `SparsePayload` (float32 values) exactly as the TFF
      client decodes it (`distributor.decode_model_weights`) and starts a
      round: momentum buffers and grow scores are reset to 0.
  train(x, y) -> loss
      One masked SGD step (`ClientTrainer.train_step`), adding this step's
      dense kernel gradients to the grow scores ('accumulated') or storing
      them ('last_batch').
  readjust(drop_fraction) -> num_regrown
      `ClientTrainer.readjust`: per layer, prune the k smallest active
      weights and regrow k inactive ones by |grow score| (nnz unchanged),
      then clear the grow scores.
  get_weights() -> values_<l>, packed_masks, dense_<j>
      The `SparsePayload` to upload (`ClientTrainer.payload`), values in the
      configured upload dtype. The upload weight (number of local examples in
      one epoch, float32) is sent next to it by the app.
  infer(x) -> logits, probabilities
  save(checkpoint_path) / restore(checkpoint_path) -> checkpoint_path
      The whole client state (model, momentum, grow scores, the global model
      kept for FedProx) to and from a TF checkpoint file on the device, so a
      round survives the app being stopped.

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

Select TF ops (measured with TF 2.14.1 on the MNIST net; `select_tf_ops`
lists them for any converted model). The converter uses a builtin wherever
TFLite has one; the rest runs on the Flex delegate (Android:
`org.tensorflow:tensorflow-lite-select-tf-ops`):
  train        Conv2DBackpropFilter, MaxPoolGrad, ReluGrad,
               SparseSoftmaxCrossEntropyWithLogits: TFLite has no gradient
               kernels, nor the fused cross-entropy with its gradient;
  readjust     AddV2, Floor, Mul on float64 (`masks.num_to_readjust` rounds
               in float64; TFLite has no float64 arithmetic);
  set_weights  BitwiseAnd (`mask_codes.unpack_bits`; no builtin bitwise AND);
  get_weights  EnsureShape (`encoding.encode`); with float16 uploads also Pad
               (TFLite's PAD has no float16 kernel);
  save/restore Save, Restore: checkpoint file I/O.
`infer` and the stripped inference models use builtins only. The stable
argsorts of `masks` become TOPK_V2, whose ties go to the lower index as in TF.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated
from tensorflow.lite.tools import flatbuffer_utils
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.methods import model_setup
from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.outputs import run_files
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import mask_codes
from tff_feddst.running import settings as settings_lib

TRAINING_SIGNATURES = ('train', 'infer', 'get_weights', 'set_weights',
                       'readjust', 'save', 'restore')
INFERENCE_SIGNATURES = ('infer',)

TRAINING_FILE = 'training.tflite'
INFERENCE_FILE = 'inference.tflite'
SPARSE_INFERENCE_FILE = 'inference_sparse.tflite'
METADATA_FILE = 'metadata.json'
OUTPUT_FILES = (TRAINING_FILE, INFERENCE_FILE, SPARSE_INFERENCE_FILE,
                METADATA_FILE)

CHECKPOINT_FILE = 'global_model.npz'
FLAGS_FILE = 'flags.txt'


class ExportError(ValueError):
  """An export that cannot be done; the message is one line naming the file."""


# ---------------------------------------------------------------------------
# Payload <-> named tensors.


def values_name(layer: int) -> str:
  """Signature name of a prunable layer's active values.

  Args:
    layer: Position of the kernel among the prunable kernels.

  Returns:
    `values_<layer>`.
  """
  return f'values_{layer}'


def dense_name(index: int) -> str:
  """Signature name of a dense parameter tensor.

  Args:
    index: Position in the payload's `dense` tuple (dense trainable, then
      dense non-trainable).

  Returns:
    `dense_<index>`.
  """
  return f'dense_{index}'


PACKED_MASKS_NAME = 'packed_masks'


def payload_to_dict(payload: encoding.SparsePayload) -> dict[str, Any]:
  """Flattens a `SparsePayload` into the signatures' named tensors.

  Args:
    payload: The payload (tensors or numpy arrays).

  Returns:
    `{values_<l>: ..., packed_masks: ..., dense_<j>: ...}` with the same
    objects as in `payload`.
  """
  named = {values_name(l): v for l, v in enumerate(payload.values)}
  named[PACKED_MASKS_NAME] = payload.packed_masks
  named.update({dense_name(j): d for j, d in enumerate(payload.dense)})
  return named


def payload_from_dict(named: Mapping[str, Any], num_layers: int,
                      num_dense: int) -> encoding.SparsePayload:
  """Inverse of `payload_to_dict`.

  Args:
    named: Tensors keyed `values_<l>`, `packed_masks`, `dense_<j>` (e.g. the
      outputs of the `get_weights` signature).
    num_layers: Number of prunable kernels.
    num_dense: Number of dense parameter tensors.

  Returns:
    The `SparsePayload`.
  """
  return encoding.SparsePayload(
      values=tuple(named[values_name(l)] for l in range(num_layers)),
      packed_masks=named[PACKED_MASKS_NAME],
      dense=tuple(named[dense_name(j)] for j in range(num_dense)))


def broadcast_specs(model: tf.keras.Model, layout: models.ModelLayout,
                    num_active: Sequence[int]) -> tuple[tf.TensorSpec, ...]:
  """Named specs of the payload the server broadcasts, in signature order.

  The server encodes with float32 values (`distributor`), whatever dtype the
  clients upload in.

  Args:
    model: The wrapped Keras model.
    layout: Its `ModelLayout`.
    num_active: Active weights per prunable kernel.

  Returns:
    `values_<l>` float32 [num_active[l]], `packed_masks` uint8
    [ceil(positions of the layers that are not dense / 8)], `dense_<j>`
    float32 with the parameter's shape.
  """
  trainable = model.trainable_variables
  non_trainable = model.non_trainable_variables
  dense = ([trainable[i] for i in layout.dense_trainable_indices] +
           [non_trainable[i] for i in layout.dense_non_trainable_indices])
  specs = [tf.TensorSpec((int(count),), tf.float32, name=values_name(l))
           for l, count in enumerate(num_active)]
  # Dense layers (capacity == size) carry no mask bits (`encoding`).
  specs.append(tf.TensorSpec(
      (mask_codes.num_packed_bytes(mask_codes.num_mask_bits(
          layout.kernel_sizes, num_active)),), tf.uint8,
      name=PACKED_MASKS_NAME))
  specs += [tf.TensorSpec(v.shape, tf.float32, name=dense_name(j))
            for j, v in enumerate(dense)]
  return tuple(specs)


# ---------------------------------------------------------------------------
# The on-device client.


class TFLiteClient(tf.Module):
  """A FedDST client whose signatures convert to one TFLite training model.

  It owns a wrapped Keras model and the `client_work.ClientTrainer` that
  trains it; every signature delegates to the trainer (see the module
  docstring for what each one does and in which order an app calls them).
  Only the variables are tracked for saving; the Keras model itself is not
  serialised.
  """

  def __init__(self, model: tf.keras.Model, layout: models.ModelLayout,
               num_active: Sequence[int], config: client_work.ClientConfig):
    """Builds the client and its signatures.

    Args:
      model: A built wrapped Keras model (from a `models` builder). Its
        current variable values become the initial state of the TFLite
        model; use `load_weights` to set them.
      layout: The model's `ModelLayout`.
      num_active: Active weights per prunable kernel.
      config: Local training hyper-parameters (baked into the signatures).
    """
    super().__init__(name='feddst_client')
    trainer = client_work.ClientTrainer(model, layout, num_active, config)
    # A plain Python object: tf.Module does not track it, so saving does not
    # try to serialise the Keras model; its variables are tracked below.
    self._trainer = trainer
    self._layout = layout
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
    self._state_names = tuple(name for name, _ in named_state)
    self.state_variables = tuple(v for _, v in named_state)

    input_shape = tuple(model.input_shape[1:])
    x_spec = tf.TensorSpec((None,) + input_shape, tf.float32, name='x')
    y_spec = tf.TensorSpec((None,), tf.int32, name='y')
    self._set_weights_specs = broadcast_specs(model, layout, num_active)
    path_spec = tf.TensorSpec((), tf.string, name='checkpoint_path')

    self.train = tf.function(self._train, input_signature=[x_spec, y_spec])
    self.infer = tf.function(self._infer, input_signature=[x_spec])
    self.get_weights = tf.function(self._get_weights, input_signature=[])
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
    return {'loss': loss}

  def _infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
    logits = self._trainer.model(x, training=False)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits)}

  def _get_weights(self) -> dict[str, tf.Tensor]:
    return payload_to_dict(self._trainer.payload())

  def _set_weights(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
    named = {spec.name: tensor
             for spec, tensor in zip(self._set_weights_specs, tensors)}
    payload = payload_from_dict(named, self._num_layers, self._num_dense)
    weights = distributor.decode_model_weights(payload, self._layout,
                                               self._weights_type)
    self._trainer.set_weights(weights)
    return {'num_active': tf.stack(
        [tf.cast(tf.reduce_sum(mask), tf.int32)
         for mask in self._trainer.masks])}

  def _readjust(self, drop_fraction: tf.Tensor) -> dict[str, tf.Tensor]:
    return {'num_regrown': self._trainer.readjust(drop_fraction)}

  def _save(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
    tf.raw_ops.Save(
        filename=checkpoint_path,
        tensor_names=tf.constant(self._state_names),
        data=[v.read_value() for v in self.state_variables])
    return {'checkpoint_path': checkpoint_path}

  def _restore(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
    for name, variable in zip(self._state_names, self.state_variables):
      value = tf.raw_ops.Restore(file_pattern=checkpoint_path,
                                 tensor_name=name, dt=variable.dtype)
      variable.assign(tf.reshape(value, variable.shape))
    return {'checkpoint_path': checkpoint_path}


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


# ---------------------------------------------------------------------------
# Inspection of converted models.


def _builtin_names() -> dict[int, str]:
  return {value: name
          for name, value in vars(schema_py_generated.BuiltinOperator).items()
          if not name.startswith('_')}


def signature_ops(tflite_model: bytes) -> dict[str, tuple[str, ...]]:
  """Lists the ops each signature runs, following called subgraphs.

  Args:
    tflite_model: A `.tflite` flatbuffer.

  Returns:
    `{signature key: sorted op names}`; builtins by their builtin name,
    select TF ops by their custom code (`Flex<TF op name>`).
  """
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
  builtins = _builtin_names()

  def op_name(operator) -> str:
    code = model.operatorCodes[operator.opcodeIndex]
    if code.customCode:
      return code.customCode.decode()
    return builtins.get(max(code.builtinCode, code.deprecatedBuiltinCode),
                        str(code.builtinCode))

  def collect(subgraph_index: int, seen: set[int], names: set[str]) -> None:
    if subgraph_index in seen:
      return
    seen.add(subgraph_index)
    for operator in model.subgraphs[subgraph_index].operators or []:
      names.add(op_name(operator))
      # Control flow (WHILE, IF, CALL_ONCE, ...) names its subgraphs in
      # options fields ending in 'SubgraphIndex'.
      options = operator.builtinOptions
      for attribute in dir(options) if options is not None else ():
        if attribute.endswith('SubgraphIndex'):
          collect(getattr(options, attribute), seen, names)

  result = {}
  for signature in model.signatureDefs or []:
    names = set()
    collect(signature.subgraphIndex, set(), names)
    result[signature.signatureKey.decode()] = tuple(sorted(names))
  return result


def select_tf_ops(tflite_model: bytes) -> dict[str, tuple[str, ...]]:
  """Lists, per signature, the TF ops that need the Flex delegate.

  Args:
    tflite_model: A `.tflite` flatbuffer.

  Returns:
    `{signature key: sorted TF op names}` (without the `Flex` prefix).
  """
  return {key: tuple(name[len('Flex'):] for name in names
                     if name.startswith('Flex'))
          for key, names in signature_ops(tflite_model).items()}


# ---------------------------------------------------------------------------
# Runs and checkpoints.


def read_flags_file(path: str) -> settings_lib.ExperimentSettings:
  """Reads a run's `flags.txt` (`--name=value` lines) into its settings.

  Args:
    path: The file.

  Returns:
    The validated `ExperimentSettings`.

  Raises:
    ExportError: If the file is missing, unreadable, or holds an unknown or
      bad setting (the message names the file).
  """
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as error:
    raise ExportError(f'{path}: cannot read the run settings '
                      f'({error.strerror or error}).') from error
  try:
    settings = settings_lib.from_flag_lines(lines)
  except settings_lib.FlagLineError as error:
    raise ExportError(f'{path}:{error.line_number}: {error}') from error
  try:
    settings.validate()
  except settings_lib.ConfigError as error:
    raise ExportError(f'{path}: {error}') from error
  return settings


def resolve_checkpoint(checkpoint: str) -> tuple[str, str]:
  """Finds a run's weights and settings files.

  Args:
    checkpoint: A run's output directory, or its `global_model.npz`.

  Returns:
    `(npz path, flags.txt path)`; the settings sit next to the weights.

  Raises:
    ExportError: If the checkpoint does not exist.
  """
  if os.path.isdir(checkpoint):
    npz_path = os.path.join(checkpoint, CHECKPOINT_FILE)
  else:
    npz_path = checkpoint
  if not os.path.isfile(npz_path):
    raise ExportError(f'{npz_path}: no such checkpoint file.')
  return npz_path, os.path.join(os.path.dirname(npz_path), FLAGS_FILE)


def load_checkpoint(npz_path: str,
                    initial: fed_dst.InitialModel) -> Any:
  """Loads a run's global `ModelWeights` and checks them against the model.

  Args:
    npz_path: A `global_model.npz` written by `run_files`.
    initial: The `InitialModel` built from the run's settings: its weights
      give the expected count, shapes and dtypes, its `num_active` the most
      active positions a mask may hold.

  Returns:
    The `ModelWeights` (numpy arrays), masked kernels.

  Raises:
    ExportError: For an unreadable file or weights that do not fit the model.
  """
  try:
    weights = run_files.load_model_weights(npz_path)
  except Exception as error:  # np.load raises many kinds on a corrupt file.
    raise ExportError(f'{npz_path}: not a readable weights archive '
                      f'({type(error).__name__}).') from error
  expected = initial.weights
  for part in ('trainable', 'non_trainable'):
    got, want = getattr(weights, part), getattr(expected, part)
    if len(got) != len(want):
      raise ExportError(f'{npz_path}: {len(got)} {part} arrays, the model has '
                        f'{len(want)}; the checkpoint does not match the run '
                        'settings.')
    for index, (array, reference) in enumerate(zip(got, want)):
      if array.shape != reference.shape or array.dtype != reference.dtype:
        raise ExportError(
            f'{npz_path}: {part}_{index} is {array.dtype}{list(array.shape)}, '
            f'the model expects {reference.dtype}{list(reference.shape)}.')
      if (np.issubdtype(array.dtype, np.floating) and
          not np.all(np.isfinite(array))):
        raise ExportError(f'{npz_path}: {part}_{index} holds NaN or Inf.')
  layout = initial.layout
  trainable = list(weights.trainable)
  for position, (kernel_index, mask_index) in enumerate(
      zip(layout.kernel_indices, layout.mask_indices)):
    mask = weights.non_trainable[mask_index]
    if not np.all((mask == 0) | (mask == 1)):
      raise ExportError(f'{npz_path}: mask of layer {position} is not 0/1.')
    if int(mask.sum()) > initial.num_active[position]:
      raise ExportError(
          f'{npz_path}: mask of layer {position} has {int(mask.sum())} active '
          f'positions, the run settings allow {initial.num_active[position]}.')
    trainable[kernel_index] = trainable[kernel_index] * mask
  return tff.learning.models.ModelWeights(
      trainable=trainable, non_trainable=list(weights.non_trainable))


# ---------------------------------------------------------------------------
# The whole export.


@dataclasses.dataclass
class ExportResult:
  """What `export` wrote.

  Attributes:
    paths: `{file name: path}` of the written files.
    sizes: `{file name: bytes}` of the `.tflite` files.
    select_tf_ops: Per signature of the training model, the TF ops that need
      the select-TF-ops runtime.
    metadata: The content of `metadata.json`.
  """
  paths: dict[str, str]
  sizes: dict[str, int]
  select_tf_ops: dict[str, tuple[str, ...]]
  metadata: dict[str, Any]


def check_output_dir(output_dir: str) -> None:
  """Refuses an output location that is a file or holds export files.

  Args:
    output_dir: Where `export` would write (may not exist yet).

  Raises:
    ExportError: Naming the first file that would be overwritten.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ExportError(f'{output_dir}: exists and is not a directory.')
  for name in OUTPUT_FILES:
    path = os.path.join(output_dir, name)
    if os.path.exists(path):
      raise ExportError(f'{path}: already exists; nothing was overwritten.')


def _tensor_description(spec: tf.TensorSpec) -> dict[str, Any]:
  return {'name': spec.name, 'dtype': spec.dtype.name,
          'shape': [-1 if d is None else int(d) for d in spec.shape]}


def export(model_name: str, model_fn: models.ModelFn, weights: Any,
           layout: models.ModelLayout, num_active: Sequence[int],
           client_config: client_work.ClientConfig, output_dir: str,
           source: Optional[str] = None) -> ExportResult:
  """Exports the training model and the stripped inference models.

  Writes to `output_dir` (created if needed; existing files are refused
  before anything is computed, and files are written only once all
  conversions succeeded):
    training.tflite           all `TRAINING_SIGNATURES`, starting from
                              `weights` (needs select TF ops);
    inference.tflite          masks applied, wrappers stripped, builtins;
    inference_sparse.tflite   the same with EXPERIMENTAL_SPARSITY;
    metadata.json             model, shapes, names, dtypes, hyper-parameters,
                              sizes, select TF ops.

  Args:
    model_name: Name of the model (for the metadata).
    model_fn: Builds the wrapped Keras model.
    weights: Global `ModelWeights` to start from.
    layout: The model's `ModelLayout`.
    num_active: Active weights per prunable kernel.
    client_config: Local training hyper-parameters baked into `train`.
    output_dir: Output directory.
    source: Where the weights came from (for the metadata).

  Returns:
    The `ExportResult`.

  Raises:
    ExportError: If an output file already exists.
  """
  check_output_dir(output_dir)
  client = TFLiteClient(model_fn(), layout, num_active, client_config)
  client.load_weights(weights)
  training_model = convert_client(client)
  stripped = strip_model(model_fn, weights)
  inference_model = convert_inference(stripped, sparse=False)
  sparse_inference_model = convert_inference(stripped, sparse=True)
  contents = {TRAINING_FILE: training_model, INFERENCE_FILE: inference_model,
              SPARSE_INFERENCE_FILE: sparse_inference_model}
  sizes = {name: len(content) for name, content in contents.items()}
  flex_ops = select_tf_ops(training_model)
  payload = client.get_weights()
  metadata = {
      'model': model_name,
      'source': source,
      'input': _tensor_description(client.infer.input_signature[0]),
      'labels': _tensor_description(client.train.input_signature[1]),
      'num_classes': int(client.trainer.model.output_shape[-1]),
      'kernel_shapes': [list(s) for s in layout.kernel_shapes],
      'num_active': [int(n) for n in num_active],
      'set_weights_inputs': [_tensor_description(s)
                             for s in client.set_weights_specs],
      'get_weights_outputs': [
          _tensor_description(tf.TensorSpec(v.shape, v.dtype, name=k))
          for k, v in payload.items()],
      'client_config': dataclasses.asdict(client_config),
      'readjust_step': 'clip(round(readjust_after_epochs * num_batches), 1, '
                       'num_epochs * num_batches)',
      'signatures': list(TRAINING_SIGNATURES),
      'select_tf_ops': {k: list(v) for k, v in flex_ops.items()},
      'sizes': sizes,
  }
  os.makedirs(output_dir, exist_ok=True)
  paths = {}
  for name, content in contents.items():
    paths[name] = os.path.join(output_dir, name)
    with open(paths[name], 'xb') as f:
      f.write(content)
  paths[METADATA_FILE] = os.path.join(output_dir, METADATA_FILE)
  with open(paths[METADATA_FILE], 'x') as f:
    json.dump(metadata, f, indent=2)
    f.write('\n')
  return ExportResult(paths=paths, sizes=sizes, select_tf_ops=flex_ops,
                      metadata=metadata)


def build_initial_for(settings: settings_lib.ExperimentSettings
                      ) -> tuple[models.ModelFn, fed_dst.InitialModel]:
  """Builds a run's model function and seeded model at its target sparsity.

  Args:
    settings: The run's validated settings.

  Returns:
    `(model_fn, initial model)`, through the call training uses
    (`model_setup.build_model`), at --target_sparsity (the sparsity of a
    finished run's weights).
  """
  return model_setup.build_model(
      settings, sparsity=settings.network.target_sparsity)


def export_checkpoint(checkpoint: str, output_dir: str) -> ExportResult:
  """Exports a finished run's global model for on-device training.

  Args:
    checkpoint: The run's output directory or its `global_model.npz`; the
      run's `flags.txt` next to it gives the model and hyper-parameters.
    output_dir: Where the files go (see `export`).

  Returns:
    The `ExportResult`.

  Raises:
    ExportError: For an existing output file, or a missing, corrupt or
      mismatched checkpoint or settings file (checked before anything is
      written).
  """
  check_output_dir(output_dir)
  npz_path, flags_path = resolve_checkpoint(checkpoint)
  config = read_flags_file(flags_path)
  model_fn, initial = build_initial_for(config)
  weights = load_checkpoint(npz_path, initial)
  return export(config.model_name, model_fn, weights, initial.layout,
                initial.num_active,
                model_setup.build_client_config(config, initial), output_dir,
                source=os.path.abspath(npz_path))


def export_initial(config: settings_lib.ExperimentSettings,
                   output_dir: str) -> ExportResult:
  """Exports the seeded initial model a run with `config` would start from.

  Args:
    config: Settings (model, sparsity, seed, client hyper-parameters).
    output_dir: Where the files go (see `export`).

  Returns:
    The `ExportResult`.

  Raises:
    settings.ConfigError: For a bad setting.
    ExportError: For an existing output file.
  """
  config.validate()
  check_output_dir(output_dir)
  model_fn, initial = build_initial_for(config)
  return export(config.model_name, model_fn, initial.weights, initial.layout,
                initial.num_active,
                model_setup.build_client_config(config, initial), output_dir,
                source=f'initialisation (seed {config.run.seed})')
