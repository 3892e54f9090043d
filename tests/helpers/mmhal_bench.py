"""An MMHal-Bench fixture in the release's layout: `response_template.json` (a JSON list of
question_type, question_topic, image_id, image_src, image_content, question, gt_answer,
model_answer) and `images/` named as the image_src URLs end."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

TYPES = ["attribute", "attribute", "counting", "holistic"]


def write_template(root: Path, n: int = 4) -> Path:
    """The release's layout: response_template.json and images/ named as the image_src URLs end."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = f"{i:04d}_o.jpg"
        Image.new("RGB", (28, 28), (40 * i, 80, 120)).save(root / "images" / name)
        records.append(
            {
                "question_type": TYPES[i % len(TYPES)],
                "question_topic": "animal",
                "image_id": f"id{i}",
                "image_src": f"https://c1.staticflickr.com/1/{i}/{name}",
                "image_content": ["Tree", "Cat"],
                "question": f"How many cats are there in picture {i}?",
                "gt_answer": "There are two cats.",
                "model_answer": "",
            }
        )
    path = root / "response_template.json"
    path.write_text(json.dumps(records, indent=2))
    return path
