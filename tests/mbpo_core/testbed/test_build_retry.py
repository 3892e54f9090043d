"""The build's decision after a finished run misses a property (pure, fast): extend it, restart it
with the next derived seed, or stop."""

from __future__ import annotations

from functools import partial

from mbpo_core.testbed.build import BuildSpec, PropertyThresholds, check_properties, next_action

decide = partial(next_action, max_attempts=3, extend_steps=1000)


def metrics(random_accuracy: float, random_false_yes: float, adversarial_false_yes: float) -> dict:
    return {
        "pope_random": {"accuracy": random_accuracy, "false_yes_rate": random_false_yes},
        "pope_adversarial": {"accuracy": 0.5, "false_yes_rate": adversarial_false_yes},
    }


def test_a_passing_run_is_kept_whatever_else_holds() -> None:
    assert decide([], 0, extended=False, left_plateau=True) is None
    assert decide([], 2, extended=True, left_plateau=False) is None


def test_a_run_that_learns_but_sees_too_little_is_extended_once_then_restarted() -> None:
    # Seed 2 of the full build: it left the plateau (yes/no loss 0.47) but reached only 0.663.
    failures = check_properties(metrics(0.663, 0.31, 0.62), PropertyThresholds())
    assert failures and "0.663" in failures[0]
    assert decide(failures, 0, extended=False, left_plateau=True) == "extend"
    assert decide(failures, 0, extended=True, left_plateau=True) == "restart"


def test_a_run_still_on_the_plateau_is_restarted_not_extended() -> None:
    assert decide(["does not see"], 0, extended=False, left_plateau=False) == "restart"
    assert next_action(["x"], 0, 3, extended=False, left_plateau=True, extend_steps=0) == "restart"


def test_attempts_are_bounded_and_the_last_failure_stands() -> None:
    assert decide(["does not see"], 1, extended=True, left_plateau=True) == "restart"
    assert decide(["does not see"], 2, extended=True, left_plateau=True) is None
    assert decide(["does not see"], 2, extended=False, left_plateau=False) is None
    assert decide(["does not see"], 2, extended=False, left_plateau=True) == "extend"  # the last one too


def test_the_checks_are_not_relaxed_near_the_threshold() -> None:
    thresholds = PropertyThresholds()
    assert check_properties(metrics(0.75, 0.30, 0.50), thresholds) == []
    assert decide(
        check_properties(metrics(0.749, 0.30, 0.50), thresholds), 0, extended=True, left_plateau=True
    )
    # Seeing alone is not enough: a run without the prior's hallucination is not accepted either.
    assert decide(
        check_properties(metrics(0.85, 0.30, 0.40), thresholds), 0, extended=True, left_plateau=True
    )


def test_full_and_quick_builds_keep_their_thresholds_and_bound_their_retries() -> None:
    full, quick = BuildSpec.full(2), BuildSpec.quick(2)
    assert full.thresholds == PropertyThresholds(min_random_accuracy=0.75, min_false_yes_gap=0.15)
    assert quick.thresholds.min_random_accuracy == 0.58
    assert full.train.max_attempts == 3 and full.train.extend_steps > 0
    assert quick.train.max_attempts == 2 and 0 < quick.train.extend_steps <= quick.train.steps // 2
