"""Build small real datasets on disk: PNG images, JSONL manifests, zips (good and hostile)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

COLOURS = ["red", "blue", "green", "yellow"]


def good_samples() -> list[dict[str, Any]]:
    return [
        {
            "id": "s1",
            "image": "images/0.png",
            "question": "Is there a red square?",
            "answer": "yes",
            "task": "yes_no",
        },
        {
            "id": "s2",
            "image": "images/1.png",
            "question": "Is there a fork?",
            "answer": "no",
            "task": "yes_no",
        },
        {
            "id": "s3",
            "image": "images/2.png",
            "question": "Which colour is the square?",
            "answer": "C",
            "task": "multiple_choice",
            "choices": ["red", "blue", "green"],
        },
        {
            "id": "s4",
            "image": "images/3.png",
            "question": "How many squares?",
            "answer": "2",
            "task": "number",
        },
        {
            "id": "s5",
            "image": "images/0.png",
            "question": "Describe the image.",
            "answer": "a red square",
            "task": "open",
        },
    ]


def write_images(root: Path, count: int = 4, size: tuple[int, int] = (40, 30)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, COLOURS[i % len(COLOURS)]).save(root / "images" / f"{i}.png")


def write_manifest(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_dataset_dir(root: Path, rows: list[dict[str, Any] | str] | None = None) -> Path:
    """A dataset directory: images/0..3.png and manifest.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    write_images(root)
    write_manifest(root / "manifest.jsonl", list(rows if rows is not None else good_samples()))
    return root


def zip_dir_images(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((root / "images").iterdir()):
            zf.write(path, f"images/{path.name}")
    return buf.getvalue()


def zip_entries(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny, well-formed PNG header declaring a `width` x `height` canvas (a decompression bomb:
    decoding it would need width*height bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def manifest_bytes(rows: list[dict[str, Any] | str]) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode()


def write_model_dir(root: Path, config: dict[str, Any], *, params: int = 12) -> Path:
    """A minimal Hugging Face model directory: config.json and a real safetensors file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    header = json.dumps({"w": {"dtype": "F32", "shape": [params], "data_offsets": [0, 4 * params]}}).encode()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * (4 * params))
    return root
