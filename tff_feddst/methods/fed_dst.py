"""FedDST (Bibikar et al., "Federated Dynamic Sparse Training: Computing Less,
Communicating Less, Yet Learning Better", AAAI 2022) as a TFF LearningProcess.

Mask updates follow RigL (Evci et al., "Rigging the Lottery", ICML 2020):
drop by weight magnitude, grow by gradient magnitude.

One round t (1-based), pseudo-code:

  server: payload = encode(global weights, global masks); broadcast payload
  client c in the K sampled clients:
    w, m = decode(payload)
    for E local epochs: masked SGD (momentum, L2, optional FedProx)
      on readjustment rounds ((t-1) % R == 0 and t <= T_end), once, after
      `readjust_after_epochs` epochs: per layer prune the k smallest active,
      regrow the k inactive with the largest gradient, k = round(alpha_t*nnz)
    upload encode(w_c, m_c) and n_c (with `masks_only_when_changed`, m_c
      only if it differs from m; the server then uses its own m)
  server: per position, mean over holders sum(n_c m_c w_c) / sum(n_c m_c);
    optional server momentum; re-prune each layer by magnitude to its nnz
    (round t's nnz with a growing sparsity): the next global mask.
    (remember_old: a client lacking a global-mask position counts as having
    sent the old global weight there.)

`build_fed_dst` composes the four parts the way `tff.learning` composes
FedAvg: distributor (`distributor.py`), client work (`client_work.py`),
aggregator (`aggregation.py`), finalizer (`finalizer.py`). With
target_sparsity 0 the process is dense FedAvg (FedAvgM with server momentum);
with no readjustment it is FedAvg on a fixed random mask (RandomMask).
`upload_encoding` and `download_encoding` (`encoding.PayloadEncoding`) pick
the wire format: float32/float16 values, bitmap or Rice-coded masks, and
uploads without unchanged masks.
"""

import dataclasses
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.networks import models
from tff_feddst.networks import pruning
from tff_feddst.process import aggregation
from tff_feddst.process import aggregator_feedback
from tff_feddst.process import client_work
from tff_feddst.process import distributor
from tff_feddst.process import encoding
from tff_feddst.process import finalizer
from tff_feddst.process import lifetime_work
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import sum_factory
from tff_feddst.process import upload_binding
from tff_feddst.sparse import masks as mask_lib
from tff_feddst.sparse import sparsity_distribution

INITIAL_MASKS = mask_lib.INITIAL_MASKS


class InitialModel(NamedTuple):
  """The server's starting point and the facts derived from the model.

  Attributes:
    weights: `ModelWeights` of numpy arrays: masked kernels, masks, biases,
      TF-MOT bookkeeping (pruning steps 0).
    layout: The model's `ModelLayout`.
    num_active: Active weights per prunable kernel (fixed for the run).
  """
  weights: tff.learning.models.ModelWeights
  layout: models.ModelLayout
  num_active: tuple[int, ...]


def build_initial_model(model_fn: models.ModelFn, target_sparsity: float,
                        sparsity_distribution_name: str, seed: int,
                        initial_mask: str = 'random') -> InitialModel:
  """Builds the seeded initial sparse global model (FedDST step 1).

  Args:
    model_fn: Builds the wrapped Keras model (its own initializer seed fixed).
    target_sparsity: Fraction of zeros over prunable kernels, in [0, 1).
    sparsity_distribution_name: 'uniform', 'er', 'erk' or 'erk_reference'.
    seed: Seed of the random masks.
    initial_mask: 'random' (exactly num_active random positions per layer,
      the paper) or 'magnitude' (largest initial weights, the reference code).

  Returns:
    The `InitialModel`.

  Raises:
    ValueError: For an unknown `initial_mask` (sparsity and distribution are
      checked by `sparsity_distribution`).
  """
  if initial_mask not in INITIAL_MASKS:
    raise ValueError(f'initial_mask must be one of {INITIAL_MASKS}, got '
                     f'{initial_mask!r}.')
  model = model_fn()
  layout = models.model_layout(model)
  num_active = tuple(sparsity_distribution.compute_layer_num_active(
      layout.kernel_shapes, target_sparsity, sparsity_distribution_name,
      bias_sizes=layout.layer_bias_sizes))
  initial_masks = []
  for position, (pair, count) in enumerate(
      zip(pruning.prunable_weights(model), num_active)):
    if initial_mask == 'random':
      initial_masks.append(mask_lib.random_mask(
          pair.weight.shape, count, seed=seed * 1009 + position))
    else:
      initial_masks.append(mask_lib.top_k_mask(tf.abs(pair.weight), count))
  pruning.set_masks(model, initial_masks)
  pruning.start_pruning_steps(model)
  weights = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in model.non_trainable_variables])
  return InitialModel(weights=weights, layout=layout, num_active=num_active)


def build_fed_dst(model_fn: models.ModelFn,
                  initial_model: InitialModel,
                  data_element_spec,
                  schedule,
                  client_config: client_work.ClientConfig,
                  *,
                  server_learning_rate: float = 1.0,
                  server_momentum: float = 0.0,
                  min_votes: int = 0,
                  upload_encoding: Optional[encoding.PayloadEncoding] = None,
                  download_encoding: Optional[encoding.PayloadEncoding] = None,
                  remember_old: bool = False,
                  num_active_by_round: Optional[np.ndarray] = None,
                  payload_checks: Optional[
                      payload_validation.PayloadChecks] = None,
                  robust: Optional[
                      robust_aggregation.RobustAggregation] = None,
                  min_new_position_votes: int = 1,
                  server_optimizer: Optional[
                      tff.learning.optimizers.Optimizer] = None,
                  server_rule: str = 'feddst',
                  min_votes_unit: str = 'clients',
                  num_clients: int = 0,
                  clients_per_round: int = 0
                  ) -> tff.learning.templates.LearningProcess:
  """Builds the FedDST `LearningProcess`.

  Type signatures:
    initialize: `( -> LearningAlgorithmState@SERVER)`
    next: `(<LearningAlgorithmState@SERVER, {(x, y)*}@CLIENTS> ->
      <state=LearningAlgorithmState@SERVER, metrics=<distributor=...,
      client_work=..., aggregator=..., finalizer=...>@SERVER>)`

  Args:
    model_fn: Builds the wrapped Keras model.
    initial_model: From `build_initial_model` with the same `model_fn`.
    data_element_spec: `element_spec` of a client's batched `(x, y)` dataset.
    schedule: Readjustment schedule (`schedules.ReadjustmentSchedule` or
      anything with `should_readjust` and `drop_fraction_at`).
    client_config: Local training hyper-parameters.
    server_learning_rate: Server step size (1.0: the averages are the model).
    server_momentum: Server momentum in [0, 1) (> 0: FedAvgM).
    min_votes: A position needs at least this many clients holding it to
      stay in (or enter) the global mask (0 or 1: any holder suffices);
      with `min_votes_unit='weight'`, holders whose summed aggregation
      weights exceed it.
    upload_encoding: How clients encode uploads (`encoding.PayloadEncoding`:
      value dtype, 'bitmap' or 'rice' masks, masks only when changed). None:
      bitmap masks, values in `client_config.value_dtype`.
    download_encoding: How the server encodes the broadcast (value dtype,
      mask code; masks always sent). None: float32 values, bitmap masks.
    remember_old: A client lacking a position of the global mask counts as
      sending the old global weight there (`server_step` module docstring).
    num_active_by_round: Growing sparsity: int array [T_end + 1, layers]
      from `sparsity_distribution.num_active_by_round`, row t = per-layer
      counts of the global model after round t (row 0 must be
      `initial_model.num_active`, the payload capacity; rows after the last
      repeat it). None: constant counts.
    payload_checks: What the server requires of an upload before it
      aggregates it (`payload_validation.PayloadChecks`); invalid uploads
      are dropped and counted in the aggregator's `rejected_clients`. None:
      `payload_validation.default_checks(client_config.readjust_rule,
      min_votes)` (no norm bound). With `num_active_by_round`, its rows
      become the per-round nnz targets.
    robust: How the server bounds each client's influence
      (`robust_aggregation.RobustAggregation`: clipped deltas, capped or
      uniform weights). None: no clipping, the stated example counts.
    min_new_position_votes: A position outside the global mask needs at
      least this many clients holding it to enter the mask (1: any holder;
      `server_step` module docstring).
    server_optimizer: An adaptive server optimizer (`server_optimizers`:
      Adam, Yogi, Adagrad on the global mask) in place of server SGD with
      `server_learning_rate` and `server_momentum`. None: server SGD.
    server_rule: 'feddst' (re-prune to each layer's count) or 'reference'
      (the authors' conditional re-prune; `server_step` module docstring).
    min_votes_unit: 'clients' or 'weight' (`server_step.eligible_votes`).
    num_clients: With `client_config.readjust_counter='client_lifetime'`:
      clients of the run (the lifetime epoch counts are kept per client;
      `next` then takes `client_states.epoch_count_inputs` as client data).
    clients_per_round: With 'client_lifetime': clients sampled per round.

  Returns:
    A `tff.learning.templates.LearningProcess`.

  Raises:
    ValueError: If the encodings conflict with `client_config.value_dtype`,
      the download encoding would leave masks out, or the count table does
      not start at `initial_model.num_active`, grows, or is combined with
      the reference readjust rule (its per-layer keep counts are fixed).
  """
  layout = initial_model.layout
  num_active = initial_model.num_active
  settings = resolve_round_settings(
      initial_model, client_config, min_votes=min_votes,
      upload_encoding=upload_encoding, download_encoding=download_encoding,
      num_active_by_round=num_active_by_round, payload_checks=payload_checks,
      server_rule=server_rule, min_votes_unit=min_votes_unit)
  upload_encoding = settings.upload_encoding
  download_encoding = settings.download_encoding
  num_active_by_round = settings.num_active_by_round
  payload_checks = settings.payload_checks
  initial_model_weights_fn = distributor.initial_weights_computation(
      initial_model.weights)

  model_weights_type = initial_model_weights_fn.type_signature.result
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(data_element_spec))

  if client_config.counts_lifetime_epochs:
    work = lifetime_work.build_lifetime_client_work(
        model_fn, layout, num_active, schedule, client_config,
        model_weights_type, data_type, upload_encoding,
        num_clients=num_clients, num_slots=clients_per_round)
  else:
    work = client_work.build_client_work(
        model_fn, layout, num_active, schedule, client_config,
        model_weights_type, data_type, upload_encoding=upload_encoding)
  if robust is not None and robust.reject_stale:
    work = upload_binding.bind_uploads(work, layout)
  result_type = work.next.type_signature.result.result.member
  aggregator_factory = sum_factory.SparseSumFactory(
      layout.kernel_shapes, num_active, upload_encoding,
      payload_checks=payload_checks, robust=robust)
  aggregator = aggregator_factory.create(result_type.update,
                                         result_type.update_weight)
  aggregate_type = aggregator.next.type_signature.result.result.member
  broadcast = distributor.build_sparse_broadcast(
      layout, num_active, model_weights_type, download_encoding)
  if upload_encoding.masks_only_when_changed:
    server_finalizer = _expanding_finalizer(
        layout, num_active, model_weights_type, aggregate_type,
        server_learning_rate, server_momentum, min_votes,
        remember_old=remember_old, num_active_by_round=num_active_by_round,
        min_new_position_votes=min_new_position_votes,
        server_optimizer=server_optimizer,
        server_rule=server_rule, min_votes_unit=min_votes_unit)
  else:
    server_finalizer = finalizer.build_finalizer(
        layout, num_active, model_weights_type, aggregate_type,
        server_learning_rate=server_learning_rate,
        server_momentum=server_momentum, min_votes=min_votes,
        remember_old=remember_old, num_active_by_round=num_active_by_round,
        min_new_position_votes=min_new_position_votes,
        server_optimizer=server_optimizer,
        server_rule=server_rule, min_votes_unit=min_votes_unit)
  process = tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, broadcast, work, aggregator, server_finalizer)
  if aggregator_factory.holds_reference:
    process = aggregator_feedback.with_aggregator_state_from_model(
        process, aggregator_feedback.reference_update(
            layout, num_active, download_encoding))
  return process


class RoundSettings(NamedTuple):
  """The settings of a FedDST round as the process's parts use them.

  Attributes:
    upload_encoding: The clients' upload encoding.
    download_encoding: The broadcast encoding.
    payload_checks: What the aggregator requires of an upload.
    num_active_by_round: The checked int32 count table, or None.
  """
  upload_encoding: encoding.PayloadEncoding
  download_encoding: encoding.PayloadEncoding
  payload_checks: payload_validation.PayloadChecks
  num_active_by_round: Optional[np.ndarray]


def resolve_round_settings(
    initial_model: InitialModel, client_config: client_work.ClientConfig,
    *,
    min_votes: int = 0,
    upload_encoding: Optional[encoding.PayloadEncoding] = None,
    download_encoding: Optional[encoding.PayloadEncoding] = None,
    num_active_by_round: Optional[np.ndarray] = None,
    payload_checks: Optional[payload_validation.PayloadChecks] = None,
    server_rule: str = 'feddst',
    min_votes_unit: str = 'clients'
) -> RoundSettings:
  """Fills in and checks what `build_fed_dst` passes to its parts.

  `build_fed_dst` and the plain-TF loop (`plain_loop.PlainFedDst`) both
  call it, so they encode, check and count alike. Arguments as for
  `build_fed_dst`.

  Returns:
    The `RoundSettings`.

  Raises:
    ValueError: As `build_fed_dst`.
  """
  layout = initial_model.layout
  if num_active_by_round is not None:
    num_active_by_round = _checked_growing_table(
        num_active_by_round, initial_model, client_config)
  upload_encoding = client_work.resolve_upload_encoding(client_config,
                                                        upload_encoding)
  download_encoding = download_encoding or encoding.PayloadEncoding()
  if num_active_by_round is not None:
    upload_encoding = _with_shrinking_dense_masks(
        upload_encoding, layout, num_active_by_round)
    download_encoding = _with_shrinking_dense_masks(
        download_encoding, layout, num_active_by_round)
  if payload_checks is None:
    payload_checks = payload_validation.default_checks(
        client_config.readjust_rule, min_votes, server_rule=server_rule,
        min_votes_unit=min_votes_unit)
  # Growing sparsity: clients of round t hold the global counts after round
  # t - 1, which is the validator's row t - 1 (row r checks round r + 1).
  if num_active_by_round is not None:
    payload_checks = dataclasses.replace(
        payload_checks, num_active_by_round=num_active_by_round)
  return RoundSettings(upload_encoding, download_encoding, payload_checks,
                       num_active_by_round)


def _expanding_finalizer(layout: models.ModelLayout,
                         num_active: Sequence[int],
                         model_weights_type: tff.Type,
                         compact_aggregate_type: tff.Type,
                         server_learning_rate: float, server_momentum: float,
                         min_votes: int, remember_old: bool = False,
                         num_active_by_round: Optional[np.ndarray] = None,
                         min_new_position_votes: int = 1,
                         server_optimizer: Optional[
                             tff.learning.optimizers.Optimizer] = None,
                         server_rule: str = 'feddst',
                         min_votes_unit: str = 'clients'
                         ) -> tff.learning.templates.FinalizerProcess:
  """`finalizer.build_finalizer` fed by a `CompactAggregate`.

  Expands the aggregate with the global masks (`aggregation.expand_aggregate`)
  at the server, then runs the usual finalizer on the `SparseAggregate`
  (so `remember_old` sees every client's positions, sent or implied).

  Type signature: the finalizer's, with `CompactAggregate@SERVER` in place
  of `SparseAggregate@SERVER`.
  """
  @tff.tensorflow.computation(model_weights_type, compact_aggregate_type)
  def expand(weights, aggregate):
    return aggregation.expand_aggregate(
        aggregate, [weights.non_trainable[i] for i in layout.mask_indices])

  inner = finalizer.build_finalizer(
      layout, num_active, model_weights_type, expand.type_signature.result,
      server_learning_rate=server_learning_rate,
      server_momentum=server_momentum, min_votes=min_votes,
      remember_old=remember_old, num_active_by_round=num_active_by_round,
      min_new_position_votes=min_new_position_votes,
      server_optimizer=server_optimizer,
      server_rule=server_rule, min_votes_unit=min_votes_unit)

  @tff.federated_computation(
      inner.next.type_signature.parameter[0],
      tff.types.FederatedType(model_weights_type, tff.SERVER),
      tff.types.FederatedType(compact_aggregate_type, tff.SERVER))
  def next_fn(state, weights, aggregate):
    return inner.next(state, weights,
                      tff.federated_map(expand, (weights, aggregate)))

  return tff.learning.templates.FinalizerProcess(inner.initialize, next_fn)


def _checked_growing_table(num_active_by_round, initial_model: InitialModel,
                           client_config: client_work.ClientConfig
                           ) -> np.ndarray:
  """Checks a growing-sparsity count table against the initial model."""
  table = np.asarray(num_active_by_round)
  num_layers = len(initial_model.num_active)
  if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] != num_layers:
    raise ValueError(f'num_active_by_round must have shape [rounds, '
                     f'{num_layers}], got {table.shape}.')
  if tuple(int(n) for n in table[0]) != tuple(initial_model.num_active):
    raise ValueError(
        f'num_active_by_round starts at {table[0].tolist()}, not at the '
        f'initial model\'s counts {list(initial_model.num_active)}.')
  if np.any(np.diff(table, axis=0) > 0):
    raise ValueError('num_active_by_round must not grow from row to row: '
                     'the server cannot grow a layer beyond the positions '
                     'the clients hold.')
  if client_config.readjust_rule == 'reference' and np.any(table != table[0]):
    raise ValueError(
        "growing sparsity does not work with readjust_rule='reference': its "
        'per-layer keep counts are fixed for the whole run.')
  return table.astype(np.int32)


def _with_shrinking_dense_masks(payload_encoding: encoding.PayloadEncoding,
                                layout: models.ModelLayout,
                                num_active_by_round: np.ndarray
                                ) -> encoding.PayloadEncoding:
  """Sends the masks of full-capacity layers whose count will shrink.

  An encoding that omits the masks of layers whose capacity equals their
  size (their mask must be all ones) cannot carry such a layer once a
  growing sparsity thins it, so those masks are sent from the start.
  """
  kernel_sizes = np.asarray(layout.kernel_sizes)
  shrinks_from_dense = np.any(
      (num_active_by_round[0] == kernel_sizes) &
      (num_active_by_round[-1] < kernel_sizes))
  if shrinks_from_dense and getattr(payload_encoding, 'omit_dense_masks',
                                    False):
    return dataclasses.replace(payload_encoding, omit_dense_masks=False)
  return payload_encoding
