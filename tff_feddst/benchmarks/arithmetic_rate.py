"""How close a round's arithmetic runs to what this CPU can do (issue 16).

A round's speed can be judged against the hardware, not only against an
earlier run: its dense-equivalent training FLOPs (`networks.flops`: 3x the
forward multiply-adds of every Conv2D and Dense kernel at density 1, per
example) divided by its CPU seconds is the rate at which it did the
model's arithmetic. Against it stands the rate of one large float32
matrix product in this process (`matmul_gflops`), run on the same kernels
(the benchmark calls `kernel_settings.use_bit_exact_kernels` first: one intra-op
thread, oneDNN's AVX2 code), which is about the best a dense kernel of
this TensorFlow reaches on one CPU. Their ratio bounds any speed-up that
keeps the arithmetic: a round cannot get faster than `peak / achieved`
times without computing fewer FLOPs (sparse kernels) or other ones.

The masked-dense client (masks multiply dense kernels) computes the dense
count whatever the sparsity, so it is the dense count that is set against
the CPU seconds here, for sparse and dense methods alike. Pooling,
activations, the optimizer and the input pipeline do no counted FLOPs, so
time spent there lowers the achieved rate: that is part of what the ratio
shows.
"""

import time
from typing import Any, Optional

import tensorflow as tf

from tff_feddst.networks import flops
from tff_feddst.networks import pruning


def dense_training_flops_per_example(model: tf.keras.Model) -> int:
  """Training FLOPs of one example at density 1 (forward and backward).

  Args:
    model: A built Keras model whose Conv2D and Dense layers are wrapped
      (`pruning.wrap_layer`).

  Returns:
    3 x the dense forward FLOPs of `flops.forward_flops`.
  """
  uses = flops.kernel_uses(model)
  kernel_sizes = [int(tf.size(pair.weight))
                  for pair in pruning.prunable_weights(model)]
  return flops.training_flops(uses, kernel_sizes, kernel_sizes,
                              examples_trained=1).dense


def matmul_gflops(size: int = 1024, min_cpu_seconds: float = 0.5) -> float:
  """GFLOP per CPU second of a float32 `size` x `size` matrix product.

  Timed in CPU seconds of this process (all its threads), after one
  untimed call, over as many calls as fill `min_cpu_seconds`; a product
  counts 2 size**3 FLOPs.

  Args:
    size: The square matrices' side, > 0.
    min_cpu_seconds: The least CPU time measured, > 0.

  Returns:
    The rate, in 1e9 FLOPs per CPU second.

  Raises:
    ValueError: For a size or time that is not positive.
  """
  if size <= 0 or not min_cpu_seconds > 0:
    raise ValueError(f'size ({size}) and min_cpu_seconds ({min_cpu_seconds}) '
                     'must be positive.')
  left = tf.random.stateless_uniform([size, size], seed=[1, 2])
  right = tf.random.stateless_uniform([size, size], seed=[3, 4])
  product = tf.function(lambda: tf.reduce_sum(tf.matmul(left, right)))
  product().numpy()  # Traced and warmed up, untimed.
  calls = 0
  start = time.process_time()
  while True:
    product().numpy()
    calls += 1
    elapsed = time.process_time() - start
    if elapsed >= min_cpu_seconds:
      return 2 * size**3 * calls / elapsed / 1e9


def rate_summary(examples: int, cpu_seconds: float, flops_per_example: int,
                 peak_gflops: Optional[float]) -> dict[str, Any]:
  """The arithmetic rate of some rounds and the speed-up it leaves.

  Args:
    examples: Examples trained on in those rounds (epochs counted).
    cpu_seconds: Their CPU seconds (every process that did the work).
    flops_per_example: `dense_training_flops_per_example`.
    peak_gflops: `matmul_gflops`, or None if not measured.

  Returns:
    `dense_gflops_per_cpu_second`; `fraction_of_matmul_rate` and
    `speedup_bound` (peak / achieved: the most a round of the same
    arithmetic could gain) when there is a peak; None where undefined.
  """
  achieved = (examples * flops_per_example / cpu_seconds / 1e9
              if cpu_seconds > 0 else None)
  fraction = (achieved / peak_gflops
              if achieved and peak_gflops else None)
  return {
      'dense_gflops_per_cpu_second': achieved,
      'fraction_of_matmul_rate': fraction,
      'speedup_bound': 1 / fraction if fraction else None,
  }
