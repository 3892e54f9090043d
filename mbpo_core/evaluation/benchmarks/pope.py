"""POPE (Li et al. 2023): yes/no probes "Is there a <object> in the image?" over COCO (or A-OKVQA,
GQA) images, in random / popular / adversarial splits.

Files: POPE's question files, one JSON object a line (even when named `.json`):
    {"question_id": 1, "image": "COCO_val2014_000000016631.jpg", "text": "Is there a person in the image?",
     "label": "yes"}
`data` is one such file or a directory of them (each file is a split, named by its stem);
`images` the directory the `image` names are relative to.

Prompt: as LMMS-Eval's POPE task builds it - the question stripped, then a new line and "Answer the
question using a single word or phrase."

Scoring: as POPE's official evaluation script (`evaluate.py`): of the answer only the text before
its first '.' counts, commas are dropped, it is split on spaces, and the answer is "no" when one of
the words is exactly "no", "No" or "not" - every other answer, including one that is neither yes nor
no, counts as "yes". "yes" is the positive class; accuracy, precision, recall, F1 and yes-ratio (the
share of answers counted "yes") follow. Beyond the script: `non_yes_no`, the share of answers that
are not a plain yes/no after LMMS-Eval's normalisation (lower case, stripped; a trailing '.'
allowed), i.e. how many answers the yes-default decided. Per split, and "all" over every split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mbpo_core.evaluation.benchmarks.common import (
    BenchmarkDataError,
    BenchmarkItem,
    MetricTables,
    field_of,
    image_path,
    ratio,
    read_json_lines,
)

NAME = "pope"
MAX_NEW_TOKENS = 8
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."


def prompt(question: str) -> str:
    return f"{question.strip()}{PROMPT_SUFFIX}"


def question_files(data: Path) -> list[Path]:
    if data.is_file():
        return [data]
    if data.is_dir():
        files = sorted(p for p in data.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        if files:
            return files
        raise BenchmarkDataError(data, "no POPE question files (*.json, *.jsonl) in this directory")
    raise BenchmarkDataError(data, "no such file or directory")


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every question of every question file, in file order; ids are `<split>/<question_id>`."""
    if images is None:
        raise BenchmarkDataError(data, "POPE needs the image directory (--images)")
    items: list[BenchmarkItem] = []
    for path in question_files(data):
        split = path.stem
        seen: set[str] = set()
        for line, record in read_json_lines(path):
            qid = field_of(path, record, "question_id", (int, str), line=line)
            text = field_of(path, record, "text", str, line=line)
            label = field_of(path, record, "label", str, line=line).strip().lower()
            if label not in ("yes", "no"):
                raise BenchmarkDataError(path, f"label must be yes or no, got {label!r}", line=line)
            name = field_of(path, record, "image", str, line=line)
            if str(qid) in seen:
                raise BenchmarkDataError(path, f"question_id {qid} appears twice", line=line)
            seen.add(str(qid))
            items.append(
                BenchmarkItem(
                    id=f"{split}/{qid}",
                    image=image_path(images, name, path, line=line),
                    prompt=prompt(text),
                    meta={"split": split, "question_id": qid, "label": label},
                )
            )
    return items


def official_answer(answer: str) -> str:
    """POPE's evaluate.py: "no" if a word of the first sentence is no / No / not, else "yes"."""
    text = answer.split(".", 1)[0] if "." in answer else answer
    words = text.replace(",", "").split(" ")
    return "no" if {"no", "No", "not"} & set(words) else "yes"


def is_plain_yes_no(answer: str) -> bool:
    """LMMS-Eval's normalisation (lower case, stripped), a trailing '.' allowed."""
    return answer.lower().strip().removesuffix(".") in ("yes", "no")


def metrics(labels: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio as POPE's evaluate.py; n and non_yes_no."""
    preds = [official_answer(a) for a in answers]
    pairs = list(zip(preds, labels, strict=True))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {
        "n": len(pairs),
        "accuracy": ratio(tp + tn, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ratio(preds.count("yes"), len(preds)),
        "non_yes_no": ratio(sum(not is_plain_yes_no(a) for a in answers), len(answers)),
    }


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    """Metrics per split (question file), and "all" when there is more than one split."""
    splits: dict[str, tuple[list[str], list[str]]] = {}
    for item, answer in zip(items, answers, strict=True):
        labels, split_answers = splits.setdefault(str(item.meta["split"]), ([], []))
        labels.append(str(item.meta["label"]))
        split_answers.append(answer)
    tables = {split: metrics(labels, split_answers) for split, (labels, split_answers) in splits.items()}
    if len(splits) > 1:
        tables["all"] = metrics([str(i.meta["label"]) for i in items], list(answers))
    return tables
