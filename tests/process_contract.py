"""A check every method's test runs on its process (not tests themselves)."""

from typing import Any, Mapping, Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.outputs import metrics_csv
from tff_feddst.running import measurements


def assert_meets_measurement_contract(
    test_case: tf.test.TestCase, process: tff.templates.IterativeProcess,
    round_metrics: Sequence[Mapping[str, Any]]) -> None:
  """Asserts that a process reports what the round loop reads.

  Checks the type signature of `process.next`, then the values of each
  round's metrics, and that each gives a complete metrics.csv row.

  Args:
    test_case: The calling test.
    process: The method's `LearningProcess`.
    round_metrics: The `metrics` of one or more of its `next` outputs.
  """
  measurements.check_process(process)
  test_case.assertNotEmpty(round_metrics)
  cumulative = {'upload': 0, 'download': 0}
  for round_num, metrics in enumerate(round_metrics, start=1):
    measurements.check_metrics(metrics)
    row = measurements.metrics_row(round_num, metrics, None, cumulative,
                                   0.0, clients_sampled=1)
    test_case.assertEqual(tuple(row), metrics_csv.METRICS_COLUMNS)
    test_case.assertGreater(row['upload_bytes'], 0)
    test_case.assertGreater(row['download_bytes'], 0)
    test_case.assertBetween(row['sparsity'], 0.0, 1.0)
