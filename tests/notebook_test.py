"""Runs notebooks/feddst_colab.ipynb top to bottom on a tiny configuration.

The notebook executes in a fresh ipykernel started from this Python (the
venv), with cwd = notebooks/ as when a user opens it there. Parameters are
injected papermill-style: a cell with the new values right after the cell
tagged 'parameters'.
"""

import copy
import csv
import os
import sys
from typing import Any, Mapping

import nbclient
import nbformat
import tensorflow as tf

from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'feddst_colab.ipynb')


def read_notebook() -> Any:
  with open(NOTEBOOK) as f:
    return nbformat.read(f, as_version=4)


def with_parameters(notebook: Any, parameters: Mapping[str, Any]) -> Any:
  """Returns a copy with a cell setting `parameters` after 'parameters'."""
  notebook = copy.deepcopy(notebook)
  position = next(i for i, cell in enumerate(notebook.cells)
                  if 'parameters' in cell.metadata.get('tags', []))
  injected = nbformat.v4.new_code_cell(
      '\n'.join(f'{name} = {value!r}' for name, value in parameters.items()))
  injected.metadata['tags'] = ['injected-parameters']
  notebook.cells.insert(position + 1, injected)
  return notebook


def execute(notebook: Any) -> None:
  """Runs every cell in a python3 kernel of this Python; raises on error."""
  client = nbclient.NotebookClient(
      notebook, kernel_name='python3', timeout=900,
      resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}})
  client.execute()


def cell_text(cell: Any) -> str:
  return ''.join(output.get('text', '') for output in cell.get('outputs', [])
                 if output.get('output_type') == 'stream')


class NotebookTest(fixtures.FashionMnistSliceTestCase):

  NUM_TRAIN = 600
  NUM_TEST = 200

  def test_committed_without_outputs_and_with_a_parameters_cell(self):
    notebook = read_notebook()
    nbformat.validate(notebook)
    self.assertEqual(notebook.metadata.kernelspec.name, 'python3')
    tagged = [cell for cell in notebook.cells
              if 'parameters' in cell.metadata.get('tags', [])]
    self.assertLen(tagged, 1)
    for cell in notebook.cells:
      if cell.cell_type == 'code':
        self.assertEqual(cell.outputs, [])
        self.assertIsNone(cell.execution_count)

  def test_runs_top_to_bottom_on_a_tiny_config(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    notebook = with_parameters(read_notebook(), dict(
        data_dir=self.data_dir, output_dir=output_dir, total_clients=6,
        clients_per_round=2, total_rounds=2, eval_every=1,
        rounds_between_readjustments=1, export_tflite=True))

    execute(notebook)  # Raises CellExecutionError on any cell error.

    texts = [cell_text(cell) for cell in notebook.cells]
    # The kernel ran this interpreter (the venv's python).
    self.assertTrue(any(f'at {sys.executable}' in text for text in texts))
    with open(os.path.join(output_dir, 'metrics.csv')) as f:
      self.assertLen(list(csv.DictReader(f)), 2)
    for name in ('accuracy.png', 'densities.png', 'global_model.npz'):
      self.assertTrue(os.path.isfile(os.path.join(output_dir, name)), name)
    self.assertTrue(any('accuracy/test' in text for text in texts))
    if os.path.exists(os.path.join(ROOT, 'tff_feddst', 'ondevice', 'tflite_export.py')):
      self.assertTrue(os.path.isfile(
          os.path.join(output_dir, 'tflite', 'training.tflite')))
    self.assertIn('No TFF worker process is running.', texts[-1])

  def test_parameter_of_the_wrong_type_is_a_one_line_error(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'run')
    notebook = with_parameters(read_notebook(), dict(
        data_dir=self.data_dir, output_dir=output_dir, total_rounds='2'))

    with self.assertRaises(nbclient.exceptions.CellExecutionError):
      execute(notebook)

    errors = [output for cell in notebook.cells
              for output in cell.get('outputs', [])
              if output.get('output_type') == 'error']
    self.assertLen(errors, 1)
    self.assertEqual(errors[0]['ename'], 'ParameterError')
    self.assertEqual(errors[0]['evalue'],
                     "--total_rounds='2' is invalid: expected an integer, "
                     'got str.')
    self.assertLen(errors[0]['traceback'], 1)
    self.assertNotIn('\n', errors[0]['traceback'][0])
    self.assertFalse(os.path.exists(output_dir))


if __name__ == '__main__':
  tf.test.main()
