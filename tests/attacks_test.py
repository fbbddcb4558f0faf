"""Tests for tff_feddst.benchmarks.attacks, attack_runs and bin/attack.py."""

import csv
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.benchmarks import attack_names
from tff_feddst.benchmarks import attack_runs
from tff_feddst.benchmarks import attacks
from tff_feddst.benchmarks import plain_loop
from tff_feddst.methods import fed_dst
from tff_feddst.networks import models
from tff_feddst.process import client_work
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import upload_binding
from tff_feddst.running import errors
from tff_feddst.running import settings as settings_lib
from tff_feddst.sparse import schedules
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACK = os.path.join(ROOT, 'bin', 'attack.py')


def tiny_model():
  """The MNIST net at S = 0.8 (ERK): its model_fn and initial model."""
  model_fn = models.get_model_fn('mnist_net', seed=0)
  return model_fn, fed_dst.build_initial_model(model_fn, 0.8, 'erk', seed=0)


def honest_upload(initial: fed_dst.InitialModel):
  """A client's upload: the global model moved a little, one weight of each
  layer with room moved off the global mask (a regrown weight)."""
  layout = initial.layout
  rng = np.random.default_rng(1)
  trainable = [np.array(v) for v in initial.weights.trainable]
  non_trainable = [np.array(v) for v in initial.weights.non_trainable]
  for kernel_index, mask_index in zip(layout.kernel_indices,
                                      layout.mask_indices):
    mask = non_trainable[mask_index].reshape(-1)
    if mask.min() == 0:  # Swap the first active position for a free one.
      mask[np.flatnonzero(mask)[0]] = 0
      mask[np.flatnonzero(mask == 0)[-1]] = 1
    kernel = trainable[kernel_index]
    kernel += 0.01 * rng.normal(size=kernel.shape).astype(np.float32)
    trainable[kernel_index] = kernel * mask.reshape(kernel.shape)
  for index in layout.dense_trainable_indices:
    trainable[index] = trainable[index] + 0.01
  client = tff.learning.models.ModelWeights(trainable=trainable,
                                            non_trainable=non_trainable)
  return client_work.encode_weights(client, layout, initial.num_active)


def payload_format(initial: fed_dst.InitialModel) -> attacks.PayloadFormat:
  return attacks.PayloadFormat(initial.layout, tuple(initial.num_active),
                               encoding.PayloadEncoding())


def verdict(upload, weight, initial):
  """`validate_upload`'s rejection kind of an upload (None: accepted)."""
  layout = initial.layout
  dense_shapes = [np.shape(initial.weights.trainable[i])
                  for i in layout.dense_trainable_indices]
  numpy_upload = tf.nest.map_structure(np.asarray, upload)
  return payload_validation.validate_upload(
      numpy_upload, weight, layout.kernel_shapes, initial.num_active,
      dense_shapes).rejection


class AttackUploadTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    _, cls.initial = tiny_model()
    cls.upload = honest_upload(cls.initial)
    cls.format = payload_format(cls.initial)
    cls.broadcast = cls.initial.weights
    cls.honest = attacks.decode_upload(cls.upload, cls.broadcast, cls.format)
    cls.start = attacks.global_model(cls.broadcast, cls.initial.layout)

  def sent(self, name):
    attack = attacks.ATTACKS[name]
    if hasattr(attack, 'fresh'):
      attack = attack.fresh()
    return attack(self.upload, 600.0, self.broadcast, self.format)

  def test_every_attack_sends_well_formed_uploads(self):
    # Shapes, dtypes and mask counts pass; only content rules can refuse.
    expected = {'nan': 'nonfinite'}
    for name in attacks.ATTACKS:
      with self.subTest(attack=name):
        sent = self.sent(name)
        self.assertNotEmpty(sent)
        for upload, weight in sent:
          self.assertIsInstance(upload, encoding.SparsePayload)
          self.assertEqual(verdict(upload, weight, self.initial),
                           expected.get(name))

  def test_takeover_is_off_the_global_mask_with_exact_counts(self):
    [(upload, weight)] = self.sent('takeover')
    self.assertEqual(weight, attacks.TAKEOVER_WEIGHT)
    decoded = attacks.decode_upload(upload, self.broadcast, self.format)
    with_room = 0
    for mask, global_mask, kernel, count in zip(
        decoded.masks, self.start.masks, decoded.kernels,
        self.initial.num_active):
      self.assertEqual(np.sum(mask), count)
      self.assertAllEqual(kernel[mask > 0], np.full(count, 5.0, np.float32))
      if np.sum(global_mask == 0) >= count:
        with_room += 1
        self.assertEqual(np.sum(mask * global_mask), 0)
    self.assertGreater(with_room, 0)
    for got, want in zip(decoded.dense, self.honest.dense):
      self.assertAllEqual(got, want)

  def test_off_mask_without_room_goes_as_far_off_as_it_can(self):
    # 1 free position for 2 ones: the free one, then the first held one.
    self.assertAllEqual(attacks.off_mask(np.array([1., 0., 1., 1.]), 2),
                        [1., 1., 0., 0.])
    self.assertAllEqual(attacks.off_mask(np.array([[0., 1.], [0., 1.]]), 2),
                        [[1., 0.], [1., 0.]])

  def test_scaled_update_is_k_times_the_honest_delta_on_its_support(self):
    for name, factor in (('scaled_x10', 10.0), ('scaled_x100', 100.0),
                         ('sign_flip', -1.0)):
      with self.subTest(attack=name):
        [(upload, weight)] = self.sent(name)
        self.assertEqual(weight, 600.0)
        decoded = attacks.decode_upload(upload, self.broadcast, self.format)
        for got, honest, start, mask, honest_mask in zip(
            decoded.kernels, self.honest.kernels, self.start.kernels,
            decoded.masks, self.honest.masks):
          self.assertAllEqual(mask, honest_mask)
          # On the support (a regrown weight starts at 0); 0 off it.
          self.assertAllClose((got - start * mask),
                              factor * (honest - start * mask),
                              rtol=1e-5, atol=1e-6)
          self.assertAllEqual(got[mask == 0], np.zeros(np.sum(mask == 0)))
        for got, honest, start in zip(decoded.dense, self.honest.dense,
                                      self.start.dense):
          self.assertAllClose(got - start, factor * (honest - start),
                              rtol=1e-5, atol=1e-6)

  def test_stale_sends_last_rounds_upload_bound_to_last_rounds_model(self):
    attack = attacks.ATTACKS['stale'].fresh()
    # First round: nothing older to send, the honest upload goes.
    [(first, weight)] = attack(self.upload, 600.0, self.broadcast,
                               self.format)
    self.assertIs(first, self.upload)
    self.assertEqual(weight, 600.0)
    # Next round, from another model: the first upload and its digest.
    moved = tff.learning.models.ModelWeights(
        trainable=[np.asarray(v) * 2 for v in self.broadcast.trainable],
        non_trainable=self.broadcast.non_trainable)
    [(second, weight)] = attack(honest_upload(self.initial), 300.0, moved,
                                self.format)
    self.assertIsInstance(second, upload_binding.BoundUpload)
    self.assertIs(second.upload, self.upload)
    self.assertEqual(weight, 600.0)
    self.assertEqual(int(second.model_digest), int(
        upload_binding.weights_digest(
            tf.nest.map_structure(tf.convert_to_tensor, self.broadcast),
            self.initial.layout)))
    self.assertNotEqual(int(second.model_digest), int(
        upload_binding.weights_digest(
            tf.nest.map_structure(tf.convert_to_tensor, moved),
            self.initial.layout)))

  def test_replay_sends_eight_identical_uploads(self):
    sent = self.sent('replay')
    self.assertLen(sent, attacks.REPLAY_COPIES)
    self.assertEqual(attacks.REPLAY_COPIES, 8)
    for upload, weight in sent:
      self.assertIs(upload, self.upload)
      self.assertEqual(weight, 600.0)

  def test_weight_attacks_change_only_the_weight(self):
    for name, claimed in (('weight_1e9', 1e9), ('weight_3e38', 3e38)):
      [(upload, weight)] = self.sent(name)
      self.assertIs(upload, self.upload)
      self.assertEqual(weight, claimed)

  def test_value_attacks_keep_the_mask(self):
    for name, check in (('huge_values', lambda v: v == 1e30),
                        ('nan', np.isnan)):
      [(upload, weight)] = self.sent(name)
      self.assertEqual(weight, 600.0)
      decoded = attacks.decode_upload(upload, self.broadcast, self.format)
      for mask, honest_mask in zip(decoded.masks, self.honest.masks):
        self.assertAllEqual(mask, honest_mask)
      for values in upload.values:
        self.assertTrue(np.all(check(np.asarray(values))), name)

  def test_unknown_attack_is_one_line_error(self):
    self.assertEqual(tuple(attacks.ATTACKS), attack_names.ATTACK_NAMES)
    self.assertEqual(attack_names.parse_attacks(['all']),
                     list(attacks.ATTACKS))
    self.assertEqual(attack_names.parse_attacks(['nan', 'replay']),
                     ['nan', 'replay'])
    with self.assertRaisesRegex(ValueError, r'^--attacks: unknown attack '
                                r"'bogus'; expected [^\n]*takeover[^\n]*$"):
      attack_names.parse_attacks(['replay', 'bogus'])


def client_datasets(round_num: int) -> list[tf.data.Dataset]:
  """Three clients of 20 learnable examples each (as plain_loop_test's)."""
  patterns = np.random.default_rng(0).normal(size=(10, 28, 28, 1))
  rng = np.random.default_rng(round_num)
  datasets = []
  for client in range(3):
    labels = rng.choice([client, client + 3, client + 6], size=20)
    images = patterns[labels] + 0.5 * rng.normal(size=(20, 28, 28, 1))
    datasets.append(tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), labels.astype(np.int32))).batch(10))
  return datasets


def tiny_loop(drop_fraction: float, **server_arguments):
  """The tiny model's initial model and a plain loop readjusting each round."""
  model_fn, initial = tiny_model()
  schedule = schedules.ReadjustmentSchedule(
      drop_fraction=drop_fraction, rounds_between_readjustments=1,
      end_round=10, annealing='constant')
  loop = plain_loop.PlainFedDst(
      model_fn, initial, client_datasets(1)[0].element_spec, schedule,
      client_work.ClientConfig(num_epochs=1, learning_rate=0.02),
      **server_arguments)
  return initial, loop


class TakeoverOnTheServerTest(tf.test.TestCase):

  def takeover_round(self, **server_arguments):
    """One round of the tiny model with a takeover client, no regrowth."""
    initial, loop = tiny_loop(0.0, **server_arguments)
    hook = attacks.hostile_hook(attacks.takeover, payload_format(initial))
    state, metrics = loop.next(loop.initialize(), client_datasets(1),
                               upload_hook=hook)
    return initial, loop, hook, state, metrics

  def test_takeover_owns_the_next_global_mask_without_defences(self):
    # Today's server (no defences): the hostile client's off-mask positions
    # with values 5 and weight 0.001 become the whole next global mask of
    # every layer with room, at value 5 (each position is averaged over its
    # holders only; the re-prune keeps the largest magnitudes).
    initial, loop, hook, state, metrics = self.takeover_round()
    self.assertEqual(hook.sent, 1)
    self.assertEqual(metrics['rejected_clients'], 0)
    weights = loop.get_model_weights(state)
    start = attacks.global_model(initial.weights, initial.layout)
    with_room = 0
    for kernel_index, mask_index, old_mask, count in zip(
        initial.layout.kernel_indices, initial.layout.mask_indices,
        start.masks, initial.num_active):
      if np.sum(old_mask == 0) < count:
        continue
      with_room += 1
      new_mask = weights.non_trainable[mask_index]
      self.assertAllEqual(new_mask, attacks.off_mask(old_mask, count))
      self.assertAllClose(weights.trainable[kernel_index][new_mask > 0],
                          np.full(count, 5.0), rtol=1e-6)
    self.assertGreater(with_room, 0)

  def test_with_clipping_the_takeover_is_left_out(self):
    # The same round with the server's clipping: the hostile delta (values
    # 5 off the mask) is far beyond 10 x the clients' median norm, so it is
    # dropped and the global mask keeps its positions.
    initial, loop, _, state, metrics = self.takeover_round(
        robust=robust_aggregation.RobustAggregation())
    self.assertEqual(metrics['rejected_update_norm'], 1)
    weights = loop.get_model_weights(state)
    for mask_index in initial.layout.mask_indices:
      self.assertAllEqual(weights.non_trainable[mask_index],
                          initial.weights.non_trainable[mask_index])

  def test_with_defences_no_attack_moves_the_model_far(self):
    # One round of the tiny model per attack with every defence on: the
    # global model stays finite and no weight grows beyond twice the
    # largest of the clean round (without defences the takeover leaves 5,
    # huge values 1e30: see above and the attack table).
    defended = dict(robust=robust_aggregation.RobustAggregation(),
                    min_new_position_votes=2)
    initial, loop = tiny_loop(0.2, **defended)
    clean_state, _ = loop.next(loop.initialize(), client_datasets(1))
    clean_max = attack_runs.max_abs_weight(loop.get_model_weights(clean_state))
    for name, attack in attacks.ATTACKS.items():
      with self.subTest(attack=name):
        hook = attacks.hostile_hook(attack, payload_format(initial))
        state, _ = loop.next(loop.initialize(), client_datasets(1),
                             upload_hook=hook)
        weights = loop.get_model_weights(state)
        self.assertTrue(attack_runs.is_finite(weights))
        self.assertLessEqual(attack_runs.max_abs_weight(weights),
                             2 * clean_max)

  def test_rounds_go_on_from_a_non_finite_model(self):
    # Every honest upload from a NaN model is NaN and rejected; the round
    # neither fails nor makes the model finite (today's server keeps it).
    initial, loop = tiny_loop(0.2)
    state = loop.initialize()
    kernel = initial.layout.kernel_indices[0]
    trainable = list(state.weights.trainable)
    trainable[kernel] = trainable[kernel] * np.float32(np.nan)
    state = state._replace(weights=state.weights._replace(
        trainable=trainable))
    state, metrics = loop.next(state, client_datasets(1))
    self.assertEqual(metrics['rejected_clients'], 3)
    self.assertEqual(metrics['rejected_nonfinite'], 3)
    self.assertFalse(attack_runs.is_finite(loop.get_model_weights(state)))
    self.assertTrue(attack_runs.is_finite(initial.weights))


def shared_class_datasets() -> list[tf.data.Dataset]:
  """Five clients of 100 examples each, drawn from the same 10 classes (so
  their honest steps point the same way, as most do on the quick config;
  with a reversed one among them, each honest one still has three)."""
  patterns = np.random.default_rng(0).normal(size=(10, 28, 28, 1))
  rng = np.random.default_rng(5)
  datasets = []
  for _ in range(5):
    labels = rng.choice(10, size=100)
    images = patterns[labels] + 0.3 * rng.normal(size=(100, 28, 28, 1))
    datasets.append(tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), labels.astype(np.int32))).batch(10))
  return datasets


class SignFlipOnTheServerTest(tf.test.TestCase):

  def test_reversed_step_is_rejected_only_with_the_direction_check(self):
    # One round of the tiny model, the first client sending its honest step
    # reversed. Clipping would leave it (an honest norm); the direction
    # check finds it against the other four clients (cosine < 0) and drops
    # it, and drops no client of the clean round.
    hook = attacks.hostile_hook(attacks.ATTACKS['sign_flip'],
                                payload_format(tiny_model()[1]))
    _, loop = tiny_loop(0.2, robust=robust_aggregation.RobustAggregation(
        min_update_cosine=0.0), min_new_position_votes=2)
    for attack, rejected in ((hook, 1), (None, 0)):
      with self.subTest(attacked=bool(attack)):
        _, metrics = loop.next(loop.initialize(), shared_class_datasets(),
                               upload_hook=attack)
        self.assertEqual(metrics['rejected_direction'], rejected)
        self.assertEqual(metrics['rejected_clients'], rejected)


class StaleOnTheServerTest(tf.test.TestCase):

  def test_last_rounds_upload_is_rejected_only_when_bound(self):
    # Round 2's hostile client sends its round-1 upload: with bound uploads
    # the server counts it stale and sums only the two honest ones;
    # without, nothing is rejected.
    for reject_stale, stale_count in ((True, 1), (False, 0)):
      with self.subTest(reject_stale=reject_stale):
        initial, loop = tiny_loop(0.2, robust=robust_aggregation.
                                  RobustAggregation(clip_updates=False,
                                                    reject_stale=reject_stale))
        hook = attacks.hostile_hook(attacks.ATTACKS['stale'],
                                    payload_format(initial))
        state, metrics = loop.next(loop.initialize(), client_datasets(1),
                                   upload_hook=hook)
        self.assertEqual(metrics['rejected_clients'], 0)
        state, metrics = loop.next(state, client_datasets(2),
                                   upload_hook=hook)
        self.assertEqual(metrics['rejected_stale'], stale_count)
        self.assertEqual(metrics['rejected_clients'], stale_count)
        self.assertEqual(hook.sent, 2)


class DefencesAndTableTest(tf.test.TestCase):

  def test_defences_values_are_checked(self):
    self.assertEqual(attack_names.parse_defences(['off']), ['off'])
    self.assertEqual(attack_names.parse_defences(['on', 'off']),
                     ['on', 'off'])
    for bad in (['maybe'], ['off', 'On'], []):
      with self.assertRaisesRegex(ValueError, r'^--defences: [^\n]*on, off'):
        attack_names.parse_defences(bad)

  def test_the_switch_names_the_defence_settings(self):
    self.assertCountEqual(
        attack_runs.DEFENCE_SETTINGS['on'],
        ['clip_updates', 'clip_norm_quantile', 'clip_norm_multiplier',
         'clip_zeroing_multiple', 'max_client_weight', 'client_weighting',
         'reject_replayed_uploads', 'reject_stale_uploads',
         'max_client_weight_multiple',
         'min_new_position_votes',
         'max_failed_rounds', 'robust_mean', 'reject_opposed_updates',
         'min_update_cosine'])
    self.assertLessEqual(set(attack_runs.DEFENCE_SETTINGS['off']),
                         set(attack_runs.DEFENCE_SETTINGS['on']))

  def test_off_skips_missing_settings_and_on_refuses_them(self):
    settings = settings_lib.ExperimentSettings.from_flat(total_rounds=3)
    known = settings.flat()
    off = attack_runs.apply_defences(settings, 'off')
    for name, value in attack_runs.DEFENCE_SETTINGS['off'].items():
      if name in known:
        self.assertEqual(off.flat()[name], value)
    self.assertEqual(off.run.total_rounds, 3)
    missing = [n for n in attack_runs.DEFENCE_SETTINGS['on'] if n not in known]
    if missing:
      with self.assertRaisesRegex(
          errors.ConfigError,
          rf'^--defences=on needs the setting --{missing[0]}, [^\n]*'
          r'--defences=off\.$'):
        attack_runs.apply_defences(settings, 'on')
    else:
      attack_runs.apply_defences(settings, 'on')

  def test_max_abs_weight_ignores_nan_but_not_inf(self):
    weights = lambda *arrays: tff.learning.models.ModelWeights(
        trainable=[np.array(a, np.float32) for a in arrays], non_trainable=[])
    self.assertEqual(attack_runs.max_abs_weight(
        weights([1.0, -3.0], [np.nan, 2.0])), 3.0)
    self.assertEqual(attack_runs.max_abs_weight(
        weights([1.0], [-np.inf])), np.inf)
    self.assertTrue(np.isnan(attack_runs.max_abs_weight(
        weights([np.nan]))))

  def test_table_has_every_column(self):
    row = {column: 0 for column in attack_runs.COLUMNS}
    row.update(attack='replay', defences='off', always_finite='yes',
               first_nonfinite_round=None, mean_test_accuracy=0.5)
    text = attack_runs.to_csv([row])
    self.assertEqual(next(csv.reader(text.splitlines())),
                     list(attack_runs.COLUMNS))
    for kind in payload_validation.REJECTION_KINDS:
      self.assertIn(f'rejected_{kind}', attack_runs.COLUMNS)
    markdown = attack_runs.to_markdown([row]).splitlines()
    self.assertLen(markdown, 3)
    self.assertIn('| replay | off |', markdown[2])
    self.assertIn('0.5000', markdown[2])
    directory = self.create_tempdir().full_path
    paths = attack_runs.write_table([row], directory)
    self.assertEqual([os.path.basename(p) for p in paths],
                     ['attack_table.csv', 'attack_table.md'])
    with open(paths[0]) as f:
      self.assertEqual(f.read(), text)
    with self.assertRaisesRegex(errors.ConfigError, 'already holds'):
      attack_runs.check_output_dir(directory)


def run_attack(*args: str) -> subprocess.CompletedProcess:
  """Runs bin/attack.py in its own process (its flags are global)."""
  return subprocess.run(
      [sys.executable, ATTACK, *args], capture_output=True, text=True,
      timeout=900, stdin=subprocess.DEVNULL,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


class AttackScriptTest(fixtures.FashionMnistSliceTestCase):

  NUM_TRAIN = 120
  NUM_TEST = 40

  def test_tiny_run_writes_the_table(self):
    output_dir = self.create_tempdir().full_path
    result = run_attack(
        f'--data_dir={self.data_dir}', '--dataset=fashion_mnist',
        '--data_distribution=iid', '--total_clients=4',
        '--clients_per_round=3', '--total_rounds=2', '--eval_every=1',
        '--client_epochs_per_round=1', '--client_batch_size=10',
        '--attacks=replay,takeover', '--defences=off',
        f'--output_dir={output_dir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(output_dir, 'attack_table.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r['attack'] for r in rows],
                     ['clean', 'replay', 'takeover'])
    clean, replayed, takeover = rows
    self.assertEqual(clean['hostile_uploads'], '0')
    self.assertEqual(clean['mean_vs_clean_points'], '0.0')
    # 8 uploads per round, all accepted today.
    self.assertEqual(replayed['hostile_uploads'], '16')
    self.assertEqual(replayed['rejected_clients'], '0')
    self.assertEqual(takeover['hostile_uploads'], '2')
    for row in rows:
      self.assertEqual(row['defences'], 'off')
      self.assertEqual(row['always_finite'], 'yes')
    self.assertTrue(os.path.exists(os.path.join(output_dir,
                                                'attack_table.md')))
    self.assertIn('| takeover | off | 0 |', result.stdout)

  def test_bad_attack_and_defences_are_one_line_errors(self):
    output_dir = self.create_tempdir().full_path
    fixtures.assert_one_line_error(
        self, run_attack('--attacks=replay,bogus', '--defences=off',
                         f'--output_dir={output_dir}'),
        'attack.py: error: --attacks', "'bogus'")
    fixtures.assert_one_line_error(
        self, run_attack('--defences=sometimes', f'--output_dir={output_dir}'),
        'attack.py: error: --defences', "'sometimes'")
    fixtures.assert_one_line_error(
        self, run_attack('--server_optimizer=adam', '--defences=off',
                         f'--output_dir={output_dir}'),
        'attack.py: error: --server_optimizer=adam is not run by the plain '
        'loop')


if __name__ == '__main__':
  tf.test.main()
