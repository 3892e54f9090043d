"""Write a split to disk: PNG images beside a JSONL manifest in the manifest format of docs/api.md.

Each line carries the standard fields plus `objects` (the kinds drawn in the image), `layout`
(where: centre and radius in pixels; the base model's auxiliary presence head learns from it) and
the question's own metadata (e.g. which POPE negative it
is). The manifest is written to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mbpo_core.testbed.scenes import render_scene
from mbpo_core.testbed.splits import Sample

MANIFEST_NAME = "manifest.jsonl"


def manifest_line(sample: Sample, image_ref: str) -> dict[str, Any]:
    line: dict[str, Any] = {
        "id": sample.id,
        "image": image_ref,
        "question": sample.qa.question,
        "answer": sample.qa.answer,
        "task": sample.qa.task,
    }
    if sample.qa.choices:
        line["choices"] = list(sample.qa.choices)
    line["objects"] = sorted(o.kind.name for o in sample.scene.objects)
    line["layout"] = [
        {"object": o.kind.name, "x": round(o.cx, 2), "y": round(o.cy, 2), "r": round(o.radius, 2)}
        for o in sample.scene.objects
    ]
    line.update(sample.qa.meta)
    return line


def write_split(split_dir: Path, samples: list[Sample], on_image: Callable[[], None] | None = None) -> Path:
    """Render every distinct image of `samples` once into `split_dir/images/` and write the manifest.

    `on_image` is called after each image (progress bars). Returns the manifest path."""
    images_dir = split_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    written: set[str] = set()
    for sample in samples:
        ref = f"images/{sample.image_id}.png"
        if sample.image_id not in written:
            # compress_level 1: several times faster than the default, files barely larger.
            Image.fromarray(render_scene(sample.scene)).save(split_dir / ref, format="PNG", compress_level=1)
            written.add(sample.image_id)
            if on_image is not None:
                on_image()
        lines.append(json.dumps(manifest_line(sample, ref)))
    manifest = split_dir / MANIFEST_NAME
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(manifest)
    return manifest
