from __future__ import annotations

import math

import pytest

from mbpo_core.evaluation.compare import metric_deltas


def test_deltas_subtract_shared_finite_metrics_and_skip_the_count():
    base = {"pope": {"f1": 0.5, "accuracy": 0.6, "n": 10, "iig_mean": math.nan}, "only_base": {"f1": 1.0}}
    aligned = {"pope": {"f1": 0.75, "accuracy": 0.5, "n": 10, "iig_mean": 0.1}}
    assert metric_deltas(base, aligned) == {"pope": {"f1": 0.25, "accuracy": pytest.approx(-0.1)}}


def test_a_metric_missing_on_one_side_is_skipped():
    assert metric_deltas({"s": {"f1": 0.5, "recall": 0.2}}, {"s": {"f1": 0.5}}) == {"s": {"f1": 0.0}}
