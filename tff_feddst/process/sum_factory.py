"""The sparse sums as a TFF `AggregationProcess` (`SparseSumFactory`).

Every method's aggregator: each client's upload is validated, decoded and
added to exact sums (`aggregation.add_exactly`) in a `federated_aggregate`.
With robust aggregation (`robust_aggregation`) that screens uploads, a
first `federated_aggregate` over the round's uploads counts their delta
norms, replay fingerprints and stated weights, and its findings (the clip
bound, the replay counts, the weight cap) are broadcast to the second,
summing one. When it clips or binds uploads to their round
(`upload_binding`: each client value is a `BoundUpload`, and one whose
digest is not the broadcast model's is rejected as 'stale') the state also
holds the broadcast model (`AggregatorState`), which the owning process
keeps current (`aggregator_feedback`).

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
from tff_feddst.process import update_direction
from tff_feddst.process import upload_binding
from tff_feddst.process import upload_screening
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
    state is an `AggregatorState` holding the counter, the reference and
    the carried bounds (`next_state` keeps them).
    """
    initial_targets = self._initial_targets
    next_counter = self._next_counter
    if initial_targets is not None:
      def first_counter():
        return tf.constant(initial_targets, tf.int32)

      def counter_targets(targets):
        return tf.identity(targets)
    else:
      def first_counter():
        return tf.constant(0, tf.int32)

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
                                                      dense_shapes),
          carried=no_carried_bounds())

    state_type = first_state.type_signature.result

    @tff.tensorflow.computation(state_type)
    def next_state(state):
      return AggregatorState(counter=next_counter(state.counter),
                             reference=state.reference,
                             carried=state.carried)

    @tff.tensorflow.computation(state_type)
    def round_targets(state):
      return counter_targets(state.counter)

    return first_state, next_state, round_targets

  def _next_counter(self, counter):
    """The state's counter after a round: the round number plus one, or
    with `initial_targets` the targets as they are (the owning process
    writes the next ones)."""
    if self._initial_targets is not None:
      return tf.identity(counter)
    return counter + 1

  @property
  def clips_updates(self) -> bool:
    """Whether client deltas are clipped (`robust_aggregation`)."""
    return self._robust is not None and self._robust.clip_updates

  @property
  def holds_reference(self) -> bool:
    """Whether the state holds the broadcast model (`AggregatorState`),
    which the owning process must keep current (`aggregator_feedback`)."""
    return self._robust is not None and self._robust.holds_reference

  @property
  def binds_uploads(self) -> bool:
    """Whether client values are `upload_binding.BoundUpload`s."""
    return self._robust is not None and self._robust.reject_stale

  @property
  def _screens(self) -> bool:
    """Whether a first pass screens the round's uploads."""
    return self._robust is not None and self._robust.screens_uploads

  @property
  def _carries(self) -> bool:
    """Whether one pass clips and caps with the last round's bounds."""
    return self.holds_reference and self._robust.carries_bounds

  @property
  def _uses_reference(self) -> bool:
    """Whether the clients' accumulate gets the reference: where deltas
    are taken, in an aggregator that clips with a bound."""
    return self.clips_updates and (self._screens or self._carries)

  def _value_shapes(self, value_type) -> '_ValueShapes':
    """Checks a client value's type; its payload's counts and shapes.

    Raises:
      ValueError: If `value_type` is not the payload the kernel shapes,
        counts and encoding describe.
    """
    kernel_shapes = self._kernel_shapes
    upload_type = value_type.upload if self.binds_uploads else value_type
    payload_type = (self._extension.payload_of(upload_type)
                    if self._extension else upload_type)
    dense_shapes = tuple(
        tuple(t.shape) for t in tff.structure.flatten(payload_type.dense))
    num_active = self._num_active or tuple(
        int(t.shape[0]) for t in tff.structure.flatten(payload_type.values))
    spec = payload_validation.payload_spec(kernel_shapes, num_active,
                                           dense_shapes, self._encoding)
    if self._extension:
      spec = self._extension.spec(spec)
    if self.binds_uploads:
      spec = upload_binding.BoundUpload(upload=spec, model_digest=_DIGEST_SPEC)
    if not tff.types.tensorflow_to_type(spec).is_assignable_from(value_type):
      raise ValueError(f'value_type {value_type} is not the payload of '
                       f'kernels {kernel_shapes} with {num_active} values '
                       f'in encoding {self._encoding.name}.')
    return _ValueShapes(num_active, dense_shapes,
                        payload_validation.relaxed_type(spec))

  def _findings_spec(self, dense_shapes) -> tuple:
    """The first pass's findings as `tf.TensorSpec`s."""
    if not (self._screens and self._robust.checks_direction):
      return _FINDINGS_SPEC
    return _FINDINGS_SPEC + (tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype),
        update_direction.zero_direction(self._kernel_shapes, dense_shapes)),)

  def _has_targets(self) -> bool:
    return (self._checks.has_round_targets or
            self._initial_targets is not None)

  def _zipped_types(self, shapes: '_ValueShapes', weight_type) -> list:
    """What each client's value is zipped with, by type.

    Its weight, the round's targets (if any), the reference (if clipping),
    the broadcast's digest (if bound); in the second pass of a screening
    aggregator also the first pass's findings, in a one-pass one the
    carried bounds (these last two are not in this list).
    """
    targets_type = tff.TensorType(np.int32, [len(shapes.num_active)])
    return ([weight_type] +
            ([targets_type] if self._has_targets() else []) +
            ([self._reference_type(shapes.dense_shapes)]
             if self._uses_reference else []) +
            ([tff.types.tensorflow_to_type(_DIGEST_SPEC)]
             if self.binds_uploads else []))

  def _reference_type(self, dense_shapes) -> tff.Type:
    """TFF type of the `robust_aggregation.Reference` of the model."""
    return tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype),
        robust_aggregation.zero_reference(self._kernel_shapes,
                                          dense_shapes)))

  def _unpack(self, client_value) -> '_ClientValue':
    """`_ClientValue` of a zipped client value (see `_zipped_types`)."""
    payload, weight, *rest = client_value
    targets = rest.pop(0) if self._has_targets() else None
    reference = rest.pop(0) if self._uses_reference else None
    digest = rest.pop(0) if self.binds_uploads else None
    findings = rest.pop(0) if rest else None
    return _ClientValue(payload, weight, targets, reference, digest, findings)

  def _round_bound(self, value: '_ClientValue'
                   ) -> Optional[robust_aggregation.RoundBound]:
    """The bounds a client is added with: a first pass's findings, the
    carried bounds, or none."""
    robust = self._robust
    if self._screens:
      bound, replay_counts, weight_cap = value.findings[:3]
      return robust_aggregation.RoundBound(
          value.reference, bound,
          replay_counts if robust.reject_replays else None,
          weight_cap if robust.caps_weights_by_round else None,
          value.findings[3] if robust.checks_direction else None)
    if self._carries:
      bound, weight_cap = value.findings
      return robust_aggregation.RoundBound(
          value.reference, bound, None,
          weight_cap if robust.caps_weights_by_round else None)
    return None

  def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
    """Builds the process for clients' values of `value_type`.

    Args:
      value_type: TFF type of one client's payload (or upload; with
        `binds_uploads`, its `BoundUpload`), with static shapes.
      weight_type: TFF type of its weight (float32).

    Returns:
      The `AggregationProcess` described in the class docstring.

    Raises:
      ValueError: If `value_type` is not the payload the kernel shapes,
        counts and encoding describe, or a target table does not fit.
    """
    kernel_shapes = self._kernel_shapes
    robust = self._robust
    shapes = self._value_shapes(value_type)
    num_active, dense_shapes = shapes.num_active, shapes.dense_shapes
    screens, carries = self._screens, self._carries

    def float_zero():
      return aggregation.zero_sums(kernel_shapes, dense_shapes,
                                   self._encoding, num_active,
                                   self._extension)

    def zero_exact():
      return zero_exact_sums(float_zero(), kernel_shapes, dense_shapes,
                             robust)

    def report_exact(exact):
      return report_exact_sums(float_zero(), exact, robust,
                               len(kernel_shapes))

    def add_client(exact_aggregate, client_value):
      value = self._unpack(client_value)
      return aggregation.add_exactly(
          exact_aggregate, value.payload, value.weight, kernel_shapes,
          dense_shapes, num_active, self._encoding, self._checks,
          value.targets, self._extension, robust, self._round_bound(value),
          value.digest,
          None if value.reference is None else value.reference.masks)

    # Running sums are kept in `exact_sum` form (`add_exactly`), so the
    # result is the same for any client order and split over workers.
    zero_fn = tff.tensorflow.computation(zero_exact)
    exact_type = zero_fn.type_signature.result
    extra_types = self._zipped_types(shapes, weight_type)
    findings_type = tff.types.tensorflow_to_type(
        self._findings_spec(dense_shapes))
    carried_type = tff.types.tensorflow_to_type(_CARRIED_SPEC)
    value_with_bounds_type = tuple(
        [shapes.relaxed_value_type] + extra_types +
        ([findings_type] if screens else []) +
        ([carried_type] if carries else []))
    sums = _SumComputations(
        zero=zero_fn,
        accumulate=tff.tensorflow.computation(add_client, exact_type,
                                              value_with_bounds_type),
        merge=tff.tensorflow.computation(merge_exact_sums, exact_type,
                                         exact_type),
        report=tff.tensorflow.computation(report_exact, exact_type))
    aggregate_type = sums.report.type_signature.result
    states = self._state_computations(
        self._checks.targets_table(num_active),
        self._reference_type(dense_shapes) if self.holds_reference else None)
    state_type = states[0].type_signature.result
    screening = self._screening_computations(
        shapes.relaxed_value_type, extra_types, kernel_shapes, dense_shapes,
        num_active) if screens else None
    one_pass = self._one_pass_computations(
        zero_exact, add_client, merge_exact_sums, report_exact,
        value_with_bounds_type, kernel_shapes, dense_shapes, num_active,
        state_type) if carries else None
    measure = self._measure_computation(
        aggregate_type, findings_type if screens else
        (carried_type if carries else None))
    return self._process(shapes.relaxed_value_type, weight_type, states,
                         sums, screening, one_pass, measure)

  def _process(self, relaxed_value_type, weight_type, states, sums,
               screening, one_pass, measure
               ) -> tff.templates.AggregationProcess:
    """The `AggregationProcess` of the round's computations.

    Args:
      relaxed_value_type: A client value's type, dimensions unknown.
      weight_type: Its weight's type.
      states: `(first_state, next_state, round_targets)`.
      sums: The summing pass (`_SumComputations`).
      screening: The first pass (`_ScreeningComputations`) or None.
      one_pass: The one-pass form (`_OnePassComputations`) or None.
      measure: `(aggregate[, findings]) -> measurements`.

    Returns:
      The process.
    """
    first_state, next_state, round_targets = states
    state_type = first_state.type_signature.result
    has_targets = self._has_targets()
    reference_of_state = tff.tensorflow.computation(
        lambda state: state.reference,
        state_type) if self._uses_reference else None
    digest_of_state = tff.tensorflow.computation(
        lambda state: upload_binding.reference_digest(state.reference),
        state_type) if self.binds_uploads else None

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
      if reference_of_state is not None:
        zipped.append(tff.federated_broadcast(
            tff.federated_map(reference_of_state, state)))
      if digest_of_state is not None:
        zipped.append(tff.federated_broadcast(
            tff.federated_map(digest_of_state, state)))
      if one_pass is not None:
        carried = tff.federated_map(one_pass.carried_of_state, state)
        zipped.append(tff.federated_broadcast(carried))
        summed = tff.federated_aggregate(
            tff.federated_zip(tuple(zipped)), one_pass.zero(),
            one_pass.accumulate, one_pass.merge, one_pass.report)
        aggregate = tff.federated_map(one_pass.sums_of, summed)
        return tff.templates.MeasuredProcessOutput(
            state=tff.federated_map(one_pass.next_state, (state, summed)),
            result=aggregate,
            measurements=tff.federated_map(measure, (aggregate, carried)))
      if screening is not None:
        screened = tff.federated_aggregate(
            tff.federated_zip(tuple(zipped)), screening.zero(),
            screening.accumulate, screening.merge, screening.report)
        if screening.root_direction is not None:
          direction = tff.federated_map(
              screening.root_direction,
              tff.federated_map(reference_of_state, state))
          findings = tff.federated_map(screening.findings,
                                       (screened, direction))
        else:
          findings = tff.federated_map(screening.findings, screened)
        zipped.append(tff.federated_broadcast(findings))
      aggregate = tff.federated_aggregate(
          tff.federated_zip(tuple(zipped)), sums.zero(), sums.accumulate,
          sums.merge, sums.report)
      measured = aggregate if screening is None else (aggregate, findings)
      return tff.templates.MeasuredProcessOutput(
          state=tff.federated_map(next_state, state), result=aggregate,
          measurements=tff.federated_map(measure, measured))

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def _measure_computation(self, aggregate_type, findings_type):
    """`(aggregate, findings) -> measurements` (`measurements_of`, plus the
    round's clip bound and weight cap when they are in use); without a
    first pass (`findings_type` None): `aggregate -> measurements`, with
    the clip bound, if clipping is asked for, reported as +inf (no bound
    was applied)."""
    robust = self._robust
    clips, screens = self.clips_updates, self._screens
    caps = ((self._screens or self._carries) and
            robust.caps_weights_by_round)

    def measurements(aggregate, findings):
      measured = aggregation.measurements_of(aggregate)
      no_bound = tf.constant(np.inf, tf.float32)
      if clips:
        measured['update_norm_bound'] = (
            no_bound if findings is None else findings[0])
      if caps:  # A first pass's findings, or the carried bounds.
        measured['round_weight_cap'] = findings[2 if screens else 1]
      return measured

    if findings_type is None:
      return tff.tensorflow.computation(
          lambda aggregate: measurements(aggregate, None), aggregate_type)
    return tff.tensorflow.computation(measurements, aggregate_type,
                                      findings_type)

  def _one_pass_computations(self, zero_sums, add_client, merge_sums,
                             report_sums, value_type, kernel_shapes,
                             dense_shapes, num_active,
                             state_type) -> '_OnePassComputations':
    """The TF computations of an aggregator without a first pass.

    TFF's multi-worker (mergeable) form runs one `federated_aggregate` per
    round, which no other aggregate may feed. So each client is added with
    the bounds found in the previous round (`CarriedBounds`, broadcast from
    the state) and, beside the sums, its delta norm and stated weight are
    counted in histograms (as a first pass would count them), from which
    the next state's bounds follow. Round 1 has no bounds yet.
    """
    robust = self._robust

    def zero_counts():
      return (tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32),
              tf.zeros([robust_aggregation.NUM_NORM_BINS], tf.int32))

    @tff.tensorflow.computation
    def zero():
      return zero_sums(), zero_counts()

    summed_type = zero.type_signature.result
    sums_type, counts_type = summed_type

    def add(summed, client_value):
      sums, (norms, weights) = summed
      value = self._unpack(client_value)
      screen = upload_screening.screen_upload(
          value.payload, value.weight, kernel_shapes, dense_shapes,
          num_active, self._encoding, self._checks, value.reference,
          value.targets, self._extension, value.digest)
      norms, _, weights = upload_screening.add_screen(
          (norms, robust_aggregation.zero_fingerprint_counts(), weights),
          screen, value.weight)
      return add_client(sums, client_value), (norms, weights)

    accumulate = tff.tensorflow.computation(add, summed_type, value_type)

    @tff.tensorflow.computation(summed_type, summed_type)
    def merge(first, second):
      return (merge_sums(first[0], second[0]),
              tf.nest.map_structure(tf.add, first[1], second[1]))

    @tff.tensorflow.computation(summed_type)
    def report(summed):
      return report_sums(summed[0]), tf.nest.map_structure(tf.identity,
                                                           summed[1])

    reported_type = report.type_signature.result

    @tff.tensorflow.computation(reported_type)
    def sums_of(reported):
      return reported[0]

    @tff.tensorflow.computation(state_type)
    def carried_of_state(state):
      return state.carried.bound, state.carried.weight_cap

    @tff.tensorflow.computation(state_type, reported_type)
    def next_state(state, reported):
      norms, weights = reported[1]
      bound, _, weight_cap = upload_screening.screening_findings(
          (norms, None, weights), robust)
      return AggregatorState(counter=self._next_counter(state.counter),
                             reference=state.reference,
                             carried=CarriedBounds(bound=bound,
                                                   weight_cap=weight_cap))

    del sums_type, counts_type
    return _OnePassComputations(zero, accumulate, merge, report, sums_of,
                                carried_of_state, next_state)

  def _screening_computations(self, relaxed_value_type, extra_types,
                              kernel_shapes, dense_shapes, num_active
                              ) -> '_ScreeningComputations':
    """The TF computations of the first pass (`robust_aggregation`).

    The pass sums a histogram of the accepted uploads' delta norms and
    their replay fingerprint counts (integers: exact in any order), and
    with the direction check their unit deltas (`exact_sum`); its findings
    are the round's clip bound, those counts, the weight cap and the sum
    of unit deltas.
    """
    robust = self._robust
    checks_direction = robust.checks_direction
    sums_unit_deltas = robust.sums_unit_deltas
    direction_shapes = ((tuple(kernel_shapes), tuple(dense_shapes))
                        if sums_unit_deltas else None)

    zero = tff.tensorflow.computation(
        lambda: upload_screening.zero_counts(direction_shapes))
    counts_type = zero.type_signature.result

    def add_upload(counts, client_value):
      value = self._unpack(client_value)
      screen = upload_screening.screen_upload(
          value.payload, value.weight, kernel_shapes, dense_shapes,
          num_active, self._encoding, self._checks, value.reference,
          value.targets, self._extension, value.digest,
          with_direction=sums_unit_deltas)
      return upload_screening.add_screen(counts, screen, value.weight)

    accumulate = tff.tensorflow.computation(
        add_upload, counts_type, tuple([relaxed_value_type] + extra_types))

    @tff.tensorflow.computation(counts_type, counts_type)
    def merge(first, second):
      return tf.nest.map_structure(tf.add, first, second)

    @tff.tensorflow.computation(counts_type)
    def report(counts):
      return tf.nest.map_structure(tf.identity, counts)

    if robust.server_root_step is not None:
      # The reference is the server's own root step (`server_root_step`),
      # taken from the broadcast model before the uploads are read.
      root_step = robust.server_root_step
      reference_type = self._reference_type(dense_shapes)

      @tff.tensorflow.computation(reference_type)
      def root_direction(reference):
        return root_step.direction(root_step.new_trainer(), reference)

      @tff.tensorflow.computation(counts_type,
                                  root_direction.type_signature.result)
      def findings(counts, direction):
        return upload_screening.screening_findings(counts, robust) + (
            direction,)

      return _ScreeningComputations(zero, accumulate, merge, report,
                                    findings, root_direction)

    @tff.tensorflow.computation(counts_type)
    def findings(counts):
      found = upload_screening.screening_findings(counts, robust)
      if not checks_direction:
        return found
      return found + (upload_screening.direction_sum_of(
          counts, kernel_shapes, dense_shapes),)

    return _ScreeningComputations(zero, accumulate, merge, report, findings)


# The first pass's findings: clip bound, replay counts, weight cap (and,
# with the direction check, the sum of unit deltas: `_findings_spec`).
_FINDINGS_SPEC = (
    tf.TensorSpec([], tf.float32),
    tf.TensorSpec([2, robust_aggregation.NUM_REPLAY_BUCKETS], tf.int32),
    tf.TensorSpec([], tf.float32))


# The carried bounds of a one-pass aggregator: clip bound, weight cap.
_CARRIED_SPEC = (tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32))

# The int32 model digest of a bound upload (`upload_binding`).
_DIGEST_SPEC = tf.TensorSpec([], tf.int32)


class _ValueShapes(NamedTuple):
  """A client value's payload counts and shapes, and its relaxed type."""
  num_active: tuple
  dense_shapes: tuple
  relaxed_value_type: Any


class _SumComputations(NamedTuple):
  """The summing pass's `federated_aggregate` computations."""
  zero: Any
  accumulate: Any
  merge: Any
  report: Any


class _OnePassComputations(NamedTuple):
  zero: Any
  accumulate: Any
  merge: Any
  report: Any
  sums_of: Any
  carried_of_state: Any
  next_state: Any


class _ClientValue(NamedTuple):
  """A client's value as the accumulate sees it (None: not zipped in)."""
  payload: Any
  weight: Any
  targets: Any
  reference: Any
  digest: Any
  findings: Any


class _ScreeningComputations(NamedTuple):
  """The first pass's computations; `root_direction` (reference -> the
  server's root step, `server_root_step`) only with a root step."""
  zero: Any
  accumulate: Any
  merge: Any
  report: Any
  findings: Any
  root_direction: Any = None


class CarriedBounds(NamedTuple):
  """The clip bound and weight cap a one-pass aggregator takes from the
  previous round (float32 scalars; +inf: none yet, or not in use)."""
  bound: Any
  weight_cap: Any


def no_carried_bounds() -> CarriedBounds:
  return CarriedBounds(bound=tf.constant(np.inf, tf.float32),
                       weight_cap=tf.constant(np.inf, tf.float32))


class AggregatorState(NamedTuple):
  """`SparseSumFactory`'s state when it holds the reference.

  Attributes:
    counter: The round counter (int32) or, with `initial_targets`, the
      targets (int32 [layers]): the state of a factory without a reference.
    reference: The `robust_aggregation.Reference` of the round's broadcast
      model, which the owning process writes after every round
      (`aggregator_feedback`).
    carried: `CarriedBounds` found in the last round by an aggregator
      without a first pass (`RobustAggregation.first_pass` False), used in
      the next; a two-pass aggregator keeps them as they are.
  """
  counter: Any
  reference: Any
  carried: Any
