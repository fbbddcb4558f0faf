"""Tests for tff_feddst.outputs.comparison: run summaries from metrics files."""

import csv
import json
import os

import tensorflow as tf

from tff_feddst.outputs import comparison
from tff_feddst.running import training_loop


def write_run(run_dir: str, accuracies, upload_per_round: int,
              method: str = 'feddst', personal_offset=None) -> None:
  """Writes a fixture metrics.csv (+ summary.json) with given accuracies."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, 'metrics.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=training_loop.METRICS_COLUMNS)
    writer.writeheader()
    for index, accuracy in enumerate(accuracies):
      round_num = index + 1
      writer.writerow({
          'round': round_num,
          'test_accuracy': '' if accuracy is None else accuracy,
          'client_test_accuracy': '' if accuracy is None else accuracy - 0.01,
          'train_loss': 1.0 / round_num, 'sparsity': 0.8,
          'mask_changed_positions': 0, 'upload_bytes': upload_per_round,
          'download_bytes': upload_per_round - 4,
          'upload_bytes_cumulative': upload_per_round * round_num,
          'download_bytes_cumulative': (upload_per_round - 4) * round_num,
          'round_seconds': 2.0,
          **({} if personal_offset is None or accuracy is None else {
              'personal_test_accuracy': accuracy + personal_offset,
              'personal_test_accuracy_std': 0.1})})
  with open(os.path.join(run_dir, 'summary.json'), 'w') as f:
    json.dump({'method': method, 'stop_reason': 'upload_budget'}, f)


class ComparisonTest(tf.test.TestCase):

  def test_personalised_accuracy_beside_global(self):
    plain, personal = (self.create_tempdir().full_path for _ in range(2))
    write_run(plain, [None, 0.5], upload_per_round=100)
    write_run(personal, [0.4, 0.5], upload_per_round=100,
              method='lotteryfl', personal_offset=0.25)
    summary = comparison.summarize_run(personal)
    self.assertAlmostEqual(summary['final_test_accuracy'], 0.5)
    self.assertAlmostEqual(summary['final_personal_test_accuracy'], 0.75)
    self.assertAlmostEqual(summary['final_personal_test_accuracy_std'], 0.1)
    self.assertIsNone(
        comparison.summarize_run(plain)['final_personal_test_accuracy'])

  def test_summary_by_hand(self):
    run_dir = self.create_tempdir().full_path
    write_run(run_dir, [None, 0.5, None, 0.7, 0.65], upload_per_round=100)
    summary = comparison.summarize_run(run_dir, target_accuracy=0.6)
    self.assertEqual(summary['method'], 'feddst')
    self.assertAlmostEqual(summary['final_test_accuracy'], 0.65)
    self.assertAlmostEqual(summary['best_test_accuracy'], 0.7)
    self.assertAlmostEqual(summary['final_client_test_accuracy'], 0.64)
    # 0.6 is first reached on round 4: 4 x 100 bytes.
    self.assertEqual(summary['upload_bytes_to_target'], 400)
    self.assertEqual(summary['upload_bytes_cumulative'], 500)
    self.assertEqual(summary['download_bytes_cumulative'], 480)
    self.assertEqual(summary['rounds_completed'], 5)
    self.assertEqual(summary['stop_reason'], 'upload_budget')
    self.assertAlmostEqual(summary['seconds'], 10.0)

  def test_target_never_reached_is_empty(self):
    run_dir = self.create_tempdir().full_path
    write_run(run_dir, [0.1, 0.2], upload_per_round=10)
    self.assertIsNone(comparison.summarize_run(
        run_dir, target_accuracy=0.9)['upload_bytes_to_target'])

  def test_tables_are_written_once(self):
    root = self.create_tempdir().full_path
    write_run(os.path.join(root, 'a'), [0.5], 10, method='fedavg')
    write_run(os.path.join(root, 'b'), [0.6], 5, method='feddst')
    summaries = [comparison.summarize_run(os.path.join(root, r), None)
                 for r in ('a', 'b')]
    csv_path = os.path.join(root, 'summary.csv')
    md_path = os.path.join(root, 'summary.md')
    comparison.write_summary_table(summaries, csv_path, md_path, 0.55)
    with open(csv_path) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r['method'] for r in rows], ['fedavg', 'feddst'])
    with open(md_path) as f:
      markdown = f.read()
    self.assertIn('upload_bytes_to_0.55', markdown)
    self.assertIn('| feddst | 0.6000 |', markdown)
    with self.assertRaises(FileExistsError):
      comparison.write_summary_table(summaries, csv_path, md_path)

  def test_directory_without_metrics_raises(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(comparison.RunDirError, 'no metrics.csv'):
      comparison.read_metrics(empty)


if __name__ == '__main__':
  tf.test.main()
