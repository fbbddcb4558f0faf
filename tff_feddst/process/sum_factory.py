"""The sparse sums as a TFF `AggregationProcess` (`SparseSumFactory`).

Every method's aggregator: each client's upload is validated, decoded and
added to exact sums (`aggregation.add_exactly`) in a `federated_aggregate`.
With robust aggregation (`robust_aggregation`) that screens uploads, a
first `federated_aggregate` over the round's uploads counts their delta
norms, replay fingerprints and stated weights, and its findings (the clip
bound, the replay counts, the weight cap) are broadcast to the second,
summing one; the state then also holds the broadcast model
(`AggregatorState`), which the owning process keeps current
(`aggregator_feedback`).

With a robust mean (`robust_means`: coordinate-wise trimmed mean or
median), the running aggregate also keeps per position the L largest and
smallest holder values (`robust_means.RobustSums`), merged with top-k
(exact, order-free), and the report adds each position's robust value to
the aggregate (`SparseAggregate.robust_values`), which the finalizer takes.
"""

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_feddst.process import aggregation
from tff_feddst.process import encoding
from tff_feddst.process import payload_validation
from tff_feddst.process import robust_aggregation
from tff_feddst.process import robust_means
from tff_feddst.sparse import exact_sum


def _robust_mean(robust: Optional[robust_aggregation.RobustAggregation]
                 ) -> Optional[robust_means.RobustMean]:
  return robust.robust_mean if robust is not None else None


def zero_exact_sums(float_zero: Any, kernel_shapes: Sequence[Sequence[int]],
                    dense_shapes: Sequence[Sequence[int]],
                    robust: Optional[robust_aggregation.RobustAggregation]):
  """The exact running aggregate of no clients (`aggregation.add_exactly`).

  Args:
    float_zero: `aggregation.zero_sums` of the aggregator.
    kernel_shapes: Shape of each prunable kernel.
    dense_shapes: Shape of each dense parameter tensor, in payload order.
    robust: The robust aggregation settings (None: none).

  Returns:
    `exact_sum.to_exact(float_zero)`, in a `robust_means.RobustSums` with
    empty order terms when `robust` asks for a robust mean.
  """
  exact = exact_sum.to_exact(float_zero)
  mean = _robust_mean(robust)
  if mean is None:
    return exact
  return robust_means.RobustSums(exact, robust_means.zero_terms(
      tuple(kernel_shapes) + tuple(dense_shapes), mean.capacity))


def merge_exact_sums(first: Any, second: Any) -> Any:
  """Two exact running aggregates of disjoint groups of clients, merged."""
  if isinstance(first, robust_means.RobustSums):
    return robust_means.RobustSums(
        exact_sum.add(first.sums, second.sums),
        robust_means.merge_terms(first.terms, second.terms))
  return exact_sum.add(first, second)


def report_exact_sums(float_zero: Any, exact: Any,
                      robust: Optional[robust_aggregation.RobustAggregation],
                      num_kernels: int) -> Any:
  """The float aggregate of an exact one (robust values added if asked)."""
  mean = _robust_mean(robust)
  if mean is None:
    return exact_sum.from_exact(float_zero, exact)
  return aggregation.with_robust_values(
      exact_sum.from_exact(float_zero, exact.sums),
      robust_means.robust_values(exact.terms, mean, num_kernels))


class SparseSumFactory(tff.aggregators.WeightedAggregationFactory):
  """Aggregation factory for sparse payloads (FedDST's, and every method's).

  `create(payload_type, weight_type)` returns an `AggregationProcess`:
    initialize: `( -> int32@SERVER)` (the round counter, 0; with
      `initial_targets`: int32[layers], those targets)
    next: `(<int32@SERVER, Payload?@CLIENTS, float32@CLIENTS> ->
      <state=int32@SERVER, result=Aggregate@SERVER,
      measurements=<upload_bytes=int64, num_clients=int32,
      rejected_clients=int32, rejected_<kind>=int32...>@SERVER>)`
  where Payload? is `payload_type` (a `SparsePayload` or `CodedPayload`, or
  with an `UploadExtension` the upload holding one) with every dimension
  unknown (`payload_validation.relaxed_type`), so a client value of
  `payload_type` is assignable to it and one of other lengths is rejected
  at run time, and Aggregate is a `SparseAggregate`, a `CompactAggregate`
  when the encoding may leave masks out (the finalizer then expands it
  with `expand_aggregate`), or an `ExtendedAggregate` with an extension.
  `next` increments the round counter; with a per-round target table the
  state's row is broadcast to the clients' accumulate. With
  `initial_targets` the state is broadcast as the targets and `next` leaves
  it unchanged: the process that owns the aggregator writes the next
  round's targets into it (PruneFL: its global mask's counts).
  """

  def __init__(self, kernel_shapes: Sequence[Sequence[int]],
               num_active: Sequence[int] = (),
               payload_encoding: Optional[encoding.PayloadEncoding] = None,
               payload_checks: Optional[
                   payload_validation.PayloadChecks] = None,
               *,
               initial_targets: Optional[Sequence[int]] = None,
               extension: Optional[aggregation.UploadExtension] = None,
               robust: Optional[robust_aggregation.RobustAggregation] = None):
    """Creates the factory.

    Args:
      kernel_shapes: Shape of each prunable kernel, in payload order.
      num_active: Active weights per kernel (needed unless the encoding is
        the default bitmap one; then the value lengths of `payload_type`).
      payload_encoding: The clients' upload encoding (None: the default
        `PayloadEncoding()`).
      payload_checks: What a payload must satisfy to be aggregated (None:
        `payload_validation.PayloadChecks()`, exact nnz, no norm bound).
      initial_targets: Per-layer target nnz of the first round, kept in the
        state (see the class docstring); None: the targets come from
        `num_active` or the checks' per-round table.
      extension: What uploads carry beside the payload (None: nothing).
      robust: How the server bounds each client (`robust_aggregation`):
        weight cap or uniform weights, and with `clip_updates` clipped
        deltas (the state then holds the round's reference model, which the
        owning process keeps current: `aggregator_feedback`). None: the
        stated weights, no clipping.

    Raises:
      ValueError: If `num_active` is missing for a `CodedPayload` encoding,
        or `initial_targets` is combined with a per-round table.
    """
    self._kernel_shapes = tuple(tuple(s) for s in kernel_shapes)
    self._num_active = tuple(int(n) for n in num_active)
    self._encoding = payload_encoding or encoding.PayloadEncoding()
    self._checks = payload_checks or payload_validation.PayloadChecks()
    self._initial_targets = (None if initial_targets is None else
                             tuple(int(n) for n in initial_targets))
    self._extension = extension
    self._robust = robust
    if (not self._encoding.is_bitmap_payload and
        len(self._num_active) != len(self._kernel_shapes)):
      raise ValueError(f'encoding {self._encoding.name} needs num_active '
                       'for every kernel.')
    if self._initial_targets is not None and self._checks.has_round_targets:
      raise ValueError('initial_targets and a per-round target table '
                       '(num_active_by_round) exclude each other.')
    if (_robust_mean(robust) is not None and
        self._encoding.masks_only_when_changed and not self.clips_updates):
      raise ValueError('a robust mean of uploads that may leave masks out '
                       'needs the global masks: turn clip_updates on.')

  def _state_computations(self, table: np.ndarray, reference_type=None):
    """`(first_state, next_state, round_targets)` TF computations.

    The counter is the round number (targets from `table`) or, with
    `initial_targets`, the targets themselves; with a `reference_type` the
    state is an `AggregatorState` holding the counter and the reference.
    """
    initial_targets = self._initial_targets
    if initial_targets is not None:
      def first_counter():
        return tf.constant(initial_targets, tf.int32)

      def next_counter(targets):
        return tf.identity(targets)

      def counter_targets(targets):
        return tf.identity(targets)
    else:
      def first_counter():
        return tf.constant(0, tf.int32)

      def next_counter(round_index):
        return round_index + 1

      def counter_targets(round_index):
        rows = tf.constant(table, tf.int32)
        return rows[tf.minimum(round_index, len(table) - 1)]

    if reference_type is None:
      first_state = tff.tensorflow.computation(first_counter)
      state_type = first_state.type_signature.result
      return (first_state,
              tff.tensorflow.computation(next_counter, state_type),
              tff.tensorflow.computation(counter_targets, state_type))

    dense_shapes = [t.shape for t in tff.structure.flatten(
        reference_type.dense)]

    @tff.tensorflow.computation
    def first_state():
      return AggregatorState(
          counter=first_counter(),
          reference=robust_aggregation.zero_reference(self._kernel_shapes,
                                                      dense_shapes))

    state_type = first_state.type_signature.result

    @tff.tensorflow.computation(state_type)
    def next_state(state):
      return AggregatorState(counter=next_counter(state.counter),
                             reference=state.reference)

    @tff.tensorflow.computation(state_type)
    def round_targets(state):
      return counter_targets(state.counter)

    return first_state, next_state, round_targets

  @property
  def clips_updates(self) -> bool:
    """Whether the state holds a reference model (`AggregatorState`)."""
    return self._robust is not None and self._robust.clip_updates

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    """Builds the process for clients' values of `value_type`.

    Args:
      value_type: TFF type of one client's payload (or upload), with static
        shapes.
      weight_type: TFF type of its weight (float32).

    Returns:
      The `AggregationProcess` described in the class docstring.

    Raises:
      ValueError: If `value_type` is not the payload the kernel shapes,
        counts and encoding describe, or a target table does not fit.
    """
    kernel_shapes = self._kernel_shapes
    payload_encoding = self._encoding
    checks = self._checks
    extension = self._extension
    robust = self._robust
    clips = self.clips_updates
    payload_type = extension.payload_of(value_type) if extension else value_type
    dense_shapes = tuple(
        tuple(t.shape) for t in tff.structure.flatten(payload_type.dense))
    num_active = self._num_active or tuple(
        int(t.shape[0]) for t in tff.structure.flatten(payload_type.values))
    spec = payload_validation.payload_spec(kernel_shapes, num_active,
                                           dense_shapes, payload_encoding)
    if extension:
      spec = extension.spec(spec)
    if not tff.types.tensorflow_to_type(spec).is_assignable_from(value_type):
      raise ValueError(f'value_type {value_type} is not the payload of '
                       f'kernels {kernel_shapes} with {num_active} values '
                       f'in encoding {payload_encoding.name}.')
    relaxed_value_type = payload_validation.relaxed_type(spec)
    table = checks.targets_table(num_active)
    has_targets = (checks.has_round_targets or
                   self._initial_targets is not None)

    def float_zero():
      return aggregation.zero_sums(kernel_shapes, dense_shapes,
                                   payload_encoding, num_active, extension)

    # Running sums are kept in `exact_sum` form (`add_exactly`), so the
    # result is the same for any client order and split over workers.
    @tff.tensorflow.computation
    def zero_fn():
      return zero_exact_sums(float_zero(), kernel_shapes, dense_shapes,
                             robust)

    exact_type = zero_fn.type_signature.result
    targets_type = tff.TensorType(np.int32, [len(num_active)])
    reference_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype),
        robust_aggregation.zero_reference(kernel_shapes, dense_shapes)))
    screens = robust is not None and robust.screens_uploads
    findings_type = tff.types.tensorflow_to_type(_FINDINGS_SPEC)
    # What each client's value is zipped with: its weight, the round's
    # targets (if any), the reference (if clipping); in the second pass of
    # a screening aggregator also the first pass's findings.
    extra_types = ([weight_type] + ([targets_type] if has_targets else []) +
                   ([reference_type] if clips else []))

    def unpack(client_value):
      """`(payload, weight, targets, reference, findings)` of a value."""
      payload, weight, *rest = client_value
      targets = rest.pop(0) if has_targets else None
      reference = rest.pop(0) if clips else None
      findings = rest.pop(0) if rest else None
      return payload, weight, targets, reference, findings

    def add_client(exact_aggregate, client_value):
      payload, weight, targets, reference, findings = unpack(client_value)
      round_bound = None
      if screens:
        bound, replay_counts, weight_cap = findings
        round_bound = robust_aggregation.RoundBound(
            reference, bound,
            replay_counts if robust.reject_replays else None,
            weight_cap if robust.caps_weights_by_round else None)
      return aggregation.add_exactly(
          exact_aggregate, payload, weight, kernel_shapes, dense_shapes,
          num_active, payload_encoding, checks, targets, extension, robust,
          round_bound, None if reference is None else reference.masks)

    accumulate = tff.tensorflow.computation(
        add_client, exact_type, tuple(
            [relaxed_value_type] + extra_types +
            ([findings_type] if screens else [])))

    @tff.tensorflow.computation(exact_type, exact_type)
    def merge(first, second):
      return merge_exact_sums(first, second)

    @tff.tensorflow.computation(exact_type)
    def report(exact_aggregate):
      return report_exact_sums(float_zero(), exact_aggregate, robust,
                               len(kernel_shapes))

    aggregate_type = report.type_signature.result
    first_state, next_state, round_targets = self._state_computations(
        table, reference_type if clips else None)
    screening = self._screening_computations(
        relaxed_value_type, extra_types, unpack, kernel_shapes, dense_shapes,
        num_active, first_state.type_signature.result) if screens else None

    measure = self._measure_computation(aggregate_type, findings_type)
    reference_of_state = None
    if clips:
      reference_of_state = tff.tensorflow.computation(
          lambda state: state.reference, first_state.type_signature.result)
    screening_default = tff.tensorflow.computation(_no_findings)

    @tff.federated_computation
    def init_fn():
      return tff.federated_eval(first_state, tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.types.FederatedType(relaxed_value_type, tff.CLIENTS),
        tff.types.FederatedType(weight_type, tff.CLIENTS))
    def next_fn(state, payload, weight):
      zipped = [payload, weight]
      if has_targets:
        zipped.append(tff.federated_broadcast(
            tff.federated_map(round_targets, state)))
      if clips:
        zipped.append(tff.federated_broadcast(
            tff.federated_map(reference_of_state, state)))
      if screens:
        screened = tff.federated_aggregate(
            tff.federated_zip(tuple(zipped)), screening.zero(),
            screening.accumulate, screening.merge, screening.report)
        findings = tff.federated_map(screening.findings, screened)
        zipped.append(tff.federated_broadcast(findings))
      else:
        findings = tff.federated_eval(screening_default, tff.SERVER)
      aggregate = tff.federated_aggregate(tff.federated_zip(tuple(zipped)),
                                          zero_fn(), accumulate, merge,
                                          report)
      return tff.templates.MeasuredProcessOutput(
          state=tff.federated_map(next_state, state), result=aggregate,
          measurements=tff.federated_map(measure, (aggregate, findings)))

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def _measure_computation(self, aggregate_type, findings_type):
    """`(aggregate, findings) -> measurements` (`measurements_of`, plus the
    round's clip bound and weight cap when they are in use)."""
    robust = self._robust
    clips = self.clips_updates
    caps = (robust is not None and robust.screens_uploads and
            robust.caps_weights_by_round)

    @tff.tensorflow.computation(aggregate_type, findings_type)
    def measure(aggregate, findings):
      measurements = aggregation.measurements_of(aggregate)
      if clips:
        measurements['update_norm_bound'] = findings[0]
      if caps:
        measurements['round_weight_cap'] = findings[2]
      return measurements

    return measure

  def _screening_computations(self, relaxed_value_type, extra_types, unpack,
                              kernel_shapes, dense_shapes, num_active,
                              state_type) -> '_ScreeningComputations':
    """The TF computations of the first pass (`robust_aggregation`).

    The pass sums a histogram of the accepted uploads' delta norms and
    their replay fingerprint counts (integers: exact in any order); its
    findings are the round's clip bound and those counts.
    """
    robust = self._robust
    clips = self.clips_updates

    def zero_counts():
      # Delta norms, replay fingerprints, stated weights (same bins).
      return (tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32),
              robust_aggregation.zero_fingerprint_counts(),
              tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32))

    zero = tff.tensorflow.computation(zero_counts)
    counts_type = zero.type_signature.result

    def add_upload(counts, client_value):
      payload, weight, targets, reference, _ = unpack(client_value)
      screen = aggregation.screen_upload(
          payload, weight, kernel_shapes, dense_shapes, num_active,
          self._encoding, self._checks, reference, targets, self._extension)
      return aggregation.add_screen(counts, screen, weight)

    accumulate = tff.tensorflow.computation(
        add_upload, counts_type, tuple([relaxed_value_type] + extra_types))

    @tff.tensorflow.computation(counts_type, counts_type)
    def merge(first, second):
      return tf.nest.map_structure(tf.add, first, second)

    @tff.tensorflow.computation(counts_type)
    def report(counts):
      return tf.nest.map_structure(tf.identity, counts)

    @tff.tensorflow.computation(counts_type)
    def findings(counts):
      return aggregation.screening_findings(counts, robust)

    return _ScreeningComputations(zero, accumulate, merge, report, findings)


# The first pass's findings: clip bound, replay counts, weight cap.
_FINDINGS_SPEC = (
    tf.TensorSpec([], tf.float32),
    tf.TensorSpec([2, robust_aggregation.NUM_REPLAY_BUCKETS], tf.int32),
    tf.TensorSpec([], tf.float32))


def _no_findings():
  """The findings of an aggregator without a first pass."""
  return (tf.constant(np.inf, tf.float32),
          robust_aggregation.zero_fingerprint_counts(),
          tf.constant(np.inf, tf.float32))


class _ScreeningComputations(NamedTuple):
  zero: Any
  accumulate: Any
  merge: Any
  report: Any
  findings: Any


class AggregatorState(NamedTuple):
  """`SparseSumFactory`'s state when it clips updates.

  Attributes:
    counter: The round counter (int32) or, with `initial_targets`, the
      targets (int32 [layers]): the state of a factory that does not clip.
    reference: The `robust_aggregation.Reference` of the round's broadcast
      model, which the owning process writes after every round
      (`aggregator_feedback`).
  """
  counter: Any
  reference: Any
