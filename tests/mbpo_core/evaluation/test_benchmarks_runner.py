"""The benchmark runner and `mbpo eval benchmark` end to end, on a POPE-layout fixture made from the
quick testbed's images (some resized, so the batch mixes image sizes) and its base model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mbpo_cli.main import app
from mbpo_core.evaluation.benchmarks import pope
from mbpo_core.evaluation.benchmarks.common import BenchmarkItem
from mbpo_core.evaluation.benchmarks.runner import (
    evaluate_benchmark,
    generate_answers,
    load_image,
    mixed_inputs,
    prepare,
    prepared_batches,
    write_predictions,
)
from mbpo_core.models import build
from mbpo_core.models.loader import load_adapter

pytestmark = pytest.mark.slow

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


class ShapeAdapter:
    """Just what `prepared_batches` asks of an adapter: inputs whose shape follows the image height."""

    def _model_pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.zeros((1, int(pixels.shape[1])))}


def test_prepared_batches_group_by_shape_within_a_bounded_window(tmp_path: Path) -> None:
    items = []
    for i, height in enumerate([4, 6, 4, 6, 8, 4, 8, 6, 4]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (5, height)).save(path)
        items.append(BenchmarkItem(id=str(i), image=path, prompt="q"))
    batches = list(prepared_batches(ShapeAdapter(), items, batch_size=3, window=3))  # type: ignore[arg-type]
    assert sorted(i for batch in batches for i, _ in batch) == list(range(len(items)))
    for batch in batches:
        assert 1 <= len(batch) <= 3 and len({image.key for _, image in batch}) == 1
        assert all(image.height == Image.open(items[i].image).height for i, image in batch)
    # 0 2 (height 4) and 1 (6) wait; 3 (6) makes 4 waiting > 3: the first largest group (0, 2) goes;
    # 4 (8), 5 (4): (1, 3) goes; 6 (8), 7 (6): (4, 6) goes; 8 (4); the end: (5, 8), then (7)
    assert [[i for i, _ in b] for b in batches] == [[0, 2], [1, 3], [4, 6], [5, 8], [7]]


@pytest.fixture(scope="module")
def adapter(quick_testbed: Path):  # type: ignore[no-untyped-def]
    return load_adapter(quick_testbed / "base_model")


def test_mixed_sizes_share_a_batch_and_answer_as_batch_size_one(
    quick_testbed: Path, tmp_path: Path, adapter
) -> None:  # type: ignore[no-untyped-def]
    data, images = pope_fixture(quick_testbed, tmp_path)
    items = pope.load(data, images)
    assert len({Image.open(item.image).size for item in items}) == len(SIZES)
    # Qwen2-VL's inputs concatenate whatever the size: one batch (grouping by raw size made three).
    assert [len(b) for b in prepared_batches(adapter, items, 64)] == [len(items)]
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


# ---- every family: mixed sizes in one call answer as each image alone ----------------------------

WORDS = ["is", "there", "a", "red", "blue", "circle", "square", "in", "the", "image", "yes", "no"]


@pytest.mark.parametrize("family", build.FAMILIES)
def test_every_family_scores_mixed_sizes_as_batch_size_one(family: str, tmp_path: Path) -> None:
    """The runner's premise: a family's model inputs for several images are the per-image inputs
    concatenated along dim 0, each prompt with its own image tokens. Compared on the next-token
    logits (tiny random models answer the same words whatever the image, the logits do differ), for
    sizes within the tiny processors' range (56 px tiles, at most 112 px): several grids, tile
    counts and aspect ratios; and the generated answers."""
    torch.manual_seed(0)
    processor = build.build_processor(family, WORDS, image_size=56, max_image_size=112)
    build.build_model(family, processor, "tiny", seed=0).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    adapter = load_adapter(tmp_path)
    rng = np.random.default_rng(0)
    items = []
    for i, (height, width) in enumerate([(56, 56), (112, 56), (56, 112), (84, 84), (112, 112), (56, 56)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
        items.append(BenchmarkItem(id=str(i), image=path, prompt="is there a red circle in the image"))
    batches = [[index for index, _ in batch] for batch in prepared_batches(adapter, items, 8)]
    assert len(batches) < len({Image.open(i.image).size for i in items})  # sizes share batches
    with torch.no_grad():
        alone = []
        for item in items:  # the adapter's own batch-size-1 path, as VLMAdapter.generate builds it
            pixels = load_image(item.image)
            ids, mask = adapter._left_padded([adapter.prompt_ids(item.prompt, *pixels.shape[1:3])])
            inputs = {"input_ids": ids, "attention_mask": mask, **adapter.text_kwargs(ids)}
            alone.append(adapter.model(**inputs, **adapter._model_pixel_inputs(pixels)).logits[0, -1])
        for batch in batches:
            images = [prepare(adapter, load_image(items[i].image)) for i in batch]
            logits = adapter.model(**mixed_inputs(adapter, images, [items[i].prompt for i in batch])).logits
            for row, i in enumerate(batch):
                torch.testing.assert_close(logits[row, -1], alone[i], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(alone[0], alone[5])  # same size, other pixels: the image matters
    batched = generate_answers(adapter, items, batch_size=8, max_new_tokens=3)
    assert batched == [adapter.generate(load_image(i.image), [i.prompt], max_new_tokens=3)[0] for i in items]
