"""The server side of FedDST rounds with real devices, through files.

An app team puts any transport between these calls; the server never talks
to a device. A state directory holds the run:

  flags.txt                     the run's settings (`--name=value` lines);
  model/                        the TFLite export the devices run
                                (`tflite_export`: training.tflite, ...);
  round_0000/                   the initial global model:
    global_model.npz            `ModelWeights` (`run_files` format);
    server_state.npz            `round_num` and the server momentum buffers;
  round_000N/                   after round N's `aggregate_uploads`, the
    global_model.npz            same two files and metrics.json (the round's
    server_state.npz            measurements, rejections per upload file).
    metrics.json

A round: `write_broadcast` puts, in a directory for the devices,
  instructions.json   round number, whether to readjust and the drop
                      fraction, the model digest the upload must echo, local
                      epochs, batch size, when to readjust, the names an
                      upload holds;
  broadcast.npz       the `set_weights` inputs (`device_payload` names);
each device runs `device_client.DeviceClient.train_round` (an app does the
same calls) and returns one `.npz` file of its `get_weights` outputs plus
`model_digest` (echoed), optionally `train_loss`; `aggregate_uploads` reads
every `.npz` in the uploads directory, checks each one with the server's
device-upload check (`device_payload.check_device_upload`), binds it to the
round (`upload_binding`: a digest of another round's model is 'stale'),
sums the accepted ones with the aggregator's code and steps the global
model with the finalizer's (`plain_loop.PlainServer`: the computations of
the TFF process, the same re-prune), then writes round N.

Every file is written atomically and never replaced; a rejected upload is
counted and named in metrics.json, and never stops the round. Bad input
raises `DeviceRoundError`, one line naming the file or flag.
"""

import io
import json
import os
import re
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.benchmarks import attack_runs
from tff_feddst.benchmarks import plain_loop
from tff_feddst.methods import feddst_methods
from tff_feddst.methods import model_setup
from tff_feddst.ondevice import device_payload
from tff_feddst.ondevice import tflite_export
from tff_feddst.outputs import atomic_files
from tff_feddst.outputs import run_files
from tff_feddst.process import payload_validation
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib

SETTINGS_FILE = 'flags.txt'
MODEL_DIR = 'model'
MODEL_FILE = 'global_model.npz'
SERVER_STATE_FILE = 'server_state.npz'
METRICS_FILE = 'metrics.json'
INSTRUCTIONS_FILE = 'instructions.json'
BROADCAST_FILE = 'broadcast.npz'
UPLOAD_SUFFIX = '.npz'
# An upload file that cannot be read as an .npz of arrays.
UNREADABLE = 'unreadable'
_ROUND_DIR = re.compile(r'^round_(\d{4,})$')


class DeviceRoundError(ValueError):
  """Bad input of a device round; the message is one line naming the file."""


def round_dir(state_dir: str, round_num: int) -> str:
  """`state_dir/round_NNNN`, the files after round `round_num`."""
  return os.path.join(state_dir, f'round_{round_num:04d}')


def check_settings(settings: settings_lib.ExperimentSettings) -> None:
  """Refuses settings a device round cannot run (one line naming the flag).

  Args:
    settings: The run's settings.

  Raises:
    DeviceRoundError: For a method or server setting the plain server lacks,
      a broadcast other than float32 bitmap masks (what `set_weights`
      takes), --max_client_weight unset (its default is read from the
      clients' data, which the server does not see), or a direction check
      against a server root step (drawn from that data too).
  """
  try:
    attack_runs.check_settings(settings)
    upload, download = settings.resolved().payload_encodings()
  except (errors.ConfigError, settings_lib.ConfigError) as error:
    raise DeviceRoundError(str(error)) from error
  del upload
  if not download.is_bitmap_payload or download.value_dtype != 'float32':
    raise DeviceRoundError(
        f'--download_encoding={settings.communication.download_encoding} is '
        'not run with devices: set_weights takes float32 values and bitmap '
        'masks; expected float32.')
  server = settings.server
  if server.reject_opposed_updates and (
      server.direction_reference == 'server_root'):
    raise DeviceRoundError(
        '--direction_reference=server_root is not run with devices: the '
        'root set is drawn from training data the server does not hold; '
        'expected round_others.')
  if settings.server.max_client_weight is None:
    raise DeviceRoundError(
        '--max_client_weight is unset: with devices the server cannot read '
        'the largest local data set; expected a number of examples (0: no '
        'cap).')


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _write_new(path: str, content: bytes) -> None:
  """Writes a new file atomically; an existing one is an error."""
  try:
    atomic_files.write_bytes(path, content, exclusive=True)
  except FileExistsError as error:
    raise DeviceRoundError(
        f'{path}: already exists; nothing was overwritten.') from error


def _json_bytes(content: Any) -> bytes:
  return (json.dumps(content, indent=2) + '\n').encode('utf-8')


def completed_rounds(state_dir: str) -> int:
  """The newest round whose server state is written (0: only the start).

  Args:
    state_dir: A state directory from `init_state`.

  Raises:
    DeviceRoundError: If it holds no round (not initialised).
  """
  rounds = []
  if os.path.isdir(state_dir):
    for name in os.listdir(state_dir):
      match = _ROUND_DIR.match(name)
      if match and os.path.isfile(
          os.path.join(state_dir, name, SERVER_STATE_FILE)):
        rounds.append(int(match.group(1)))
  if not rounds:
    raise DeviceRoundError(f'{state_dir}: no device-round state (run init '
                           'first).')
  return max(rounds)


def load_settings(state_dir: str) -> settings_lib.ExperimentSettings:
  """Reads and checks the settings in `state_dir/flags.txt`.

  Raises:
    DeviceRoundError: For a missing or bad file.
  """
  path = os.path.join(state_dir, SETTINGS_FILE)
  try:
    settings = tflite_export.read_flags_file(path)
  except tflite_export.ExportError as error:
    raise DeviceRoundError(str(error)) from error
  check_settings(settings)
  return settings


def init_state(settings: settings_lib.ExperimentSettings, state_dir: str,
               export_model: bool = True) -> str:
  """Starts a device run: settings, initial model, server state, export.

  Args:
    settings: The run's settings (checked with `check_settings`).
    state_dir: A new or empty directory.
    export_model: Also write the TFLite export to `state_dir/model`.

  Returns:
    The directory of round 0.

  Raises:
    DeviceRoundError: For settings a device round cannot run, or a
      `state_dir` that is a file or not empty.
  """
  settings.validate()
  check_settings(settings)
  if os.path.exists(state_dir) and (not os.path.isdir(state_dir) or
                                    os.listdir(state_dir)):
    raise DeviceRoundError(f'{state_dir}: exists and is not an empty '
                           'directory; nothing was written.')
  server = DeviceServer(settings)
  os.makedirs(round_dir(state_dir, 0))
  _write_new(os.path.join(state_dir, SETTINGS_FILE),
             ('\n'.join(settings.to_flag_lines()) + '\n').encode('utf-8'))
  server.save_state(server.plain.initialize(), round_dir(state_dir, 0))
  if export_model:
    tflite_export.export_initial(settings, os.path.join(state_dir, MODEL_DIR))
  return round_dir(state_dir, 0)


class DeviceServer:
  """The plain server of a run's settings, reading and writing round files."""

  def __init__(self, settings: settings_lib.ExperimentSettings):
    """Builds the initial model and the server's computations.

    Args:
      settings: The run's settings (checked with `check_settings`).
    """
    settings = settings.resolved()
    self.settings = settings
    _, self.initial = model_setup.build_model(settings)
    self.client_config = model_setup.build_client_config(settings,
                                                         self.initial)
    self.plain = plain_loop.PlainServer(
        self.initial, feddst_methods.build_schedule(settings),
        self.client_config,
        **model_setup.plain_server_arguments(settings, self.client_config,
                                             None))
    self.layout = self.initial.layout
    self.spec = payload_validation.payload_spec(
        self.layout.kernel_shapes, self.initial.num_active,
        self.plain.dense_shapes, self.plain.upload_encoding)

  # State files.

  def save_state(self, state: plain_loop.PlainState, directory: str) -> None:
    """Writes `global_model.npz` then `server_state.npz` (the round's
    completion mark) into `directory`, each new and atomic."""
    path = os.path.join(directory, MODEL_FILE)
    try:
      run_files.save_model_weights(path, plain_loop.PlainFedDst
                                   .get_model_weights(state))
    except FileExistsError as error:
      raise DeviceRoundError(
          f'{path}: already exists; nothing was overwritten.') from error
    arrays = {'round_num': np.array(state.round_num, np.int64)}
    arrays.update({f'buffer_{i}': np.asarray(b)
                   for i, b in enumerate(state.buffers)})
    _write_new(os.path.join(directory, SERVER_STATE_FILE), _npz_bytes(arrays))

  def load_state(self, state_dir: str, round_num: int) -> plain_loop.PlainState:
    """Reads the state after round `round_num`.

    Raises:
      DeviceRoundError: For a missing, unreadable or mismatched file.
    """
    directory = round_dir(state_dir, round_num)
    model_path = os.path.join(directory, MODEL_FILE)
    try:
      weights = tflite_export.load_checkpoint(model_path, self.initial)
    except tflite_export.ExportError as error:
      raise DeviceRoundError(str(error)) from error
    path = os.path.join(directory, SERVER_STATE_FILE)
    try:
      with np.load(path, allow_pickle=False) as archive:
        stored_round = int(archive['round_num'])
        buffers = tuple(tf.constant(archive[f'buffer_{i}'])
                        for i in range(len(weights.trainable)))
    except Exception as error:  # np.load raises many kinds on a bad file.
      raise DeviceRoundError(f'{path}: not a readable server state '
                             f'({type(error).__name__}).') from error
    if stored_round != round_num or any(
        b.shape != np.shape(w) for b, w in zip(buffers, weights.trainable)):
      raise DeviceRoundError(f'{path}: does not hold the server state of '
                             f'round {round_num}.')
    return plain_loop.PlainState(
        round_num, tff.learning.models.ModelWeights(
            trainable=[tf.constant(v) for v in weights.trainable],
            non_trainable=[tf.constant(v) for v in weights.non_trainable]),
        buffers)

  # The round.

  def instructions(self, state: plain_loop.PlainState) -> dict[str, Any]:
    """The instructions of the round after `state` (JSON-ready)."""
    round_num = state.round_num + 1
    instructions = self.plain.instructions(round_num)
    digest = self.plain.round_digest(state.weights)
    config = self.client_config
    return {
        'round_num': round_num,
        'should_readjust': bool(instructions.should_readjust),
        'drop_fraction': float(instructions.drop_fraction),
        'model_digest': None if digest is None else int(digest),
        'num_epochs': config.num_epochs,
        'batch_size': self.settings.client.client_batch_size,
        'readjust_after_epochs': config.effective_readjust_after_epochs,
        'readjust_step': 'clip(round(readjust_after_epochs * num_batches), '
                         '1, num_epochs * num_batches)',
        'upload_encoding': self.plain.upload_encoding.name,
        'broadcast_file': BROADCAST_FILE,
    }

  def write_broadcast(self, state_dir: str, output_dir: str
                      ) -> dict[str, Any]:
    """Writes the next round's broadcast and instructions for the devices.

    Args:
      state_dir: The run's state directory.
      output_dir: A directory for the devices (created; its two files must
        not exist).

    Returns:
      The instructions written (plus `download_bytes`, the broadcast's
      bytes as the simulation counts them).

    Raises:
      DeviceRoundError: For a bad state or an existing output file.
    """
    state = self.load_state(state_dir, completed_rounds(state_dir))
    payload, num_bytes = self.plain.encode_global(state.weights)
    named = {k: np.asarray(v)
             for k, v in device_payload.payload_to_dict(payload).items()}
    instructions = self.instructions(state)
    instructions['download_bytes'] = int(num_bytes)
    os.makedirs(output_dir, exist_ok=True)
    for name in (BROADCAST_FILE, INSTRUCTIONS_FILE):
      if os.path.lexists(os.path.join(output_dir, name)):
        raise DeviceRoundError(f'{os.path.join(output_dir, name)}: already '
                               'exists; nothing was overwritten.')
    _write_new(os.path.join(output_dir, BROADCAST_FILE), _npz_bytes(named))
    _write_new(os.path.join(output_dir, INSTRUCTIONS_FILE),
               _json_bytes(instructions))
    return instructions

  def read_upload(self, path: str, round_digest: Optional[tf.Tensor]
                  ) -> tuple[Optional[tuple[Any, np.float32, float]],
                             Optional[dict[str, str]]]:
    """Reads and checks one upload file.

    Returns:
      `((upload, weight, train loss), None)` for an upload that passed the
      device-upload check (bound to its digest when the round binds), or
      `(None, {'file', 'kind', 'reason'})` for a rejected one.
    """
    name = os.path.basename(path)
    try:
      with np.load(path, allow_pickle=False) as archive:
        outputs = {key: archive[key] for key in archive.files}
    except Exception as error:  # np.load raises many kinds on a bad file.
      return None, {'file': name, 'kind': UNREADABLE,
                    'reason': f'not a readable .npz ({type(error).__name__})'}
    accepted, rejection = device_payload.accept_device_upload(
        outputs, self.spec, round_digest)
    if rejection is not None:
      kind, reason = rejection
      return None, {'file': name, 'kind': kind, 'reason': reason}
    return accepted, None

  def aggregate_uploads(self, state_dir: str, uploads_dir: str
                        ) -> dict[str, Any]:
    """Checks, sums and applies the uploads of the next round.

    Args:
      state_dir: The run's state directory.
      uploads_dir: The devices' `.npz` uploads (other files are ignored).

    Returns:
      The round's metrics, also written to `round_NNNN/metrics.json`.

    Raises:
      DeviceRoundError: For a bad state, a missing uploads directory or an
        existing round directory.
    """
    state = self.load_state(state_dir, completed_rounds(state_dir))
    round_num = state.round_num + 1
    output_dir = round_dir(state_dir, round_num)
    if os.path.lexists(output_dir):
      raise DeviceRoundError(f'{output_dir}: already exists; nothing was '
                             'overwritten.')
    if not os.path.isdir(uploads_dir):
      raise DeviceRoundError(f'{uploads_dir}: no such uploads directory.')
    names = sorted(n for n in os.listdir(uploads_dir)
                   if n.endswith(UPLOAD_SUFFIX) and
                   not atomic_files.is_temporary(n))
    round_digest = self.plain.round_digest(state.weights)
    accepted, rejections = [], []
    for name in names:
      upload, rejection = self.read_upload(os.path.join(uploads_dir, name),
                                           round_digest)
      if rejection is None:
        accepted.append(upload)
      else:
        rejections.append(rejection)
    new_state, metrics = self._apply(state, accepted, round_digest)
    for kind in (UNREADABLE,) + payload_validation.REJECTION_KINDS:
      count = sum(r['kind'] == kind for r in rejections)
      metrics[f'rejected_{kind}'] = metrics.get(f'rejected_{kind}', 0) + count
    metrics['rejected_clients'] += len(rejections)
    metrics['received_uploads'] = len(names)
    metrics['rejections'] = rejections
    os.makedirs(output_dir)
    _write_new(os.path.join(output_dir, METRICS_FILE), _json_bytes(metrics))
    self.save_state(new_state, output_dir)
    return metrics

  def _apply(self, state: plain_loop.PlainState, accepted: list,
             round_digest: Optional[tf.Tensor]) -> tuple[Any, dict]:
    """Sums the checked uploads and steps the server (`PlainServer`)."""
    plain = self.plain
    round_num = state.round_num + 1
    targets = plain.targets(round_num)
    aggregate = plain.zero_aggregate()
    uploads = [(upload, weight) for upload, weight, _ in accepted]
    if plain.screens_uploads:
      aggregate = plain.aggregate_screened(aggregate, uploads, state.weights,
                                           targets, round_digest)
    else:
      for upload, weight in uploads:
        aggregate = plain.accumulate(aggregate, upload, weight, targets, None,
                                     round_digest)
    new_state, server_metrics = plain.server_update(state, aggregate)
    weights = np.array([w for _, w, _ in accepted], np.float64)
    losses = np.array([loss for _, _, loss in accepted], np.float64)
    train_loss = (float(np.sum(weights * losses) / np.sum(weights))
                  if accepted and np.all(np.isfinite(losses)) else None)
    metrics = {'round_num': round_num, 'train_loss': train_loss,
               'should_readjust': bool(
                   plain.instructions(round_num).should_readjust)}
    metrics.update(server_metrics)
    return new_state, metrics


def upload_file_bytes(upload: dict[str, np.ndarray]) -> bytes:
  """An upload as the `.npz` bytes `aggregate_uploads` reads."""
  return _npz_bytes(dict(upload))


def write_upload(path: str, upload: dict[str, np.ndarray]) -> None:
  """Writes a device's upload file (new, atomic), as an app would send it.

  Raises:
    DeviceRoundError: If `path` exists.
  """
  _write_new(path, upload_file_bytes(upload))


def read_broadcast(broadcast_dir: str) -> tuple[dict[str, np.ndarray],
                                                dict[str, Any]]:
  """Reads a broadcast directory as a device would.

  Returns:
    `(set_weights inputs, instructions)`.

  Raises:
    DeviceRoundError: For a missing or unreadable file.
  """
  path = os.path.join(broadcast_dir, INSTRUCTIONS_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      instructions = json.load(f)
    path = os.path.join(broadcast_dir, instructions['broadcast_file'])
    with np.load(path, allow_pickle=False) as archive:
      broadcast = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, KeyError) as error:
    raise DeviceRoundError(f'{path}: not a readable broadcast '
                           f'({type(error).__name__}).') from error
  return broadcast, instructions
