"""POPE as a local LMMS-Eval task: what `lmms_eval --tasks ... --include_path TASK_DIR` needs to
score a model served by `POST /v1/chat/completions` on POPE's own files, with no hub
(docs/benchmarks.md, "LMMS-Eval").

`write_pope_task(data, images, out)` writes into `out`:

    data/                   the questions, a `datasets` DatasetDict saved with `save_to_disk`: one
                            split per question file (columns question_id, question, answer,
                            category, image_source, image), read by LMMS-Eval with
                            `load_from_disk: true`, its offline route
    utils.py                LMMS-Eval's own POPE prompt and scoring, imported from the installed
                            `lmms_eval.tasks.pope.utils`; only `pope_doc_to_visual` is ours
    <name>_<split>.yaml     one task per question file
    <name>.yaml             a group of them, when there is more than one file

Guarantees:
- The questions are exactly those `benchmarks.pope.load` reads, in file order, and LMMS-Eval's
  prompt for each is the prompt `mbpo eval benchmark --name pope` sends for it: the same model
  answers both alike. A broken question file or a missing image is a `BenchmarkDataError` naming
  the file and line, raised before anything is written.
- Prompt and scoring are LMMS-Eval's code, not a copy, so its numbers are LMMS-Eval's numbers.
  Its scoring is not POPE's `evaluate.py` (which `mbpo eval benchmark` follows): an answer counts
  only when it is exactly "yes" or "no" after lower-casing and stripping, and its yes_ratio is the
  share of "yes" in the ground truth. Both give the same accuracy, precision, recall and F1 when
  every answer is a plain "yes" or "no".
- The rows name the images by absolute path instead of embedding them (no copy of COCO): the task
  reads them where they are when LMMS-Eval runs, decoded as LMMS-Eval decodes embedded images
  (PIL, converted to RGB).
- Nothing is half-written: the task is built in a sibling directory and renamed into place; an
  existing non-empty `out` is refused.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mbpo_core.evaluation.benchmarks import pope
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, BenchmarkItem

# LMMS-Eval's POPE task (lmms_eval/tasks/pope/pope.yaml in lmms-eval 0.7.3): its generation
# settings, metrics and the functions that compute them.
GENERATION_KWARGS = {
    "max_new_tokens": 128,
    "temperature": 0,
    "top_p": 1.0,
    "num_beams": 1,
    "do_sample": False,
}
METRICS = ("accuracy", "precision", "recall", "f1_score", "yes_ratio")
LMMS_EVAL_VERSION = "0.7.3"

UTILS = '''"""Written by `mbpo eval lmms-task`. LMMS-Eval's own POPE prompt and scoring; the question rows
name their image files instead of embedding them."""

from lmms_eval.tasks.pope.utils import (  # noqa: F401 (named by the task YAML files)
    pope_aggregate_accuracy,
    pope_aggregate_f1_score,
    pope_aggregate_precision,
    pope_aggregate_recall,
    pope_aggregate_yes_ratio,
    pope_doc_to_text,
    pope_process_results,
)
from PIL import Image


def pope_doc_to_visual(doc):
    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]
'''


@dataclass(frozen=True)
class LmmsTask:
    """What `write_pope_task` wrote: the directory for `--include_path`, one task per question
    file, and the name to pass to `--tasks` (the group when there are several)."""

    path: Path
    tasks: dict[str, str]  # task name -> split (the question file's stem)
    name: str
    questions: int


def split_name(stem: str) -> str:
    """A `datasets` split name (word characters and dots) for a question file's stem."""
    return re.sub(r"[^\w.]", "_", stem).strip(".") or "questions"


def question_rows(items: list[BenchmarkItem]) -> dict[str, list[dict[str, str]]]:
    """The rows of each split, in the columns of LMMS-Eval's POPE dataset; `image` is a path."""
    rows: dict[str, list[dict[str, str]]] = {}
    for item in items:
        # pope.prompt appends the suffix to the stripped question; LMMS-Eval's doc_to_text strips
        # the question and appends the same suffix, so both send the same text.
        assert item.prompt.endswith(pope.PROMPT_SUFFIX), item.prompt
        split = str(item.meta["split"])
        rows.setdefault(split, []).append(
            {
                "question_id": str(item.meta["question_id"]),
                "question": item.prompt.removesuffix(pope.PROMPT_SUFFIX),
                "answer": str(item.meta["label"]),
                "category": split,
                "image_source": item.image.name,
                "image": str(item.image.resolve()),
            }
        )
    return rows


def task_yaml(task: str, dataset: Path, split: str) -> str:
    """One LMMS-Eval task over one split, as LMMS-Eval's pope.yaml with a local dataset."""
    metrics = "".join(
        f"  - metric: pope_{m}\n    aggregation: !function utils.pope_aggregate_{m}\n"
        "    higher_is_better: true\n"
        for m in METRICS
    )
    generation = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in GENERATION_KWARGS.items())
    return (
        f"# Written by `mbpo eval lmms-task` for lmms-eval {LMMS_EVAL_VERSION}: its POPE task, local files.\n"
        f"task: {json.dumps(task)}\n"
        f"dataset_path: {json.dumps(str(dataset))}\n"
        "dataset_kwargs:\n  load_from_disk: true\n"
        f"test_split: {json.dumps(split)}\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.pope_doc_to_visual\n"
        "doc_to_text: !function utils.pope_doc_to_text\n"
        "doc_to_target: answer\n"
        f"generation_kwargs:\n{generation}"
        "process_results: !function utils.pope_process_results\n"
        f"metric_list:\n{metrics}"
        "lmms_eval_specific_kwargs:\n  default:\n"
        '    pre_prompt: ""\n'
        f"    post_prompt: {json.dumps(pope.PROMPT_SUFFIX)}\n"
        "metadata:\n  - version: 0.0\n"
    )


def group_yaml(group: str, tasks: list[str]) -> str:
    listed = "".join(f"  - {json.dumps(t)}\n" for t in tasks)
    header = "# Written by `mbpo eval lmms-task`: every question file's task.\n"
    return f"{header}group: {json.dumps(group)}\ntask:\n{listed}"


def write_pope_task(data: Path, images: Path, out: Path, *, name: str = "mbpo_pope") -> LmmsTask:
    """Write the LMMS-Eval task folder for POPE question files `data` (a file or a directory of
    them) whose images are in `images`; see the module docstring for the layout."""
    import datasets

    if not re.fullmatch(r"\w+", name):
        raise ValueError(f"task name {name!r}: use letters, digits and underscores only")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; remove it or choose another")
    items = pope.load(data, images)
    rows = question_rows(items)
    splits = {split: split_name(split) for split in rows}
    if len(set(splits.values())) < len(splits):
        raise BenchmarkDataError(data, f"question files whose names clash as split names: {sorted(rows)}")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a few rows: "Saving the dataset" bars would be noise
    try:
        datasets.DatasetDict(
            {splits[split]: datasets.Dataset.from_list(split_rows) for split, split_rows in rows.items()}
        ).save_to_disk(str(building / "data"))
        (building / "utils.py").write_text(UTILS)
        tasks = {f"{name}_{splits[split]}": split for split in rows}
        for task, split in tasks.items():
            (building / f"{task}.yaml").write_text(task_yaml(task, out / "data", splits[split]))
        if len(tasks) > 1:
            (building / f"{name}.yaml").write_text(group_yaml(name, list(tasks)))
        if out.exists():
            out.rmdir()
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
    return LmmsTask(
        path=out, tasks=tasks, name=name if len(tasks) > 1 else next(iter(tasks)), questions=len(items)
    )
