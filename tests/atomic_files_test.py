"""Tests for tff_feddst.outputs.atomic_files: old or new file, never a torn one."""

import errno
import os
from unittest import mock

import tensorflow as tf

from tests import fixtures
from tff_feddst.outputs import atomic_files


class WriteFileTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = self.create_tempdir().full_path
    self.path = os.path.join(self.directory, 'summary.json')

  def read(self) -> bytes:
    with open(self.path, 'rb') as f:
      return f.read()

  def test_creates_and_replaces_leaving_no_temporary_file(self):
    atomic_files.write_text(self.path, 'old\n')
    atomic_files.write_text(self.path, 'new\n')
    self.assertEqual(self.read(), b'new\n')
    self.assertEqual(os.listdir(self.directory), ['summary.json'])

  def test_exclusive_never_replaces_an_existing_file(self):
    atomic_files.write_text(self.path, 'finished run\n', exclusive=True)
    with self.assertRaises(FileExistsError):
      atomic_files.write_text(self.path, 'other run\n', exclusive=True)
    self.assertEqual(self.read(), b'finished run\n')
    self.assertEqual(os.listdir(self.directory), ['summary.json'])

  def test_a_failed_write_leaves_the_old_file_and_no_temporary(self):
    atomic_files.write_text(self.path, 'old\n')

    def write_half_then_fail(f):
      f.write(b'ne')
      f.flush()
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with self.assertRaises(atomic_files.WriteError) as raised:
      atomic_files.write_file(self.path, write_half_then_fail)
    self.assertEqual(raised.exception.errno, errno.ENOSPC)
    self.assertEqual(str(raised.exception),
                     f'writing {self.path} failed: [Errno 28] No space left '
                     'on device')
    self.assertEqual(self.read(), b'old\n')
    self.assertEqual(os.listdir(self.directory), ['summary.json'])

  def test_a_disk_full_in_mid_content_leaves_the_old_file(self):
    atomic_files.write_bytes(self.path, b'old')
    with mock.patch.object(os, 'write', fixtures.disk_full_after(4)):
      with self.assertRaisesRegex(atomic_files.WriteError, 'Errno 28'):
        atomic_files.write_bytes(self.path, b'0123456789')
    self.assertEqual(self.read(), b'old')
    self.assertEqual(os.listdir(self.directory), ['summary.json'])

  def test_a_failed_first_write_leaves_nothing(self):
    with mock.patch.object(os, 'fsync',
                           side_effect=OSError(errno.EIO, 'I/O error')):
      with self.assertRaises(atomic_files.WriteError):
        atomic_files.write_text(self.path, 'new\n', exclusive=True)
    self.assertEqual(os.listdir(self.directory), [])

  def test_files_get_the_usual_permissions(self):
    atomic_files.write_text(self.path, 'x')
    umask = os.umask(0)
    os.umask(umask)
    self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o666 & ~umask)

  def test_temporaries_are_recognised_and_removed(self):
    names = ['.metrics.csv.tmp-0a1b2c3d4e5f', 'metrics.csv.tmp',
             '.events-rewrite.tmp-abc', 'metrics.csv', 'flags.txt',
             'ckpt-000002.npz']
    for name in names:
      with open(os.path.join(self.directory, name), 'w') as f:
        f.write('x')
    removed = atomic_files.remove_temporaries(self.directory)
    self.assertLen(removed, 3)
    self.assertCountEqual(os.listdir(self.directory),
                          ['metrics.csv', 'flags.txt', 'ckpt-000002.npz'])
    self.assertEqual(atomic_files.remove_temporaries(
        os.path.join(self.directory, 'missing')), [])


class AppendRecordTest(tf.test.TestCase):

  def test_a_disk_full_in_mid_record_leaves_the_file_as_it_was(self):
    path = os.path.join(self.create_tempdir().full_path, 'metrics.csv')
    with open(path, 'wb') as f:
      f.write(b'round,loss\r\n1,0.5\r\n')
    with open(path, 'ab') as f:
      atomic_files.append_record(f, path, b'2,0.25\r\n')
      # Only 3 of the next record's 8 bytes fit.
      with mock.patch.object(os, 'write', fixtures.disk_full_after(3)):
        with self.assertRaisesRegex(atomic_files.WriteError,
                                    'metrics.csv failed: .Errno 28.'):
          atomic_files.append_record(f, path, b'3,0.125\r\n')
      atomic_files.append_record(f, path, b'3,0.125\r\n')
    with open(path, 'rb') as f:
      self.assertEqual(f.read(),
                       b'round,loss\r\n1,0.5\r\n2,0.25\r\n3,0.125\r\n')


if __name__ == '__main__':
  tf.test.main()
