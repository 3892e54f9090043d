"""Multiple-choice benchmark fixtures in the TSV layout VLMEvalKit distributes (MMBench, MMStar,
AI2D): a header, one row a question, tab-separated, quoted as pandas' `to_csv(sep="\\t")` quotes
(only fields with a tab, a quote or a new line), images as base64 PNGs.

`png_base64(colour)`: a tiny PNG; `write_tsv(path, rows)`: the file, columns in the first row's key
order (a missing key is an empty field, as pandas writes NaN); `mmbench_rows()`: three MMBench
questions, two of them with two rotations each (index + k * 1_000_000, rotations naming their
original's image by index), in the official layout."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image


def png_base64(colour: tuple[int, int, int], size: tuple[int, int] = (28, 28)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_tsv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or rows[0])
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return path


MMBENCH_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "l2-category",
    "image",
]


def mmbench_rows() -> list[dict[str, Any]]:
    """Question 0 (4 options, answer A) and question 1 (3 options, D empty, answer B) with two
    rotations each; question 2 (answer C) alone. Categories: 0 and 1 "image_scene", 2 "ocr"."""
    q0 = ["dog", "cat", "bird", "fish"]
    q1 = ["red", "blue", "green"]
    rows: list[dict[str, Any]] = []
    for k in range(3):  # rotation k: the options shifted left by k
        for index, options, truth, hint, image in (
            (0, q0, "dog", "Look closely.", png_base64((200, 40, 40))),
            (1, q1, "blue", None, png_base64((40, 40, 200))),
        ):
            shifted = options[k:] + options[:k]
            letters = "ABCD"[: len(shifted)]
            row = {
                "index": index + k * 1_000_000,
                "question": "What is shown?" if index == 0 else "Which colour\nis it?",
                "hint": hint,
                **dict(zip(letters, shifted, strict=True)),
                "answer": letters[shifted.index(truth)],
                "category": "image_scene",
                "l2-category": "coarse_perception",
                "image": image if k == 0 else str(index),
            }
            rows.append(row)
    rows.append(
        {
            "index": 2,
            "question": "What does the sign say?",
            "A": "stop",
            "B": "go",
            "C": "exit",
            "D": "enter",
            "answer": "C",
            "category": "ocr",
            "l2-category": "finegrained_perception (instance-level)",
            "image": png_base64((40, 200, 40)),
        }
    )
    return rows
