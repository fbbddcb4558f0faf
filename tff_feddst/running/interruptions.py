"""Ways a run stops before its end, and SIGTERM / Ctrl-C as a stop request.

A run can be stopped from outside: a signal (SIGTERM from a scheduler, SIGINT
from Ctrl-C) or a TFF worker that is lost (`execution.WorkerLostError`). Each
is an `Interrupted`; the round loop (`training_loop.run_training`) answers
one by checkpointing the last completed round, noting that round on the
exception, and re-raising it, so `--resume` continues exactly.

Signals are turned into a stop request by `SignalWatch`: its handler only
records the signal, and the code checks the record at safe points (`check`):
while it waits for a TFF call (the call is abandoned) and at the start of a
round. So a signal never lands in the middle of writing a file.
"""

import contextlib
import signal
import threading
from typing import Iterator, Optional, Sequence


class Interrupted(Exception):
  """The run was stopped from outside before its end.

  Attributes:
    completed_round: The last round whose results were written and
      checkpointed (0: none, the initial state was checkpointed), set by the
      round loop; None when the stop came before the loop had a state.
    checkpoint_path: The checkpoint of `completed_round`, or None.
  """

  completed_round: Optional[int] = None
  checkpoint_path: Optional[str] = None


class StopRequested(Interrupted):
  """A stop signal (SIGTERM, SIGINT) arrived.

  Attributes:
    signum: The signal number.
  """

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(f'stopped by {self.signal_name}')

  @property
  def signal_name(self) -> str:
    """The signal's name, e.g. 'SIGTERM'."""
    return signal.Signals(self.signum).name

  @property
  def exit_code(self) -> int:
    """The shell's code for a process ended by the signal: 128 + signum."""
    return 128 + self.signum


class SignalWatch:
  """Records SIGTERM and SIGINT as a stop request, checked at safe points.

  Usage (main thread only, as Python requires for signal handlers):

    watch = SignalWatch()
    with watch.installed():
      ...  # long work that calls watch.check() at safe points

  Attributes:
    signum: The first stop signal received while installed, or None.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,
                                                signal.SIGINT)):
    """Prepares a watch (nothing is installed yet).

    Args:
      signals: The signals that request a stop.
    """
    self._signals = tuple(signals)
    self._lock = threading.Lock()
    self.signum: Optional[int] = None

  def _record(self, signum: int, unused_frame) -> None:
    with self._lock:
      if self.signum is None:
        self.signum = signum

  @contextlib.contextmanager
  def installed(self) -> Iterator['SignalWatch']:
    """Installs the handlers for the block; the previous ones are restored.

    Yields:
      The watch itself.
    """
    previous = {signum: signal.signal(signum, self._record)
                for signum in self._signals}
    try:
      yield self
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)

  def check(self) -> None:
    """Raises `StopRequested` if a stop signal has arrived.

    Raises:
      StopRequested: Naming the first signal received.
    """
    if self.signum is not None:
      raise StopRequested(self.signum)
