"""`mbpo data convert` and `mbpo data export-pairs` on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.data.manifest import read_manifest


def test_convert_trl_jsonl_and_report_bad_rows(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), "red").save(src / "a.png")
    good = {"prompt": "<image>Is it red?", "completion": "yes", "images": ["a.png"]}
    (src / "rows.jsonl").write_text(json.dumps(good) + "\n")
    result = CliRunner().invoke(app, ["data", "convert", str(src / "rows.jsonl"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (sample,) = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert (sample.question, sample.answer, sample.task) == ("Is it red?", "yes", "yes_no")

    (src / "rows.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "images": []}) + "\n")
    result = CliRunner().invoke(app, ["data", "convert", str(src), str(tmp_path / "out2"), "--format", "trl"])
    assert result.exit_code == 1
    assert '"line": 2, "code": "image_count_mismatch"' in result.output
    result = CliRunner().invoke(
        app, ["data", "convert", str(src), str(tmp_path / "out3"), "--format", "llava"]
    )
    assert result.exit_code == 2 and "format" in result.output


def test_export_pairs_of_a_run_directory(tmp_path: Path) -> None:
    mining = tmp_path / "run" / "mining"
    mining.mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(mining / "a.png")
    pair = {"id": "p", "image": "a.png", "perturbed_image": "a.png", "question": "Blue?", "task": "yes_no"}
    (mining / "pairs.jsonl").write_text(json.dumps({**pair, "chosen": "yes", "rejected": "no"}) + "\n")
    out = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(app, ["data", "export-pairs", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column_names == ["id", "task", "prompt", "images", "chosen", "rejected"]
    result = CliRunner().invoke(app, ["data", "export-pairs", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2
