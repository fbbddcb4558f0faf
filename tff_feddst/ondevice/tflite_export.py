"""The export of a run's FedDST client for on-device training (TFLite).

`export` writes the training model (`tflite_client.TFLiteClient`, all
signatures), the stripped inference models and `metadata.json` (shapes,
names, hyper-parameters, sizes, select TF ops per signature and the Java
contract check of `signature_report`); `export_checkpoint` reads a finished
run's weights and settings, `export_initial` takes the seeded initial model
of given settings.
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.methods import model_setup
from tff_feddst.networks import models
from tff_feddst.ondevice import signature_report
from tff_feddst.ondevice import tflite_client
from tff_feddst.outputs import run_files
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.running import settings as settings_lib

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
    contract_violations: The training model's breaches of the Java contract
      (`signature_report.contract_violations`); empty when it keeps it.
    metadata: The content of `metadata.json`.
  """
  paths: dict[str, str]
  sizes: dict[str, int]
  select_tf_ops: dict[str, tuple[str, ...]]
  contract_violations: list[str]
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
           source: Optional[str] = None,
           upload_encoding: Optional[encoding.PayloadEncoding] = None,
           download_encoding: Optional[encoding.PayloadEncoding] = None
           ) -> ExportResult:
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
    upload_encoding: The run's upload encoding, used by `get_weights`
      (None: bitmap masks, `client_config.value_dtype` values).
    download_encoding: The run's download encoding, which `set_weights`
      takes (None: float32 values, bitmap masks, dense layers without mask).

  Returns:
    The `ExportResult`.

  Raises:
    ExportError: If an output file already exists.
  """
  check_output_dir(output_dir)
  client = tflite_client.TFLiteClient(model_fn(), layout, num_active,
                                      client_config, upload_encoding,
                                      download_encoding)
  client.load_weights(weights)
  training_model = tflite_client.convert_client(client)
  stripped = tflite_client.strip_model(model_fn, weights)
  inference_model = tflite_client.convert_inference(stripped, sparse=False)
  sparse_inference_model = tflite_client.convert_inference(stripped,
                                                           sparse=True)
  contents = {TRAINING_FILE: training_model, INFERENCE_FILE: inference_model,
              SPARSE_INFERENCE_FILE: sparse_inference_model}
  sizes = {name: len(content) for name, content in contents.items()}
  flex_ops = signature_report.select_tf_ops(training_model)
  violations = signature_report.contract_violations(training_model)
  payload = client.get_weights(tf.constant(1.0))
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
      'get_weights_inputs': [_tensor_description(
          client.get_weights.input_signature[0])],
      'get_weights_outputs': [
          _tensor_description(tf.TensorSpec(v.shape, v.dtype, name=k))
          for k, v in payload.items()],
      'client_config': dataclasses.asdict(client_config),
      'upload_encoding': client.trainer.upload_encoding.name,
      'download_encoding': client.download_encoding.name,
      'readjust_step': 'clip(round(readjust_after_epochs * num_batches), 1, '
                       'num_epochs * num_batches)',
      'signatures': list(tflite_client.TRAINING_SIGNATURES),
      'select_tf_ops': {k: list(v) for k, v in flex_ops.items()},
      'contract_violations': violations,
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
                      contract_violations=violations, metadata=metadata)


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
                source=os.path.abspath(npz_path),
                upload_encoding=config.payload_encodings()[0],
                download_encoding=config.payload_encodings()[1])


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
                source=f'initialisation (seed {config.run.seed})',
                upload_encoding=config.payload_encodings()[0],
                download_encoding=config.payload_encodings()[1])
