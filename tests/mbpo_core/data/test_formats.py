"""Importers of HF datasets / parquet / TRL / LLaVA into the manifest, and the preference export."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_dataset
from PIL import Image as PILImage

from mbpo_core.data.formats import (
    ConversionStopped,
    convert,
    detect_format,
    infer_task,
    pairs_to_preference_parquet,
)
from mbpo_core.data.manifest import ManifestError, read_manifest

LIMITS_KW: dict[str, Any] = {"max_pixels": 10_000_000, "max_bytes": 10_000_000}


def png(colour: str, size: tuple[int, int] = (20, 16)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def plain_rows() -> dict[str, list[Any]]:
    return {
        "image": [{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}],
        "question": ["Is there a red square?", "How many squares?"],
        "answer": ["Yes", "2"],
    }


def user(text: str, *, image: bool = True) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image", "text": None}] if image else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def errors_of(result) -> list[dict[str, Any]]:
    return [e.as_dict() for e in result.errors]


def test_infer_task() -> None:
    assert infer_task("Yes.") == "yes_no" and infer_task("no") == "yes_no"
    assert (
        infer_task("3") == "number"
        and infer_task("-2.5") == "number"
        and infer_task("twenty-one") == "number"
    )
    assert infer_task("There are 2 circles.") == "open" and infer_task("none") == "open"
    assert infer_task("a red square") == "open"
    assert infer_task("B", ["red", "blue"]) == "multiple_choice"


def test_hf_disk_dataset_dict_with_renamed_columns(tmp_path: Path) -> None:
    rows = plain_rows()
    rows["query"] = rows.pop("question")
    rows["image"][1] = rows["image"][0]  # a repeated image is stored once
    features = Features({"image": Image(), "query": Value("string"), "answer": Value("string")})
    DatasetDict(
        {
            "train": Dataset.from_dict(rows, features=features),
            "test": Dataset.from_dict(rows, features=features),
        }
    ).save_to_disk(str(tmp_path / "hf"))
    assert detect_format(tmp_path / "hf").format == "hf_disk"
    result = convert(tmp_path / "hf", tmp_path / "out", columns={"question": "query"}, **LIMITS_KW)
    assert errors_of(result) == [] and result.samples == 4 and result.format == "hf_disk"
    samples = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [(s.id, s.task, s.meta["split"]) for s in samples] == [
        ("row-1", "yes_no", "train"),
        ("row-2", "number", "train"),
        ("row-3", "yes_no", "test"),
        ("row-4", "number", "test"),
    ]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 1
    with PILImage.open(tmp_path / "out" / samples[0].image) as img:
        assert img.format == "PNG" and img.size == (20, 16)


def test_parquet_without_image_column_names_every_row(tmp_path: Path) -> None:
    rows = plain_rows()
    del rows["image"]
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "data.parquet"))
    result = convert(tmp_path / "data.parquet", tmp_path / "out", **LIMITS_KW)
    assert result.samples == 0
    assert [(e["line"], e["code"], e["field"]) for e in errors_of(result)] == [
        (1, "missing_field", "image"),
        (2, "missing_field", "image"),
    ]
    assert "row 1: no image column 'image'" in result.errors[0].message


def test_parquet_directory_with_bad_rows(tmp_path: Path) -> None:
    rows = plain_rows()
    rows["task"] = ["yes_no", "multiple_choice"]  # row 2 has no choices
    rows["image"].append({"bytes": b"not an image", "path": None})
    rows["question"].append("Is it?")
    rows["answer"].append("yes")
    rows["task"].append(None)
    (tmp_path / "data").mkdir()
    Dataset.from_dict(
        rows, features=Features({**{k: Value("string") for k in rows}, "image": Image()})
    ).to_parquet(str(tmp_path / "data" / "train-0.parquet"))
    result = convert(tmp_path / "data", tmp_path / "out", format="parquet", **LIMITS_KW)
    assert result.samples == 1
    assert [(e["line"], e["code"], e["field"]) for e in errors_of(result)] == [
        (2, "missing_field", "choices"),
        (3, "corrupt_image", "image"),
    ]
    # No image of a refused row is left behind.
    assert len(list((tmp_path / "out" / "images").iterdir())) == 1


def trl_dataset(kind: str) -> Dataset:
    image = {"bytes": png("green"), "path": None}
    if kind == "messages":
        rows: dict[str, list[Any]] = {
            "messages": [user("Is there a green square?") + assistant("yes")],
            "images": [[image]],
        }
    elif kind == "completion":
        rows = {"prompt": [user("How many squares?")], "completion": [assistant("1")], "images": [[image]]}
    else:
        rows = {
            "prompt": [user("Is there a green square?")],
            "chosen": [assistant("yes")],
            "rejected": [assistant("no")],
            "images": [[image]],
        }
    features = {k: v for k, v in Dataset.from_dict(rows).features.items() if k != "images"}
    return Dataset.from_dict(rows, features=Features({**features, "images": List(Image())}))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("messages", {"question": "Is there a green square?", "answer": "yes", "task": "yes_no"}),
        ("completion", {"question": "How many squares?", "answer": "1", "task": "number"}),
        ("preference", {"question": "Is there a green square?", "answer": "yes", "rejected": "no"}),
    ],
)
def test_trl_formats_on_disk_and_in_parquet(tmp_path: Path, kind: str, expected: dict[str, str]) -> None:
    dataset = trl_dataset(kind)
    dataset.save_to_disk(str(tmp_path / "disk"))
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    for src in (tmp_path / "disk", tmp_path / "rows.parquet"):
        assert detect_format(src).format == "trl"
        out = tmp_path / f"out-{src.name}"
        result = convert(src, out, **LIMITS_KW)
        assert errors_of(result) == [], src
        (line,) = (out / "manifest.jsonl").read_text().splitlines()
        obj = json.loads(line)
        assert {k: obj[k] for k in expected} == expected
        assert (out / obj["image"]).is_file()


def test_trl_jsonl_image_count_mismatch_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png("red"))
    rows = [
        {"messages": user("Is there a red square?") + assistant("yes"), "images": ["images/a.png"]},
        {"messages": user("Is it red?") + assistant("yes"), "images": ["images/a.png", "images/a.png"]},
        {"messages": user("Is it red?", image=False) + assistant("yes"), "images": ["images/a.png"]},
        {"prompt": "<image><image> Same?", "completion": "yes", "images": ["images/a.png", "images/a.png"]},
        {"messages": user("Is it red?") + assistant("yes"), "images": ["../outside.png"]},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert detect_format(tmp_path).format == "trl"
    result = convert(tmp_path, tmp_path / "out", **LIMITS_KW)
    assert result.samples == 1
    assert [(e["line"], e["code"], e["field"]) for e in errors_of(result)] == [
        (2, "image_count_mismatch", "images"),
        (3, "image_count_mismatch", "images"),
        (4, "unsupported_images", "images"),
        (5, "unsafe_path", "image"),
    ]
    assert result.errors[0].message == "row 2: 2 image(s) for 1 image placeholder(s)"


def test_llava_first_exchange_only(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.jpg").write_bytes(png("red"))
    rows = [
        {
            "id": 7,
            "image": "img/1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nIs the square red?"},
                {"from": "gpt", "value": "Yes."},
                {"from": "human", "value": "Why?"},
                {"from": "gpt", "value": "Because it is."},
            ],
        },
        {"id": "8", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "9", "image": "img/missing.jpg", "conversations": [{"from": "human", "value": "<image> hi"}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    result = convert(tmp_path / "llava.json", tmp_path / "out", **LIMITS_KW)
    (sample,) = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert (sample.id, sample.question, sample.answer, sample.task) == (
        "7",
        "Is the square red?",
        "Yes.",
        "yes_no",
    )
    assert [(e["line"], e["code"]) for e in errors_of(result)] == [
        (2, "unsupported_images"),
        (3, "missing_field"),
    ]


def test_detection_and_explicit_formats(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as exc:
        detect_format(tmp_path)
    assert (exc.value.code, exc.value.field) == ("unknown_format", "path")
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ManifestError) as exc:
        detect_format(tmp_path, "parquet")
    assert (exc.value.code, exc.value.field) == ("format_mismatch", "format")
    with pytest.raises(ManifestError) as exc:
        detect_format(tmp_path, "csv")
    assert exc.value.field == "format"
    assert detect_format(tmp_path / "x.json").format == "llava"
    result = convert(tmp_path / "x.json", tmp_path / "out", **LIMITS_KW)
    assert [e.code for e in result.errors] == ["empty_manifest"]


def test_conversion_stops_when_told(tmp_path: Path) -> None:
    Dataset.from_dict(
        plain_rows(),
        features=Features({"image": Image(), "question": Value("string"), "answer": Value("string")}),
    ).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(ConversionStopped):
        convert(tmp_path / "d.parquet", tmp_path / "out", should_stop=lambda: True, **LIMITS_KW)


def test_pairs_export_loads_as_a_trl_preference_dataset(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    pairs = []
    for i, colour in enumerate(["red", "blue"]):
        (tmp_path / "images" / f"{i}.png").write_bytes(png(colour))
        (tmp_path / "images" / f"{i}-adv.png").write_bytes(png("black"))
        pairs.append(
            {
                "id": f"p{i}",
                "image": f"images/{i}.png",
                "perturbed_image": f"images/{i}-adv.png",
                "question": f"Is there a {colour} square?",
                "task": "yes_no",
                "chosen": "yes",
                "rejected": "no",
            }
        )
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    assert pairs_to_preference_parquet(tmp_path / "pairs.jsonl", tmp_path / "out" / "pairs.parquet") == 2
    loaded = load_dataset(
        "parquet",
        data_files=str(tmp_path / "out" / "pairs.parquet"),
        split="train",
        cache_dir=str(tmp_path / "c"),
    )
    assert set(loaded.column_names) >= {"prompt", "images", "chosen", "rejected"}
    row = loaded[1]
    assert row["prompt"][0]["role"] == "user"
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["prompt"][0]["content"][1]["text"] == "Is there a blue square?"
    assert (
        row["chosen"][0]["content"][0]["text"] == "yes" and row["rejected"][0]["content"][0]["text"] == "no"
    )
    (image,) = row["images"]
    assert image.getpixel((0, 0)) == (0, 0, 255)
