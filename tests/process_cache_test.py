"""Tests for running/process_cache.py: what makes two builds the same, and
which processes are kept."""

import collections

from absl.testing import absltest
import numpy as np

from tff_feddst.running import process_cache

Weights = collections.namedtuple('Weights', ['trainable', 'non_trainable'])


def key(flag_lines=('--seed=0', '--method=feddst'), spec='spec',
        client_ids=('a', 'b'), counts=(600, 400), kernel=None):
  if kernel is None:
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
  weights = Weights(trainable=[kernel, np.zeros(3, np.float32)],
                    non_trainable=[(kernel != 0).astype(np.float32)])
  return process_cache.process_key(list(flag_lines), spec, list(client_ids),
                                   list(counts), weights)


class ProcessKeyTest(absltest.TestCase):

  def test_equal_inputs_give_equal_keys(self):
    self.assertEqual(key(), key())

  def test_any_difference_gives_another_key(self):
    base = key()
    flipped = np.arange(6, dtype=np.float32).reshape(2, 3)
    flipped[1, 2] = np.nextafter(flipped[1, 2], np.float32(10))
    for other in (key(flag_lines=('--seed=1', '--method=feddst')),
                  key(flag_lines=('--seed=0',)),
                  key(spec='other spec'),
                  key(client_ids=('a', 'c')),
                  key(counts=(600, 401)),
                  key(kernel=flipped),  # One weight, one ulp.
                  key(kernel=flipped.astype(np.float64)),
                  key(kernel=flipped.reshape(3, 2))):
      self.assertNotEqual(other, base)


class BuiltProcessTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    process_cache.clear()
    self.addCleanup(process_cache.clear)
    self.builds = []

  def build(self, name):
    def build_fn():
      self.builds.append(name)
      return object()
    return build_fn

  def test_a_kept_process_is_returned_without_building(self):
    first = process_cache.built_process(key(), self.build('first'))
    again = process_cache.built_process(key(), self.build('again'))
    self.assertIs(again, first)
    self.assertEqual(self.builds, ['first'])

  def test_another_key_builds_and_the_least_recently_used_goes(self):
    keys = [key(flag_lines=(f'--seed={seed}',))
            for seed in range(process_cache.MAX_KEPT + 1)]
    processes = [process_cache.built_process(k, self.build(i))
                 for i, k in enumerate(keys[:-1])]
    self.assertEqual(process_cache.num_kept(), process_cache.MAX_KEPT)
    # Using the oldest makes the second oldest the one to forget.
    self.assertIs(process_cache.built_process(keys[0], self.build('x')),
                  processes[0])
    process_cache.built_process(keys[-1], self.build('new'))
    self.assertEqual(process_cache.num_kept(), process_cache.MAX_KEPT)
    self.assertIs(process_cache.built_process(keys[0], self.build('x')),
                  processes[0])
    process_cache.built_process(keys[1], self.build('rebuilt'))
    self.assertEqual(self.builds,
                     list(range(process_cache.MAX_KEPT)) + ['new', 'rebuilt'])

  def test_a_failed_build_keeps_nothing(self):
    def failing():
      raise ValueError('bad model')
    with self.assertRaisesRegex(ValueError, 'bad model'):
      process_cache.built_process(key(), failing)
    self.assertEqual(process_cache.num_kept(), 0)


if __name__ == '__main__':
  absltest.main()
