"""A round's training FLOPs, from its measurements and the global masks.

`flops.training_flops` (see its module for the counting convention) needs a
round's examples, which of them needed the dense kernel gradient, and the
active weights per layer. This module reads them:
- examples trained: `client_work/num_examples` (the reporting clients' one
  epoch of examples, summed; a partial last batch counts its examples) times
  the local epochs. Clients that dropped out before reporting are not
  counted; clients whose upload the server then rejected did train and are.
- active weights per layer: the masks of the global model the round starts
  from (the broadcast every client trains with). A FedDST readjustment moves
  a client's mask but keeps each layer's count (the 'reference' rule can
  leave a client a few weights fewer; its steps after that are still
  counted at the global count), PruneFL's mask changes only between rounds,
  and dense methods have full masks (density 1).
- the dense kernel gradient, charged on the examples that need it: on a
  FedDST readjustment round (`client_work/should_readjust`) the grow score
  is the dense gradient of every step before the readjustment
  ('accumulated': readjust_epochs x the epoch's examples, exact when that
  is a whole number of epochs, else within one minibatch per client) or of
  the last minibatch before it ('last_batch', and 'last_batch_after_step',
  whose one extra forward pass is not counted: at most one batch per client);
  with lifetime epoch counts (`--readjust_counter=client_lifetime`) the
  clients count those examples themselves, over the clients that did
  readjust (`client_work/grow_score_examples`), and that count is charged;
  on a PruneFL reconfiguration round (`client_work/should_reconfigure`) the
  importance sums the dense gradient of every local step.
Not counted: PruneFL's initial pruning on one client before round 1, and
evaluation.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tff_feddst.networks import flops


@dataclasses.dataclass(frozen=True)
class RoundFlopsCounter:
  """Counts each round's training FLOPs of one run.

  Attributes:
    uses: `flops.kernel_uses` of the run's model.
    kernel_sizes: Entries per prunable kernel.
    mask_indices: Index of each kernel's mask in `ModelWeights.non_trainable`.
    num_epochs: Local epochs per round.
    readjust_epochs: Epochs trained before a FedDST readjustment
      (`ClientConfig.effective_readjust_after_epochs`).
    grow_score: 'accumulated', 'last_batch' or 'last_batch_after_step'.
    batch_size: Client minibatch size.
  """
  uses: tuple[int, ...]
  kernel_sizes: tuple[int, ...]
  mask_indices: tuple[int, ...]
  num_epochs: int
  readjust_epochs: float
  grow_score: str
  batch_size: int

  def active_counts(self, model_weights) -> tuple[int, ...]:
    """Active weights per prunable kernel of a global model.

    Args:
      model_weights: `ModelWeights` (numpy values) with the masks in
        `non_trainable`.

    Returns:
      One count per prunable kernel.
    """
    return tuple(int(np.count_nonzero(model_weights.non_trainable[i]))
                 for i in self.mask_indices)

  def dense_gradient_examples(self, round_metrics: Mapping[str, Any],
                              examples_trained: int) -> int:
    """Of a round's examples, how many needed the dense kernel gradient."""
    client_work = round_metrics.get('client_work', {})
    if bool(client_work.get('should_reconfigure', False)):
      return examples_trained
    if not bool(client_work.get('should_readjust', False)):
      return 0
    if 'grow_score_examples' in client_work:
      return min(examples_trained, int(client_work['grow_score_examples']))
    if self.grow_score == 'accumulated':
      epoch_examples = examples_trained // self.num_epochs
      return min(examples_trained,
                 int(round(self.readjust_epochs * epoch_examples)))
    aggregator = round_metrics.get('aggregator', {})
    clients_trained = int(aggregator.get('num_clients', 0)) + int(
        aggregator.get('rejected_clients', 0))
    return min(examples_trained, clients_trained * self.batch_size)

  def count(self, round_metrics: Mapping[str, Any],
            active_counts: Sequence[int]) -> Optional[flops.TrainingFlops]:
    """A round's training FLOPs.

    Args:
      round_metrics: The `metrics` of the process's `next` output.
      active_counts: `active_counts` of the model the round started from.

    Returns:
      The round's `flops.TrainingFlops`, or None if the process does not
      report `client_work/num_examples`.
    """
    epoch_examples = round_metrics.get('client_work', {}).get('num_examples')
    if epoch_examples is None:
      return None
    examples_trained = int(round(float(epoch_examples))) * self.num_epochs
    return flops.training_flops(
        self.uses, active_counts, self.kernel_sizes, examples_trained,
        self.dense_gradient_examples(round_metrics, examples_trained))


def build_counter(model, layout, client_config, batch_size: int
                  ) -> RoundFlopsCounter:
  """The counter of a run's rounds.

  Args:
    model: A built instance of the run's wrapped Keras model.
    layout: Its `models.ModelLayout`.
    client_config: The run's `client_work.ClientConfig`.
    batch_size: Client minibatch size.

  Returns:
    A `RoundFlopsCounter`.
  """
  return RoundFlopsCounter(
      uses=flops.kernel_uses(model),
      kernel_sizes=tuple(layout.kernel_sizes),
      mask_indices=tuple(layout.mask_indices),
      num_epochs=client_config.num_epochs,
      readjust_epochs=client_config.effective_readjust_after_epochs,
      grow_score=client_config.grow_score,
      batch_size=batch_size)
