"""Tests for tff_feddst.running.training_loop: metrics rows and metrics.csv."""

import collections
import csv
import os

import tensorflow as tf

from tff_feddst.running import training_loop


def round_metrics(num_clients=3, rejected_clients=None):
  aggregator = collections.OrderedDict(upload_bytes=100,
                                       num_clients=num_clients)
  if rejected_clients is not None:
    aggregator['rejected_clients'] = rejected_clients
  return collections.OrderedDict(
      aggregator=aggregator,
      distributor=collections.OrderedDict(download_bytes=50),
      client_work=collections.OrderedDict(train_loss=0.5),
      finalizer=collections.OrderedDict(sparsity=0.8,
                                        mask_changed_positions=4))


class MetricsRowTest(tf.test.TestCase):

  def test_rejected_clients_count_as_reported(self):
    row = training_loop.metrics_row(
        1, round_metrics(num_clients=3, rejected_clients=1), None,
        {'upload': 0, 'download': 0}, 1.0, clients_sampled=5)
    self.assertEqual(row['rejected_clients'], 1)
    self.assertEqual(row['clients_reported'], 4)  # 3 aggregated + 1.
    self.assertEqual(tuple(row), training_loop.METRICS_COLUMNS)

  def test_aggregator_without_validation_rejects_nobody(self):
    row = training_loop.metrics_row(
        1, round_metrics(), None, {'upload': 0, 'download': 0}, 1.0,
        clients_sampled=3)
    self.assertEqual(row['rejected_clients'], 0)
    self.assertEqual(row['clients_reported'], 3)


class TruncateMetricsTest(tf.test.TestCase):

  def test_file_from_before_rejected_clients_is_rewritten_and_parsed(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    old_columns = training_loop.METRICS_COLUMNS[:-1]
    self.assertEqual(training_loop.METRICS_COLUMNS[-1], 'rejected_clients')
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(old_columns)
      for round_num in (1, 2, 3):
        writer.writerow([round_num, '', '', 0.25, 0.8, 4, 100, 50,
                         100 * round_num, 50 * round_num, 1.5, 3, 3])
    rows = training_loop.truncate_metrics(path, 2)
    self.assertLen(rows, 2)
    self.assertIsNone(rows[0]['rejected_clients'])
    self.assertEqual(rows[1]['upload_bytes_cumulative'], 200)
    # The kept rows now have every column, so a second resume parses them.
    with open(path, newline='') as f:
      records = list(csv.DictReader(f))
    self.assertEqual(list(records[0]), list(training_loop.METRICS_COLUMNS))
    self.assertEqual(records[1]['rejected_clients'], '')
    self.assertEqual(records[1]['train_loss'], '0.25')
    self.assertEqual(training_loop.truncate_metrics(path, 2), rows)

  def write_rows(self, path: str, last_line: str) -> None:
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(training_loop.METRICS_COLUMNS)
      for round_num in (1, 2, 3):
        writer.writerow([round_num, '', '', 0.25, 0.8, 4, 100, 50,
                         100 * round_num, 50 * round_num, 1.5, 3, 3, 0])
      f.write(last_line)

  def test_a_row_torn_by_a_kill_is_dropped(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    # A kill while round 12's row was written: its first characters, '1',
    # would pass for round 1 if the line were parsed.
    for torn in ('1', '12,,,0.25,0.8,4,100,50,1200,600,1.5,3,3,0\r',
                 '12,,,0.25,0.8\r\n'):
      self.write_rows(path, torn)
      rows = training_loop.truncate_metrics(path, 12)
      self.assertEqual([row['round'] for row in rows], [1, 2, 3], torn)
      with open(path, newline='') as f:
        self.assertLen(f.read().splitlines(), 4)
      self.assertEqual(os.listdir(os.path.dirname(path)), ['metrics.csv'])

  def test_a_damaged_row_before_the_last_is_an_error(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    self.write_rows(path, '4,x\r\n5,,,0.25,0.8,4,100,50,500,250,1.5,3,3,0\r\n')
    with self.assertRaisesRegex(training_loop.MetricsFileError,
                                'metrics.csv: line 5 is damaged'):
      training_loop.truncate_metrics(path, 5)


if __name__ == '__main__':
  tf.test.main()
