"""How a sparse model is put on the wire: `PayloadEncoding`, without
TensorFlow.

The settings parse `--upload_encoding` and `--download_encoding` with it
before a run loads TensorFlow, so that a bad value is refused at once;
`encoding` (which encodes and decodes payloads) re-exports it.
"""

import dataclasses

from tff_feddst.running import choices

VALUE_DTYPES = choices.VALUE_DTYPES
MASK_CODES = choices.MASK_CODES
# `PayloadEncoding.name` token for `masks_only_when_changed`.
CHANGED_MASKS_TOKEN = 'changed_masks_only'
# `PayloadEncoding.name` token for `omit_dense_masks=False`.
DENSE_MASKS_TOKEN = 'dense_masks'


@dataclasses.dataclass(frozen=True)
class PayloadEncoding:
  """How a sparse model is put on the wire.

  Attributes:
    value_dtype: 'float32' or 'float16', dtype of the active values.
    mask_code: 'bitmap' (1 bit per position) or 'rice' (Rice code of the
      gaps between active positions; see `encoding`'s docstring).
    masks_only_when_changed: Uploads only: leave the masks out when they
      equal the global masks the client received (always outside
      readjustment rounds); the server then uses its own.
    omit_dense_masks: Send no mask for layers whose capacity equals their
      size (their mask must be all ones; see `encoding`'s docstring). False
      sends them, for methods that can thin a full-capacity layer.
  """
  value_dtype: str = 'float32'
  mask_code: str = 'bitmap'
  masks_only_when_changed: bool = False
  omit_dense_masks: bool = True

  def __post_init__(self):
    choices.check('value_dtype', self.value_dtype, VALUE_DTYPES)
    choices.check('mask_code', self.mask_code, MASK_CODES)

  @property
  def is_bitmap_payload(self) -> bool:
    """Whether messages are `SparsePayload`s (else `CodedPayload`s)."""
    return self.mask_code == 'bitmap' and not self.masks_only_when_changed

  @property
  def value_bits(self) -> int:
    return 32 if self.value_dtype == 'float32' else 16

  @property
  def name(self) -> str:
    """E.g. 'float16+rice+changed_masks_only'; `parse` reads it back."""
    tokens = [self.value_dtype, self.mask_code]
    if self.masks_only_when_changed:
      tokens.append(CHANGED_MASKS_TOKEN)
    if not self.omit_dense_masks:
      tokens.append(DENSE_MASKS_TOKEN)
    return '+'.join(tokens)

  @classmethod
  def parse(cls, name: str) -> 'PayloadEncoding':
    """Reads a `name`: '+'-joined value dtype, mask code, and optionally
    'changed_masks_only' and 'dense_masks', in any order (missing ones take
    the defaults).

    Raises:
      ValueError: For an unknown or repeated token.
    """
    settings = {}
    for token in name.split('+'):
      token = token.strip()
      if token in VALUE_DTYPES:
        key, value = 'value_dtype', token
      elif token in MASK_CODES:
        key, value = 'mask_code', token
      elif token == CHANGED_MASKS_TOKEN:
        key, value = 'masks_only_when_changed', True
      elif token == DENSE_MASKS_TOKEN:
        key, value = 'omit_dense_masks', False
      else:
        raise ValueError(
            f'unknown encoding token {token!r} in {name!r}; expected '
            f'{GRAMMAR}.')
      if key in settings:
        raise ValueError(f'{key} given twice in encoding {name!r}.')
      settings[key] = value
    return cls(**settings)


# The accepted `PayloadEncoding.parse` names, for error messages.
GRAMMAR = (f'"+"-joined tokens: {"|".join(VALUE_DTYPES)} (values), '
           f'{"|".join(MASK_CODES)} (mask code), optionally '
           f'{CHANGED_MASKS_TOKEN} and {DENSE_MASKS_TOKEN}, '
           'e.g. float16+rice')
