"""Tests for tff_feddst.process.client_work: masked local SGD and readjustment."""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.sparse import schedules


def softmax_regression() -> tf.keras.Model:
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(3,)),
      pruning.wrap_layer(tf.keras.layers.Dense(
          2, kernel_initializer='zeros', bias_initializer='zeros')),
  ])


def numpy_client_update(kernel, bias, mask, batches, lr, momentum, wd, mu,
                        epochs):
  """Independent numpy version of the client optimizer on softmax regression.

  Gradients of mean cross-entropy: dW = x^T (softmax(xW + b) - onehot) / B.
  """
  global_kernel, global_bias = kernel.copy(), bias.copy()
  kernel_buffer, bias_buffer = np.zeros_like(kernel), np.zeros_like(bias)
  for _ in range(epochs):
    for x, y in batches:
      logits = x @ kernel + bias
      probabilities = np.exp(logits - logits.max(1, keepdims=True))
      probabilities /= probabilities.sum(1, keepdims=True)
      delta = (probabilities - np.eye(2)[y]) / len(y)
      kernel_grad = x.T @ delta + wd * kernel + mu * (kernel - global_kernel)
      bias_grad = delta.sum(0) + wd * bias + mu * (bias - global_bias)
      kernel_grad *= mask
      kernel_buffer = momentum * kernel_buffer + kernel_grad
      bias_buffer = momentum * bias_buffer + bias_grad
      kernel = (kernel - lr * kernel_buffer) * mask
      bias = bias - lr * bias_buffer
  return kernel, bias


def initial_weights_of(model, kernel, bias, mask):
  pruning.start_pruning_steps(model)
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in model.non_trainable_variables])
  layout = models.model_layout(model)
  weights.trainable[layout.kernel_indices[0]] = kernel
  weights.trainable[layout.dense_trainable_indices[0]] = bias
  weights.non_trainable[layout.mask_indices[0]] = mask
  return weights, layout


NO_READJUST = client_work.RoundInstructions(
    should_readjust=tf.constant(False), drop_fraction=tf.constant(0.0))


class ClientTrainerTest(tf.test.TestCase):

  def test_optimizer_matches_numpy_reference(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], np.int32)
    mask = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    kernel = rng.normal(size=(3, 2)).astype(np.float32) * mask
    bias = np.array([0.1, -0.2], np.float32)
    model = softmax_regression()
    weights, layout = initial_weights_of(model, kernel, bias, mask)
    config = client_work.ClientConfig(
        learning_rate=0.1, momentum=0.9, weight_decay=0.01, prox_mu=0.5,
        num_epochs=2)
    trainer = client_work.ClientTrainer(model, layout, [4], config)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    payload, num_examples, stats = trainer.update(weights, dataset,
                                                  NO_READJUST)
    expected_kernel, expected_bias = numpy_client_update(
        kernel, bias, mask, [(x[:4], y[:4]), (x[4:], y[4:])], lr=0.1,
        momentum=0.9, wd=0.01, mu=0.5, epochs=2)
    got_kernels, got_masks, got_dense = encoding.decode(payload, [(3, 2)])
    self.assertAllClose(got_kernels[0], expected_kernel, atol=1e-6)
    self.assertAllClose(got_dense[0], expected_bias, atol=1e-6)
    self.assertAllEqual(got_masks[0], mask)
    self.assertEqual(float(num_examples), 6.0)
    self.assertEqual(int(stats.num_regrown), 0)


def mnist_client_fixture(num_examples: int):
  """The MNIST net at S = 0.8 (ERK) and random data in minibatches of 10.

  Args:
    num_examples: Examples in the client's dataset.

  Returns:
    `(model_fn, initial_model, dataset)`: the net's model function (seed 1),
    `fed_dst.build_initial_model`'s model (seed 2) and the batched `(x, y)`
    dataset (numpy seed 3).
  """
  model_fn = models.get_model_fn('mnist_net', seed=1)
  initial = fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=2)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(num_examples, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, size=num_examples).astype(np.int32)
  return (model_fn, initial,
          tf.data.Dataset.from_tensor_slices((x, y)).batch(10))


class ReadjustmentTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model_fn, self.initial, self.dataset = mnist_client_fixture(40)

  def run_client(self, readjust_after_epochs, should_readjust=True,
                 drop_fraction=0.2):
    config = client_work.ClientConfig(
        num_epochs=2, readjust_after_epochs=readjust_after_epochs)
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active, config)
    instructions = client_work.RoundInstructions(
        should_readjust=tf.constant(should_readjust),
        drop_fraction=tf.constant(drop_fraction))
    payload, _, stats = trainer.update(self.initial.weights, self.dataset,
                                       instructions)
    kernels, masks, _ = encoding.decode(payload,
                                        self.initial.layout.kernel_shapes)
    return kernels, masks, stats

  def global_masks(self):
    return [self.initial.weights.non_trainable[i]
            for i in self.initial.layout.mask_indices]

  def test_readjust_keeps_nnz_and_masked_weights_zero(self):
    kernels, masks, stats = self.run_client(readjust_after_epochs=1)
    expected_regrown = 0
    for kernel, mask, old_mask, count in zip(
        kernels, masks, self.global_masks(), self.initial.num_active):
      self.assertEqual(int(np.sum(mask)), count)
      self.assertTrue(np.all(kernel.numpy()[mask.numpy() == 0] == 0))
      changed = int(np.sum(mask.numpy() != old_mask)) // 2
      expected_regrown += changed
      # k = round(0.2 * nnz), capped by the inactive count.
      self.assertEqual(changed, min(round(0.2 * count), mask.numpy().size -
                                    count))
    self.assertEqual(int(stats.num_regrown), expected_regrown)

  def test_regrown_weights_train_before_upload(self):
    kernels, masks, _ = self.run_client(readjust_after_epochs=1)
    grown = (masks[2].numpy() == 1) & (self.global_masks()[2] == 0)
    self.assertGreater(np.sum(grown), 0)
    # One epoch of SGD after the readjustment moved the regrown weights.
    self.assertGreater(np.count_nonzero(kernels[2].numpy()[grown]),
                       0.9 * np.sum(grown))

  def test_readjusting_after_last_epoch_uploads_regrown_as_zero(self):
    kernels, masks, _ = self.run_client(readjust_after_epochs=2)
    grown = (masks[2].numpy() == 1) & (self.global_masks()[2] == 0)
    self.assertGreater(np.sum(grown), 0)
    self.assertTrue(np.all(kernels[2].numpy()[grown] == 0))

  def test_no_readjustment_keeps_the_global_mask(self):
    _, masks, stats = self.run_client(readjust_after_epochs=1,
                                      should_readjust=False)
    for mask, old_mask in zip(masks, self.global_masks()):
      self.assertAllEqual(mask, old_mask)
    self.assertEqual(int(stats.num_regrown), 0)

  def test_update_traces_once_for_all_clients_and_rounds(self):
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active,
        client_work.ClientConfig(num_epochs=1))
    rng = np.random.default_rng(5)
    before = client_work.update_trace_count()
    for size, readjust in ((40, True), (13, False), (25, True)):
      x = rng.normal(size=(size, 28, 28, 1)).astype(np.float32)
      y = rng.integers(0, 10, size=size).astype(np.int32)
      trainer.update(
          self.initial.weights,
          tf.data.Dataset.from_tensor_slices((x, y)).batch(10),
          client_work.RoundInstructions(
              should_readjust=tf.constant(readjust),
              drop_fraction=tf.constant(0.1 * size)))
    self.assertEqual(trainer.update.experimental_get_tracing_count(), 1)
    self.assertEqual(client_work.update_trace_count() - before, 1)

  def test_masks_are_uploaded_only_when_changed(self):
    upload_encoding = encoding.PayloadEncoding(
        mask_code='rice', masks_only_when_changed=True)
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active,
        client_work.ClientConfig(num_epochs=2), upload_encoding)
    layout, num_active = self.initial.layout, self.initial.num_active
    for should_readjust in (False, True):
      payload, _, _ = trainer.update(
          self.initial.weights, self.dataset,
          client_work.RoundInstructions(
              should_readjust=tf.constant(should_readjust),
              drop_fraction=tf.constant(0.2)))
      self.assertIsInstance(payload, encoding.CodedPayload)
      self.assertEqual(int(payload.mask_code_bits) > 0, should_readjust)
      kernels, masks, _ = encoding.decode_payload(
          payload, layout.kernel_shapes, num_active, upload_encoding,
          global_masks=self.global_masks())
      for kernel, mask, variable, mask_variable in zip(
          kernels, masks, trainer.kernels, trainer.masks):
        self.assertAllEqual(mask, mask_variable)
        self.assertAllEqual(kernel, variable)

  def test_upload_encoding_conflicting_with_value_dtype_raises(self):
    config = client_work.ClientConfig(value_dtype='float16')
    self.assertEqual(
        client_work.resolve_upload_encoding(config, None),
        encoding.PayloadEncoding(value_dtype='float16'))
    with self.assertRaisesRegex(ValueError, 'conflicts'):
      client_work.resolve_upload_encoding(
          config, encoding.PayloadEncoding(mask_code='rice'))

  def test_identical_inputs_identical_results(self):
    first, _, _ = self.run_client(readjust_after_epochs=1)
    second, _, _ = self.run_client(readjust_after_epochs=1)
    for a, b in zip(first, second):
      self.assertAllEqual(a, b)


class LifetimeCounterTest(tf.test.TestCase):
  """'client_lifetime': which epochs of which client readjust, by hand.

  begin 4, interval 5, 3 local epochs per round: a client readjusts after an
  epoch whose lifetime count c (before it) is 4, 9, 14, ... . One client is
  sampled in rounds 1, 2, 5 and 6 (counts 0, 3, 6, 9 before its rounds):
    round 1: epochs 0, 1, 2   -> none
    round 2: epochs 3, 4, 5   -> after its 2nd epoch (c = 4)
    round 5: epochs 6, 7, 8   -> none
    round 6: epochs 9, 10, 11 -> after its 1st epoch (c = 9)
  and never on a round that does not readjust. With 'last_batch' scores a
  readjustment after a round's e-th epoch equals the 'round' counter's
  with readjust_after_epochs = e, so the uploads must match those.
  """

  def setUp(self):
    super().setUp()
    self.model_fn, self.initial, self.dataset = mnist_client_fixture(20)

  def upload(self, config, should_readjust, epochs_done=None):
    trainer = client_work.ClientTrainer(
        self.model_fn(), self.initial.layout, self.initial.num_active, config)
    instructions = client_work.RoundInstructions(
        should_readjust=tf.constant(should_readjust),
        drop_fraction=tf.constant(0.2))
    payload, _, stats = trainer.update(
        self.initial.weights, self.dataset, instructions,
        **({} if epochs_done is None else
           dict(epochs_done=tf.constant(epochs_done, tf.int32))))
    return encoding.decode(payload, self.initial.layout.kernel_shapes), stats

  def test_condition_by_hand(self):
    config = client_work.ClientConfig(readjust_counter='client_lifetime')
    self.assertEqual([c for c in range(40) if config.readjusts_after_epoch(c)],
                     [9, 19, 29, 39])
    # A floor modulo, as the authors' Python %: with begin past interval,
    # counts below begin qualify too.
    late = client_work.ClientConfig(readjust_counter='client_lifetime',
                                    readjust_counter_begin=15,
                                    readjust_counter_interval=10)
    self.assertEqual([c for c in range(30) if late.readjusts_after_epoch(c)],
                     [5, 15, 25])
    self.assertEqual(
        [bool(late.readjusts_after_epoch(tf.constant(c, tf.int64)))
         for c in range(30)],
        [late.readjusts_after_epoch(c) for c in range(30)])

  def test_epochs_that_readjust_over_irregular_rounds(self):
    lifetime = client_work.ClientConfig(
        num_epochs=3, grow_score='last_batch',
        readjust_counter='client_lifetime', readjust_counter_begin=4,
        readjust_counter_interval=5)
    def round_config(after):
      return client_work.ClientConfig(num_epochs=3, grow_score='last_batch',
                                      readjust_after_epochs=after)
    # (count before the round, readjustment round?, same as 'round' with
    # readjust_after_epochs=..., or None: no readjustment).
    for count, readjusting, after in ((0, True, None), (3, True, 2),
                                      (6, True, None), (9, True, 1),
                                      (9, False, None), (4, False, None)):
      (kernels, masks, _), stats = self.upload(lifetime, readjusting, count)
      (want_kernels, want_masks, _), want_stats = self.upload(
          round_config(after or 1), after is not None)
      self.assertEqual(int(stats.num_readjustments), int(after is not None),
                       (count, readjusting))
      self.assertEqual(int(stats.num_regrown), int(want_stats.num_regrown))
      # 'last_batch': one minibatch of 10 per readjustment.
      self.assertEqual(int(stats.grow_score_examples),
                       10 if after is not None else 0)
      for got, want in zip(kernels + masks, want_kernels + want_masks):
        self.assertAllEqual(got, want)
    # Two readjustments in one round when the interval is shorter.
    every_epoch = client_work.ClientConfig(
        num_epochs=3, readjust_counter='client_lifetime',
        readjust_counter_begin=0, readjust_counter_interval=1)
    _, stats = self.upload(every_epoch, True, 7)
    self.assertEqual(int(stats.num_readjustments), 3)
    # 'accumulated': every step of the three readjusting epochs.
    self.assertEqual(int(stats.grow_score_examples), 3 * 20)

  def test_bad_counter_settings_raise(self):
    with self.assertRaisesRegex(ValueError, 'readjust_counter'):
      client_work.ClientConfig(readjust_counter='epoch')
    with self.assertRaisesRegex(ValueError, 'readjust_counter_interval'):
      client_work.ClientConfig(readjust_counter_interval=0)


class ClientConfigTest(tf.test.TestCase):

  def test_default_readjust_point(self):
    self.assertEqual(client_work.ClientConfig(
        num_epochs=5).effective_readjust_after_epochs, 4.0)
    self.assertEqual(client_work.ClientConfig(
        num_epochs=1).effective_readjust_after_epochs, 0.5)

  def test_non_positive_values_count_back_from_the_end(self):
    self.assertEqual(client_work.ClientConfig(
        num_epochs=10, readjust_after_epochs=0).effective_readjust_after_epochs,
                     10.0)
    self.assertEqual(client_work.ClientConfig(
        num_epochs=10, readjust_after_epochs=-2
    ).effective_readjust_after_epochs, 8.0)

  def test_bad_values_raise(self):
    with self.assertRaisesRegex(ValueError, 'readjust_after_epochs'):
      client_work.ClientConfig(num_epochs=2, readjust_after_epochs=3)
    with self.assertRaisesRegex(ValueError, 'readjust_after_epochs'):
      client_work.ClientConfig(num_epochs=2, readjust_after_epochs=-2)
    with self.assertRaisesRegex(ValueError, 'grow_score'):
      client_work.ClientConfig(grow_score='random')
    with self.assertRaisesRegex(ValueError, 'momentum'):
      client_work.ClientConfig(momentum=1.0)


def dense_classifier(num_inputs: int, num_classes: int) -> tf.keras.Model:
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(num_inputs,)),
      pruning.wrap_layer(tf.keras.layers.Dense(
          num_classes, kernel_initializer='zeros', bias_initializer='zeros')),
  ])


def numpy_data_gradients(kernel, bias, mask, batches, lr, momentum, wd,
                         after_last_step=False):
  """Dense kernel gradients of the data loss at each step (independent numpy).

  The same optimizer as `numpy_client_update`, without FedProx; returns
  dW = x^T (softmax(xW + b) - onehot) / B of every step, at every position
  (inactive ones included), before that step's update. With
  `after_last_step`, one more: the last batch's, at the weights after its
  step.
  """
  num_classes = kernel.shape[1]
  kernel_buffer, bias_buffer = np.zeros_like(kernel), np.zeros_like(bias)
  gradients = []

  def data_gradient(x, y):
    logits = x @ kernel + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    delta = (probabilities - np.eye(num_classes)[y]) / len(y)
    return x.T @ delta, delta

  for x, y in batches:
    kernel_data_grad, delta = data_gradient(x, y)
    gradients.append(kernel_data_grad)
    kernel_grad = (kernel_data_grad + wd * kernel) * mask
    bias_grad = delta.sum(0) + wd * bias
    kernel_buffer = momentum * kernel_buffer + kernel_grad
    bias_buffer = momentum * bias_buffer + bias_grad
    kernel = (kernel - lr * kernel_buffer) * mask
    bias = bias - lr * bias_buffer
  if after_last_step:
    gradients.append(data_gradient(*batches[-1])[0])
  return gradients


class CosineAnnealingInUpdateTest(tf.test.TestCase):
  """`update` regrows as many weights per round as the cosine schedule says.

  One 10x2 kernel with 10 of 20 positions active, alpha = 0.8, T_end = 5, a
  readjustment every round. alpha_t = 0.4 * (1 + cos(pi t / 5)):
    t=1: 0.4 * 1.80902 = 0.72361, x 10 = 7.24 -> 7
    t=2: 0.4 * 1.30902 = 0.52361, x 10 = 5.24 -> 5
    t=3: 0.4 * 0.69098 = 0.27639, x 10 = 2.76 -> 3
    t=4: 0.4 * 0.19098 = 0.07639, x 10 = 0.76 -> 1
    t=5: t = T_end: 0, no readjustment; t=6: after T_end: 0.
  (k never reaches its cap, min(10 active, 10 inactive).)
  """

  def test_regrown_per_round_follow_the_cosine(self):
    schedule = schedules.ReadjustmentSchedule(
        drop_fraction=0.8, rounds_between_readjustments=1, end_round=5,
        annealing='cosine')
    rng = np.random.default_rng(11)
    x = rng.normal(size=(8, 10)).astype(np.float32)
    y = rng.integers(0, 2, size=8).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    mask = np.zeros(20, np.float32)
    mask[rng.choice(20, 10, replace=False)] = 1.0
    mask = mask.reshape(10, 2)
    kernel = rng.normal(size=(10, 2)).astype(np.float32) * mask
    model = dense_classifier(10, 2)
    weights, layout = initial_weights_of(model, kernel,
                                         np.zeros(2, np.float32), mask)
    trainer = client_work.ClientTrainer(
        model, layout, [10], client_work.ClientConfig(
            learning_rate=0.1, num_epochs=2, readjust_after_epochs=1))
    regrown = []
    for round_num in range(1, 7):
      instructions = client_work.RoundInstructions(
          should_readjust=schedule.should_readjust(round_num),
          drop_fraction=schedule.drop_fraction_at(round_num))
      payload, _, stats = trainer.update(weights, dataset, instructions)
      (kernel,), (new_mask,), _ = encoding.decode(payload, [(10, 2)])
      new_mask = new_mask.numpy()
      newly_active = int(np.sum((new_mask == 1) & (mask == 0)))
      self.assertEqual(int(stats.num_regrown), newly_active)
      self.assertEqual(int(np.sum(new_mask)), 10)
      self.assertTrue(np.all(kernel.numpy()[new_mask == 0] == 0))
      regrown.append(newly_active)
      # The next round starts from this client's upload (a one-client
      # federation, without the server's re-prune).
      weights.trainable[layout.kernel_indices[0]] = kernel.numpy()
      weights.non_trainable[layout.mask_indices[0]] = new_mask
      mask = new_mask
    self.assertEqual(regrown, [7, 5, 3, 1, 0, 0])


class GrowScoreInUpdateTest(tf.test.TestCase):
  """`update` regrows the inactive positions its grow score ranks first.

  A 4x3 kernel with 6 of 12 positions active, 3 minibatches of 4, two epochs,
  readjusting after the first (step 3) with drop fraction 0.5: k = 3. The
  pruned positions were active, so the regrown ones are the 3 initially
  inactive positions of largest |score|, whichever are pruned: the sum of the
  data-loss gradients of steps 1-3 ('accumulated'), that of step 3
  ('last_batch'), or that of batch 3 at the weights after step 3
  ('last_batch_after_step'), computed here in numpy.
  """

  def setUp(self):
    super().setUp()
    # Seed 46: the three grow scores pick three different sets here.
    rng = np.random.default_rng(46)
    self.x = rng.normal(size=(12, 4)).astype(np.float32)
    self.y = rng.integers(0, 3, size=12).astype(np.int32)
    mask = np.zeros(12, np.float32)
    mask[[0, 2, 4, 7, 9, 10]] = 1.0
    self.mask = mask.reshape(4, 3)
    self.kernel = rng.normal(size=(4, 3)).astype(np.float32) * self.mask
    self.bias = np.array([0.1, -0.1, 0.0], np.float32)

  def expected_regrown(self, grow_score: str) -> set[int]:
    batches = [(self.x[i:i + 4].astype(np.float64), self.y[i:i + 4])
               for i in (0, 4, 8)]
    after_last_step = grow_score == 'last_batch_after_step'
    gradients = numpy_data_gradients(
        self.kernel.astype(np.float64), self.bias.astype(np.float64),
        self.mask, batches, lr=0.1, momentum=0.9, wd=0.01,
        after_last_step=after_last_step)
    score = (np.sum(gradients, axis=0) if grow_score == 'accumulated'
             else gradients[-1])
    candidates = np.flatnonzero(self.mask.reshape(-1) == 0)
    ranked = candidates[np.argsort(-np.abs(score.reshape(-1)[candidates]),
                                   kind='stable')]
    magnitudes = np.abs(score.reshape(-1)[ranked])
    # No near-tie at the cut, so float32 training ranks the same way.
    self.assertGreater(magnitudes[2] - magnitudes[3], 1e-4)
    return set(ranked[:3].tolist())

  def regrown_by_update(self, grow_score: str) -> set[int]:
    model = dense_classifier(4, 3)
    weights, layout = initial_weights_of(model, self.kernel, self.bias,
                                         self.mask)
    trainer = client_work.ClientTrainer(
        model, layout, [6], client_work.ClientConfig(
            learning_rate=0.1, momentum=0.9, weight_decay=0.01,
            num_epochs=2, readjust_after_epochs=1, grow_score=grow_score))
    dataset = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(4)
    payload, _, stats = trainer.update(
        weights, dataset, client_work.RoundInstructions(
            should_readjust=tf.constant(True),
            drop_fraction=tf.constant(0.5)))
    _, (new_mask,), _ = encoding.decode(payload, [(4, 3)])
    grown = np.flatnonzero((new_mask.numpy().reshape(-1) == 1) &
                           (self.mask.reshape(-1) == 0))
    self.assertEqual(int(stats.num_regrown), 3)
    return set(grown.tolist())

  def test_each_grow_score_regrows_its_top_ranked_positions(self):
    expected = {name: self.expected_regrown(name)
                for name in client_work.GROW_SCORES}
    # The modes disagree on this data, so each is told apart.
    self.assertNotEqual(expected['accumulated'], expected['last_batch'])
    self.assertNotEqual(expected['last_batch'],
                        expected['last_batch_after_step'])
    for name in client_work.GROW_SCORES:
      with self.subTest(grow_score=name):
        self.assertEqual(self.regrown_by_update(name), expected[name])


if __name__ == '__main__':
  tf.test.main()
