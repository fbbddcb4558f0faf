"""Methods by name: what `--method` accepts and how each method is built.

A method module (a module of this package whose name ends in `_method` or
`_methods`) registers its methods with `register` when it is imported;
`method_names` and `get` import every such module first. So adding a
method touches its own module, its test and a flagfile (and BUILD), never
the experiment code.

A `Method` answers two questions, as `tff.learning.algorithms` builders
do from their arguments:
- `resolve(settings)`: the settings with what defines the method applied
  (e.g. fedavg: target_sparsity 0);
- `prepare(settings, federated_data)`: a `MethodPlan`, everything the
  round loop needs: the model function, the initial model, a builder of
  the `LearningProcess` (called inside the execution context), and the
  round's upload bound as one callable `round_upload_bytes(round_num,
  state) -> int`.

Importing this module imports no TF, nor the settings (which ask it for
the method names): settings are `settings.ExperimentSettings`.
"""

import abc
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Optional

from tff_feddst.running import errors

_METHODS = {}


@dataclasses.dataclass
class MethodPlan:
  """What the round loop needs from a method, for one run.

  Attributes:
    model_fn: Builds the method's (wrapped) Keras model.
    initial_model: The `fed_dst.InitialModel` the rounds start from.
    build_process: `element_spec -> tff.learning.templates.LearningProcess`;
      called once, inside the run's execution context.
    round_upload_bytes: `(round_num, state) -> int`, an upper bound of the
      upload of all of round `round_num`'s clients when the round starts
      from `state` (the process state; None before the process is built).
    start_files: Files (name -> text) written next to flags.txt when the
      run starts (e.g. PruneFL's record of its initial pruning).
    client_inputs: For a method with per-client state kept in the process
      state (`process.client_states`): `(state, RoundClients) -> client
      data` of `process.next`. None: the reporters' datasets.
    personal_evaluation: `(evaluator, state, global weights) -> (mean,
      std)` of the clients' personal models' local test accuracy; None for
      methods without personal models.
    client_state_bytes: Bytes the per-client state store keeps per client
      (0 without one); written to the summary.
  """
  model_fn: Callable[[], Any]
  initial_model: Any
  build_process: Callable[[Any], Any]
  round_upload_bytes: Callable[[int, Any], int]
  start_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  client_inputs: Optional[Callable[[Any, Any], list]] = None
  personal_evaluation: Optional[Callable[[Any, Any, Any],
                                         tuple[float, float]]] = None
  client_state_bytes: int = 0


class Method(abc.ABC):
  """One federated method: its settings and the parts of its process.

  Attributes:
    name: The `--method` value.
    chooses_own_masks: Whether the method picks its masks itself, so that
      dense layers can thin (their masks are then sent).
    runs_on_tflite: Whether `--client_runtime=tflite` can run the method:
      its clients train through the exported TFLite training model and its
      server is `plain_loop.PlainServer` (`ondevice.tflite_rounds`).
    readjust_counters: The --readjust_counter values it accepts.
    leaves_unchanged_masks_out: Whether its uploads can leave out the masks
      a client did not change (an --upload_encoding with
      changed_masks_only): the server then takes them from the global
      masks. A method whose clients choose their own masks from other
      inputs, or whose uploads carry more than the sparse model (PruneFL's
      importance), always sends them.
  """
  name: str
  chooses_own_masks: bool = False
  runs_on_tflite: bool = False
  readjust_counters: tuple[str, ...] = ('round',)
  leaves_unchanged_masks_out: bool = True

  @abc.abstractmethod
  def resolve(self, settings: 'ExperimentSettings'
              ) -> 'ExperimentSettings':
    """Returns `settings` with the settings that define the method applied."""

  @abc.abstractmethod
  def prepare(self, settings: 'ExperimentSettings',
              federated_data) -> MethodPlan:
    """Builds the initial model and the rest of the method for one run.

    Args:
      settings: The run's resolved, validated settings.
      federated_data: Its `data.FederatedData`.

    Returns:
      The `MethodPlan`.

    Raises:
      errors.ConfigError: For a setting that does not fit the model.
    """


def register(method: Method) -> Method:
  """Makes `method` available as `--method=<method.name>`.

  Raises:
    ValueError: If a method of that name is registered already.
  """
  if method.name in _METHODS and _METHODS[method.name] is not method:
    raise ValueError(f'method {method.name!r} is registered twice')
  _METHODS[method.name] = method
  return method


def _import_method_modules() -> None:
  """Imports every method module of this package (they register)."""
  package = importlib.import_module(__package__)
  for module in pkgutil.iter_modules(package.__path__):
    if module.name.endswith(('_method', '_methods')):
      importlib.import_module(f'{__package__}.{module.name}')


def method_names() -> tuple[str, ...]:
  """The registered methods' names, in registration order."""
  _import_method_modules()
  return tuple(_METHODS)


def get(name: str) -> Method:
  """The method registered as `name`.

  Raises:
    errors.ConfigError: One line naming --method and the accepted values.
  """
  names = method_names()
  if name not in _METHODS:
    raise errors.ConfigError(
        f'--method={name!r} is invalid: expected one of {", ".join(names)}.')
  return _METHODS[name]
