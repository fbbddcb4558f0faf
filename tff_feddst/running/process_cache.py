"""The last built TFF process, kept for the next run in the same Python
process that would build exactly the same one.

Building a method's process traces every TF computation of its round
(about 46 for FedDST; some 10 s on 2 cores for the MNIST net, a large part
of a short run). A notebook that resumes a stopped run, or reruns a
configuration, in the same kernel needs the very same computations again:
TFF computations are pure functions of their arguments (serialized graphs
and their types), so a process built once serves any number of runs and
execution contexts. A stopped run's process state is never kept here, only
the process.

The key is everything the build reads, compared in full (no hash of it can
collide): every setting (a changed flag, even one the process does not
read, builds anew), the clients' data element spec, the split's client ids
and example counts (the default weight cap, the client-state store), and
the initial model's bytes (its weights and masks: the seed, and for PruneFL
the data, decide them). The last `MAX_KEPT` processes built are kept.
"""

import threading
from typing import Any, Callable

import numpy as np

# A kept FedDST process of the MNIST net holds 3.9 MB of serialized
# computations (initialize and next) and its key 2.1 MB of initial weights;
# three in-process runs of the tests' small config (seeds 0-2) ended at
# 846 MiB RSS with the cache and 851 MiB with it cleared after each run.
MAX_KEPT = 4
_LOCK = threading.Lock()
_KEPT: list = []  # [(key, process)], the most recently used last.


def process_key(flag_lines: list[str], element_spec: Any,
                client_ids: list[str], train_example_counts: list[int],
                initial_weights: Any) -> tuple:
  """The cache key of a process build.

  Args:
    flag_lines: The run's resolved settings as `--name=value` lines
      (`ExperimentSettings.to_flag_lines`).
    element_spec: The clients' dataset element spec.
    client_ids: The split's client ids, in order.
    train_example_counts: Each client's number of training examples.
    initial_weights: The initial model's `ModelWeights` (numpy arrays).

  Returns:
    A tuple that compares equal exactly when the builds would be the same.
  """
  arrays = list(initial_weights.trainable) + list(
      initial_weights.non_trainable)
  weight_bytes = tuple(
      (str(np.asarray(a).dtype), np.shape(a), np.asarray(a).tobytes())
      for a in arrays)
  return (tuple(flag_lines), repr(element_spec), tuple(client_ids),
          tuple(int(count) for count in train_example_counts), weight_bytes)


def built_process(key: tuple, build: Callable[[], Any]) -> Any:
  """The process kept under `key`, or `build()`'s, which is then kept
  (the least recently used one is forgotten when `MAX_KEPT` are kept).

  Args:
    key: From `process_key`.
    build: Builds the process (traces its computations).

  Returns:
    The process.
  """
  with _LOCK:
    for index, (kept_key, process) in enumerate(_KEPT):
      if kept_key == key:
        _KEPT.append(_KEPT.pop(index))
        return process
  process = build()
  with _LOCK:
    _KEPT.append((key, process))
    del _KEPT[:-MAX_KEPT]
  return process


def num_kept() -> int:
  """How many processes are kept."""
  with _LOCK:
    return len(_KEPT)


def clear() -> None:
  """Forgets every kept process (the next run builds its own)."""
  with _LOCK:
    _KEPT.clear()
