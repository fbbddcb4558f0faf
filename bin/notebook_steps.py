"""The notebook's steps that need the library, run by the training Python.

  python bin/notebook_steps.py --step=configure \\
      --parameters='{"output_dir": "runs/notebook", "total_rounds": 2, ...}' \\
      --flags_out=/tmp/notebook_flags.txt
  python bin/notebook_steps.py --step=report --output_dir=runs/notebook

notebooks/feddst_colab.ipynb runs these (and bin/train.py, bin/plot.py,
bin/export_tflite.py) as subprocesses of the Python that has the pinned
stack (`tff_feddst.running.notebook_runtime`), so its kernel never imports
TensorFlow. --step=configure checks the notebook's parameters (a JSON
object of the parameters cell's values) as the notebook used to in its
kernel, fetches Fashion-MNIST through Keras where the Debian copy is absent
and no data_dir is given, and writes the run's settings as a flagfile for
bin/train.py; a bad parameter ends with its one-line message on stderr and
exit code 2, nothing written. --step=report prints the run's rounds, its
per-layer mask densities (and saves densities.png) and the scalars it logged
for TensorBoard.
"""

import csv
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from typing import Any, Optional  # pylint: disable=g-import-not-at-top

from absl import flags

import cli  # pylint: disable=g-bad-import-order

from tff_feddst.outputs import run_files
from tff_feddst.running import notebook_runtime
from tff_feddst.running import settings as settings_lib

flags.DEFINE_enum('step', None, ['configure', 'report'], 'The step to run.')
flags.DEFINE_string('parameters', None, 'configure: the notebook parameters '
                    'as a JSON object.')
flags.DEFINE_string('output_dir', None, 'report: the run\'s output '
                    'directory.')
flags.DEFINE_string('flags_out', None, 'configure: where the flagfile for '
                    'bin/train.py goes.')

FLAGS = flags.FLAGS
# The notebook's parameters that are not settings, with their types.
NOTEBOOK_ONLY = {'output_dir': Optional[str], 'export_tflite': bool}


def configure(parameters: dict[str, Any]) -> settings_lib.ExperimentSettings:
  """The checked settings of the notebook's run (fetching data if needed).

  Args:
    parameters: The parameters cell's values, `output_dir` resolved.

  Returns:
    The validated settings (data_dir set to the Keras copy of Fashion-MNIST
    when it had to be fetched).

  Raises:
    settings.ConfigError: For a bad parameter (one line naming it).
  """
  for name, hint in NOTEBOOK_ONLY.items():
    settings_lib.check_setting_type(name, parameters.get(name), hint)
  values = {name: value for name, value in parameters.items()
            if name not in NOTEBOOK_ONLY}
  config = settings_lib.ExperimentSettings.from_flat(
      data_distribution='dirichlet', dirichlet_beta=0.1, **values)
  config.validate()
  run_files.check_output_dir(parameters['output_dir'])
  if config.data.dataset == 'fashion_mnist' and config.data.data_dir is None:
    from tff_feddst.data import datasets  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(datasets.DEFAULT_FASHION_MNIST_DIR):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.keras.datasets.fashion_mnist.load_data()  # The same four IDX files.
      config = config.replace(data_dir=os.path.join(
          datasets.keras_datasets_dir(), 'fashion-mnist'))
  return config


def report(output_dir: str) -> None:
  """Prints rounds, per-layer densities (saving densities.png), scalars."""
  # pylint: disable=g-import-not-at-top
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from tff_feddst.methods import model_setup
  from tff_feddst.outputs import tensorboard_logging
  # pylint: enable=g-import-not-at-top
  with open(os.path.join(output_dir, 'flags.txt')) as f:
    config = settings_lib.from_flag_lines(f.read().splitlines())
  with open(os.path.join(output_dir, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    accuracy = row['test_accuracy']
    print(f"round {int(row['round']):3d}  loss {float(row['train_loss']):.3f}"
          f"  upload {float(row['upload_bytes_cumulative']) / 1e6:7.2f} MB"
          f"  mask changed {int(row['mask_changed_positions']):6d}"
          + (f'  test accuracy {float(accuracy):.4f}' if accuracy else ''))
  final_weights = run_files.load_model_weights(
      os.path.join(output_dir, 'global_model.npz'))
  _, initial = model_setup.build_model(config.resolved())
  names = tensorboard_logging.layer_names(initial.layout)
  initial_density = tensorboard_logging.layer_densities(initial.layout,
                                                        initial.weights)
  final_density = tensorboard_logging.layer_densities(initial.layout,
                                                      final_weights)
  print(f"\n{'layer':<22}{'weights':>9}{'active':>9}{'density':>9}")
  for name, size, active, density in zip(names, initial.layout.kernel_sizes,
                                         initial.num_active, final_density):
    print(f'{name:<22}{size:>9}{active:>9}{density:>9.3f}')
  figure, axes = plt.subplots(figsize=(7, 3))
  positions = range(len(names))
  axes.bar([p - 0.2 for p in positions], initial_density, width=0.4,
           label='initial mask')
  axes.bar([p + 0.2 for p in positions], final_density, width=0.4,
           label=f'after round {rows[-1]["round"]}')
  axes.set_xticks(list(positions), names, rotation=15)
  axes.set_ylabel('density (fraction active)')
  axes.legend()
  figure.tight_layout()
  figure.savefig(os.path.join(output_dir, 'densities.png'), dpi=100)
  plt.close(figure)
  tensorboard_dir = config.effective_tensorboard_dir(output_dir)
  scalars = tensorboard_logging.read_scalars(tensorboard_dir)
  print('\nlogged scalars:', ', '.join(sorted(scalars)))
  print(f'tensorboard --logdir {os.path.abspath(tensorboard_dir)}')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'notebook_steps.py: error: unexpected arguments {argv[1:]}.')
  if FLAGS.step == 'report':
    if not FLAGS.output_dir:
      sys.exit('notebook_steps.py: error: --step=report needs --output_dir.')
    report(FLAGS.output_dir)
    return
  if not FLAGS.flags_out or FLAGS.parameters is None:
    sys.exit('notebook_steps.py: error: --step=configure needs --parameters '
             '(a JSON object) and --flags_out.')
  parameters = json.loads(FLAGS.parameters)
  try:
    config = configure(parameters)
  except settings_lib.ConfigError as error:
    print(error, file=sys.stderr)
    sys.exit(notebook_runtime.EXIT_BAD_PARAMETER)
  with open(FLAGS.flags_out, 'w') as f:
    f.write('\n'.join(config.to_flag_lines()) + '\n')
  print(f'Python {sys.version.split()[0]} at {sys.executable}')
  print(f'output_dir: {parameters["output_dir"]}')
  print('\n'.join(config.to_flag_lines()))


if __name__ == '__main__':
  flags.mark_flag_as_required('step')
  cli.run(main, uses_tensorflow=False)
