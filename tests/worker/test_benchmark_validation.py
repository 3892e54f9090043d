"""Validating a benchmark dataset (worker.datasets.validate_benchmark_files): the benchmark's loader
reads the files, every image is opened; stats count the items per split; a broken line or image is
the report, naming the file and the line (or the item)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource
from worker.datasets import ImageLimits, _summary, validate_benchmark_files

LIMITS = ImageLimits(max_pixels=100_000, max_bytes=1_000_000)


def pope_files(root: Path) -> tuple[Path, Path]:
    images = root / "val2014"
    images.mkdir(parents=True)
    for i, size in enumerate([(32, 24), (40, 40)], start=1):
        Image.new("RGB", size, (i * 60, 0, 0)).save(images / f"COCO_val2014_{i:012d}.jpg", "JPEG")
    questions = root / "coco"
    questions.mkdir()
    for split, labels in {"random": ["yes", "no", "no"], "adversarial": ["yes"]}.items():
        rows = [
            {
                "question_id": q,
                "image": f"COCO_val2014_{q % 2 + 1:012d}.jpg",
                "text": "Is there a cat?",
                "label": label,
            }
            for q, label in enumerate(labels, start=1)
        ]
        (questions / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return questions, images


def test_a_good_benchmark_is_valid_with_items_per_split(tmp_path: Path) -> None:
    data, images = pope_files(tmp_path)
    result = validate_benchmark_files(BenchmarkSource("pope", data, images), LIMITS)
    assert result.valid and result.num_samples == 4 and result.task_counts == {}
    assert result.stats["benchmark"] == {
        "name": "pope",
        "items": 4,
        "group_by": "split",
        "groups": {"coco_pope_adversarial": 1, "coco_pope_random": 3},
    }
    assert result.stats["images"]["distinct"] == 2 and result.stats["images"]["formats"] == {"JPEG": 2}
    assert result.report["error_count"] == 0 and result.report["valid_samples"] == 4


def test_a_missing_field_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    data, images = pope_files(tmp_path)
    path = data / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    del record["label"]
    lines[2] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    result = validate_benchmark_files(BenchmarkSource("pope", data, images), LIMITS)
    assert not result.valid and result.num_samples == 0
    assert result.report["errors"] == [
        {"code": "invalid_benchmark", "file": str(path), "line": 3, "message": "missing field 'label'"}
    ]
    assert _summary(result.report) == f"1 problem(s); first: {path}, line 3: missing field 'label'"


def test_an_unreadable_or_oversized_image_names_the_item(tmp_path: Path) -> None:
    data, images = pope_files(tmp_path)
    (images / "COCO_val2014_000000000001.jpg").write_bytes(b"not a jpeg")
    result = validate_benchmark_files(
        BenchmarkSource("pope", data, images), ImageLimits(max_pixels=1200, max_bytes=1_000_000)
    )
    assert not result.valid
    problems = {(e["file"].rsplit("/", 1)[-1], e["code"]) for e in result.report["errors"]}
    assert problems == {
        ("COCO_val2014_000000000001.jpg", "corrupt_image"),
        ("COCO_val2014_000000000002.jpg", "too_many_pixels"),  # 40 x 40 > 1200
    }
    assert all(e["message"].startswith("item coco_pope_") for e in result.report["errors"])
