"""Tests for tff_feddst.data.file_formats: the IDX reader and its errors."""

import gzip
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from tff_feddst.data import file_formats
from tests import data_files


class IdxTest(parameterized.TestCase):

  @parameterized.product(
      dtype=[np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64],
      suffix=['', '.gz'])
  def test_round_trip_keeps_values_shape_and_dtype(self, dtype, suffix):
    values = np.array([0, 1, -2, 100, -128, 127], dtype=np.float64)
    if dtype == np.uint8:
      values = np.abs(values)
    array = np.tile(values, 4).reshape(2, 3, 4).astype(dtype)
    path = os.path.join(data_files.make_temp_dir(self), 'array.idx' + suffix)

    data_files.write_idx(path, array)
    result = file_formats.read_idx(path)

    self.assertEqual(result.dtype, np.dtype(dtype))
    self.assertEqual(result.shape, (2, 3, 4))
    np.testing.assert_array_equal(result, array)
    with open(path, 'rb') as file:
      self.assertEqual(file.read(2) == b'\x1f\x8b', suffix == '.gz')

  def test_reads_hand_built_uint8_file(self):
    # Magic 00 00 08 02 (uint8, 2 dims), dims 2 and 3, then 1..6.
    payload = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    path = data_files.write_bytes(
        os.path.join(data_files.make_temp_dir(self), 'hand'), payload)

    np.testing.assert_array_equal(
        file_formats.read_idx(path), [[1, 2, 3], [4, 5, 6]])

  def test_reads_big_endian_int16(self):
    # 0x0100 = 256 and 0xFFFE = -2 in big-endian two's complement.
    payload = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x00, 0xFF, 0xFE])
    path = data_files.write_bytes(
        os.path.join(data_files.make_temp_dir(self), 'hand'), payload)

    result = file_formats.read_idx(path)

    np.testing.assert_array_equal(result, [256, -2])
    self.assertEqual(result.dtype, np.dtype(np.int16))

  def test_detects_gzip_by_magic_bytes_not_name(self):
    directory = data_files.make_temp_dir(self)
    array = np.arange(6, dtype=np.uint8)
    gz_path = os.path.join(directory, 'compressed.gz')
    data_files.write_idx(gz_path, array)
    unsuffixed = os.path.join(directory, 'compressed_without_suffix')
    os.rename(gz_path, unsuffixed)
    raw_named_gz = os.path.join(directory, 'raw.gz')
    with gzip.open(unsuffixed, 'rb') as file:
      data_files.write_bytes(raw_named_gz, file.read())

    np.testing.assert_array_equal(file_formats.read_idx(unsuffixed), array)
    np.testing.assert_array_equal(file_formats.read_idx(raw_named_gz), array)

  @parameterized.named_parameters(
      ('bad_magic', bytes([1, 0, 0x08, 1, 0, 0, 0, 1, 5]), False,
       'expected first two bytes 00 00, found 01 00'),
      ('unknown_dtype', bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 5]), False,
       'unknown IDX data type code 0x0A'),
      ('zero_dims', bytes([0, 0, 0x08, 0]), False, 'declares 0 dimensions'),
      ('short_header', bytes([0, 0, 0x08, 2, 0, 0, 0, 1]), False,
       'truncated IDX header'),
      ('truncated_data', bytes([0, 0, 0x08, 1, 0, 0, 0, 6, 1, 2, 3, 4, 5]),
       False, 'truncated IDX file: header says 6 data bytes, found 5'),
      ('truncated_int32_data', bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1]),
       False, 'header says 8 data bytes, found 4'),
      ('trailing_bytes', bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 1, 2, 3]), False,
       'trailing bytes after IDX data: header says 2 data bytes, found 3'),
      ('truncated_data_in_gzip',
       bytes([0, 0, 0x08, 1, 0, 0, 0, 6, 1, 2, 3, 4, 5]), True,
       'header says 6 data bytes, found 5'),
  )
  def test_malformed_file_raises_one_line_error_naming_path(
      self, payload, compress, expected_text):
    if compress:
      payload = gzip.compress(payload)
    path = data_files.write_bytes(
        os.path.join(data_files.make_temp_dir(self), 'bad-idx'), payload)

    with self.assertRaises(file_formats.DataFileError) as raised:
      file_formats.read_idx(path)

    message = str(raised.exception)
    self.assertStartsWith(message, path + ': ')
    self.assertIn(expected_text, message)
    self.assertNotIn('\n', message)

  def test_corrupt_gzip_raises_one_line_error_naming_path(self):
    valid = gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 1, 2, 3]))
    directory = data_files.make_temp_dir(self)
    cut_short = data_files.write_bytes(os.path.join(directory, 'cut.gz'),
                                       valid[:-6])
    garbled = data_files.write_bytes(
        os.path.join(directory, 'garbled.gz'),
        valid[:10] + bytes(b ^ 0xFF for b in valid[10:]))

    for path in (cut_short, garbled):
      with self.assertRaises(file_formats.DataFileError) as raised:
        file_formats.read_idx(path)
      message = str(raised.exception)
      self.assertStartsWith(message, path + ': corrupt gzip data')
      self.assertNotIn('\n', message)

  def test_missing_file_raises_data_file_error(self):
    path = os.path.join(data_files.make_temp_dir(self), 'absent-idx3-ubyte')

    with self.assertRaisesRegex(file_formats.DataFileError,
                                'absent-idx3-ubyte: file'):
      file_formats.read_idx(path)

  def test_write_rejects_dtype_without_idx_code(self):
    path = os.path.join(data_files.make_temp_dir(self), 'int64.idx')

    with self.assertRaisesRegex(ValueError, 'int64 has no IDX type code'):
      data_files.write_idx(path, np.arange(3, dtype=np.int64))


if __name__ == '__main__':
  absltest.main()
