"""mbpo_core.data.manifest: line parsing, safe image paths, image limits (the manifest contract)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mbpo_core.data.manifest import (
    ManifestError,
    iter_manifest,
    open_image_checked,
    parse_line,
    read_manifest,
    resolve_image_path,
)
from tests.helpers import datasets as ds

GOOD = {"id": "a", "image": "images/0.png", "question": "Is it red?", "answer": "Yes.", "task": "yes_no"}


def test_parse_good_line_keeps_extras_as_meta() -> None:
    sample = parse_line(json.dumps({**GOOD, "split": "adversarial"}), 7)
    assert (sample.id, sample.task, sample.line) == ("a", "yes_no", 7)
    assert sample.meta == {"split": "adversarial"}
    mc = parse_line(
        json.dumps({**GOOD, "task": "multiple_choice", "answer": "(B)", "choices": ["red", "blue"]}), 1
    )
    assert mc.choices == ("red", "blue")


@pytest.mark.parametrize(
    ("line", "code", "field"),
    [
        ('{"id": "a", ', "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        (json.dumps({k: v for k, v in GOOD.items() if k != "question"}), "missing_field", "question"),
        (json.dumps({**GOOD, "answer": 3}), "wrong_type", "answer"),
        (json.dumps({**GOOD, "id": "  "}), "empty_field", "id"),
        (json.dumps({**GOOD, "task": "caption"}), "unknown_task", "task"),
        (json.dumps({**GOOD, "answer": "maybe"}), "bad_answer", "answer"),
        (json.dumps({**GOOD, "task": "number", "answer": "lots"}), "bad_answer", "answer"),
        (json.dumps({**GOOD, "task": "multiple_choice", "answer": "A"}), "missing_field", "choices"),
        (
            json.dumps({**GOOD, "task": "multiple_choice", "answer": "A", "choices": ["x"]}),
            "bad_choices",
            "choices",
        ),
        (json.dumps({**GOOD, "choices": ["x", "y"]}), "unexpected_field", "choices"),
        (json.dumps({**GOOD, "image": "../secret.png"}), "unsafe_path", "image"),
        (json.dumps({**GOOD, "image": "images/../../secret.png"}), "unsafe_path", "image"),
        (json.dumps({**GOOD, "image": "/etc/passwd"}), "unsafe_path", "image"),
        (json.dumps({**GOOD, "image": "C:\\secret.png"}), "unsafe_path", "image"),
        (json.dumps({**GOOD, "image": "..\\secret.png"}), "unsafe_path", "image"),
    ],
)
def test_bad_lines_name_code_line_and_field(line: str, code: str, field: str | None) -> None:
    with pytest.raises(ManifestError) as info:
        parse_line(line, 12)
    assert (info.value.code, info.value.line, info.value.field) == (code, 12, field)


def test_iter_manifest_reports_duplicates_and_skips_blank_lines(tmp_path: Path) -> None:
    path = ds.write_manifest(tmp_path / "m.jsonl", [GOOD, "", GOOD, "{oops"])
    items = list(iter_manifest(path))
    assert [n for n, _ in items] == [1, 3, 4]
    assert isinstance(items[0][1], ManifestError) is False
    assert [i.code for _, i in items[1:] if isinstance(i, ManifestError)] == ["duplicate_id", "invalid_json"]
    with pytest.raises(ManifestError):
        read_manifest(path)


def test_resolve_image_path_refuses_symlinks_leading_outside(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ds.write_images(root)
    (tmp_path / "secret.png").write_bytes((root / "images" / "0.png").read_bytes())
    (root / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "linkdir").symlink_to(tmp_path)
    (root / "images" / "inner.png").symlink_to(root / "images" / "1.png")
    assert resolve_image_path(root, "images/0.png") == (root / "images" / "0.png").resolve()
    assert resolve_image_path(root, "images/inner.png") == (root / "images" / "1.png").resolve()
    for ref in ("images/link.png", "linkdir/secret.png"):
        with pytest.raises(ManifestError) as info:
            resolve_image_path(root, ref, line=3)
        assert info.value.code == "unsafe_path"
    with pytest.raises(ManifestError) as info:
        resolve_image_path(root, "images/missing.png")
    assert info.value.code == "missing_image"
    with pytest.raises(ManifestError) as info:
        resolve_image_path(root, "images")
    assert info.value.code == "missing_image"


def test_open_image_checked_limits(tmp_path: Path) -> None:
    ok = tmp_path / "ok.png"
    Image.new("RGB", (50, 40), "red").save(ok)
    image, info = open_image_checked(ok, max_pixels=2000, max_bytes=10_000)
    assert (info.width, info.height, info.format) == (50, 40, "PNG") and image.mode == "RGB"

    with pytest.raises(ManifestError) as e:
        open_image_checked(ok, max_pixels=1999, max_bytes=10_000)
    assert e.value.code == "too_many_pixels"
    with pytest.raises(ManifestError) as e:
        open_image_checked(ok, max_pixels=2000, max_bytes=10)
    assert e.value.code == "image_too_large"

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(ds.png_bomb())  # declares 10^10 pixels in about 100 bytes
    with pytest.raises(ManifestError) as e:
        open_image_checked(bomb, max_pixels=50_000_000, max_bytes=10_000)
    assert e.value.code == "too_many_pixels"
    with pytest.raises(ManifestError) as e:  # beyond Pillow's own guard too
        open_image_checked(bomb, max_pixels=10**12, max_bytes=10_000)
    assert e.value.code == "too_many_pixels"

    truncated = tmp_path / "truncated.png"
    Image.effect_noise((64, 64), 50).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(ManifestError) as e:
        open_image_checked(truncated, max_pixels=10**6, max_bytes=10**6)
    assert e.value.code == "corrupt_image"

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is no image")
    with pytest.raises(ManifestError) as e:
        open_image_checked(garbage, max_pixels=10**6, max_bytes=10**6)
    assert e.value.code == "corrupt_image"
