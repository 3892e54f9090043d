"""The benchmark runner and `mbpo eval benchmark` end to end, on a POPE-layout fixture made from the
quick testbed's images (some resized, so the batch mixes image sizes) and its base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.evaluation.benchmarks import pope
from mbpo_core.evaluation.benchmarks.runner import (
    evaluate_benchmark,
    generate_answers,
    image_size,
    load_image,
    size_batches,
    write_predictions,
)
from mbpo_core.models.loader import load_adapter

# (width, height) the fixture's images are resized to, in turn: three raw sizes, three Qwen grids.
SIZES = [(112, 112), (140, 84), (84, 168)]


def pope_fixture(testbed: Path, out: Path, n_images: int = 6) -> tuple[Path, Path]:
    """A POPE question file (`label` from the manifest's answers) and its image directory."""
    source = testbed / "datasets" / "pope_random"
    images = out / "val2014"
    images.mkdir(parents=True)
    rows, seen = [], []
    for line in (source / "manifest.jsonl").read_text().splitlines():
        sample = json.loads(line)
        name = Path(sample["image"]).name
        if name not in seen:
            if len(seen) == n_images:
                break
            image = Image.open(source / sample["image"]).convert("RGB")
            image.resize(SIZES[len(seen) % len(SIZES)]).save(images / name)
            seen.append(name)
        rows.append(
            {
                "question_id": len(rows) + 1,
                "image": name,
                "text": sample["question"],
                "label": sample["answer"],
            }
        )
    path = out / "coco_pope_random.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, images


@pytest.fixture(scope="module")
def adapter(quick_testbed: Path):  # type: ignore[no-untyped-def]
    return load_adapter(quick_testbed / "base_model")


def test_mixed_sizes_share_a_batch_and_answer_as_batch_size_one(
    quick_testbed: Path, tmp_path: Path, adapter
) -> None:  # type: ignore[no-untyped-def]
    data, images = pope_fixture(quick_testbed, tmp_path)
    items = pope.load(data, images)
    assert len({image_size(item.image) for item in items}) == len(SIZES)
    # Qwen2-VL's inputs concatenate whatever the size: one batch (grouping by raw size made three).
    assert [len(b) for b in size_batches(adapter, items, 64)] == [len(items)]
    batched = generate_answers(adapter, items, batch_size=64, max_new_tokens=4)
    alone = [adapter.generate(load_image(i.image), [i.prompt], max_new_tokens=4)[0] for i in items]
    assert batched == alone
    assert any(a.strip() for a in batched)


def test_evaluate_benchmark_scores_and_saves(quick_testbed: Path, tmp_path: Path, adapter) -> None:  # type: ignore[no-untyped-def]
    data, images = pope_fixture(quick_testbed, tmp_path, n_images=3)
    items = pope.load(data, images)
    seen: list[int] = []
    result = evaluate_benchmark(adapter, "pope", items, batch_size=4, on_batch=seen.append)
    assert sum(seen) == len(items) and len(seen) == 2
    assert result.metrics == pope.score(items, result.answers)
    out = tmp_path / "predictions.jsonl"
    write_predictions(out, items, result.answers)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [i.id for i in items]
    assert [r["answer"] for r in lines] == result.answers
    assert lines[0]["label"] == items[0].meta["label"] and lines[0]["split"] == "coco_pope_random"


def test_cli_prints_the_metrics_and_writes_the_answers(quick_testbed: Path, tmp_path: Path) -> None:
    data, images = pope_fixture(quick_testbed, tmp_path, n_images=4)
    out = tmp_path / "answers.jsonl"
    args = ["eval", "benchmark", "--name", "pope", "--data", str(data), "--images", str(images)]
    args += [
        "--model",
        str(quick_testbed / "base_model"),
        "--limit",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == 5
    items = pope.load(data, images)[:5]
    expected = pope.score(items, [a["answer"] for a in answers])["coco_pope_random"]
    assert "coco_pope_random" in result.output and "accuracy" in result.output
    assert f"{expected['accuracy']:.3f}" in result.output and f"{expected['yes_ratio']:.3f}" in result.output


def test_cli_bad_data_names_the_file_and_line(quick_testbed: Path, tmp_path: Path) -> None:
    data, images = pope_fixture(quick_testbed, tmp_path, n_images=1)
    data.write_text(data.read_text() + '{"question_id": 99, "image": "x.png"}\n')
    args = ["eval", "benchmark", "--name", "pope", "--data", str(data), "--images", str(images)]
    result = CliRunner().invoke(app, [*args, "--model", str(quick_testbed / "base_model")])
    assert result.exit_code == 2
    assert "line 3" in result.output and "coco_pope_random.json" in result.output
    result = CliRunner().invoke(app, [*args[:3], "nope", *args[4:], "--model", "m"])
    assert result.exit_code == 2 and "unknown benchmark" in result.output
