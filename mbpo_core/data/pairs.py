"""The mined pairs file (`pairs.jsonl`, written by mining): one JSON object a line with `id`,
`image` and `perturbed_image` (paths relative to the file), `question`, `task`, `choices`
(multiple choice), `chosen` (the ground truth), `rejected` (the answer on the perturbed image),
`iig`, `logp_clean`, `logp_adv` and `prior_agreement`.

Every reader goes through `iter_pairs` / `read_pairs` (training, the API's negatives, tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAIRS_FILE = "pairs.jsonl"


def iter_pairs(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, pair) for each non-blank line, in file order."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, json.loads(line)


def read_pairs(path: str | Path, *, resolve_images: bool = False) -> list[dict[str, Any]]:
    """The pairs of `path`; with `resolve_images`, image paths joined to the file's directory."""
    base = Path(path).parent
    pairs = [pair for _, pair in iter_pairs(path)]
    if resolve_images:
        for pair in pairs:
            pair["image"] = str(base / pair["image"])
            if "perturbed_image" in pair:  # noise pairs (mining/noise_pairs.jsonl) have none
                pair["perturbed_image"] = str(base / pair["perturbed_image"])
    return pairs
