"""The names each choice setting accepts, in a module without TensorFlow.

`running.settings` checks every flag against these before a run loads
TensorFlow (seconds), so that a bad flag is refused at once. Each module
that implements the choices takes its tuple from here (e.g.
`sparse.masks.GROW_SCORES is choices.GROW_SCORES`), so the two never
differ.
"""

# Initial masks (`sparse.masks`): `random_mask`, or `top_k_mask`.
INITIAL_MASKS = ('random', 'magnitude')
# Grow scores (`sparse.masks`): the gradient summed, of the last batch
# before the last step, or of the last batch recomputed after it (the
# reference).
GROW_SCORES = ('accumulated', 'last_batch', 'last_batch_after_step')
# Readjustment rules (`sparse.masks`): `readjust`, `readjust_reference`.
READJUST_RULES = ('feddst', 'reference')
# The server's next mask (`sparse.masks`): `server_reprune`, or
# `server_reprune_reference`.
SERVER_RULES = ('feddst', 'reference')
# What --min_votes counts (`sparse.masks`): holders (>=), or their summed
# aggregation weights (>, the authors' threshold on train-size-weighted
# votes).
MIN_VOTES_UNITS = ('clients', 'weight')

# Decays of the readjustment ratio (`sparse.schedules`).
ANNEALINGS = ('cosine', 'constant')

# Upload and download value types and mask codes (`process.encoding`,
# `process.mask_codes`).
VALUE_DTYPES = ('float32', 'float16')
MASK_CODES = ('bitmap', 'rice')

# Per-position means over a position's holders (`process.robust_means`).
ROBUST_MEANS = ('mean', 'trimmed_mean', 'median')

# Server optimizers (`process.server_optimizers`): `sgd`/`sgdm` are the
# finalizer's momentum buffers; the rest are TFF optimizers.
MOMENTUM_OPTIMIZERS = ('sgd', 'sgdm')
ADAPTIVE_OPTIMIZERS = ('adam', 'yogi', 'adagrad')
SERVER_OPTIMIZERS = MOMENTUM_OPTIMIZERS + ADAPTIVE_OPTIMIZERS

# Models (`networks.models.MODEL_BUILDERS`, in this order).
MODEL_NAMES = ('mnist_net', 'cifar10_net', 'cifar100_net', 'emnist_conv2')


def check(name: str, value: str, accepted: tuple[str, ...]) -> None:
  """Refuses a value outside its choices.

  Args:
    name: What the value is (e.g. 'grow_score'), for the message.
    value: The value given.
    accepted: The names accepted (one of this module's tuples).

  Raises:
    ValueError: '<name> must be one of <accepted>, got <value>.'
  """
  if value not in accepted:
    raise ValueError(f'{name} must be one of {accepted}, got {value!r}.')
