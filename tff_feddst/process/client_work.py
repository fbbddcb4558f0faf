"""FedDST client work: masked local SGD, readjustment, sparse upload.

Per round, a client receives the global sparse model (weights + masks) and
whether this round readjusts (and with which drop fraction), then:

  for E local epochs, for each minibatch:
    g = grad(cross-entropy) + weight_decay * w + prox_mu * (w - w_global)
    g = g * mask                       (inactive weights get no update)
    buffer = momentum * buffer + g;  w = (w - lr * buffer) * mask
    after `readjust_step` steps, on a readjustment round, per layer:
      prune the k smallest-magnitude active weights, regrow the k inactive
      (not just pruned) weights with the largest |grow score|, new weights 0,
      momentum at changed positions reset to 0 (so nnz per layer is unchanged)
  upload SparsePayload(active values, packed masks, dense params), or a
  CodedPayload for other encodings (float16 values, Rice-coded masks, masks
  left out when they equal the received global masks); weight = number of
  local training examples.

The optimizer is PyTorch's SGD (weight decay added to the gradient, momentum
buffer without dampening), started fresh each round (stateless clients).

The grow score is the dense gradient of the data loss with respect to each
kernel (inactive positions included): summed over every step before the
readjustment ('accumulated', default), of the last minibatch before it, at
the weights before that minibatch's step ('last_batch'), or of that
minibatch recomputed at the weights after its step ('last_batch_after_step',
as the reference, which calls backward once more on the last batch before
pruning). Readjusting before the last local epoch lets
regrown weights train before upload; after the last epoch (the reference) they
are uploaded as exact zeros and the server's magnitude re-prune removes them.

Which clients readjust (`ClientConfig.readjust_counter`):
- 'round' (default): on a readjustment round every client readjusts once,
  after `readjust_after_epochs`.
- 'client_lifetime' (the authors' `Client.curr_epoch`): each client counts
  the local epochs it has trained over its lifetime, across the rounds it
  was sampled in (the count, kept per client id by the server, comes in
  with its data; `client_states.EpochCountInput`). On a readjustment round
  a client readjusts after each local epoch whose count c (before that
  epoch, so 0 for its first epoch ever) satisfies (c - begin) mod interval
  == 0, with the floor modulo of Python's `%` as theirs (so c < begin
  qualifies when c = begin - k * interval); on other rounds never. With
  their defaults (begin 9, interval 10) and 10 local epochs every sampled
  client readjusts after its last epoch; with fewer epochs only clients
  whose count reaches 9, 19, ... in this round do. `readjust_after_epochs`
  is not used. Grow scores are taken over the epoch that ends in the
  readjustment ('accumulated': its steps; 'last_batch*': its last
  minibatch).
"""

import collections
import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.process import encoding
from tff_feddst.running import choices
from tff_feddst.sparse import exact_sum
from tff_feddst.sparse import masks as mask_lib

GROW_SCORES = mask_lib.GROW_SCORES
READJUST_RULES = mask_lib.READJUST_RULES
READJUST_COUNTERS = ('round', 'client_lifetime')
# The authors' defaults (dst.py --pruning-begin, --pruning-interval).
REFERENCE_COUNTER_BEGIN = 9
REFERENCE_COUNTER_INTERVAL = 10

# How many times `ClientTrainer.update` has been traced in this process (its
# Python body runs only while tracing); see `update_trace_count`.
_UPDATE_TRACES = [0]


@dataclasses.dataclass(frozen=True)
class ClientConfig:
  """Hyper-parameters of local training.

  Attributes:
    learning_rate: Client SGD learning rate, > 0.
    momentum: Client SGD momentum in [0, 1).
    weight_decay: L2 coefficient added to gradients, >= 0.
    prox_mu: FedProx coefficient mu of mu/2 * ||w - w_global||^2, >= 0.
    num_epochs: Local epochs per round, >= 1.
    readjust_after_epochs: Readjust once this many epochs' worth of minibatches
      have been trained, in (0, num_epochs]; a value in (-num_epochs, 0]
      counts back from the end (0: after the last epoch, as the reference;
      -1: one epoch before the end). None means num_epochs - 1 (one epoch
      left to train regrown weights), or 0.5 when num_epochs is 1.
    grow_score: 'accumulated', 'last_batch' or 'last_batch_after_step' (see
      module docstring).
    readjust_rule: 'feddst' (prune k active, regrow k inactive) or
      'reference' (the authors' prune-then-grow over all positions).
    reference_keep_after_prune: Per layer, active weights kept by the
      reference rule's prune step (only used with readjust_rule='reference').
    value_dtype: 'float32' or 'float16': dtype of uploaded values.
    readjust_counter: 'round' or 'client_lifetime' (module docstring).
    readjust_counter_begin: With 'client_lifetime': first lifetime epoch
      count that readjusts, >= 0.
    readjust_counter_interval: With 'client_lifetime': lifetime epochs
      between readjustments, >= 1.
  """
  learning_rate: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 0.001
  prox_mu: float = 0.0
  num_epochs: int = 1
  readjust_after_epochs: Optional[float] = None
  grow_score: str = 'accumulated'
  readjust_rule: str = 'feddst'
  reference_keep_after_prune: tuple[int, ...] = ()
  value_dtype: str = 'float32'
  readjust_counter: str = 'round'
  readjust_counter_begin: int = REFERENCE_COUNTER_BEGIN
  readjust_counter_interval: int = REFERENCE_COUNTER_INTERVAL

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}.')
    if not 0 <= self.momentum < 1:
      raise ValueError(f'momentum must be in [0, 1), got {self.momentum}.')
    if self.weight_decay < 0 or self.prox_mu < 0:
      raise ValueError('weight_decay and prox_mu must be >= 0.')
    if self.num_epochs < 1:
      raise ValueError(f'num_epochs must be >= 1, got {self.num_epochs}.')
    if (self.readjust_after_epochs is not None and
        not -self.num_epochs < self.readjust_after_epochs <= self.num_epochs):
      raise ValueError(
          f'readjust_after_epochs must be in (-num_epochs, num_epochs] with '
          f'num_epochs={self.num_epochs}, got {self.readjust_after_epochs}.')
    choices.check('grow_score', self.grow_score, GROW_SCORES)
    choices.check('readjust_rule', self.readjust_rule, READJUST_RULES)
    if self.value_dtype not in ('float32', 'float16'):
      raise ValueError(f'value_dtype must be float32 or float16, got '
                       f'{self.value_dtype!r}.')
    choices.check('readjust_counter', self.readjust_counter,
                  READJUST_COUNTERS)
    if self.readjust_counter_begin < 0 or self.readjust_counter_interval < 1:
      raise ValueError(
          'readjust_counter_begin must be >= 0 and readjust_counter_interval '
          f'>= 1, got {self.readjust_counter_begin} and '
          f'{self.readjust_counter_interval}.')

  @property
  def counts_lifetime_epochs(self) -> bool:
    """Whether clients readjust by their lifetime epoch count."""
    return self.readjust_counter == 'client_lifetime'

  def readjusts_after_epoch(self, epochs_done):
    """Whether a client whose lifetime count is `epochs_done` before an
    epoch readjusts after it, on a readjustment round ('client_lifetime').

    Args:
      epochs_done: int (or int tensor): local epochs trained before it.

    Returns:
      bool (or bool tensor): (epochs_done - begin) mod interval == 0, with a
      floor modulo.
    """
    if isinstance(epochs_done, (int, np.integer)):
      return (int(epochs_done) - self.readjust_counter_begin) % (
          self.readjust_counter_interval) == 0
    epochs_done = tf.convert_to_tensor(epochs_done)
    return tf.equal(tf.math.floormod(
        epochs_done - tf.cast(self.readjust_counter_begin, epochs_done.dtype),
        tf.cast(self.readjust_counter_interval, epochs_done.dtype)), 0)

  @property
  def effective_readjust_after_epochs(self) -> float:
    if self.readjust_after_epochs is not None:
      if self.readjust_after_epochs <= 0:
        return float(self.num_epochs + self.readjust_after_epochs)
      return float(self.readjust_after_epochs)
    return float(self.num_epochs - 1) if self.num_epochs > 1 else 0.5


class RoundInstructions(collections.namedtuple(
    'RoundInstructions', ['should_readjust', 'drop_fraction'])):
  """What the server tells every client this round (broadcast)."""


class ClientStats(collections.namedtuple(
    'ClientStats', ['train_loss', 'num_examples', 'num_regrown',
                    'num_readjustments', 'grow_score_examples'],
    defaults=(0, 0))):
  """Per-client statistics, aggregated into the round's measurements.

  `num_readjustments`: readjustments the client made this round;
  `grow_score_examples`: examples whose dense kernel gradient fed a grow
  score that a readjustment used (reported with 'client_lifetime' only).
  """


class ClientTrainer:
  """Holds a client's Keras model and optimizer state; trains and readjusts.

  One implementation of the client serves the TFF client work (`update`, a
  whole round) and the on-device TFLite client (which calls `set_weights`,
  `train_step`, `readjust` and `payload` one signature at a time). Build it
  inside a TFF TensorFlow computation, a `tf.Module`, or eagerly: it creates
  variables.
  """

  def __init__(self, model: tf.keras.Model, layout: models.ModelLayout,
               num_active: Sequence[int], config: ClientConfig,
               upload_encoding: Optional[encoding.PayloadEncoding] = None):
    """Creates the trainer.

    Args:
      model: A built wrapped model (from a `models` builder).
      layout: Its `ModelLayout`.
      num_active: Active weights per prunable kernel (payload capacity).
      config: Local training hyper-parameters.
      upload_encoding: How `update` encodes the upload; None means
        `PayloadEncoding(value_dtype=config.value_dtype)` (bitmap masks).
    """
    self.upload_encoding = resolve_upload_encoding(config, upload_encoding)
    self.model = model
    self.layout = layout
    self.num_active = tuple(int(n) for n in num_active)
    self.config = config
    self._trainable = list(model.trainable_variables)
    non_trainable = list(model.non_trainable_variables)
    self.kernels = [self._trainable[i] for i in layout.kernel_indices]
    self.masks = [non_trainable[i] for i in layout.mask_indices]
    self._mask_of_trainable = {
        kernel_index: self.masks[position]
        for position, kernel_index in enumerate(layout.kernel_indices)}
    self.momenta = [
        tf.Variable(tf.zeros_like(v), trainable=False, name='momentum')
        for v in self._trainable]
    self.grow_scores = [
        tf.Variable(tf.zeros_like(v), trainable=False, name='grow_score')
        for v in self.kernels]
    # The global model, kept only for FedProx's proximal term.
    self._global_trainable = [
        tf.Variable(tf.zeros_like(v), trainable=False, name='global')
        for v in self._trainable] if config.prox_mu else []
    self._loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)

  def set_weights(self, weights) -> None:
    """Loads the global model and resets optimizer state and grow scores.

    Args:
      weights: `ModelWeights` (or anything with `trainable` and
        `non_trainable` lists) of the global model.
    """
    for variable, value in zip(self.model.trainable_variables,
                               weights.trainable):
      variable.assign(value)
    for variable, value in zip(self.model.non_trainable_variables,
                               weights.non_trainable):
      variable.assign(value)
    for variable, value in zip(self._global_trainable, weights.trainable):
      variable.assign(value)
    for variable in self.momenta + self.grow_scores:
      variable.assign(tf.zeros_like(variable))

  def train_step(self, x: tf.Tensor, y: tf.Tensor,
                 update_grow_scores: tf.Tensor) -> tf.Tensor:
    """One masked SGD step on a minibatch.

    g = grad + weight_decay * w + prox_mu * (w - w_global); g *= mask;
    buffer = momentum * buffer + g; w = (w - lr * buffer) * mask.

    Args:
      x: Input batch.
      y: int labels.
      update_grow_scores: bool scalar: add this step's dense kernel gradients
        to the grow scores ('accumulated') or store them ('last_batch').

    Returns:
      The minibatch's mean cross-entropy (before the step).
    """
    with tf.GradientTape() as tape:
      loss = self._loss_fn(y, self.model(x, training=True))
    gradients = tape.gradient(loss, self._trainable)
    if update_grow_scores:
      for position, kernel_index in enumerate(self.layout.kernel_indices):
        if self.config.grow_score == 'accumulated':
          self.grow_scores[position].assign_add(gradients[kernel_index])
        else:
          self.grow_scores[position].assign(gradients[kernel_index])
    config = self.config
    for index, (variable, gradient, momentum) in enumerate(
        zip(self._trainable, gradients, self.momenta)):
      if config.weight_decay:
        gradient += config.weight_decay * variable
      if config.prox_mu:
        gradient += config.prox_mu * (variable - self._global_trainable[index])
      mask = self._mask_of_trainable.get(index)
      if mask is not None:
        gradient *= mask
      momentum.assign(config.momentum * momentum + gradient)
      updated = variable - config.learning_rate * momentum
      variable.assign(updated if mask is None else updated * mask)
    return loss

  def recompute_grow_scores(self, x: tf.Tensor, y: tf.Tensor) -> None:
    """Sets the grow scores to the data-loss gradient of `(x, y)` now.

    The 'last_batch_after_step' score: the gradient of the minibatch just
    trained, at the weights after its step (no weight decay or proximal
    term, as the reference's recomputation).

    Args:
      x: Input batch.
      y: int labels.
    """
    with tf.GradientTape() as tape:
      loss = self._loss_fn(y, self.model(x, training=True))
    gradients = tape.gradient(loss, self._trainable)
    for position, kernel_index in enumerate(self.layout.kernel_indices):
      self.grow_scores[position].assign(gradients[kernel_index])

  def readjust(self, drop_fraction: tf.Tensor) -> tf.Tensor:
    """Prunes and regrows every layer from the current grow scores.

    Momentum at pruned positions is reset (grown ones are already 0), and
    the grow scores are cleared.

    Args:
      drop_fraction: float32 scalar alpha_t (ignored by the reference rule,
        which uses its fixed per-layer keep counts).

    Returns:
      int32 total number of regrown weights.
    """
    num_regrown = tf.constant(0, tf.int32)
    for position, (kernel, mask, score) in enumerate(
        zip(self.kernels, self.masks, self.grow_scores)):
      if self.config.readjust_rule == 'reference':
        result = mask_lib.readjust_reference(
            kernel, mask, score,
            self.config.reference_keep_after_prune[position],
            self.num_active[position])
      else:
        result = mask_lib.readjust(kernel, mask, score, drop_fraction)
      kernel.assign(result.weight)
      mask.assign(result.mask)
      momentum = self.momenta[self.layout.kernel_indices[position]]
      momentum.assign(momentum * result.mask)
      score.assign(tf.zeros_like(score))
      num_regrown += tf.cast(result.num_grown, tf.int32)
    return num_regrown

  def payload(self) -> encoding.SparsePayload:
    """Encodes the current model as a `SparsePayload` (bitmap masks).

    Values are in the upload value dtype; the mask code is the bitmap
    whatever `upload_encoding` says (this is the TFLite client's format).
    """
    return encode_weights(
        self.model, self.layout, self.num_active,
        payload_encoding=encoding.PayloadEncoding(
            value_dtype=self.upload_encoding.value_dtype,
            omit_dense_masks=self.upload_encoding.omit_dense_masks))

  def encoded_upload(self, global_masks: Sequence[tf.Tensor]
                     ) -> encoding.Payload:
    """Encodes the current model with `upload_encoding`.

    Args:
      global_masks: The masks received this round. With
        `masks_only_when_changed`, the masks are sent only if some differs.

    Returns:
      The `SparsePayload` or `CodedPayload` to upload.
    """
    include_masks = True
    if self.upload_encoding.masks_only_when_changed:
      include_masks = tf.reduce_any([
          tf.reduce_any(tf.not_equal(mask, tf.cast(received, mask.dtype)))
          for mask, received in zip(self.masks, global_masks)])
    return encode_weights(self.model, self.layout, self.num_active,
                          payload_encoding=self.upload_encoding,
                          include_masks=include_masks)

  @tf.function
  def update(self, initial_weights, dataset: tf.data.Dataset,
             instructions: RoundInstructions, epochs_done=None):
    """Runs one round of local training from the broadcast global model.

    Args:
      initial_weights: `tff.learning.models.ModelWeights` of the global model.
      dataset: Batched `(x, y)` client data for one epoch.
      instructions: `RoundInstructions` for this round.
      epochs_done: With `readjust_counter='client_lifetime'`: int32 scalar,
        the local epochs this client trained before this round (its lifetime
        count); None otherwise.

    Returns:
      `(payload, num_examples, stats)`: the payload to upload (encoded with
      `upload_encoding`), the float32 number of examples in one epoch, and
      `ClientStats`.
    """
    _UPDATE_TRACES[0] += 1
    self.set_weights(initial_weights)
    # One pass counts batches and examples.
    num_batches, num_examples = dataset.reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda counts, batch: (counts[0] + 1, counts[1] + tf.shape(
            batch[1], out_type=tf.int64)[0]))
    if epochs_done is not None:
      return self._update_by_lifetime_count(
          initial_weights, dataset, instructions, epochs_done, num_batches,
          num_examples)
    readjust_step = tf.cast(
        tf.round(self.config.effective_readjust_after_epochs *
                 tf.cast(num_batches, tf.float64)), tf.int64)
    readjust_step = tf.clip_by_value(
        readjust_step, 1, self.config.num_epochs * tf.maximum(num_batches, 1))
    should_readjust = tf.convert_to_tensor(instructions.should_readjust)

    step = tf.constant(0, tf.int64)
    loss_sum = tf.constant(0.0, tf.float32)
    num_regrown = tf.constant(0, tf.int32)
    num_readjustments = tf.constant(0, tf.int32)
    # Looping over an iterator makes the loop a `tf.while_loop` in this
    # function's graph. Looping over the dataset itself would run the body
    # as a tf.data reduce function, which TF instantiates (and optimizes)
    # again on every call: about 0.35 s per client for the MNIST net.
    # The training pass starts after the counting pass: a shuffled dataset
    # takes its next order at the start of each pass, and nothing else
    # orders the two passes (the dataset is no resource), so they could
    # start either way round and training would see either order.
    with tf.control_dependencies([num_batches, num_examples]):
      batches = iter(dataset.repeat(self.config.num_epochs))
    for x, y in batches:
      step += 1
      # Grow scores are read only by a readjustment.
      loss = self.train_step(
          x, y, tf.logical_and(should_readjust, step <= readjust_step))
      loss_sum += loss * tf.cast(tf.shape(y)[0], tf.float32)
      if tf.logical_and(should_readjust, tf.equal(step, readjust_step)):
        if self.config.grow_score == 'last_batch_after_step':
          self.recompute_grow_scores(x, y)
        num_regrown += self.readjust(
            tf.cast(instructions.drop_fraction, tf.float32))
        num_readjustments += 1

    return self._round_result(initial_weights, loss_sum, num_examples,
                              num_regrown, num_readjustments)

  def _update_by_lifetime_count(self, initial_weights, dataset, instructions,
                                epochs_done, num_batches, num_examples):
    """`update`'s training loop with `readjust_counter='client_lifetime'`.

    Runs inside `update` (traced in its graph), after the counting pass.
    """
    should_readjust = tf.convert_to_tensor(instructions.should_readjust)
    epochs_done = tf.cast(epochs_done, tf.int64)
    batches_per_epoch = tf.maximum(num_batches, 1)
    per_step_scores = self.config.grow_score == 'accumulated'
    step = tf.constant(0, tf.int64)
    loss_sum = tf.constant(0.0, tf.float32)
    num_regrown = tf.constant(0, tf.int32)
    num_readjustments = tf.constant(0, tf.int32)
    grow_score_examples = tf.constant(0, tf.int32)
    with tf.control_dependencies([num_batches, num_examples]):
      batches = iter(dataset.repeat(self.config.num_epochs))
    for x, y in batches:
      step += 1
      # The lifetime count before this step's epoch.
      count = epochs_done + (step - 1) // batches_per_epoch
      readjusts_after_epoch = tf.logical_and(
          should_readjust, self.config.readjusts_after_epoch(count))
      loss = self.train_step(x, y, readjusts_after_epoch)
      batch_size = tf.shape(y)[0]
      loss_sum += loss * tf.cast(batch_size, tf.float32)
      epoch_ends = tf.equal(tf.math.floormod(step, batches_per_epoch), 0)
      if tf.logical_and(readjusts_after_epoch,
                        tf.logical_or(epoch_ends, per_step_scores)):
        grow_score_examples += batch_size
      if tf.logical_and(readjusts_after_epoch, epoch_ends):
        if self.config.grow_score == 'last_batch_after_step':
          self.recompute_grow_scores(x, y)
        num_regrown += self.readjust(
            tf.cast(instructions.drop_fraction, tf.float32))
        num_readjustments += 1

    return self._round_result(initial_weights, loss_sum, num_examples,
                              num_regrown, num_readjustments,
                              grow_score_examples)

  def _round_result(self, initial_weights, loss_sum: tf.Tensor,
                    num_examples: tf.Tensor, num_regrown: tf.Tensor,
                    num_readjustments: tf.Tensor, grow_score_examples=0):
    """`update`'s return value once the local loop has run.

    Args:
      initial_weights: The broadcast `ModelWeights` (their masks tell which
        upload masks changed).
      loss_sum: float32: the minibatch losses summed, each times its size.
      num_examples: int64: examples in one local epoch.
      num_regrown: int32: weights regrown by this round's readjustments.
      num_readjustments: int32: readjustments made this round.
      grow_score_examples: int32 with 'client_lifetime' (see `ClientStats`);
        0 otherwise.

    Returns:
      `(payload, num_examples, stats)` as `update` documents.
    """
    examples_trained = (tf.cast(num_examples, tf.float32) *
                        self.config.num_epochs)
    stats = ClientStats(
        train_loss=tf.math.divide_no_nan(loss_sum, examples_trained),
        num_examples=tf.cast(num_examples, tf.float32),
        num_regrown=num_regrown, num_readjustments=num_readjustments,
        grow_score_examples=grow_score_examples)
    global_masks = [initial_weights.non_trainable[i]
                    for i in self.layout.mask_indices]
    return (self.encoded_upload(global_masks),
            tf.cast(num_examples, tf.float32), stats)


def update_trace_count() -> int:
  """Returns how many times any `ClientTrainer.update` has been traced.

  Tracing happens when a TFF computation or a `tf.function` call first meets
  a new input signature; a round that traces again pays for it in time.
  """
  return _UPDATE_TRACES[0]


def resolve_upload_encoding(
    config: ClientConfig,
    upload_encoding: Optional[encoding.PayloadEncoding]
) -> encoding.PayloadEncoding:
  """The upload encoding: `upload_encoding`, or the config's value dtype.

  Args:
    config: Local training settings (`value_dtype`, the older way to ask
      for float16 uploads).
    upload_encoding: An explicit encoding, or None.

  Returns:
    The `PayloadEncoding` clients upload with.

  Raises:
    ValueError: If both ask for different value dtypes.
  """
  if upload_encoding is None:
    return encoding.PayloadEncoding(value_dtype=config.value_dtype)
  if (config.value_dtype != 'float32' and
      config.value_dtype != upload_encoding.value_dtype):
    raise ValueError(
        f'ClientConfig.value_dtype={config.value_dtype!r} conflicts with '
        f'upload encoding {upload_encoding.name!r}.')
  return upload_encoding


def encode_weights(model_or_weights: Any, layout: models.ModelLayout,
                   num_active: Sequence[int],
                   value_dtype: tf.DType = tf.float32,
                   payload_encoding: Optional[encoding.PayloadEncoding] = None,
                   include_masks: Any = True) -> encoding.Payload:
  """Encodes a Keras model's (or a `ModelWeights`') weights as a payload.

  Args:
    model_or_weights: A wrapped Keras model, or `ModelWeights` of one.
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel.
    value_dtype: dtype of the sent kernel values (when `payload_encoding`
      is None).
    payload_encoding: The encoding; None means bitmap masks and
      `value_dtype` values (a `SparsePayload`).
    include_masks: bool or bool tensor, read by encodings that may leave
      the masks out.

  Returns:
    The payload holding active kernel values, masks and dense parameters
    (dense trainable, then dense non-trainable): a `SparsePayload`, or a
    `CodedPayload` for other encodings.
  """
  if isinstance(model_or_weights, tf.keras.Model):
    trainable = model_or_weights.trainable_variables
    non_trainable = model_or_weights.non_trainable_variables
  else:
    trainable = model_or_weights.trainable
    non_trainable = model_or_weights.non_trainable
  if payload_encoding is None:
    payload_encoding = encoding.PayloadEncoding(
        value_dtype=tf.as_dtype(value_dtype).name)
  return encoding.encode_payload(
      kernels=[trainable[i] for i in layout.kernel_indices],
      masks=[non_trainable[i] for i in layout.mask_indices],
      dense=[trainable[i] for i in layout.dense_trainable_indices] +
      [non_trainable[i] for i in layout.dense_non_trainable_indices],
      num_active=num_active, payload_encoding=payload_encoding,
      include_masks=include_masks)


def federated_weighted_mean(values, weights):
  """A weighted mean of float32 client scalars, the same for any order.

  Like `tff.federated_mean(values, weight=weights)`, but summed in
  `exact_sum` form, so the result does not depend on the order in which
  clients arrive or on how they are split over workers. Call it inside a
  `tff.federated_computation`.

  Args:
    values: float32@CLIENTS.
    weights: float32@CLIENTS.

  Returns:
    float32@SERVER: NaN if any value or weight is not finite, or if the
    weights sum to 0.
  """
  @tff.tensorflow.computation
  def zero():
    return exact_sum.zero_mean_terms()

  terms_type = zero.type_signature.result

  @tff.tensorflow.computation(terms_type, (np.float32, np.float32))
  def accumulate(terms, value_and_weight):
    return exact_sum.add(terms, exact_sum.mean_terms(*value_and_weight))

  @tff.tensorflow.computation(terms_type, terms_type)
  def merge(first, second):
    return exact_sum.add(first, second)

  @tff.tensorflow.computation(terms_type)
  def report(terms):
    return exact_sum.mean_of(exact_sum.MeanTerms(*terms))

  return tff.federated_aggregate(tff.federated_zip((values, weights)),
                                 zero(), accumulate, merge, report)


def instructions_computation(schedule: Any) -> tff.Computation:
  """The server's `RoundInstructions` for a round, from `schedule`.

  Args:
    schedule: A readjustment schedule with `first_round`,
      `should_readjust(round_num)` and `drop_fraction_at(round_num)` (see
      `schedules`).

  Returns:
    A `tff.tensorflow.computation` from the process's int32 round number
    (counted from 1) to `RoundInstructions`.
  """
  @tff.tensorflow.computation(tff.types.TensorType(np.int32))
  def instructions_for(round_num):
    # The process counts rounds from 1; a schedule may count from 0.
    schedule_round = round_num - 1 + schedule.first_round
    return RoundInstructions(
        should_readjust=tf.convert_to_tensor(
            schedule.should_readjust(schedule_round)),
        drop_fraction=tf.cast(schedule.drop_fraction_at(schedule_round),
                              tf.float32))

  return instructions_for


def build_client_work(model_fn: models.ModelFn, layout: models.ModelLayout,
                      num_active: Sequence[int], schedule: Any,
                      config: ClientConfig, model_weights_type: tff.Type,
                      data_type: tff.Type,
                      upload_encoding: Optional[
                          encoding.PayloadEncoding] = None
                      ) -> tff.learning.templates.ClientWorkProcess:
  """Builds FedDST's `ClientWorkProcess` with the round's counter.

  With `config.readjust_counter='client_lifetime'` use
  `lifetime_work.build_lifetime_client_work` instead.

  The process state is the last completed round number (int32, starts at 0);
  `next` computes this round's `RoundInstructions` from `schedule` at the
  server, broadcasts them, and runs `ClientTrainer.update` on every client.

  Type signatures:
    initialize: `( -> int32@SERVER)`
    next: `(<int32@SERVER, ModelWeights@CLIENTS, {(x, y)*}@CLIENTS> ->
      <state=int32@SERVER, result=ClientResult(Payload, float32)@CLIENTS,
      measurements=<round_num, train_loss, num_examples, num_regrown,
      should_readjust>@SERVER>)`
    where Payload is a `SparsePayload` or, for other encodings, a
    `CodedPayload`.

  Args:
    model_fn: Builds the wrapped Keras model.
    layout: The model's `ModelLayout`.
    num_active: Active weights per kernel.
    schedule: A readjustment schedule with `should_readjust(round_num)` and
      `drop_fraction_at(round_num)` (see `schedules`).
    config: Local training hyper-parameters.
    model_weights_type: TFF type of the (unplaced) `ModelWeights`.
    data_type: TFF sequence type of a client's batched `(x, y)` data.
    upload_encoding: How clients encode their upload (None: bitmap masks
      and `config.value_dtype` values).

  Returns:
    A `tff.learning.templates.ClientWorkProcess`.

  Raises:
    ValueError: If `upload_encoding` and `config.value_dtype` disagree, or
      `config` counts lifetime epochs.
  """
  if config.counts_lifetime_epochs:
    raise ValueError('readjust_counter=client_lifetime needs '
                     'lifetime_work.build_lifetime_client_work.')
  upload_encoding = resolve_upload_encoding(config, upload_encoding)

  @tff.tensorflow.computation
  def initial_round():
    return tf.constant(0, tf.int32)

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(initial_round, tff.SERVER)

  instructions_for = instructions_computation(schedule)

  @tff.tensorflow.computation(tff.types.TensorType(np.int32))
  def advance(round_num):
    return round_num + 1

  instructions_type = instructions_for.type_signature.result

  @tff.tensorflow.computation(model_weights_type, data_type, instructions_type)
  def client_update(initial_weights, dataset, instructions):
    model = model_fn()
    trainer = ClientTrainer(model, layout, num_active, config,
                            upload_encoding)
    payload, weight, stats = trainer.update(initial_weights, dataset,
                                            instructions)
    return tff.learning.templates.ClientResult(
        update=payload, update_weight=weight), stats

  @tff.tensorflow.computation(tff.types.TensorType(np.int32))
  def to_float(value):
    return tf.cast(value, tf.float32)

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.types.FederatedType(model_weights_type, tff.CLIENTS),
      tff.types.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, client_data):
    round_num = tff.federated_map(advance, state)
    instructions = tff.federated_broadcast(
        tff.federated_map(instructions_for, round_num))
    results, stats = tff.federated_map(
        client_update, (weights, client_data, instructions))
    measurements = tff.federated_zip(
        round_measurements(round_num, stats, instructions_for))
    return tff.templates.MeasuredProcessOutput(
        state=round_num, result=results, measurements=measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def round_measurements(round_num, stats, instructions_for
                       ) -> collections.OrderedDict:
  """The measurements every client-work process reports for a round.

  Args:
    round_num: The round's number, int32@SERVER.
    stats: The clients' statistics@CLIENTS, with `train_loss`,
      `num_examples`, `num_regrown` and `num_readjustments`.
    instructions_for: The TF computation giving a round's instructions
      (its `should_readjust` is reported).

  Returns:
    An OrderedDict of @SERVER values, not yet zipped, so that a process can
    add its own before `tff.federated_zip`.
  """
  return collections.OrderedDict(
      round_num=round_num,
      train_loss=federated_weighted_mean(stats.train_loss,
                                         stats.num_examples),
      num_examples=tff.federated_sum(stats.num_examples),
      num_regrown=tff.federated_sum(stats.num_regrown),
      should_readjust=tff.federated_map(instructions_for,
                                        round_num).should_readjust,
      clients_readjusted=clients_readjusted(stats.num_readjustments))


def clients_readjusted(num_readjustments):
  """int32@SERVER: clients whose `num_readjustments`@CLIENTS is > 0."""
  @tff.tensorflow.computation(tff.types.TensorType(np.int32))
  def readjusted(count):
    return tf.cast(count > 0, tf.int32)

  return tff.federated_sum(tff.federated_map(readjusted, num_readjustments))
