"""Benchmark fixtures in their official layouts, made from the quick testbed.

`write_pope_coco`: POPE's COCO layout - `output/coco/coco_pope_{adversarial,popular,random}.json`
(one JSON object a line: question_id, image, text, label) and a `val2014/` folder of JPEGs named as
COCO names them - with the testbed's POPE questions and images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

POPE_SPLITS = ("adversarial", "popular", "random")


def write_pope_coco(testbed: Path, out: Path, per_split: int = 6) -> tuple[Path, Path]:
    """(question folder, image folder): the first `per_split` questions of each testbed POPE split."""
    questions = out / "output" / "coco"
    images = out / "val2014"
    questions.mkdir(parents=True)
    images.mkdir(parents=True)
    coco_names: dict[Path, str] = {}
    for split in POPE_SPLITS:
        source = testbed / "datasets" / f"pope_{split}"
        rows = []
        for line in (source / "manifest.jsonl").read_text().splitlines()[:per_split]:
            sample = json.loads(line)
            image = (source / sample["image"]).resolve()
            if image not in coco_names:
                coco_names[image] = f"COCO_val2014_{len(coco_names) + 1:012d}.jpg"
                Image.open(image).convert("RGB").save(images / coco_names[image], "JPEG", quality=95)
            rows.append(
                {
                    "question_id": len(rows) + 1,
                    "image": coco_names[image],
                    "text": sample["question"],
                    "label": sample["answer"],
                }
            )
        (questions / f"coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return questions, images


def break_line(path: Path, line: int, field: str) -> None:
    """Drop `field` from line `line` (1-based) of a JSON-lines file."""
    lines = path.read_text().splitlines()
    record = json.loads(lines[line - 1])
    del record[field]
    lines[line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
