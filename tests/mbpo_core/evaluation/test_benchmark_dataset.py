"""A benchmark as an evaluation dataset (mbpo_core/evaluation/benchmarks/dataset.py): which
benchmarks a run can score, the item counts a dataset's stats show, loading with a limit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from mbpo_core.evaluation.benchmarks import BENCHMARKS, dataset
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, BenchmarkItem
from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource, item_counts, service_refusal
from tests.mbpo_core.evaluation.test_benchmarks_pope import row, write_pope


def test_known_benchmarks_run_unknown_and_judged_ones_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert service_refusal("pope") is None
    unknown = service_refusal("popee")
    assert unknown is not None and unknown.code == "unknown_benchmark" and "pope" in unknown.message

    def judged_score(items: Sequence[BenchmarkItem], answers: Sequence[str], judge: object = None) -> dict:
        return {}

    monkeypatch.setitem(BENCHMARKS, "judged", SimpleNamespace(NAME="judged", score=judged_score))
    judged = service_refusal("judged")
    assert judged is not None and judged.code == "judge_required"
    assert "mbpo eval benchmark --name judged" in judged.message
    assert "judged" not in dataset.runnable_benchmarks() and "pope" in dataset.runnable_benchmarks()
    with pytest.raises(ValueError, match="judge"):
        BenchmarkSource("judged", Path("x")).load()


def test_items_counted_per_split_or_as_one_group(tmp_path: Path) -> None:
    write_pope(tmp_path, "coco_pope_random.json", [row(1, "yes"), row(2, "no"), row(3, "no")])
    write_pope(tmp_path, "coco_pope_adversarial.json", [row(1, "no")])
    source = BenchmarkSource("pope", tmp_path, tmp_path / "images")
    assert item_counts(source.load()) == {
        "items": 4,
        "group_by": "split",
        "groups": {"coco_pope_adversarial": 1, "coco_pope_random": 3},
    }
    # The first N in the loader's order, as `mbpo eval benchmark --limit N`.
    assert [i.id for i in source.load(limit=2)] == ["coco_pope_adversarial/1", "coco_pope_random/1"]
    captions = [
        BenchmarkItem(id=str(i), image=tmp_path, prompt="Describe.", meta={"objects": []}) for i in range(3)
    ]
    assert item_counts(captions) == {"items": 3, "group_by": None, "groups": {"all": 3}}


def test_a_loader_error_names_the_file_and_line(tmp_path: Path) -> None:
    broken = row(2, "no")
    del broken["text"]
    path = write_pope(tmp_path, "coco_pope_popular.json", [row(1, "yes"), broken])
    with pytest.raises(BenchmarkDataError) as caught:
        BenchmarkSource("pope", tmp_path, tmp_path / "images").load()
    assert (caught.value.path, caught.value.line) == (path, 2) and "text" in caught.value.message
