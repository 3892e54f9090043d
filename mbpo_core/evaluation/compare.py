"""Base vs aligned: how each metric of each split moved (aligned - base)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def metric_deltas(
    base: Mapping[str, Mapping[str, Any]], aligned: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """aligned - base for every finite numeric metric (not the sample count `n`) of every split
    both have."""
    return {
        split: {
            metric: aligned[split][metric] - value
            for metric, value in base[split].items()
            if metric != "n"
            and isinstance(value, int | float)
            and math.isfinite(value)
            and isinstance(aligned[split].get(metric), int | float)
        }
        for split in base
        if split in aligned
    }
