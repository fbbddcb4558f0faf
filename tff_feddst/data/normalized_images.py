"""Images kept as uint8 pixels and normalised to float32 when read.

A data set's images are used as `(pixel / 255 - mean) / std` in float32, but
holding them so takes four times the memory of the pixels: 188 MB against
47 MB for Fashion-MNIST's training images, in every process that loads the
data set. `NormalizedImages` holds the uint8 pixels and normalises only the
examples a read selects, with the same float32 operations in the same order
as `normalize_pixels` applies to the whole array, so every value read has the
same bits as the eagerly normalised array's (`tests/normalized_images_test.py`).
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np


def normalize_pixels(pixels: np.ndarray, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
  """Scales uint8 pixels to [0, 1], then applies `(x - mean) / std`.

  This is what torchvision's `ToTensor()` followed by `Normalize(mean, std)`
  computes, here for channels-last arrays. Each value depends only on its
  own pixel and channel, so normalising a subset of the examples gives the
  same bits as normalising all of them and selecting afterwards.

  Args:
    pixels: uint8 array of shape (N, H, W, C).
    mean: One mean per channel (C values).
    std: One standard deviation per channel (C values).

  Returns:
    A new float32 array of the same shape.

  Raises:
    ValueError: If `pixels` is not 4-D uint8 or `mean`/`std` do not have one
      value per channel.
  """
  if pixels.dtype != np.uint8 or pixels.ndim != 4:
    raise ValueError(
        f'expected uint8 images of shape (N, H, W, C), got {pixels.dtype} '
        f'{pixels.shape}')
  num_channels = pixels.shape[-1]
  if len(mean) != num_channels or len(std) != num_channels:
    raise ValueError(
        f'need {num_channels} mean and std values, got {len(mean)} and '
        f'{len(std)}')
  normalized = pixels.astype(np.float32)
  normalized /= np.float32(255.0)
  normalized -= np.asarray(mean, dtype=np.float32)
  normalized /= np.asarray(std, dtype=np.float32)
  return normalized


class NormalizedImages:
  """uint8 images (N, H, W, C) that read as normalised float32 images.

  Indexing selects examples first (any NumPy index on the first axis:
  an integer, a slice, an index array, a boolean mask), normalises only
  those, then applies the rest of the index, so `images[indices]` costs
  memory for the selected examples only. `np.asarray(images)` normalises
  them all (a new float32 array each time).
  """

  def __init__(self, pixels: np.ndarray, mean: Sequence[float],
               std: Sequence[float]):
    """Checks and keeps the pixels (not copied) and the normalisation.

    Args:
      pixels: uint8 array of shape (N, H, W, C).
      mean: One mean per channel (C values).
      std: One standard deviation per channel (C values).

    Raises:
      ValueError: As `normalize_pixels`.
    """
    normalize_pixels(pixels[:0], mean, std)  # Checks dtype, rank, channels.
    self._pixels = pixels
    self._mean = tuple(float(value) for value in mean)
    self._std = tuple(float(value) for value in std)

  @property
  def pixels(self) -> np.ndarray:
    """The uint8 pixels, (N, H, W, C)."""
    return self._pixels

  @property
  def mean(self) -> tuple[float, ...]:
    """The per-channel means subtracted after scaling to [0, 1]."""
    return self._mean

  @property
  def std(self) -> tuple[float, ...]:
    """The per-channel standard deviations divided by last."""
    return self._std

  @property
  def shape(self) -> tuple[int, ...]:
    """The images' shape, (N, H, W, C)."""
    return self._pixels.shape

  @property
  def dtype(self) -> np.dtype:
    """float32: the type every read returns."""
    return np.dtype(np.float32)

  @property
  def ndim(self) -> int:
    """4."""
    return self._pixels.ndim

  @property
  def nbytes(self) -> int:
    """The bytes held: those of the uint8 pixels."""
    return self._pixels.nbytes

  def __len__(self) -> int:
    return len(self._pixels)

  def __getitem__(self, key: Any) -> Union[np.ndarray, np.float32]:
    """Normalised float32 values of `images_as_float32[key]`."""
    parts = key if isinstance(key, tuple) else (key,)
    if not parts:
      return np.asarray(self)
    head, rest = parts[0], parts[1:]
    if head is Ellipsis:
      return np.asarray(self)[key]
    if isinstance(head, (int, np.integer)):
      # One example: keep the example axis while normalising, then drop it.
      selected = self._pixels[[int(head)]]
      return self._normalize(selected)[(0,) + rest]
    selected = self._pixels[head]
    return self._normalize(selected)[(slice(None),) + rest]

  def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
    del copy  # A new array is made on every call.
    normalized = self._normalize(self._pixels)
    return normalized if dtype is None else normalized.astype(dtype)

  def _normalize(self, pixels: np.ndarray) -> np.ndarray:
    return normalize_pixels(pixels, self._mean, self._std)

  def __repr__(self) -> str:
    return (f'NormalizedImages(shape={self.shape}, mean={self._mean}, '
            f'std={self._std})')


ImageArray = Union[np.ndarray, NormalizedImages]


def as_float32_array(images: ImageArray) -> np.ndarray:
  """The images as one float32 NumPy array (normalised if needed).

  Args:
    images: A float32 array or `NormalizedImages`.

  Returns:
    `images` itself if it is already a float32 array, else a new one.
  """
  if isinstance(images, np.ndarray) and images.dtype == np.float32:
    return images
  return np.asarray(images, dtype=np.float32)
