"""Question templates and their ground-truth answers, computed from a scene's objects.

Three task types (the manifest's `task`, docs/api.md): existence (`yes_no`), colour of a shape
(`multiple_choice`, lettered options) and count of a shape (`number`). Answers are the short forms
the base model is trained to produce: "yes"/"no", a letter, a digit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbpo_core.data.verifiers import choice_letter
from mbpo_core.testbed.scenes import COLOURS, SHAPES, ObjectKind, Scene

N_COLOUR_OPTIONS = 4


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    task: str
    choices: tuple[str, ...] = ()
    # Written to the manifest line beside the standard fields (the parser keeps unknown keys as meta).
    meta: dict[str, Any] = field(default_factory=dict)


def plural(shape: str) -> str:
    return f"{shape}s"


def existence_qa(kind: ObjectKind, scene: Scene, **meta: Any) -> QA:
    answer = "yes" if kind in scene.kinds() else "no"
    return QA(f"Is there a {kind.name} in the image?", answer, "yes_no", meta={"object": kind.name, **meta})


def colour_qa(rng: np.random.Generator, scene: Scene) -> QA | None:
    """'What colour is the <shape>?' about a shape present exactly once (None if there is none)."""
    unique = [s for s in SHAPES if scene.count(shape=s) == 1]
    if not unique:
        return None
    shape = unique[int(rng.integers(len(unique)))]
    colour = next(o.kind.colour for o in scene.objects if o.kind.shape == shape)
    others = [c for c in COLOURS if c != colour]
    picked = [colour, *rng.choice(others, size=N_COLOUR_OPTIONS - 1, replace=False).tolist()]
    choices = tuple(picked[int(i)] for i in rng.permutation(N_COLOUR_OPTIONS))
    options = " ".join(f"({choice_letter(i)}) {c}" for i, c in enumerate(choices))
    question = f"What colour is the {shape}? Options: {options}. Answer with the letter."
    answer = choice_letter(choices.index(colour))
    return QA(question, answer, "multiple_choice", choices, meta={"object": f"{colour} {shape}"})


def count_qa(rng: np.random.Generator, scene: Scene, p_present_shape: float = 0.8) -> QA:
    """'How many <shape>s are there?'; mostly about a shape in the scene, sometimes one that is not (0)."""
    present = sorted({o.kind.shape for o in scene.objects})
    pool = present if present and rng.random() < p_present_shape else list(SHAPES)
    shape = pool[int(rng.integers(len(pool)))]
    return QA(
        f"How many {plural(shape)} are there?", str(scene.count(shape=shape)), "number", meta={"shape": shape}
    )


def vocabulary() -> list[str]:
    """Every word the templates and answers use (the word-level tokenizer's vocabulary)."""
    template_words = [
        "is",
        "there",
        "a",
        "in",
        "the",
        "image",
        "what",
        "colour",
        "options",
        "answer",
        "with",
        "letter",
        "how",
        "many",
        "are",
        "yes",
        "no",
    ]
    letters = [choice_letter(i) for i in range(N_COLOUR_OPTIONS)]
    return [*template_words, *COLOURS, *SHAPES, *(plural(s) for s in SHAPES), *letters]
