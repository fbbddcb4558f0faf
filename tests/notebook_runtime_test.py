"""Tests for tff_feddst.running.notebook_runtime: the notebook's choice of
the Python that trains (with fake versions and Colab flags), its commands,
and the step runner.

What runs on a real Colab VM (uv downloading a CPython 3.11, the full pinned
install) cannot run here; `test_uv_makes_a_python_3_11_venv` runs the uv and
venv commands of the Colab route with this machine's Python 3.11 when
`UV_BINARY_TEST=1` and uv is importable (it needs the package index).
"""

import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tff_feddst.running import notebook_runtime

KERNEL = '/usr/bin/python3'
REPO = '/content/tff_feddst'
VENV = '/content/feddst-py311'


class ChooseRouteTest(unittest.TestCase):

  def test_colab_on_python_3_12_makes_a_3_11_venv(self):
    route = notebook_runtime.choose_route((3, 12, 11, 'final', 0), True,
                                          KERNEL, REPO, VENV)
    self.assertEqual(route.name, 'venv')
    self.assertEqual(route.python, '/content/feddst-py311/bin/python')
    self.assertEqual(route.commands, (
        (KERNEL, '-m', 'pip', 'install', '-q', 'uv==0.13.9'),
        (KERNEL, '-m', 'uv', 'venv', '--seed', '--python', '3.11', VENV),
        ('/content/feddst-py311/bin/python', '-m', 'pip', 'install', '-q',
         '--no-deps', '-r', '/content/tff_feddst/requirements.txt',
         'setuptools==65.5.0'),
    ))
    self.assertIn('3.12.11', route.reason)
    self.assertIn('downloads', route.reason)

  def test_colab_on_python_3_13_takes_the_same_route(self):
    route = notebook_runtime.choose_route((3, 13, 0), True, KERNEL, REPO, VENV)
    self.assertEqual(route.name, 'venv')
    self.assertEqual(len(route.commands), 3)

  def test_colab_on_python_3_11_uses_a_venv_of_its_own_python(self):
    route = notebook_runtime.choose_route((3, 11, 13), True, KERNEL, REPO,
                                          VENV)
    self.assertEqual(route.name, 'venv')
    self.assertIn("runtime's own 3.11", route.reason)
    # Never installed into the kernel's Python: only uv goes there.
    kernel_installs = [c for c in route.commands
                       if c[0] == KERNEL and 'install' in c]
    self.assertEqual(kernel_installs,
                     [(KERNEL, '-m', 'pip', 'install', '-q', 'uv==0.13.9')])
    for command in route.commands:
      self.assertNotIn('tensorflow-cpu', command)

  def test_colab_with_a_ready_venv_installs_nothing(self):
    route = notebook_runtime.choose_route((3, 12, 0), True, KERNEL, REPO, VENV,
                                          venv_ready=True)
    self.assertEqual(route.commands, ())
    self.assertEqual(route.python, '/content/feddst-py311/bin/python')

  def test_off_colab_python_3_11_runs_as_it_is(self):
    route = notebook_runtime.choose_route((3, 11, 7), False, sys.executable,
                                          REPO, VENV)
    self.assertEqual(route.name, 'this_python')
    self.assertEqual(route.python, sys.executable)
    self.assertEqual(route.commands, ())

  def test_off_colab_other_python_is_a_one_line_error(self):
    with self.assertRaises(notebook_runtime.RuntimeSetupError) as caught:
      notebook_runtime.choose_route((3, 12, 1), False, KERNEL, REPO, VENV)
    message = str(caught.exception)
    self.assertNotIn('\n', message)
    self.assertIn('Python 3.12.1', message)
    self.assertIn('install.sh', message)


class PrepareAndRunStepTest(unittest.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = tempfile.mkdtemp(prefix='notebook_runtime_test_')
    self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

  def test_prepare_runs_commands_and_marks_the_venv_ready(self):
    venv_dir = os.path.join(self.directory, 'venv')
    os.makedirs(os.path.join(venv_dir, 'bin'))
    python = os.path.join(venv_dir, 'bin', 'python')
    os.symlink(sys.executable, python)
    route = notebook_runtime.Route(
        'venv', python, ((sys.executable, '-c', 'print("made")'),
                         (python, '-c', 'print("filled")')), 'test')
    self.assertFalse(notebook_runtime.is_venv_ready(venv_dir))
    out = io.StringIO()
    notebook_runtime.prepare(route, venv_dir, out=out)
    self.assertEqual(out.getvalue(), 'made\nfilled\n')
    self.assertTrue(notebook_runtime.is_venv_ready(venv_dir))

  def test_a_failed_command_stops_prepare_without_the_marker(self):
    venv_dir = os.path.join(self.directory, 'venv')
    os.makedirs(os.path.join(venv_dir, 'bin'))
    route = notebook_runtime.Route(
        'venv', sys.executable,
        ((sys.executable, '-c', 'import sys; print("no"); sys.exit(3)'),
         (sys.executable, '-c', 'print("never")')), 'test')
    out = io.StringIO()
    with self.assertRaisesRegex(notebook_runtime.RuntimeSetupError,
                                'exit code 3'):
      notebook_runtime.prepare(route, venv_dir, out=out)
    self.assertEqual(out.getvalue(), 'no\n')
    self.assertFalse(notebook_runtime.is_venv_ready(venv_dir))

  def test_run_step_does_not_wait_for_a_process_left_behind(self):
    # The command exits at once but leaves a child holding its output open
    # for 30 s (as a TFF worker holds a pipe); the step ends with the
    # command, and the child is ended here.
    pid_file = os.path.join(self.directory, 'child.pid')
    script = ('import subprocess, sys\n'
              'child = subprocess.Popen([sys.executable, "-c", '
              '"import time; time.sleep(30)"])\n'
              f'open({pid_file!r}, "w").write(str(child.pid))\n'
              'print("parent done")\n')
    out = io.StringIO()
    try:
      notebook_runtime.run_step([sys.executable, '-c', script], out=out)
    finally:
      with open(pid_file) as f:
        child_pid = int(f.read())
      os.kill(child_pid, 15)
    self.assertEqual(out.getvalue(), 'parent done\n')

  def test_configure_run_turns_exit_code_2_into_parameter_error(self):
    repo = os.path.join(self.directory, 'repo')
    os.makedirs(os.path.join(repo, 'bin'))
    with open(os.path.join(repo, 'bin', 'notebook_steps.py'), 'w') as f:
      f.write('import sys\nprint("a warning", file=sys.stderr)\n'
              'print("--total_rounds=\'2\' is invalid: expected an integer, '
              'got str.", file=sys.stderr)\nsys.exit(2)\n')
    with self.assertRaises(notebook_runtime.ParameterError) as caught:
      notebook_runtime.configure_run(sys.executable, repo, {'a': 1},
                                     os.path.join(self.directory, 'f.txt'))
    self.assertEqual(str(caught.exception),
                     "--total_rounds='2' is invalid: expected an integer, "
                     'got str.')
    self.assertEqual(caught.exception._render_traceback_(),  # pylint: disable=protected-access
                     [f'ParameterError: {caught.exception}'])

  @unittest.skipUnless(os.environ.get('UV_BINARY_TEST') == '1',
                       'set UV_BINARY_TEST=1 (needs uv and the index)')
  def test_uv_makes_a_python_3_11_venv(self):
    venv_dir = os.path.join(self.directory, 'py311')
    route = notebook_runtime.choose_route((3, 11, 7), True, sys.executable,
                                          self.directory, venv_dir)
    notebook_runtime.run_step(route.commands[1])
    version = subprocess.run(
        [route.python, '-c', 'import sys, pip; print(sys.version_info[:2])'],
        capture_output=True, text=True, check=True).stdout.strip()
    self.assertEqual(version, '(3, 11)')


if __name__ == '__main__':
  unittest.main()
