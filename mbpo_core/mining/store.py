"""The mining output directory: an append-only record log that survives crashes, atomic file
writes, and the pair images. See `mbpo_core.mining.mine` for the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image


def append_line(path: Path, obj: dict[str, Any]) -> None:
    """One complete line per write + fsync: a crash can only tear the line being written."""
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path, *, repair: bool = True) -> list[dict[str, Any]]:
    """The complete JSON lines of an append-only log; a torn last line is ignored and, with
    `repair`, cut off the file so the next append starts on a clean line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    good_end, rows = 0, []
    for line in raw.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            rows.append(json.loads(line))
        except ValueError:
            break
        good_end += len(line)
    if repair and good_end != len(raw):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return rows


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def png_name(sample_id: str) -> str:
    """A safe, unique file name for any id (ids may hold slashes or unicode)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)[:80]
    return f"{safe}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}.png"


def save_png(path: Path, pixels: torch.Tensor) -> None:
    """(H, W, 3) pixels on the 1/255 grid -> an 8-bit PNG that decodes to exactly these pixels."""
    array = (pixels.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def save_pair_images(out: Path, record: dict[str, Any], source: Path, adv: torch.Tensor) -> None:
    """The pair's clean image (a byte copy of the pool file) and its perturbed PNG, inside `out`, so
    the pairs directory is self-contained and every image path stays relative to pairs.jsonl."""
    save_clean_image(out, record, source)
    record["perturbed_image"] = f"perturbed/{png_name(record['id'])}"
    save_png(out / record["perturbed_image"], adv)


def save_clean_image(out: Path, record: dict[str, Any], source: Path) -> None:
    """The clean image alone (a noise pair's: its noisy image is not kept)."""
    record["image"] = f"clean/{Path(png_name(record['id'])).stem}{source.suffix.lower()}"
    (out / "clean").mkdir(exist_ok=True)
    tmp = out / f".{Path(record['image']).name}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, out / record["image"])


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            raise ValueError(
                f"{out_dir} was mined with different settings (see run.json); use a new output directory"
            )
    else:
        write_atomic(path, json.dumps(settings, indent=2).encode())
