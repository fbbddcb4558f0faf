"""Hostile clients: what one client sends instead of its honest upload.

Each attack is a pure function

  attack(upload, weight, broadcast, payload_format) -> [(upload, weight), ...]

of the honest client's upload (its payload after real local training), its
example count, the broadcast `ModelWeights` it started from, and the run's
`PayloadFormat`; it returns what the hostile client sends in that round (a
list, so that replay can send several). Every upload it builds is a
well-formed payload of the run's encoding, made with the project's own
`encoding.encode_payload` (right shapes and dtypes, each layer's mask with
exactly the honest mask's number of ones, zero padding), so only the
server's content rules (finite values, weights, bounds, votes) can stop it.

The attacks (`ATTACKS`, by name):

  takeover     per layer, a mask with the honest mask's number of ones
               placed OFF the broadcast global mask (the first free
               positions in row-major order; where the layer has fewer free
               positions than ones, the rest on the global mask's first
               positions), values 5.0, weight 0.001; dense parameters
               honest. Each position is averaged over its holders only and
               the server re-prunes by magnitude, so a lone holder of large
               values wins its positions.
  weight_1e9, weight_3e38
               the honest upload with example count 1e9 / 3e38.
  huge_values  the honest mask with every kernel value 1e30 (finite in
               float32; Inf in float16, so a float16 encoding rejects it),
               weight as sent; dense parameters honest.
  scaled_x10, scaled_x100
               model replacement: w_global + k (w_honest - w_global) on the
               honest mask's positions (a position the client regrew has
               global value 0) and on the dense parameters, k = 10 / 100.
  sign_flip    the same with k = -1: the honest step reversed.
  replay       the honest upload sent `REPLAY_COPIES` times.
  nan          the honest mask with NaN kernel values.
  stale        the client's honest upload of the round before, bound to
               the model of that round (`upload_binding.BoundUpload`); in
               its first round, the honest upload. The only attack with a
               memory (`StaleUpload`; `hostile_hook` gives each run a fresh
               one).
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import encoding
from tff_feddst.process import upload_binding

TAKEOVER_VALUE = 5.0
TAKEOVER_WEIGHT = 0.001
HUGE_VALUE = 1e30
REPLAY_COPIES = 8


class PayloadFormat(NamedTuple):
  """What a well-formed upload of the run looks like.

  Attributes:
    layout: The model's `ModelLayout`.
    num_active: Payload capacity (values) per prunable kernel.
    payload_encoding: The run's upload encoding.
  """
  layout: models.ModelLayout
  num_active: tuple[int, ...]
  payload_encoding: encoding.PayloadEncoding


class DecodedUpload(NamedTuple):
  """An upload as float32 numpy arrays.

  Attributes:
    kernels: Per prunable kernel, its values (zero off the mask).
    masks: Per prunable kernel, its 0/1 mask.
    dense: Dense parameters, in payload order.
  """
  kernels: list
  masks: list
  dense: list


Sent = list[tuple[encoding.Payload, float]]
Attack = Callable[[encoding.Payload, float, tff.learning.models.ModelWeights,
                   PayloadFormat], Sent]


def global_model(broadcast: tff.learning.models.ModelWeights,
                 layout: models.ModelLayout) -> DecodedUpload:
  """The broadcast model as kernels (zero off the mask), masks and dense.

  Args:
    broadcast: The `ModelWeights` the client started from.
    layout: The model's `ModelLayout`.

  Returns:
    A `DecodedUpload` of float32 numpy arrays, dense in payload order.
  """
  trainable = [np.asarray(v, np.float32) for v in broadcast.trainable]
  non_trainable = [np.asarray(v) for v in broadcast.non_trainable]
  masks = [non_trainable[i].astype(np.float32) for i in layout.mask_indices]
  kernels = [trainable[i] * m for i, m in zip(layout.kernel_indices, masks)]
  dense = ([trainable[i] for i in layout.dense_trainable_indices] +
           [non_trainable[i].astype(np.float32)
            for i in layout.dense_non_trainable_indices])
  return DecodedUpload(kernels, masks, dense)


def decode_upload(upload: encoding.Payload,
                  broadcast: tff.learning.models.ModelWeights,
                  payload_format: PayloadFormat) -> DecodedUpload:
  """Decodes an upload (the broadcast masks stand in for left-out ones).

  Args:
    upload: A payload of `payload_format`'s encoding.
    broadcast: The `ModelWeights` the client started from.
    payload_format: The run's `PayloadFormat`.

  Returns:
    The upload as float32 numpy arrays.
  """
  layout = payload_format.layout
  kernels, masks, dense = encoding.decode_payload(
      upload, layout.kernel_shapes, payload_format.num_active,
      payload_format.payload_encoding,
      global_masks=global_model(broadcast, layout).masks)
  as_numpy = lambda tensors: [np.asarray(t, np.float32) for t in tensors]
  return DecodedUpload(as_numpy(kernels), as_numpy(masks), as_numpy(dense))


def encode_upload(decoded: DecodedUpload,
                  payload_format: PayloadFormat) -> encoding.Payload:
  """Encodes kernels, masks and dense parameters as a well-formed upload.

  Args:
    decoded: What to send (kernel values off the mask are ignored).
    payload_format: The run's `PayloadFormat`.

  Returns:
    A payload of the run's encoding, masks always included.
  """
  return encoding.encode_payload(
      [tf.constant(k, tf.float32) for k in decoded.kernels],
      [tf.constant(m, tf.float32) for m in decoded.masks],
      [tf.constant(d, tf.float32) for d in decoded.dense],
      payload_format.num_active, payload_format.payload_encoding,
      include_masks=True)


def off_mask(global_mask: np.ndarray, count: int) -> np.ndarray:
  """A 0/1 mask with `count` ones as far off `global_mask` as it can be.

  Args:
    global_mask: The 0/1 global mask of a layer.
    count: Ones wanted, at most the layer's size.

  Returns:
    float32 mask of the same shape: the first `count` positions (row-major)
    where `global_mask` is 0, and when there are fewer of them, all of them
    plus the first positions where it is 1.
  """
  flat = np.reshape(global_mask, [-1]) > 0.5
  order = np.concatenate([np.flatnonzero(~flat), np.flatnonzero(flat)])
  mask = np.zeros(flat.shape, np.float32)
  mask[order[:count]] = 1.0
  return mask.reshape(np.shape(global_mask))


def takeover(upload: encoding.Payload, weight: float,
             broadcast: tff.learning.models.ModelWeights,
             payload_format: PayloadFormat) -> Sent:
  """Off-mask positions with large values and a tiny weight (see module)."""
  del weight
  honest = decode_upload(upload, broadcast, payload_format)
  global_masks = global_model(broadcast, payload_format.layout).masks
  masks = [off_mask(g, int(np.sum(m > 0.5)))
           for g, m in zip(global_masks, honest.masks)]
  kernels = [TAKEOVER_VALUE * m for m in masks]
  return [(encode_upload(DecodedUpload(kernels, masks, honest.dense),
                         payload_format), TAKEOVER_WEIGHT)]


def inflated_weight(upload: encoding.Payload, weight: float,
                    broadcast: tff.learning.models.ModelWeights,
                    payload_format: PayloadFormat, *,
                    claimed_weight: float) -> Sent:
  """The honest upload with example count `claimed_weight`."""
  del weight, broadcast, payload_format
  return [(upload, claimed_weight)]


def _with_kernel_value(upload: encoding.Payload,
                       broadcast: tff.learning.models.ModelWeights,
                       payload_format: PayloadFormat,
                       value: float) -> encoding.Payload:
  """The upload with every kernel value on its mask set to `value`."""
  honest = decode_upload(upload, broadcast, payload_format)
  kernels = [np.where(m > 0.5, np.float32(value), np.float32(0))
             for m in honest.masks]
  return encode_upload(honest._replace(kernels=kernels), payload_format)


def huge_values(upload: encoding.Payload, weight: float,
                broadcast: tff.learning.models.ModelWeights,
                payload_format: PayloadFormat) -> Sent:
  """The honest mask with kernel values `HUGE_VALUE`, the honest weight."""
  return [(_with_kernel_value(upload, broadcast, payload_format, HUGE_VALUE),
           weight)]


def scaled_update(upload: encoding.Payload, weight: float,
                  broadcast: tff.learning.models.ModelWeights,
                  payload_format: PayloadFormat, *,
                  factor: float) -> Sent:
  """w_global + factor (w_honest - w_global) on the honest support.

  Args:
    upload: The honest upload.
    weight: Its example count (sent unchanged).
    broadcast: The `ModelWeights` the client started from.
    payload_format: The run's `PayloadFormat`.
    factor: The scale k of the honest delta (-1: sign flip).

  Returns:
    One `(upload, weight)`: the honest mask, kernels and dense parameters
    moved k times the honest delta from the global model.
  """
  honest = decode_upload(upload, broadcast, payload_format)
  start = global_model(broadcast, payload_format.layout)
  factor = np.float32(factor)
  kernels = [(g + factor * (h - g)) * m for g, h, m in
             zip(start.kernels, honest.kernels, honest.masks)]
  dense = [g + factor * (h - g) for g, h in zip(start.dense, honest.dense)]
  return [(encode_upload(DecodedUpload(kernels, honest.masks, dense),
                         payload_format), weight)]


def replay(upload: encoding.Payload, weight: float,
           broadcast: tff.learning.models.ModelWeights,
           payload_format: PayloadFormat) -> Sent:
  """The honest upload, `REPLAY_COPIES` times."""
  del broadcast, payload_format
  return [(upload, weight)] * REPLAY_COPIES


def nan_values(upload: encoding.Payload, weight: float,
               broadcast: tff.learning.models.ModelWeights,
               payload_format: PayloadFormat) -> Sent:
  """The honest mask with NaN kernel values, the honest weight."""
  return [(_with_kernel_value(upload, broadcast, payload_format, np.nan),
           weight)]


class StaleUpload:
  """The 'stale' attack: last round's upload instead of this round's.

  Each round it keeps the honest upload, with the digest of the model it
  was trained from, and sends the one it kept the round before.
  """

  def __init__(self):
    self._kept = None

  def fresh(self) -> 'StaleUpload':
    """A copy with no memory, for a new run."""
    return StaleUpload()

  def __call__(self, upload: encoding.Payload, weight: float,
               broadcast: tff.learning.models.ModelWeights,
               payload_format: PayloadFormat) -> Sent:
    digest = upload_binding.weights_digest(
        tf.nest.map_structure(tf.convert_to_tensor, broadcast),
        payload_format.layout)
    sent = [(upload, weight)] if self._kept is None else [self._kept]
    self._kept = (upload_binding.BoundUpload(upload, digest), weight)
    return sent


# Every attack by name, in table order.
ATTACKS: dict[str, Attack] = {
    'takeover': takeover,
    'weight_1e9': functools.partial(inflated_weight, claimed_weight=1e9),
    'weight_3e38': functools.partial(inflated_weight, claimed_weight=3e38),
    'huge_values': huge_values,
    'scaled_x10': functools.partial(scaled_update, factor=10.0),
    'scaled_x100': functools.partial(scaled_update, factor=100.0),
    'sign_flip': functools.partial(scaled_update, factor=-1.0),
    'replay': replay,
    'nan': nan_values,
    'stale': StaleUpload(),
}


def hostile_hook(attack: Attack, payload_format: PayloadFormat,
                 hostile_index: int = 0) -> Any:
  """A `plain_loop.PlainFedDst.next` upload hook: one client attacks.

  Args:
    attack: From `ATTACKS`.
    payload_format: The run's `PayloadFormat`.
    hostile_index: Index (among the round's clients) of the hostile one.

  Returns:
    The hook; it also counts the hostile uploads sent in `hook.sent`.
  """
  if hasattr(attack, 'fresh'):
    attack = attack.fresh()  # No memory of another run.

  def hook(client_index, upload, weight, broadcast):
    if client_index != hostile_index:
      return [(upload, weight)]
    sent = attack(upload, float(weight), broadcast, payload_format)
    hook.sent += len(sent)
    return sent

  hook.sent = 0
  return hook
