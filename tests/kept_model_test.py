"""Tests for ondevice/kept_model.py: the record a training model is kept
with, and which kept models a resume may use."""

import collections
import hashlib
import json
import os

from absl.testing import absltest
import numpy as np

from tff_feddst.ondevice import kept_model
from tff_feddst.running import settings as settings_lib

Weights = collections.namedtuple('Weights', ['trainable', 'non_trainable'])
MODEL = b'TFL3' + bytes(range(256)) * 3


def weights(kernel_value: float = 0.5) -> Weights:
  kernel = np.full((3, 2), kernel_value, np.float32)
  return Weights(trainable=[kernel, np.zeros(2, np.float32)],
                 non_trainable=[np.ones((3, 2), np.float32)])


def record(**flags):
  settings = settings_lib.ExperimentSettings.from_flat(
      **dict(dict(client_runtime='tflite', seed=3), **flags))
  return kept_model.conversion_record(settings, weights())


class ConversionRecordTest(absltest.TestCase):

  def test_execution_settings_do_not_count(self):
    self.assertEqual(record(tflite_client_processes=2), record())
    self.assertEqual(record(num_local_workers=2), record())

  def test_computing_settings_model_tf_and_source_do(self):
    base = record()
    self.assertNotEqual(record(seed=4), base)
    self.assertNotEqual(record(client_learning_rate=0.02), base)
    settings = settings_lib.ExperimentSettings.from_flat(
        client_runtime='tflite', seed=3)
    nudged = kept_model.conversion_record(settings, weights(
        float(np.nextafter(np.float32(0.5), np.float32(1)))))
    self.assertEqual(sorted(name for name in base
                            if base[name] != nudged[name]),
                     ['initial_model'])
    self.assertEqual(set(base),
                     {'settings', 'initial_model', 'tensorflow', 'source'})
    self.assertLen(base['source'], 64)
    self.assertEqual(base['source'], kept_model.source_digest())


class LoadAndSaveTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.output_dir = self.create_tempdir().full_path
    self.record = record()

  def path(self, name: str) -> str:
    return os.path.join(self.output_dir, name)

  def test_a_saved_model_loads_with_its_record(self):
    kept_model.save(self.output_dir, MODEL, self.record)
    self.assertEqual(kept_model.load(self.output_dir, self.record), MODEL)
    with open(self.path(kept_model.RECORD_NAME)) as f:
      saved = json.load(f)
    self.assertEqual(saved.pop('sha256'), hashlib.sha256(MODEL).hexdigest())
    self.assertEqual(saved, self.record)

  def test_nothing_kept_loads_nothing(self):
    self.assertIsNone(kept_model.load(self.output_dir, self.record))
    # A model without its record (a kill between the two writes) neither.
    with open(self.path(kept_model.MODEL_NAME), 'wb') as f:
      f.write(MODEL)
    self.assertIsNone(kept_model.load(self.output_dir, self.record))

  def test_another_record_is_not_used(self):
    kept_model.save(self.output_dir, MODEL, record(seed=4))
    with self.assertLogs(level='INFO') as logs:
      self.assertIsNone(kept_model.load(self.output_dir, self.record))
    self.assertIn('another settings', logs.output[0])

  def test_changed_bytes_or_a_broken_record_are_not_used(self):
    kept_model.save(self.output_dir, MODEL, self.record)
    with open(self.path(kept_model.MODEL_NAME), 'r+b') as f:
      f.seek(10)
      f.write(b'\xff')
    with self.assertLogs(level='WARNING') as logs:
      self.assertIsNone(kept_model.load(self.output_dir, self.record))
    self.assertIn('SHA-256', logs.output[0])
    for broken in ('{"settings": ', '[1, 2]'):
      with open(self.path(kept_model.RECORD_NAME), 'w') as f:
        f.write(broken)
      with self.assertLogs(level='INFO'):
        self.assertIsNone(kept_model.load(self.output_dir, self.record))

  def test_saving_again_replaces_both(self):
    kept_model.save(self.output_dir, b'old model', record(seed=4))
    kept_model.save(self.output_dir, MODEL, self.record)
    self.assertEqual(kept_model.load(self.output_dir, self.record), MODEL)


if __name__ == '__main__':
  absltest.main()
