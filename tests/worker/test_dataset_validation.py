"""The validation job's plain function: every line and image checked, stats and thumbnails."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.helpers import datasets as ds
from worker.datasets import ImageLimits, validate_dataset_files

LIMITS = ImageLimits(max_pixels=100_000, max_bytes=1_000_000)


def test_good_dataset_is_valid_with_stats_and_thumbnails(tmp_path: Path) -> None:
    root = ds.make_dataset_dir(tmp_path / "ds")
    thumbs = tmp_path / "thumbs"
    result = validate_dataset_files(
        root, root / "manifest.jsonl", LIMITS, thumbnails_dir=thumbs, thumbnail_size=16
    )
    assert result.valid, result.report
    assert result.num_samples == 5
    assert result.task_counts == {"yes_no": 2, "multiple_choice": 1, "number": 1, "open": 1}
    tasks = result.stats["tasks"]
    assert tasks["yes_no"]["yes_ratio"] == 0.5
    assert tasks["number"]["mean"] == 2.0
    assert tasks["multiple_choice"]["choices_per_question"] == {"3": 1}
    assert result.stats["images"]["distinct"] == 4  # images/0.png is used twice, checked once
    index = json.loads((thumbs / "index.json").read_text())
    assert set(index) == {"s1", "s2", "s3", "s4", "s5"}
    with Image.open(thumbs / index["s1"]) as thumb:
        assert max(thumb.size) == 16
    assert result.report["error_count"] == 0


def test_every_bad_line_is_reported_with_line_and_reason(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ds.write_images(root)
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "images" / "bomb.png").write_bytes(ds.png_bomb())
    Image.new("RGB", (400, 400)).save(root / "images" / "big.png")  # 160 000 px > 100 000
    (tmp_path / "outside.png").write_bytes((root / "images" / "0.png").read_bytes())
    (root / "images" / "escape.png").symlink_to(tmp_path / "outside.png")
    good = ds.good_samples()[0]
    rows: list = [
        good,  # 1
        '{"id": "x", "image": ',  # 2 malformed JSON
        {k: v for k, v in good.items() if k != "answer"} | {"id": "l3"},  # 3 missing field
        {**good, "id": "l4", "task": "caption"},  # 4 unknown task
        {**good, "id": "l5", "image": "../outside.png"},  # 5 ..
        {**good, "id": "l6", "image": str(tmp_path / "outside.png")},  # 6 absolute
        {**good, "id": "l7", "image": "images/escape.png"},  # 7 symlink outside
        {**good, "id": "l8", "image": "images/missing.png"},  # 8 missing
        {**good, "id": "l9", "image": "images/corrupt.png"},  # 9 corrupt
        {**good, "id": "l10", "image": "images/bomb.png"},  # 10 decompression bomb
        {**good, "id": "l11", "image": "images/big.png"},  # 11 over the pixel limit
        good,  # 12 duplicate id
    ]
    ds.write_manifest(root / "manifest.jsonl", rows)
    result = validate_dataset_files(root, root / "manifest.jsonl", LIMITS)
    assert not result.valid
    got = {(e["line"], e["code"]) for e in result.report["errors"]}
    assert got == {
        (2, "invalid_json"),
        (3, "missing_field"),
        (4, "unknown_task"),
        (5, "unsafe_path"),
        (6, "unsafe_path"),
        (7, "unsafe_path"),
        (8, "missing_image"),
        (9, "corrupt_image"),
        (10, "too_many_pixels"),
        (11, "too_many_pixels"),
        (12, "duplicate_id"),
    }
    assert all(e["message"] for e in result.report["errors"])
    assert result.report["lines"] == 12 and result.report["valid_samples"] == 1
    assert result.report["error_counts"]["unsafe_path"] == 3


def test_empty_or_missing_manifest_is_invalid(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "manifest.jsonl").write_text("\n\n")
    result = validate_dataset_files(root, root / "manifest.jsonl", LIMITS)
    assert not result.valid and result.report["errors"][0]["code"] == "empty_manifest"
    result = validate_dataset_files(root, root / "other.jsonl", LIMITS)
    assert not result.valid and result.report["errors"][0]["code"] == "manifest_not_found"


def test_report_lists_a_bounded_number_of_errors_but_counts_all(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "manifest.jsonl").write_text("{bad\n" * 1500)
    result = validate_dataset_files(root, root / "manifest.jsonl", LIMITS)
    assert result.report["error_count"] == 1500
    assert len(result.report["errors"]) == 1000 and result.report["errors_truncated"]
