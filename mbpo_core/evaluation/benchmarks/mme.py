"""MME (Fu et al. 2023): 14 subtasks of yes/no questions, two per image (one true "yes", one "no").

Files: the MME release folder, one directory per subtask (`existence`, `OCR`, ...), each either
- images and one `.txt` per image beside them (existence, count, ... code_reasoning), or
- `images/` and `questions_answers_YN/` with one `.txt` per image (artwork, celebrity, landmark,
  posters, scene).
A `.txt` line is `question<TAB>answer` (its image: the file's stem with any image extension) or
`image<TAB>question<TAB>answer` (the eval_tool results layout; the image relative to the subtask
directory or its images/). Directories that are not MME subtasks are ignored. `images` is not used.

Prompt: the question as written (it ends in "Please answer yes or no.").

Scoring, as MME's eval_tool `calculation.py`: an answer, lower-cased, is "yes" / "no" when it is
exactly that, else "yes" if its first 4 characters contain "yes", else "no" if they contain "no",
else "other" (wrong). Per subtask acc (questions right) and acc_plus (images with every question
right), score = 100 * (acc + acc_plus); perception = the sum of the 10 perception subtasks' scores,
cognition of the 4 cognition ones. Difference: the reference pairs consecutive lines of its result
files (and asserts two per image); here questions are grouped by image, any number per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, BenchmarkItem, MetricTables, ratio

NAME = "mme"
MAX_NEW_TOKENS = 8
PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def _image_for(stem: str, folder: Path, source: Path, line: int) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise BenchmarkDataError(source, f"no image {stem}.* in {folder}", line=line)


def _named_image(name: str, subtask_dir: Path, source: Path, line: int) -> Path:
    for folder in (subtask_dir, subtask_dir / "images"):
        path = (folder / name).resolve()
        if path.is_relative_to(subtask_dir.resolve()) and path.is_file():
            return path
    raise BenchmarkDataError(source, f"image {name!r} not found under {subtask_dir}", line=line)


def _subtask_items(subtask: str, directory: Path) -> list[BenchmarkItem]:
    qa_dir = directory / "questions_answers_YN"
    text_dir, image_dir = (qa_dir, directory / "images") if qa_dir.is_dir() else (directory, directory)
    items = []
    for path in sorted(text_dir.glob("*.txt")):
        for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            fields = raw.rstrip("\r\n").split("\t")
            if len(fields) == 2:
                image = _image_for(path.stem, image_dir, path, line)
                question, answer = fields
            elif len(fields) == 3:
                image = _named_image(fields[0], directory, path, line)
                question, answer = fields[1], fields[2]
            else:
                raise BenchmarkDataError(
                    path, "expected question<TAB>answer or image<TAB>question<TAB>answer", line=line
                )
            answer = answer.strip().lower()
            if answer not in ("yes", "no"):
                raise BenchmarkDataError(path, f"answer must be yes or no, got {answer!r}", line=line)
            items.append(
                BenchmarkItem(
                    id=f"{subtask}/{path.name}:{line}",
                    image=image,
                    prompt=question.strip(),
                    meta={"subtask": subtask, "image_name": image.name, "label": answer},
                )
            )
    return items


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every question of every MME subtask directory under `data`, subtask by subtask."""
    if not data.is_dir():
        raise BenchmarkDataError(data, "expected the MME folder (one directory per subtask)")
    items = []
    for subtask in (*PERCEPTION, *COGNITION):
        if (data / subtask).is_dir():
            items += _subtask_items(subtask, data / subtask)
    if not items:
        raise BenchmarkDataError(
            data, f"no MME subtask directory with questions ({', '.join(PERCEPTION + COGNITION)})"
        )
    return items


def parse_answer(answer: str) -> str:
    """calculation.py's parse_pred_ans on the lower-cased answer: yes / no / other."""
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    """One row per subtask present (n, acc, acc_plus, score), then "perception" and "cognition"
    (score: the sum of their subtasks' scores) when any of their subtasks is present."""
    right: dict[str, list[bool]] = {}
    images: dict[str, dict[str, bool]] = {}
    for item, answer in zip(items, answers, strict=True):
        subtask = str(item.meta["subtask"])
        ok = parse_answer(answer) == item.meta["label"]
        right.setdefault(subtask, []).append(ok)
        per_image = images.setdefault(subtask, {})
        name = str(item.meta["image_name"])
        per_image[name] = per_image.get(name, True) and ok
    tables: MetricTables = {}
    for subtask in (*PERCEPTION, *COGNITION):
        if subtask in right:
            acc = ratio(sum(right[subtask]), len(right[subtask]))
            acc_plus = ratio(sum(images[subtask].values()), len(images[subtask]))
            tables[subtask] = {
                "n": len(right[subtask]),
                "acc": acc,
                "acc_plus": acc_plus,
                "score": 100 * (acc + acc_plus),
            }
    for total, members in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [tables[s] for s in members if s in tables]
        if present:
            tables[total] = {"n": sum(r["n"] for r in present), "score": sum(r["score"] for r in present)}
    return tables
