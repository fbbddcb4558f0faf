"""Statistics over seeds: spread per method, paired differences, tables.

A comparison run on several seeds (`bin/compare.py --seeds=0,1,2`) gives
each method one run per seed, every method on the same split for a seed.
Per run the headline is `late_mean_test_accuracy`: the mean test accuracy
over the last quarter of the evaluated rounds (ceil(evaluations / 4), at
least one), less noisy than the last evaluation alone. Per method:

  mean = sum(x_s) / n;  std = sqrt(sum((x_s - mean)^2) / (n - 1))  (sample)

Against a named baseline method, per seed d_s = x_s - baseline_s (paired:
both ran on seed s's split), and

  interval = mean(d) +- t_{(1 + confidence) / 2, n - 1} * std(d) / sqrt(n)

(Student's t with n - 1 degrees of freedom; none for n < 2), with the sign
test beside it: wins (d_s > 0), losses (d_s < 0), ties, and the two-sided
p-value of the wins among the untied seeds under Binomial(n_untied, 1/2).
"""

import csv
import json
import math
from typing import Mapping, NamedTuple, Optional, Sequence

from scipy import stats

from tff_feddst.outputs import comparison

HEADLINE = 'late_mean_test_accuracy'

# The per-run quantities summarised over seeds, headline first.
SEED_QUANTITIES = (HEADLINE, 'final_test_accuracy', 'best_test_accuracy',
                   'upload_bytes_cumulative', 'rounds_completed')

SEED_SUMMARY_COLUMNS = ('method', 'seeds') + tuple(
    f'{quantity}_{part}' for quantity in SEED_QUANTITIES
    for part in ('mean', 'std', 'min', 'max'))

PAIRED_COLUMNS = ('method', 'baseline', 'seeds', 'difference_mean',
                  'difference_std', 'interval_low', 'interval_high',
                  'confidence', 'wins', 'losses', 'ties', 'sign_test_p')


class Spread(NamedTuple):
  """Mean and spread of one quantity over seeds.

  Attributes:
    count: Number of seeds.
    mean: Their mean.
    std: Sample standard deviation (n - 1 in the denominator); None for one
      seed.
    minimum: Smallest value.
    maximum: Largest value.
  """
  count: int
  mean: float
  std: Optional[float]
  minimum: float
  maximum: float


class PairedDifference(NamedTuple):
  """A method minus a baseline, paired by seed.

  Attributes:
    count: Number of seeds paired.
    mean: Mean of the per-seed differences.
    std: Their sample standard deviation (None for one seed).
    low: Lower end of the t interval (None for one seed).
    high: Upper end of the t interval (None for one seed).
    confidence: The interval's confidence level, in (0, 1).
    wins: Seeds where the method is higher.
    losses: Seeds where the baseline is higher.
    ties: Seeds where they are equal.
    sign_test_p: Two-sided sign-test p-value over the untied seeds (1.0
      when all tie).
  """
  count: int
  mean: float
  std: Optional[float]
  low: Optional[float]
  high: Optional[float]
  confidence: float
  wins: int
  losses: int
  ties: int
  sign_test_p: float


def late_mean_test_accuracy(rows: Sequence[Mapping]) -> Optional[float]:
  """Mean test accuracy over the last quarter of a run's evaluations.

  Args:
    rows: A run's metrics rows (`comparison.read_metrics`).

  Returns:
    The mean over the last ceil(evaluations / 4) evaluated rounds (at least
    one), or None when no round was evaluated.
  """
  accuracies = [r['test_accuracy'] for r in rows
                if r['test_accuracy'] is not None]
  if not accuracies:
    return None
  count = max(1, math.ceil(len(accuracies) / 4))
  return sum(accuracies[-count:]) / count


def spread(values: Sequence[float]) -> Spread:
  """Mean, sample standard deviation, minimum and maximum.

  Args:
    values: One value per seed, at least one.

  Returns:
    The `Spread`.

  Raises:
    ValueError: For no values.
  """
  if not values:
    raise ValueError('spread needs at least one value.')
  count = len(values)
  mean = sum(values) / count
  std = None
  if count > 1:
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (count - 1))
  return Spread(count, mean, std, min(values), max(values))


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
  """The `probability` quantile of Student's t with the given degrees."""
  return float(stats.t.ppf(probability, degrees_of_freedom))


def sign_test_p(wins: int, losses: int) -> float:
  """Two-sided sign-test p-value: wins among wins + losses vs. a fair coin.

  p = min(1, 2 * P(Binomial(n, 1/2) <= min(wins, losses))), n = wins +
  losses; 1.0 when n = 0.
  """
  untied = wins + losses
  if untied == 0:
    return 1.0
  tail = sum(math.comb(untied, k) for k in range(min(wins, losses) + 1))
  return min(1.0, 2.0 * tail / 2 ** untied)


def paired_difference(values: Sequence[float],
                      baseline_values: Sequence[float],
                      confidence: float = 0.95) -> PairedDifference:
  """A method against a baseline, seed by seed.

  Args:
    values: The method's value per seed.
    baseline_values: The baseline's values for the same seeds, same order.
    confidence: Level of the t interval, in (0, 1).

  Returns:
    The `PairedDifference`.

  Raises:
    ValueError: For lists of different or zero length, or a confidence
      outside (0, 1).
  """
  if len(values) != len(baseline_values) or not values:
    raise ValueError('paired_difference needs one baseline value per value '
                     f'(got {len(values)} and {len(baseline_values)}).')
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must be in (0, 1), got {confidence}.')
  differences = [v - b for v, b in zip(values, baseline_values)]
  described = spread(differences)
  low = high = None
  if described.count > 1:
    half_width = (t_quantile((1 + confidence) / 2, described.count - 1) *
                  described.std / math.sqrt(described.count))
    low, high = described.mean - half_width, described.mean + half_width
  wins = sum(d > 0 for d in differences)
  losses = sum(d < 0 for d in differences)
  return PairedDifference(
      count=described.count, mean=described.mean, std=described.std,
      low=low, high=high, confidence=confidence, wins=wins, losses=losses,
      ties=described.count - wins - losses,
      sign_test_p=sign_test_p(wins, losses))


def summarize_seed_runs(run_dirs_by_method: Mapping[str, Sequence[str]],
                        target_accuracy: Optional[float] = None
                        ) -> dict[str, list[dict]]:
  """Each run's summary with its headline, per method in seed order.

  Args:
    run_dirs_by_method: Per method (or variant label), its runs' output
      directories, one per seed, in the same seed order for every method.
    target_accuracy: Passed to `comparison.summarize_run`.

  Returns:
    Per method, one `comparison.summarize_run` dict per directory with
    HEADLINE added (`late_mean_test_accuracy` of its metrics).

  Raises:
    comparison.RunDirError: For a directory without metrics.
  """
  runs_by_method = {}
  for method, run_dirs in run_dirs_by_method.items():
    runs_by_method[method] = []
    for run_dir in run_dirs:
      summary = comparison.summarize_run(run_dir,
                                         target_accuracy=target_accuracy)
      summary[HEADLINE] = late_mean_test_accuracy(
          comparison.read_metrics(run_dir))
      runs_by_method[method].append(summary)
  return runs_by_method


def seed_summary(method: str, runs: Sequence[Mapping]) -> dict:
  """One method's row of the seed table.

  Args:
    method: The method's name.
    runs: Its run summaries (`comparison.summarize_run` plus HEADLINE), one
      per seed.

  Returns:
    A dict keyed by `SEED_SUMMARY_COLUMNS` (None where a quantity is
    missing from some run, e.g. a run never evaluated).
  """
  row = {'method': method, 'seeds': len(runs)}
  for quantity in SEED_QUANTITIES:
    values = [r[quantity] for r in runs]
    described = (spread(values) if all(v is not None for v in values)
                 else None)
    for part, field in (('mean', 'mean'), ('std', 'std'),
                        ('min', 'minimum'), ('max', 'maximum')):
      row[f'{quantity}_{part}'] = (getattr(described, field)
                                   if described else None)
  return row


def paired_rows(runs_by_method: Mapping[str, Sequence[Mapping]],
                baseline: str, confidence: float = 0.95) -> list[dict]:
  """Headline differences of every other method against `baseline`.

  Args:
    runs_by_method: Per method, its run summaries in the same seed order.
    baseline: The method the others are compared with.
    confidence: Level of the t intervals.

  Returns:
    One dict keyed by `PAIRED_COLUMNS` per method other than the baseline
    (none for a method with an unevaluated run).

  Raises:
    KeyError: If `baseline` is not among the methods.
  """
  baseline_values = [r[HEADLINE] for r in runs_by_method[baseline]]
  rows = []
  for method, runs in runs_by_method.items():
    values = [r[HEADLINE] for r in runs]
    if method == baseline or None in values or None in baseline_values:
      continue
    paired = paired_difference(values, baseline_values, confidence)
    rows.append({
        'method': method, 'baseline': baseline, 'seeds': paired.count,
        'difference_mean': paired.mean, 'difference_std': paired.std,
        'interval_low': paired.low, 'interval_high': paired.high,
        'confidence': paired.confidence, 'wins': paired.wins,
        'losses': paired.losses, 'ties': paired.ties,
        'sign_test_p': paired.sign_test_p})
  return rows


def _cell(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4f}' if abs(value) < 10 else f'{value:.1f}'
  return str(value)


def _markdown(rows: Sequence[Mapping], columns: Sequence[str]) -> list[str]:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(row[c]) for c in columns) + ' |')
  return lines


def _write_csv(path: str, rows: Sequence[Mapping],
               columns: Sequence[str]) -> None:
  with open(path, 'x', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({c: '' if row[c] is None else row[c] for c in columns})


def write_seed_tables(runs_by_method: Mapping[str, Sequence[Mapping]],
                      seeds: Sequence[int], baseline: str, paths: Mapping[str,
                                                                          str],
                      confidence: float = 0.95) -> dict:
  """Writes the seed summary, the paired differences and every run.

  Args:
    runs_by_method: Per method, its run summaries (with HEADLINE and the
      `comparison.SUMMARY_COLUMNS`) in the order of `seeds`.
    seeds: The seeds, in run order.
    baseline: The method the others are compared with.
    paths: File paths to create (none may exist), keyed 'summary_csv'
      (one row per method), 'paired_csv', 'runs_csv' (one row per run),
      'markdown' (both tables) and 'json' (everything).
    confidence: Level of the t intervals.

  Returns:
    What the JSON file holds: seeds, baseline, headline, summary, paired,
    runs.
  """
  summary = [seed_summary(m, runs) for m, runs in runs_by_method.items()]
  paired = paired_rows(runs_by_method, baseline, confidence)
  runs = [dict(r, seed=seed) for m_runs in runs_by_method.values()
          for seed, r in zip(seeds, m_runs)]
  run_columns = ['seed'] + [c for c in runs[0] if c != 'seed']
  _write_csv(paths['summary_csv'], summary, SEED_SUMMARY_COLUMNS)
  _write_csv(paths['paired_csv'], paired, PAIRED_COLUMNS)
  _write_csv(paths['runs_csv'], runs, run_columns)
  headline_columns = ['method', 'seeds'] + [
      f'{q}_{p}' for q in (HEADLINE, 'final_test_accuracy')
      for p in ('mean', 'std')] + ['upload_bytes_cumulative_mean',
                                   'rounds_completed_mean']
  lines = [f'Seeds {",".join(str(s) for s in seeds)}; headline: mean test '
           'accuracy over the last quarter of evaluations (std: sample '
           'standard deviation over seeds).', '']
  lines += _markdown(summary, headline_columns)
  lines += ['', f'Paired by seed against {baseline} (late-quarter mean '
            f'accuracy; {confidence:.0%} t interval, sign test):', '']
  lines += _markdown(paired, PAIRED_COLUMNS)
  with open(paths['markdown'], 'x') as f:
    f.write('\n'.join(lines) + '\n')
  everything = {'seeds': list(seeds), 'baseline': baseline,
                'headline': HEADLINE, 'summary': summary, 'paired': paired,
                'runs': runs}
  with open(paths['json'], 'x') as f:
    json.dump(everything, f, indent=1)
  return everything
