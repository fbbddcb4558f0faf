"""Tests for tff_feddst.running.measurements: the contract and its checks."""

import collections
import types

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.outputs import metrics_csv
from tff_feddst.running import measurements


def round_metrics(**drop):
  """One round's metrics with every measurement; `drop` part=key removes."""
  metrics = collections.OrderedDict(
      distributor=collections.OrderedDict(download_bytes=np.int64(50)),
      client_work=collections.OrderedDict(train_loss=np.float32(0.5),
                                          num_regrown=np.int32(3)),
      aggregator=collections.OrderedDict(upload_bytes=np.int64(100),
                                         num_clients=np.int32(3),
                                         rejected_clients=np.int32(1)),
      finalizer=collections.OrderedDict(sparsity=np.float32(0.8),
                                        mask_changed_positions=np.int64(4)))
  for part, key in drop.items():
    del metrics[part][key]
  return metrics


def process_reporting(metrics) -> types.SimpleNamespace:
  """A stand-in process whose `next` has the type of these metrics."""
  metrics_type = tff.types.to_type(tf.nest.map_structure(
      lambda value: np.asarray(value).dtype.type, metrics))
  result = tff.StructType([
      ('state', tff.FederatedType(np.int32, tff.SERVER)),
      ('metrics', tff.FederatedType(metrics_type, tff.SERVER))])
  return types.SimpleNamespace(next=types.SimpleNamespace(
      type_signature=types.SimpleNamespace(result=result)))


class ContractTest(tf.test.TestCase):

  def test_complete_metrics_pass_both_checks(self):
    measurements.check_metrics(round_metrics())
    measurements.check_process(process_reporting(round_metrics()))

  def test_missing_measurement_is_named(self):
    metrics = round_metrics(finalizer='mask_changed_positions')
    for check, argument in ((measurements.check_metrics, metrics),
                            (measurements.check_process,
                             process_reporting(metrics))):
      with self.subTest(check=check.__name__), self.assertRaisesRegex(
          measurements.MissingMeasurementError,
          r'lack finalizer/mask_changed_positions \(kernel positions whose '
          r'.*finalizer reports \[.sparsity.\]'):
        check(argument)

  def test_missing_part_is_named(self):
    metrics = round_metrics()
    del metrics['distributor']
    with self.assertRaisesRegex(measurements.MissingMeasurementError,
                                'lack distributor/download_bytes.*no part '
                                "'distributor'"):
      measurements.check_process(process_reporting(metrics))

  def test_optional_measurement_may_be_left_out(self):
    metrics = round_metrics(aggregator='rejected_clients')
    measurements.check_metrics(metrics)
    measurements.check_process(process_reporting(metrics))
    self.assertEqual(measurements.value(metrics,
                                        'aggregator/rejected_clients'), 0)

  def test_values_must_be_scalars_of_their_kind(self):
    metrics = round_metrics()
    metrics['aggregator']['upload_bytes'] = np.float32(100.0)
    with self.assertRaisesRegex(ValueError,
                                'aggregator/upload_bytes must be a scalar int'):
      measurements.check_metrics(metrics)
    metrics = round_metrics()
    metrics['client_work']['train_loss'] = np.zeros(2, np.float32)
    with self.assertRaisesRegex(ValueError, 'client_work/train_loss'):
      measurements.check_metrics(metrics)

  def test_metrics_row_reads_the_contract(self):
    cumulative = {'upload': 1000, 'download': 10}
    row = measurements.metrics_row(2, round_metrics(), None, cumulative, 1.5,
                                   clients_sampled=5,
                                   dropped_download_bytes=7)
    self.assertEqual(
        {k: row[k] for k in ('upload_bytes', 'download_bytes',
                             'upload_bytes_cumulative',
                             'download_bytes_cumulative', 'train_loss',
                             'clients_reported', 'rejected_clients')},
        {'upload_bytes': 100, 'download_bytes': 57,
         'upload_bytes_cumulative': 1100, 'download_bytes_cumulative': 67,
         'train_loss': 0.5, 'clients_reported': 4, 'rejected_clients': 1})
    # The mask's movement is optional: empty when a process leaves it out.
    self.assertIsNone(row['mask_new_positions_offered'])
    metrics = round_metrics()
    metrics['finalizer'].update(mask_new_positions_offered=np.int32(5),
                                mask_new_positions_entered=np.int32(2),
                                mask_entered_weight_mass=np.float32(0.5),
                                mask_left_weight_mass=np.float32(0.25))
    measurements.check_metrics(metrics)
    row = measurements.metrics_row(2, metrics, None, cumulative, 1.5,
                                   clients_sampled=5)
    self.assertEqual(
        {k: row[k] for k in metrics_csv.MASK_MOVEMENT_COLUMNS},
        {'mask_new_positions_offered': 5, 'mask_new_positions_entered': 2,
         'mask_entered_weight_mass': 0.5, 'mask_left_weight_mass': 0.25})
    with self.assertRaisesRegex(measurements.MissingMeasurementError,
                                'client_work/train_loss'):
      measurements.metrics_row(2, round_metrics(client_work='train_loss'),
                               None, cumulative, 1.5, clients_sampled=5)

  def test_every_measurement_names_a_composed_part(self):
    for measurement in measurements.REQUIRED_MEASUREMENTS:
      self.assertIn(measurement.part, ('distributor', 'client_work',
                                       'aggregator', 'finalizer'))
      self.assertIn(measurement.kind, ('int', 'float'))
      self.assertTrue(measurement.meaning)


if __name__ == '__main__':
  tf.test.main()
