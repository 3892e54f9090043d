"""Fixtures shared by every mbpo_core test package.

`quick_testbed`: the `--quick` testbed (datasets + trained base model), built once and cached on
disk (see tests.helpers.testbed, which the browser tests share).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.testbed import (  # re-exported: tests import these from here
    QUICK_TESTBED_SEED,
    REPO,
    build_quick_testbed,
    quick_testbed_path,
    testbed_source_hash,
)

__all__ = ["QUICK_TESTBED_SEED", "REPO", "build_quick_testbed", "quick_testbed", "testbed_source_hash"]


@pytest.fixture(scope="session")
def quick_testbed() -> Path:
    """Root of the quick testbed: `datasets/<split>/manifest.jsonl`, `base_model/`, `build_report.json`."""
    return quick_testbed_path()
