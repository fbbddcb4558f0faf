"""An independent plain-Python Rice coder and random masks, for the tests of
mask_codes and encoding."""

import numpy as np

from tff_feddst.process import mask_codes


def reference_rice_bits(mask: np.ndarray, layer: mask_codes.RiceLayer
                        ) -> list[int]:
  """An independent, plain-Python Rice coder (see mask_codes' docstring)."""
  coded = np.flatnonzero(mask < 0.5 if layer.invert else mask > 0.5)
  count_field = [int(b) for b in format(len(coded), f'0{layer.count_bits}b')]
  quotients, remainders = [], []
  previous = -1
  for position in coded:
    gap = int(position) - previous - 1
    previous = int(position)
    quotients += [1] * (gap >> layer.k) + [0]
    if layer.k:
      remainders += [int(b) for b in format(gap % 2**layer.k, f'0{layer.k}b')]
  return count_field + quotients + remainders


def random_mask(rng, size: int, ones: int) -> np.ndarray:
  mask = np.zeros(size, np.float32)
  mask[rng.choice(size, ones, replace=False)] = 1.0
  return mask
