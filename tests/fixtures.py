"""Test fixtures shared by several test files (not tests themselves)."""

import os

from tff_feddst import data


def write_fashion_mnist_slice(directory: str, num_train: int = 1200,
                              num_test: int = 300) -> None:
  """Copies the first examples of the real Fashion-MNIST IDX files.

  Args:
    directory: Where to write the four `.gz` IDX files.
    num_train: Training examples to keep.
    num_test: Test examples to keep.
  """
  for prefix, count in (('train', num_train), ('t10k', num_test)):
    for kind in ('images-idx3', 'labels-idx1'):
      name = f'{prefix}-{kind}-ubyte.gz'
      array = data.read_idx(os.path.join(data.DEFAULT_FASHION_MNIST_DIR, name))
      data.write_idx(os.path.join(directory, name), array[:count])
