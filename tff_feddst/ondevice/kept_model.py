"""A TFLite run's training model, kept in its output directory for --resume.

A `--client_runtime=tflite` run converts its clients' training model (every
signature, `tflite_client.convert_client`) when it starts: about 16 s for
the MNIST net, as long as a few rounds of a small run. It writes the model
as `training.tflite` in its output directory (the exact model its clients
trained with, ready for a device) and `training.tflite.json`, which records
what it was converted from:

- the run's computing settings (flags.txt without the execution settings,
  which --resume may change: the model does not depend on them);
- the initial model's bytes (the weights the converted variables start
  from);
- TensorFlow's version and a digest of this package's Python source (the
  converter and the client code).

A resumed run whose record matches and whose model has the recorded
SHA-256 trains with it instead of converting again: it is the model the
run started with. (Two conversions of the same client can differ in their
bytes, as the converter does not fix the order of the attributes inside
select-TF-op nodes, but they compute the same: a resumed run gives the
uninterrupted run's bits either way.) A missing, changed or unreadable
file, or a record that does not match, means converting again and
rewriting both files.
"""

import functools
import hashlib
import json
import logging
import os
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tff_feddst.outputs import atomic_files
from tff_feddst.running import settings as settings_lib

MODEL_NAME = 'training.tflite'
RECORD_NAME = 'training.tflite.json'


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
  """SHA-256 of this package's Python files (their paths and bytes)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digest = hashlib.sha256()
  for directory, subdirectories, names in os.walk(root):
    subdirectories.sort()
    for name in sorted(names):
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        digest.update(os.path.relpath(path, root).encode() + b'\0')
        with open(path, 'rb') as f:
          digest.update(f.read() + b'\0')
  return digest.hexdigest()


def conversion_record(settings: settings_lib.ExperimentSettings,
                      initial_weights: Any) -> dict[str, str]:
  """What a training model is converted from, as `training.tflite.json`
  records it (without the model's own digest).

  Args:
    settings: The run's resolved settings (the execution ones are left
      out).
    initial_weights: The initial model's `ModelWeights` (numpy arrays).

  Returns:
    `{'settings', 'initial_model', 'tensorflow', 'source'}`: hex digests
    and TensorFlow's version.
  """
  computing_flag_lines = [
      line for line in settings.to_flag_lines()
      if line[2:].partition('=')[0] not in settings_lib.EXECUTION_SETTINGS]
  weights = hashlib.sha256()
  for array in list(initial_weights.trainable) + list(
      initial_weights.non_trainable):
    array = np.asarray(array)
    weights.update(f'{array.dtype}{array.shape}'.encode())
    weights.update(array.tobytes())
  return {
      'settings': hashlib.sha256(
          '\n'.join(computing_flag_lines).encode()).hexdigest(),
      'initial_model': weights.hexdigest(),
      'tensorflow': tf.__version__,
      'source': source_digest(),
  }


def load(output_dir: str, record: dict[str, str]) -> Optional[bytes]:
  """The kept training model, if it was converted from `record`.

  Args:
    output_dir: The run's output directory.
    record: `conversion_record` of the run being resumed.

  Returns:
    The `.tflite` bytes, or None (the run converts again): no kept model,
    another record, or bytes that do not have the recorded digest.
  """
  model_path = os.path.join(output_dir, MODEL_NAME)
  record_path = os.path.join(output_dir, RECORD_NAME)
  try:
    with open(record_path) as f:
      kept_record = json.load(f)
    with open(model_path, 'rb') as f:
      model = f.read()
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as error:
    logging.warning('Not using the kept %s (%s); converting again.',
                    model_path, error)
    return None
  if not isinstance(kept_record, dict):
    kept_record = {}
  digest = kept_record.pop('sha256', None)
  if kept_record != record:
    changed = sorted(name for name in set(record) | set(kept_record)
                     if record.get(name) != kept_record.get(name))
    logging.info('The kept %s was converted from another %s; converting '
                 'again.', model_path, ', '.join(changed))
    return None
  if digest != hashlib.sha256(model).hexdigest():
    logging.warning('The kept %s does not have its recorded SHA-256; '
                    'converting again.', model_path)
    return None
  return model


def save(output_dir: str, model: bytes, record: dict[str, str]) -> None:
  """Writes `training.tflite`, then its record (each atomically).

  Args:
    output_dir: The run's output directory (it exists).
    model: The `.tflite` bytes.
    record: `conversion_record` the model was converted from.

  Raises:
    atomic_files.WriteError: If a file cannot be written.
  """
  atomic_files.write_bytes(os.path.join(output_dir, MODEL_NAME), model)
  atomic_files.write_text(
      os.path.join(output_dir, RECORD_NAME),
      json.dumps(dict(record, sha256=hashlib.sha256(model).hexdigest()),
                 indent=2, sort_keys=True) + '\n')
