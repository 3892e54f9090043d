"""Is a change real? Paired comparisons of two models answering the same questions.

Every comparison the product shows (base vs aligned in a run's scorecard, a recipe against its
ablation in bench/ablation.py) is a paired difference on the same questions with a 95% percentile
bootstrap interval, and "significant" means the interval excludes 0:

- `paired_intervals`: one pair of evaluations (one seed). The bootstrap resamples questions (with
  replacement, the same resample for both models), recomputes each metric for both and keeps the
  difference. Metrics that are not means of per-question values (F1, precision, false-yes rate)
  are recomputed from resampled confusion counts, so their intervals are exact about what the
  metric is, not an approximation through per-question scores.
- `pooled_intervals`: several seeds on the same questions (two-level bootstrap: seeds, then
  questions, the question resample shared by the seeds), the difference averaged over seeds.
- `mcnemar`: McNemar's exact test on accuracy (the questions one model gets right and the other
  wrong), the test the literature reports next to accuracy changes.

Pure numpy; inputs are `SampleResult`s of mbpo_core.evaluation.evaluate (or anything with the same
fields).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
# Metrics compared with an interval. Yes/no metrics only where every question of the split is
# yes/no (as in split_metrics); accuracy and mean IIG everywhere.
YES_NO_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "false_yes_rate")
ALL_METRICS = ("accuracy", "iig_mean", "unparsable_rate")
_CHUNK = 256  # resamples per matrix product (bounds memory to CHUNK x questions)


class Outcome(Protocol):
    """What a comparison needs of one answered question (evaluate.SampleResult has it)."""

    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def correct(self) -> bool: ...
    @property
    def parsed(self) -> Any: ...
    @property
    def iig(self) -> float: ...


@dataclass(frozen=True)
class Interval:
    """aligned - base (`delta`) with its interval [`low`, `high`] at `level`."""

    delta: float
    low: float
    high: float
    level: float = LEVEL

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "significant": self.significant,
        }


@dataclass(frozen=True)
class _Table:
    """Per-question columns of one model's answers, in a shared question order."""

    correct: np.ndarray  # float 0/1
    iig: np.ndarray
    unparsable: np.ndarray  # float 0/1
    yes: np.ndarray  # answered "yes" (yes/no questions)
    positive: np.ndarray  # the truth is "yes"
    yes_no: bool  # every question is yes/no

    @property
    def metrics(self) -> tuple[str, ...]:
        return (*YES_NO_METRICS, "iig_mean", "unparsable_rate") if self.yes_no else ALL_METRICS


def _table(results: Sequence[Outcome]) -> _Table:
    from mbpo_core.data.verifiers import parse_answer

    yes_no = bool(results) and all(r.task == "yes_no" for r in results)
    return _Table(
        correct=np.array([float(r.correct) for r in results]),
        iig=np.array([float(r.iig) for r in results]),
        unparsable=np.array([float(r.parsed is None) for r in results]),
        yes=np.array([float(yes_no and r.parsed == "yes") for r in results]),
        positive=np.array([float(yes_no and parse_answer("yes_no", r.answer) == "yes") for r in results]),
        yes_no=yes_no,
    )


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _weighted_metrics(weights: np.ndarray, t: _Table) -> dict[str, np.ndarray]:
    """Each metric for every row of `weights` (resample counts per question), as split_metrics
    and pope_metrics define them."""
    n = weights.sum(axis=1).astype(float)
    out = {
        "accuracy": _div(weights @ t.correct, n),
        "iig_mean": _div(weights @ t.iig, n),
        "unparsable_rate": _div(weights @ t.unparsable, n),
    }
    if t.yes_no:
        tp = weights @ (t.yes * t.positive)
        fp = weights @ (t.yes * (1 - t.positive))
        positives = weights @ t.positive
        precision, recall = _div(tp, tp + fp), _div(tp, positives)
        out.update(
            precision=precision,
            recall=recall,
            f1=_div(2 * precision * recall, precision + recall),
            yes_ratio=_div(tp + fp, n),
            false_yes_rate=_div(fp, n - positives),
        )
    return out


def _paired_tables(base: Sequence[Outcome], aligned: Sequence[Outcome]) -> tuple[_Table, _Table]:
    by_id = {r.id: r for r in aligned}
    if len(by_id) != len(aligned) or set(by_id) != {r.id for r in base} or len(base) != len(aligned):
        raise ValueError("a paired comparison needs both models' answers to the same questions")
    return _table(base), _table([by_id[r.id] for r in base])


def _resample_weights(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)


def _interval(point: float, draws: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high), level)


def paired_intervals(
    base: Sequence[Outcome],
    aligned: Sequence[Outcome],
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Interval]:
    """aligned - base for every metric of the split, with a paired bootstrap interval over its
    questions. Empty splits give no intervals."""
    return pooled_intervals([(base, aligned)], resamples=resamples, level=level, seed=seed)


def pooled_intervals(
    pairs: Sequence[tuple[Sequence[Outcome], Sequence[Outcome]]],
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Interval]:
    """The mean over seeds of aligned - base (each pair: one seed's two evaluations of the same
    questions, in any order), with a two-level bootstrap interval: seeds drawn with replacement,
    then questions drawn with replacement (one question draw shared by every seed, since the
    seeds answered the same questions). One pair: the plain paired bootstrap."""
    if not pairs:
        raise ValueError("nothing to compare")
    tables = [_paired_tables(base, aligned) for base, aligned in pairs]
    ids = [sorted(r.id for r in base) for base, _ in pairs]
    if any(other != ids[0] for other in ids[1:]):
        raise ValueError("pooled seeds must have answered the same questions")
    # The same question order in every seed: sort each seed's tables by question id.
    orders = [np.argsort([r.id for r in base], kind="stable") for base, _ in pairs]
    tables = [(_take(b, o), _take(a, o)) for (b, a), o in zip(tables, orders, strict=True)]
    n = len(ids[0])
    if n == 0:
        return {}
    names = tables[0][0].metrics
    ones = np.ones((1, n))
    whole = [_zip_metrics(ones, b, a) for b, a in tables]
    point = {m: float(np.mean([a_m[0] - b_m[0] for b_m, a_m in (w[m] for w in whole)])) for m in names}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in names}
    seeds = len(tables)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        weights = _resample_weights(rng, n, size)
        picks = rng.integers(0, seeds, size=(size, seeds)) if seeds > 1 else np.zeros((size, 1), dtype=int)
        per_seed = [
            {m: a_m - b_m for m, (b_m, a_m) in _zip_metrics(weights, b, a).items()} for b, a in tables
        ]
        for m in names:
            stacked = np.stack([s[m] for s in per_seed], axis=1)  # (size, seeds)
            draws[m].append(np.take_along_axis(stacked, picks, axis=1).mean(axis=1))
    return {m: _interval(point[m], np.concatenate(draws[m]), level) for m in names}


def _take(t: _Table, order: np.ndarray) -> _Table:
    return _Table(
        t.correct[order], t.iig[order], t.unparsable[order], t.yes[order], t.positive[order], t.yes_no
    )


def _zip_metrics(
    weights: np.ndarray, base: _Table, aligned: _Table
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    b, a = _weighted_metrics(weights, base), _weighted_metrics(weights, aligned)
    return {m: (b[m], a[m]) for m in b}


@dataclass(frozen=True)
class McNemar:
    """`base_only`: questions only the base model got right; `aligned_only`: only the aligned one;
    `p_value`: McNemar's exact (binomial) two-sided test that both are equally likely."""

    base_only: int
    aligned_only: int
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return {"base_only": self.base_only, "aligned_only": self.aligned_only, "p_value": self.p_value}


def mcnemar(base: Sequence[Outcome], aligned: Sequence[Outcome]) -> McNemar:
    b, a = _paired_tables(base, aligned)
    base_only = int(np.sum((b.correct == 1) & (a.correct == 0)))
    aligned_only = int(np.sum((b.correct == 0) & (a.correct == 1)))
    return McNemar(base_only, aligned_only, exact_binomial_p(base_only, base_only + aligned_only))


def exact_binomial_p(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n fair coin flips (twice the smaller tail, at most 1)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare_split(
    base: Sequence[Outcome], aligned: Sequence[Outcome], *, seed: int = 0, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """What a scorecard shows for one split: every metric's interval and McNemar on accuracy."""
    intervals = paired_intervals(base, aligned, seed=seed, resamples=resamples)
    return {
        "n": len(base),
        "resamples": resamples,
        "intervals": {m: i.as_dict() for m, i in intervals.items()},
        "mcnemar": mcnemar(base, aligned).as_dict(),
    }
