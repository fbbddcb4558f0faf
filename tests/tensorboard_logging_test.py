"""Tests for tff_feddst.tensorboard_logging: event files read back."""

import glob
import os
import types

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf

from tff_feddst import models
from tff_feddst import tensorboard_logging

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

  def test_layer_densities(self):
    self.assertEqual(
        tensorboard_logging.layer_densities(_LAYOUT, _weights(8, 6)),
        [1.0, 0.5])


if __name__ == '__main__':
  tf.test.main()
