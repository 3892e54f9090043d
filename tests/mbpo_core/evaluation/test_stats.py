"""Paired intervals and McNemar (mbpo_core.evaluation.stats) against values computed by hand and
against the normal approximation."""

from __future__ import annotations

import math
import random

import pytest

from mbpo_core.evaluation.compare import metric_deltas
from mbpo_core.evaluation.evaluate import SampleResult, split_metrics
from mbpo_core.evaluation.stats import (
    compare_split,
    exact_binomial_p,
    mcnemar,
    paired_intervals,
    pooled_intervals,
)


def yes_no(i: int, truth: str, said: str | None, iig: float = 0.0) -> SampleResult:
    return SampleResult(f"q{i}", "yes_no", said or "?", truth, said == truth, said, iig)


def answers(truths: list[str], said: list[str | None]) -> list[SampleResult]:
    return [yes_no(i, t, s) for i, (t, s) in enumerate(zip(truths, said, strict=True))]


def test_exact_binomial_p_by_hand() -> None:
    assert exact_binomial_p(0, 5) == pytest.approx(2 / 32)
    assert exact_binomial_p(5, 5) == pytest.approx(2 / 32)
    assert exact_binomial_p(1, 5) == pytest.approx(2 * 6 / 32)
    assert exact_binomial_p(3, 6) == 1.0
    assert exact_binomial_p(0, 0) == 1.0


def test_mcnemar_counts_discordant_questions() -> None:
    truths = ["yes", "no", "yes", "no", "yes", "no"]
    base = answers(truths, ["yes", "yes", "no", "yes", "yes", "no"])  # right on 0, 4, 5
    aligned = answers(truths, ["yes", "no", "yes", "no", "no", "no"])  # right on 0, 1, 2, 3, 5
    result = mcnemar(base, aligned)
    assert (result.base_only, result.aligned_only) == (1, 3)
    assert result.p_value == pytest.approx(2 * (1 + 4) / 16)


def test_the_same_answers_give_zero_and_no_significance() -> None:
    rng = random.Random(0)
    truths = [rng.choice(["yes", "no"]) for _ in range(200)]
    said: list[str | None] = [rng.choice(["yes", "no"]) for _ in truths]
    intervals = paired_intervals(answers(truths, said), answers(truths, said))
    for interval in intervals.values():
        assert (interval.delta, interval.low, interval.high) == (0.0, 0.0, 0.0)
        assert not interval.significant


def test_point_estimates_are_the_metric_deltas() -> None:
    rng = random.Random(1)
    truths = [rng.choice(["yes", "no"]) for _ in range(300)]
    base = answers(truths, [rng.choice(["yes", "no", None]) for _ in truths])
    aligned = answers(truths, [t if rng.random() < 0.8 else rng.choice(["yes", "no"]) for t in truths])
    deltas = metric_deltas({"s": split_metrics(base)}, {"s": split_metrics(aligned)})["s"]
    intervals = paired_intervals(base, aligned, resamples=200)
    assert set(intervals) == {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "yes_ratio",
        "false_yes_rate",
        "iig_mean",
        "unparsable_rate",
    }
    for metric, interval in intervals.items():
        assert interval.delta == pytest.approx(deltas[metric]), metric
        assert interval.low <= interval.delta <= interval.high


def test_accuracy_interval_matches_the_normal_approximation() -> None:
    # 400 questions: 60 only the aligned model gets right, 20 only the base one, 320 both or neither.
    n, aligned_only, base_only = 400, 60, 20
    truths = ["yes"] * n
    base_said: list[str | None] = ["yes"] * base_only + ["no"] * aligned_only + ["yes"] * 160 + ["no"] * 160
    aligned_said: list[str | None] = (
        ["no"] * base_only + ["yes"] * aligned_only + ["yes"] * 160 + ["no"] * 160
    )
    interval = paired_intervals(answers(truths, base_said), answers(truths, aligned_said), resamples=4000)[
        "accuracy"
    ]
    delta = (aligned_only - base_only) / n
    se = math.sqrt((aligned_only + base_only) / n**2 - delta**2 / n)
    assert interval.delta == pytest.approx(0.1)
    assert interval.low == pytest.approx(delta - 1.96 * se, abs=0.01)
    assert interval.high == pytest.approx(delta + 1.96 * se, abs=0.01)
    assert interval.significant


def test_a_small_noisy_change_is_not_significant() -> None:
    truths = ["yes", "no"] * 10
    base = answers(truths, ["yes", "no"] * 10)
    aligned_said: list[str | None] = ["yes", "no"] * 10
    aligned_said[1] = "yes"  # one more mistake in 20 questions
    intervals = paired_intervals(base, answers(truths, aligned_said))
    assert intervals["accuracy"].delta == pytest.approx(-0.05)
    assert intervals["accuracy"].high >= 0 and not intervals["accuracy"].significant


def test_pooled_seeds_average_the_differences() -> None:
    truths = ["yes", "no"] * 50
    base = answers(truths, ["yes"] * 100)  # accuracy 0.5
    better = answers(truths, truths)  # accuracy 1.0
    same = answers(truths, ["yes"] * 100)
    pooled = pooled_intervals([(base, better), (base, same)], resamples=500)["accuracy"]
    assert pooled.delta == pytest.approx(0.25)
    # Seeds disagree (+0.5 and 0): the seed level of the bootstrap widens the interval to both
    # (and a little beyond +0.5: the base model's accuracy varies with the questions drawn).
    assert pooled.low == pytest.approx(0.0, abs=0.02) and 0.5 <= pooled.high <= 0.65
    assert not pooled.significant
    single = pooled_intervals([(base, better)], resamples=500)["accuracy"]
    assert single.delta == pytest.approx(0.5) and single.significant


def test_question_order_does_not_matter_but_the_questions_must_match() -> None:
    truths = ["yes", "no", "no", "yes"]
    base = answers(truths, ["yes", "yes", "no", "no"])
    aligned = answers(truths, ["yes", "no", "no", "yes"])
    assert paired_intervals(base, list(reversed(aligned)), resamples=100)["accuracy"].delta == pytest.approx(
        0.5
    )
    with pytest.raises(ValueError, match="same questions"):
        paired_intervals(base, aligned[:3])


def test_non_yes_no_splits_compare_accuracy_iig_and_parsing_only() -> None:
    base = [SampleResult(f"q{i}", "number", "1", "2", False, 1.0, 0.1) for i in range(10)]
    aligned = [SampleResult(f"q{i}", "number", "2", "2", True, 2.0, 0.3) for i in range(10)]
    card = compare_split(base, aligned, resamples=100)
    assert set(card["intervals"]) == {"accuracy", "iig_mean", "unparsable_rate"}
    assert card["intervals"]["accuracy"]["significant"] is True
    assert card["intervals"]["iig_mean"]["delta"] == pytest.approx(0.2)
    assert card["mcnemar"] == {"base_only": 0, "aligned_only": 10, "p_value": pytest.approx(2 / 1024)}
    assert card["n"] == 10
