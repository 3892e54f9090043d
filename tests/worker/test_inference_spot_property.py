"""The spot-check property on the testbed: on `pope_adversarial` images the base model's answer
equals its null-image answer (its language prior) more often than an aligned model's does.

Needs an aligned model trained on the quick testbed, e.g. the final model of
`mbpo run --config examples/testbed-quick.yaml --out OUT` (OUT/training/final_model or a
checkpoint's `model/`), named by MBPO_TEST_ALIGNED_MODEL; skipped without it (training one here
would take far longer than a test should).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mbpo_core.manifest import read_manifest
from mbpo_core.models import load_adapter
from mbpo_core.serving import pixels_from_bytes, spot_check
from mbpo_core.verifiers import normalize_open

pytestmark = pytest.mark.slow
SAMPLES = 64


@pytest.fixture(scope="module")
def aligned_model() -> Path:
    path = os.environ.get("MBPO_TEST_ALIGNED_MODEL")
    if not path:
        pytest.skip("MBPO_TEST_ALIGNED_MODEL (a model aligned on the quick testbed) is not set")
    return Path(path)


@pytest.fixture(scope="module")
def testbed(aligned_model: Path) -> Path:
    from tests.mbpo_core.conftest import REPO, build_quick_testbed

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    return build_quick_testbed(Path(os.environ.get("MBPO_TESTBED_CACHE") or REPO / ".testbed-cache"))


def prior_agreement(model_dir: Path, split: Path) -> float:
    adapter = load_adapter(model_dir)
    samples = read_manifest(split / "manifest.jsonl")[:SAMPLES]
    same = 0
    for sample in samples:
        image = pixels_from_bytes((split / sample.image).read_bytes())
        result = spot_check(adapter, image, sample.question, max_tokens=4)
        same += normalize_open(result.answer) == normalize_open(result.null_answer)
    return same / len(samples)


def test_base_model_follows_its_prior_more_often_than_the_aligned_model(
    testbed: Path, aligned_model: Path
) -> None:
    split = testbed / "datasets" / "pope_adversarial"
    base = prior_agreement(testbed / "base_model", split)
    aligned = prior_agreement(aligned_model, split)
    assert base > aligned, f"prior agreement: base {base:.2f}, aligned {aligned:.2f}"
