"""Writes files so that a kill or a full disk never leaves a torn one.

A whole file is written to a temporary name in its directory, flushed to
disk, then renamed over its final name (`os.replace`, atomic on POSIX) and
the directory entry is flushed too: readers, and a run resumed after a kill,
see either the old file or the new one. With `exclusive=True` the final name
must not exist yet (like `open(path, 'x')`), and that check is atomic too: a
finished result of another run is never overwritten.

An append-only file (metrics.csv) gains whole records: `append_record`
writes one record and, if the write fails (ENOSPC), cuts the file back to
its old length. A record torn by a kill in mid-write can only be the last
line; its reader drops it (`training_loop.truncate_metrics`).

Temporary files are named `.<name>.tmp-<random>`; `remove_temporaries`
deletes those a kill left behind, and they never look like results.
"""

import contextlib
import errno
import os
import re
from typing import BinaryIO, Callable, Iterator, Optional

_TEMPORARY_PREFIX = '.'
_TEMPORARY_INFIX = '.tmp-'
# '.<name>.tmp-<random>' (ours), and '<name>.tmp', the fixed name that
# earlier versions of checkpoints.py and truncate_metrics used.
_TEMPORARY_NAME = re.compile(r'^\..+\.tmp-[A-Za-z0-9_]+$|^.+\.tmp$')


class WriteError(OSError):
  """Writing an output file failed; the message names the file.

  `errno`, `strerror` and `filename` are those of the underlying OSError
  (`filename` is the final path, not the temporary one).
  """

  def __init__(self, path: str, error: OSError):
    super().__init__(error.errno, error.strerror or str(error), path)

  def __str__(self) -> str:
    if self.errno is None:
      return f'writing {self.filename} failed: {self.strerror}'
    return (f'writing {self.filename} failed: [Errno {self.errno}] '
            f'{self.strerror}')


def is_temporary(name: str) -> bool:
  """Whether a file name is a temporary name of this module (or older code's).

  Args:
    name: A base name (no directory).

  Returns:
    True for '.<name>.tmp-<random>' and '<name>.tmp'.
  """
  return bool(_TEMPORARY_NAME.match(name))


def remove_temporaries(directory: str) -> list[str]:
  """Deletes temporary files that a killed writer left in `directory`.

  Only regular files directly in `directory` are considered. Call it when no
  other process writes there (at the start or resumption of a run).

  Args:
    directory: A directory; a missing one is fine.

  Returns:
    The paths removed.
  """
  removed = []
  try:
    names = sorted(os.listdir(directory))
  except FileNotFoundError:
    return removed
  for name in names:
    path = os.path.join(directory, name)
    if is_temporary(name) and os.path.isfile(path):
      os.remove(path)
      removed.append(path)
  return removed


def fsync_directory(directory: str) -> None:
  """Flushes a directory's entries (a rename or unlink in it) to disk."""
  fd = os.open(directory or '.', os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _publish(temporary: str, path: str, exclusive: bool) -> None:
  """Moves a complete, flushed temporary file to `path` atomically."""
  if not exclusive:
    os.replace(temporary, path)
    return
  try:
    # A hard link fails with EEXIST if `path` exists: an atomic 'x'.
    os.link(temporary, path)
  except FileExistsError:
    raise
  except OSError as error:
    if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                           errno.EMLINK, errno.EXDEV):
      raise
    # A file system without hard links: check, then rename (not atomic
    # against a concurrent writer, but never over an existing file seen).
    if os.path.lexists(path):
      raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST),
                            path) from None
    os.replace(temporary, path)
  else:
    os.remove(temporary)


@contextlib.contextmanager
def _temporary_for(path: str, stem: Optional[str]) -> Iterator[str]:
  """Yields a fresh temporary path beside `path`; removes it on error."""
  directory, name = os.path.split(path)
  name = stem or name
  while True:
    temporary = os.path.join(
        directory, f'{_TEMPORARY_PREFIX}{name}{_TEMPORARY_INFIX}'
        f'{os.urandom(6).hex()}')
    try:
      # Mode 0o666 less the umask, as `open(path, 'w')` would create it.
      os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                       0o666))
      break
    except FileExistsError:
      continue
  try:
    yield temporary
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def write_file_at(path: str, write: Callable[[str], None], *,
                  exclusive: bool = False,
                  temporary_stem: Optional[str] = None) -> None:
  """Atomically creates or replaces `path` with what `write` puts in a file.

  For writers that want a path (e.g. `tf.io.TFRecordWriter`); see
  `write_file` for writers that take an open file.

  Args:
    path: The final path; its directory must exist.
    write: Called with a temporary path beside `path`; writes the whole
      content there and closes it.
    exclusive: Fail with FileExistsError, writing nothing, if `path` exists.
    temporary_stem: Names the temporary file ('.<stem>.tmp-<random>')
      instead of the base name of `path`, for directories whose readers
      pick files by name (TensorBoard reads any name with 'tfevents').

  Raises:
    FileExistsError: With `exclusive`, if `path` exists.
    WriteError: If writing, flushing or renaming fails (ENOSPC, EACCES,
      ...); `path` is then unchanged and no temporary file is left.
  """
  directory = os.path.dirname(path) or '.'
  if exclusive and os.path.lexists(path):
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
  try:
    with _temporary_for(path, temporary_stem) as temporary:
      write(temporary)
      fd = os.open(temporary, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
      _publish(temporary, path, exclusive)
    fsync_directory(directory)
  except FileExistsError:
    raise
  except OSError as error:
    if isinstance(error, WriteError):
      raise
    raise WriteError(path, error) from error


def write_file(path: str, write: Callable[[BinaryIO], None], *,
               exclusive: bool = False) -> None:
  """Atomically creates or replaces `path` with what `write` writes.

  Args:
    path: The final path; its directory must exist.
    write: Called with a binary file open for writing (seekable); writes
      the whole content.
    exclusive: Fail with FileExistsError, writing nothing, if `path` exists.

  Raises:
    FileExistsError: With `exclusive`, if `path` exists.
    WriteError: If writing, flushing or renaming fails; `path` is then
      unchanged and no temporary file is left.
  """
  def write_at(temporary: str) -> None:
    with open(temporary, 'wb') as f:
      write(f)
      f.flush()
  write_file_at(path, write_at, exclusive=exclusive)


def _write_all(fd: int, content: bytes) -> None:
  view = memoryview(content)
  while view:
    view = view[os.write(fd, view):]


def write_bytes(path: str, content: bytes, *,
                exclusive: bool = False) -> None:
  """Atomically writes `content` to `path`; see `write_file`.

  Serialize into memory first (e.g. `np.savez` into `io.BytesIO`): a
  serializer interrupted by a failed write can leave objects behind that
  complain when collected.
  """
  def write_at(temporary: str) -> None:
    fd = os.open(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
      _write_all(fd, content)
    finally:
      os.close(fd)
  write_file_at(path, write_at, exclusive=exclusive)


def write_text(path: str, text: str, *, exclusive: bool = False) -> None:
  """Atomically writes `text` (UTF-8) to `path`; see `write_file`."""
  write_bytes(path, text.encode('utf-8'), exclusive=exclusive)


def append_record(file: BinaryIO, path: str, record: bytes) -> None:
  """Appends `record` whole to an open file, or leaves the file as it was.

  The record is written, flushed and synced; if that fails part-way (a full
  disk), the file is cut back to its length before the call.

  Args:
    file: `path` opened in binary append mode ('ab').
    path: Its name, for the error message.
    record: The bytes to append (e.g. one CSV line with its newline).

  Raises:
    WriteError: If the record could not be written; the file then holds
      exactly what it held before.
  """
  file.flush()
  fd = file.fileno()
  size = os.fstat(fd).st_size
  try:
    _write_all(fd, record)
    os.fsync(fd)
  except OSError as error:
    with contextlib.suppress(OSError):
      os.ftruncate(fd, size)
    raise WriteError(path, error) from error
