"""Tests for tff_feddst.outputs.tensorboard_logging: event files read back."""

import collections
import glob
import os
import types

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf

from tff_feddst.networks import models
from tff_feddst.outputs import tensorboard_logging

# Two prunable layers: a 2x2x1x2 conv kernel (8 weights) and a 4x3 dense
# kernel (12 weights), each followed by its bias.
_LAYOUT = models.ModelLayout(
    kernel_indices=(0, 2), mask_indices=(0, 1),
    dense_trainable_indices=(1, 3), dense_non_trainable_indices=(),
    bookkeeping_indices=(), kernel_shapes=((2, 2, 1, 2), (4, 3)),
    layer_bias_sizes=(2, 3))


def _weights(conv_active: int, dense_active: int):
  """Kernels 1, 2, 3, ... where the mask is on; the first k positions on."""
  conv_mask = (np.arange(8) < conv_active).astype(np.float32)
  dense_mask = (np.arange(12) < dense_active).astype(np.float32)
  conv = (np.arange(1, 9, dtype=np.float32) * conv_mask).reshape(2, 2, 1, 2)
  dense = (np.arange(1, 13, dtype=np.float32) * dense_mask).reshape(4, 3)
  return types.SimpleNamespace(
      trainable=[conv, np.zeros(2, np.float32), dense,
                 np.zeros(3, np.float32)],
      non_trainable=[conv_mask.reshape(2, 2, 1, 2),
                     dense_mask.reshape(4, 3)])


def _row(round_num: int, test_accuracy=None) -> dict:
  return {
      'round': round_num, 'test_accuracy': test_accuracy,
      'client_test_accuracy': (None if test_accuracy is None
                               else test_accuracy - 0.25),
      'train_loss': 2.0 / round_num, 'sparsity': 0.75,
      'mask_changed_positions': 2 * round_num, 'upload_bytes': 1000,
      'download_bytes': 900, 'upload_bytes_cumulative': 1000 * round_num,
      'download_bytes_cumulative': 900 * round_num,
      'round_seconds': 0.5 * round_num}


class TensorBoardWriterTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.logdir = os.path.join(self.create_tempdir().full_path, 'tb')
    with tensorboard_logging.TensorBoardWriter(self.logdir, _LAYOUT) as writer:
      writer.write_metrics(_row(1))
      writer.write_model(1, _weights(conv_active=2, dense_active=3))
      writer.write_metrics(_row(2, test_accuracy=0.75))
      writer.write_model(2, _weights(conv_active=4, dense_active=3))

  def test_layer_names_say_position_kind_and_shape(self):
    self.assertEqual(tensorboard_logging.layer_names(_LAYOUT),
                     ['0_conv_2x2x1x2', '1_dense_4x3'])

  def test_scalars_read_back_with_event_accumulator(self):
    self.assertLen(glob.glob(os.path.join(self.logdir, 'events.out.*')), 1)
    accumulator = event_accumulator.EventAccumulator(
        self.logdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()

    def values(tag):
      return [(event.step, float(tf.make_ndarray(event.tensor_proto)))
              for event in accumulator.Tensors(tag)]

    self.assertEqual(values('train/loss'), [(1, 2.0), (2, 1.0)])
    self.assertEqual(values('model/mask_changed_positions'),
                     [(1, 2.0), (2, 4.0)])
    self.assertEqual(values('bytes/upload_cumulative'),
                     [(1, 1000.0), (2, 2000.0)])
    self.assertEqual(values('bytes/download'), [(1, 900.0), (2, 900.0)])
    self.assertEqual(values('time/round_seconds'), [(1, 0.5), (2, 1.0)])
    # Accuracies only where evaluated (round 2); by upload, the step is the
    # cumulative upload.
    self.assertEqual(values('accuracy/test'), [(2, 0.75)])
    self.assertEqual(values('accuracy/client_test'), [(2, 0.5)])
    self.assertEqual(values('accuracy_by_upload/test'), [(2000, 0.75)])
    # Densities: 2 then 4 of 8 conv weights, 3 of 12 dense weights.
    self.assertEqual(values('density/0_conv_2x2x1x2'), [(1, 0.25), (2, 0.5)])
    self.assertEqual(values('density/1_dense_4x3'), [(1, 0.25), (2, 0.25)])

  def test_histograms_hold_exactly_the_active_weights(self):
    accumulator = event_accumulator.EventAccumulator(
        self.logdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    histograms = accumulator.Tensors('weights/0_conv_2x2x1x2')
    self.assertEqual([event.step for event in histograms], [1, 2])
    # Each bucket row is (left edge, right edge, count).
    round_two = tf.make_ndarray(histograms[1].tensor_proto)
    self.assertEqual(round_two[:, 2].sum(), 4)  # Active values 1, 2, 3, 4.
    self.assertEqual(round_two[0, 0], 1.0)
    self.assertEqual(round_two[-1, 1], 4.0)

  def test_read_scalars_matches_and_filters_by_tag(self):
    scalars = tensorboard_logging.read_scalars(self.logdir)
    self.assertEqual(scalars['model/sparsity'], [(1, 0.75), (2, 0.75)])
    self.assertNotIn('weights/1_dense_4x3', scalars)  # Histograms are not.
    self.assertEqual(
        tensorboard_logging.read_scalars(self.logdir, 'accuracy/test'),
        {'accuracy/test': [(2, 0.75)]})

  def test_read_scalars_without_event_files_raises(self):
    with self.assertRaisesRegex(FileNotFoundError, 'no TensorBoard event'):
      tensorboard_logging.read_scalars(self.create_tempdir().full_path)

  def test_resume_keeps_one_event_per_tag_and_step(self):
    # A run logged rounds 3 and 4 (round 4 evaluated), was killed in
    # mid-record, and resumes from its round-2 checkpoint: rounds 3 and 4
    # are recomputed, here with other values, and logged again.
    with tensorboard_logging.TensorBoardWriter(self.logdir, _LAYOUT) as writer:
      writer.write_metrics(_row(3))
      writer.write_model(3, _weights(conv_active=5, dense_active=3))
      writer.write_metrics(_row(4, test_accuracy=0.5))
      writer.write_model(4, _weights(conv_active=6, dense_active=3))
    killed_file = sorted(glob.glob(os.path.join(self.logdir, 'events.*')))[-1]
    with open(killed_file, 'ab') as f:
      f.write(b'\x40\x00\x00\x00\x00\x00\x00\x00\x12\x34')  # Torn.
    kept_rows = [_row(1), _row(2, test_accuracy=0.75)]
    with tensorboard_logging.TensorBoardWriter(self.logdir, _LAYOUT) as writer:
      writer.resume_after(kept_rows)
      for round_num, accuracy in ((3, None), (4, 0.875)):
        row = _row(round_num, test_accuracy=accuracy)
        row['train_loss'] = 10.0 + round_num
        writer.write_metrics(row)
        writer.write_model(round_num,
                           _weights(conv_active=round_num, dense_active=1))

    accumulator = event_accumulator.EventAccumulator(
        self.logdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()

    def values(tag):
      return [(event.step, float(tf.make_ndarray(event.tensor_proto)))
              for event in accumulator.Tensors(tag)]

    self.assertEqual(values('train/loss'),
                     [(1, 2.0), (2, 1.0), (3, 13.0), (4, 14.0)])
    self.assertEqual(values('accuracy/test'), [(2, 0.75), (4, 0.875)])
    self.assertEqual(values('accuracy_by_upload/test'),
                     [(2000, 0.75), (4000, 0.875)])
    self.assertEqual(values('density/0_conv_2x2x1x2'),
                     [(1, 0.25), (2, 0.5), (3, 0.375), (4, 0.5)])
    self.assertEqual([e.step for e in accumulator.Tensors(
        'weights/1_dense_4x3')], [1, 2, 3, 4])
    # The raw records too: exactly one value per (tag, step), in every file.
    seen = collections.Counter()
    for path in glob.glob(os.path.join(self.logdir, 'events.*')):
      for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
          seen[value.tag, event.step] += 1
    # Per round 8 scalars (rows without rejected_clients) and 2 densities
    # and 2 histograms; 3 accuracy tags on the 2 evaluated rounds.
    self.assertLen(seen, 4 * (8 + 4) + 2 * 3)
    self.assertEqual(set(seen.values()), {1})
    self.assertEqual(os.listdir(self.logdir),
                     [os.path.basename(p) for p in glob.glob(
                         os.path.join(self.logdir, 'events.*'))])

  def test_resume_after_a_write_is_refused(self):
    writer = tensorboard_logging.TensorBoardWriter(self.logdir, _LAYOUT)
    writer.write_metrics(_row(3))
    with self.assertRaises(ValueError):
      writer.resume_after([_row(1)])
    writer.close()

  def test_layer_densities(self):
    self.assertEqual(
        tensorboard_logging.layer_densities(_LAYOUT, _weights(8, 6)),
        [1.0, 0.5])


if __name__ == '__main__':
  tf.test.main()
