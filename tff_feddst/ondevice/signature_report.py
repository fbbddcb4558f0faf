"""What a converted `.tflite` model's signatures need, and the Java contract.

`signature_ops` and `select_tf_ops` list the ops each signature runs (read
from the flatbuffer, following the subgraphs that control flow calls), and
`format_ops` prints them (`bin/export_tflite.py --list_ops=FILE`).

`contract_violations` checks the rules an app relies on when it drives the
model through `org.tensorflow.lite.Interpreter.runSignature`:
  - every signature has at least one input (`runSignature` refuses an
    empty input map);
  - no output is a scalar (shape []): an app copies outputs into arrays or
    buffers of the output's shape, and [1] fits a `FloatArray(1)`;
  - every input and output has a type the Java `Tensor` API has (no float16
    or float64);
  - every select TF op a signature needs is in the allowed list for it.
"""

from typing import Mapping, Sequence

from tensorflow.lite.python import schema_py_generated
from tensorflow.lite.tools import flatbuffer_utils

# The select TF ops a FedDST training model may need: the gradient kernels
# and fused loss TFLite has no builtin for, and checkpoint file I/O.
ALLOWED_SELECT_TF_OPS = {
    'train': ('Conv2DBackpropFilter', 'MaxPoolGrad', 'ReluGrad',
              'SparseSoftmaxCrossEntropyWithLogits'),
    'save': ('Save',),
    'restore': ('Restore',),
}
# Tensor types `org.tensorflow.lite.DataType` can hold.
JAVA_TENSOR_TYPES = ('FLOAT32', 'INT32', 'UINT8', 'INT64', 'STRING', 'BOOL',
                     'INT16', 'INT8')


def _enum_names(enum) -> dict[int, str]:
  return {value: name for name, value in vars(enum).items()
          if not name.startswith('_')}


def _read(tflite_model: bytes):
  return flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))


def signature_ops(tflite_model: bytes) -> dict[str, tuple[str, ...]]:
  """Lists the ops each signature runs, following called subgraphs.

  Args:
    tflite_model: A `.tflite` flatbuffer.

  Returns:
    `{signature key: sorted op names}`; builtins by their builtin name,
    select TF ops by their custom code (`Flex<TF op name>`).
  """
  model = _read(tflite_model)
  builtins = _enum_names(schema_py_generated.BuiltinOperator)

  def op_name(operator) -> str:
    code = model.operatorCodes[operator.opcodeIndex]
    if code.customCode:
      return code.customCode.decode()
    return builtins.get(max(code.builtinCode, code.deprecatedBuiltinCode),
                        str(code.builtinCode))

  def collect(subgraph_index: int, seen: set[int], names: set[str]) -> None:
    if subgraph_index in seen:
      return
    seen.add(subgraph_index)
    for operator in model.subgraphs[subgraph_index].operators or []:
      names.add(op_name(operator))
      # Control flow (WHILE, IF, CALL_ONCE, ...) names its subgraphs in
      # options fields ending in 'SubgraphIndex'.
      options = operator.builtinOptions
      for attribute in dir(options) if options is not None else ():
        if attribute.endswith('SubgraphIndex'):
          collect(getattr(options, attribute), seen, names)

  result = {}
  for signature in model.signatureDefs or []:
    names = set()
    collect(signature.subgraphIndex, set(), names)
    result[signature.signatureKey.decode()] = tuple(sorted(names))
  return result


def select_tf_ops(tflite_model: bytes) -> dict[str, tuple[str, ...]]:
  """Lists, per signature, the TF ops that need the Flex delegate.

  Args:
    tflite_model: A `.tflite` flatbuffer.

  Returns:
    `{signature key: sorted TF op names}` (without the `Flex` prefix).
  """
  return {key: tuple(name[len('Flex'):] for name in names
                     if name.startswith('Flex'))
          for key, names in signature_ops(tflite_model).items()}


def signature_tensors(tflite_model: bytes
                      ) -> dict[str, dict[str, list[tuple[str, str,
                                                          tuple[int, ...]]]]]:
  """The inputs and outputs of each signature, as the flatbuffer declares.

  Args:
    tflite_model: A `.tflite` flatbuffer.

  Returns:
    `{signature key: {'inputs': [...], 'outputs': [...]}}`, each entry
    `(name, tensor type name e.g. 'FLOAT32', shape signature)` with -1 for a
    free dimension.
  """
  model = _read(tflite_model)
  types = _enum_names(schema_py_generated.TensorType)
  result = {}
  for signature in model.signatureDefs or []:
    tensors = model.subgraphs[signature.subgraphIndex].tensors

    def describe(tensor_map):
      tensor = tensors[tensor_map.tensorIndex]
      shape = (tensor.shapeSignature if tensor.shapeSignature is not None
               else tensor.shape)
      return (tensor_map.name.decode(), types.get(tensor.type, 'UNKNOWN'),
              tuple(int(d) for d in (shape if shape is not None else ())))

    result[signature.signatureKey.decode()] = {
        'inputs': [describe(t) for t in signature.inputs or []],
        'outputs': [describe(t) for t in signature.outputs or []]}
  return result


def contract_violations(
    tflite_model: bytes,
    allowed_select_tf_ops: Mapping[str, Sequence[str]] = ALLOWED_SELECT_TF_OPS,
    documented_scalar_outputs: Sequence[tuple[str, str]] = ()
) -> list[str]:
  """Checks the rules of the module docstring on every signature.

  Args:
    tflite_model: A `.tflite` flatbuffer.
    allowed_select_tf_ops: Per signature key, the select TF ops it may need
      (a key not listed may need none).
    documented_scalar_outputs: `(signature, output)` pairs allowed to be
      scalars (documented with the Java buffer type to read them into).

  Returns:
    One line per broken rule, e.g. "get_weights: no input"; empty if the
    model keeps the contract.
  """
  problems = []
  select = select_tf_ops(tflite_model)
  for key, tensors in sorted(signature_tensors(tflite_model).items()):
    if not tensors['inputs']:
      problems.append(f'{key}: no input')
    for side in ('inputs', 'outputs'):
      for name, type_name, _ in tensors[side]:
        if type_name not in JAVA_TENSOR_TYPES:
          problems.append(f'{key}: {side[:-1]} {name} is {type_name}, which '
                          'the Java Tensor API cannot hold')
    for name, _, shape in tensors['outputs']:
      if not shape and (key, name) not in documented_scalar_outputs:
        problems.append(f'{key}: output {name} is a scalar (shape [])')
    extra = sorted(set(select.get(key, ())) -
                   set(allowed_select_tf_ops.get(key, ())))
    if extra:
      problems.append(f'{key}: select TF ops outside the allowed list: '
                      f'{", ".join(extra)}')
  return problems


def format_ops(tflite_model: bytes) -> str:
  """A per-signature listing of ops, select TF ops first.

  Args:
    tflite_model: A `.tflite` flatbuffer.

  Returns:
    Lines `<signature>: select TF ops: ...; builtins: ...`, one per
    signature, sorted by key.
  """
  lines = []
  for key, names in sorted(signature_ops(tflite_model).items()):
    flex = [n[len('Flex'):] for n in names if n.startswith('Flex')]
    builtin = [n for n in names if not n.startswith('Flex')]
    lines.append(f'{key}: select TF ops: {", ".join(flex) or "none"}; '
                 f'builtins: {", ".join(builtin) or "none"}')
  return '\n'.join(lines)
