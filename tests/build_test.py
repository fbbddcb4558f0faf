"""Keeps the Bazel BUILD file true to the tree.

CI cannot run Bazel offline (it downloads rules), so this test parses BUILD
as the Starlark it is and checks it against the source files: every module,
test and binary has its target, named after the file, and every target's
deps are exactly the local modules and third-party packages it imports.
"""

import ast
import glob
import os
import re
import sys

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Import name -> the @pypi repository that provides it (requirements.txt).
THIRD_PARTY = {
    'absl': '@pypi//absl_py',
    'grpc': '@pypi//grpcio',
    'matplotlib': '@pypi//matplotlib',
    'nbclient': '@pypi//nbclient',
    'nbformat': '@pypi//nbformat',
    'numpy': '@pypi//numpy',
    'portpicker': '@pypi//portpicker',
    'psutil': '@pypi//psutil',
    'pytest': '@pypi//pytest',
    'scipy': '@pypi//scipy',
    'tensorboard': '@pypi//tensorboard',
    'tensorflow': '@pypi//tensorflow_cpu',
    'tensorflow_federated': '@pypi//tensorflow_federated',
    'tensorflow_model_optimization': '@pypi//tensorflow_model_optimization',
    'tqdm': '@pypi//tqdm',
}


def build_targets() -> dict[str, dict]:
  """Parses BUILD into {target name: {'rule': ..., 'srcs': [...], ...}}."""
  with open(os.path.join(ROOT, 'BUILD')) as f:
    tree = ast.parse(f.read(), filename='BUILD')
  targets = {}
  for statement in tree.body:
    if not (isinstance(statement, ast.Expr) and
            isinstance(statement.value, ast.Call)):
      continue
    call = statement.value
    rule = call.func.id
    if rule in ('load', 'package'):
      continue
    attributes = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    attributes['rule'] = rule
    targets[attributes['name']] = attributes
  return targets


def expected_deps(path: str) -> set[str]:
  """The deps a file's imports call for: ':module' or '@pypi//package'."""
  with open(path) as f:
    tree = ast.parse(f.read())
  deps = set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      if node.module.split('.')[0] == 'tff_feddst':
        # Targets are named after the module file, unique across packages.
        deps.update(f':{alias.name}' for alias in node.names)
        continue
      if node.module == 'tests':
        deps.update(f':{alias.name}' for alias in node.names)
        continue
      names = [node.module]
    for name in names:
      top = name.split('.')[0]
      if os.path.exists(os.path.join(ROOT, 'bin', f'{top}.py')):
        deps.add(f':{top}_lib')  # A test importing a bin/ script.
      elif top in THIRD_PARTY:
        deps.add(THIRD_PARTY[top])
      elif top not in sys.stdlib_module_names and top not in ('tff_feddst',
                                                                'tests'):
        raise AssertionError(f'{path}: import {name} has no BUILD mapping')
  return deps


class BuildFileTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.targets = build_targets()

  def check_files(self, pattern: str, rule: str, suffix: str = ''):
    for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
      name = os.path.splitext(os.path.basename(path))[0] + suffix
      if name in ('__init__', 'conftest') or (
          rule == 'py_library' and name.endswith('_test')):
        continue
      with self.subTest(path=path):
        self.assertIn(name, self.targets, f'no BUILD target for {path}')
        target = self.targets[name]
        self.assertEqual(target['rule'], rule)
        self.assertEqual(target['srcs'],
                         [os.path.relpath(path, ROOT)])
        self.assertEqual(set(target.get('deps', [])), expected_deps(path))

  def test_every_module_has_a_library(self):
    self.check_files('tff_feddst/*/*.py', 'py_library')

  def test_modules_live_in_subpackages_with_unique_names(self):
    self.assertEqual(
        [os.path.basename(p)
         for p in glob.glob(os.path.join(ROOT, 'tff_feddst', '*.py'))],
        ['__init__.py'])
    names = [os.path.basename(p) for p in glob.glob(
        os.path.join(ROOT, 'tff_feddst', '*', '*.py'))]
    names = [n for n in names if n != '__init__.py']
    self.assertCountEqual(names, set(names))

  def test_readme_layout_lists_every_module(self):
    with open(os.path.join(ROOT, 'README.md')) as f:
      readme = f.read()
    layout = readme[readme.index('## Layout'):]
    layout = layout[:layout.index('```', layout.index('```') + 3)]
    listed = set(re.findall(r'^\s*([a-z_]+\.py)\b', layout, re.MULTILINE))
    listed_packages = set(re.findall(r'^\s*([a-z_]+)/', layout, re.MULTILINE))
    for path in glob.glob(os.path.join(ROOT, 'tff_feddst', '*', '*.py')):
      package, name = path.split(os.sep)[-2:]
      if name == '__init__.py':
        continue
      with self.subTest(module=f'{package}/{name}'):
        self.assertIn(package, listed_packages)
        self.assertIn(name, listed)

  def test_every_test_has_a_py_test(self):
    self.check_files('tests/*_test.py', 'py_test')

  def test_test_helpers_have_a_library(self):
    self.check_files('tests/*.py', 'py_library')

  def test_every_binary_has_a_library_and_a_py_binary(self):
    self.check_files('bin/*.py', 'py_library', suffix='_lib')
    for path in glob.glob(os.path.join(ROOT, 'bin', '*.py')):
      name = os.path.splitext(os.path.basename(path))[0]
      self.assertEqual(self.targets[name]['rule'], 'py_binary')
      self.assertEqual(self.targets[name]['deps'], [f':{name}_lib'])

  def test_no_target_without_a_file(self):
    for name, target in self.targets.items():
      for src in target.get('srcs', []):
        self.assertTrue(os.path.exists(os.path.join(ROOT, src)),
                        f'{name}: {src} does not exist')

  def test_local_deps_resolve(self):
    for name, target in self.targets.items():
      for dep in target.get('deps', []):
        if dep.startswith(':'):
          self.assertIn(dep[1:], self.targets, f'{name}: unknown dep {dep}')


if __name__ == '__main__':
  tf.test.main()
