"""Primary-key ids: `<prefix>_<26 hex>`, ordered by creation within a process (the pagination of
every list endpoint relies on it, also for ids made within the same millisecond)."""

from __future__ import annotations

import re

from infra.db.base import new_id


def test_ids_made_in_a_burst_are_unique_and_strictly_increasing() -> None:
    ids = [new_id("spot") for _ in range(5000)]  # thousands per millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"spot_[0-9a-f]{26}", i) for i in ids)
