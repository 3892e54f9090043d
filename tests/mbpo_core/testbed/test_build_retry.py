"""The build's restart decision for a finished run that misses a property (pure, fast)."""

from __future__ import annotations

from mbpo_core.testbed.build import PropertyThresholds, check_properties, next_attempt


def metrics(random_accuracy: float, random_false_yes: float, adversarial_false_yes: float) -> dict:
    return {
        "pope_random": {"accuracy": random_accuracy, "false_yes_rate": random_false_yes},
        "pope_adversarial": {"accuracy": 0.5, "false_yes_rate": adversarial_false_yes},
    }


def test_a_passing_run_is_kept() -> None:
    assert next_attempt([], attempt=0, max_attempts=3) is None


def test_a_run_that_sees_too_little_is_retrained_with_the_next_attempt() -> None:
    # Seed 2 of the full build: it left the plateau but reached only 0.663 on pope_random.
    failures = check_properties(metrics(0.663, 0.31, 0.62), PropertyThresholds())
    assert failures and "0.663" in failures[0]
    assert next_attempt(failures, attempt=0, max_attempts=3) == 1
    assert next_attempt(failures, attempt=1, max_attempts=3) == 2


def test_restarts_are_bounded_and_the_last_failure_stands() -> None:
    failures = ["the model does not see well enough"]
    assert next_attempt(failures, attempt=2, max_attempts=3) is None
    assert next_attempt(failures, attempt=0, max_attempts=1) is None


def test_the_checks_are_not_relaxed_near_the_threshold() -> None:
    thresholds = PropertyThresholds()
    assert check_properties(metrics(0.75, 0.30, 0.50), thresholds) == []
    assert next_attempt(check_properties(metrics(0.749, 0.30, 0.50), thresholds), 0, 3) == 1
    # Seeing alone is not enough: a run without the prior's hallucination is retrained too.
    assert next_attempt(check_properties(metrics(0.85, 0.30, 0.40), thresholds), 0, 3) == 1
