"""The prompt dataset of hybrid GRPO: online manifest samples and offline mined pairs, mixed per step.

Each row is one prompt in the shape TRL's GRPOTrainer reads (a conversational `prompt`, the clean
`image`) plus the columns the reward functions read (`task`, `answer`, `choices`) and the mined
answers of offline rows (`mined_chosen`, `mined_rejected`). Offline rows are trained on the **clean**
image (docs/method.md §5): the perturbed image only served to find the rejected answer.

`MixedGroupSampler` replaces TRL's RepeatSampler so the share of offline groups is exact in every
step rather than on average, and so the data order is a pure function of (seed, step): a resumed
run sees the same prompts as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from datasets import Image as DatasetImage
from torch.utils.data import Sampler

from mbpo_core.data.manifest import read_manifest, resolve_image_path
from mbpo_core.data.pairs import iter_pairs
from mbpo_core.data.verifiers import parse_answer


@dataclass(frozen=True)
class PromptRow:
    """One training prompt. `chosen`/`rejected` are set for offline (mined) rows only."""

    id: str
    image_path: Path
    question: str
    task: str
    answer: str
    choices: tuple[str, ...] = ()
    chosen: str | None = None
    rejected: str | None = None

    @property
    def is_offline(self) -> bool:
        return self.chosen is not None


@dataclass(frozen=True)
class LoadedPrompts:
    online: list[PromptRow]
    offline: list[PromptRow]
    skipped: dict[str, int]


def load_online_rows(manifest: str | Path) -> list[PromptRow]:
    """Online prompts: every manifest sample whose task has a verifier (open answers have none)."""
    path = Path(manifest)
    rows = []
    for s in read_manifest(path):
        if s.task == "open":
            continue
        rows.append(
            PromptRow(
                id=s.id,
                image_path=resolve_image_path(path.parent, s.image, line=s.line),
                question=s.question,
                task=s.task,
                answer=s.answer,
                choices=tuple(s.choices),
            )
        )
    return rows


def load_offline_rows(pairs: str | Path) -> tuple[list[PromptRow], dict[str, int]]:
    """Offline prompts from mining's `pairs.jsonl` (image paths relative to the file).

    A pair whose sampled answers could not be verified is skipped and counted by reason: an open
    task, or a multiple-choice pair without its `choices`."""
    path = Path(pairs)
    rows: list[PromptRow] = []
    skipped: Counter[str] = Counter()
    for number, pair in iter_pairs(path):
        task = pair["task"]
        choices = tuple(pair.get("choices") or ())
        if task == "open":
            skipped["open_task"] += 1
            continue
        if task == "multiple_choice" and not choices:
            skipped["multiple_choice_without_choices"] += 1
            continue
        if parse_answer(task, pair["chosen"], choices) is None:
            skipped["unparsable_chosen"] += 1
            continue
        rows.append(
            PromptRow(
                id=str(pair["id"]),
                image_path=resolve_image_path(path.parent, pair["image"], line=number),
                question=pair["question"],
                task=task,
                answer=pair["chosen"],
                choices=choices,
                chosen=pair["chosen"],
                rejected=pair["rejected"],
            )
        )
    return rows, dict(skipped)


def load_prompts(online_manifest: str | Path | None, pairs: str | Path | None) -> LoadedPrompts:
    online = load_online_rows(online_manifest) if online_manifest else []
    offline, skipped = load_offline_rows(pairs) if pairs else ([], {})
    return LoadedPrompts(online=online, offline=offline, skipped=skipped)


def build_prompt_dataset(online: Sequence[PromptRow], offline: Sequence[PromptRow]) -> Dataset:
    """The rows TRL reads: online rows first, then offline rows (the sampler relies on this order).

    Images are stored as paths and decoded (to RGB) only when a row is read, so a large pool costs
    no memory until it is sampled."""
    rows = [*online, *offline]
    columns: dict[str, list[Any]] = {
        "prompt": [[{"role": "user", "content": r.question}] for r in rows],
        "image": [str(r.image_path) for r in rows],
        "id": [r.id for r in rows],
        "task": [r.task for r in rows],
        "answer": [r.answer for r in rows],
        "choices": [list(r.choices) or None for r in rows],
        # Not "chosen"/"rejected": TRL reads columns of those names as preference conversations.
        "mined_chosen": [r.chosen for r in rows],
        "mined_rejected": [r.rejected for r in rows],
    }
    return Dataset.from_dict(columns).cast_column("image", DatasetImage(mode="RGB"))


def source_counts(dataset: Dataset) -> tuple[int, int]:
    """(online rows, offline rows) of a dataset made by `build_prompt_dataset`."""
    is_offline = [c is not None for c in dataset["mined_chosen"]]
    n_online = is_offline.index(True) if any(is_offline) else len(is_offline)
    if not all(is_offline[n_online:]):
        raise ValueError("prompt dataset must hold its online rows first")
    return n_online, len(is_offline) - n_online


def offline_groups_per_step(
    offline_fraction: float, groups_per_step: int, n_online: int, n_offline: int, processes: int = 1
) -> int:
    """How many of a step's groups are offline: the fraction rounded to a multiple of `processes`
    (every process must sample the same number of answers: TRL gathers them as equal-sized tensors),
    and all of one source if the other is empty (a run with no mined pairs is plain online GRPO)."""
    if n_offline == 0:
        return 0
    if n_online == 0:
        return groups_per_step
    per_process = groups_per_step // processes
    return round(offline_fraction * per_process) * processes


class MixedGroupSampler(Sampler[int]):
    """Dataset indices for `num_steps` steps, TRL's layout with an exact offline share.

    Per step: `groups_per_step` prompts, `offline_per_step` of them offline, each index repeated
    `group_size` times in a row (one group), the whole step repeated `repeat_count` times (TRL
    consumes one batch per accumulation micro-step but generates once per step). The step's groups
    are dealt to `num_processes` contiguous chunks with offline groups spread evenly, because
    accelerate hands each process a contiguous slice. Each source is drawn from its own stream of
    seeded permutations, so the order depends only on (seed, step)."""

    def __init__(
        self,
        *,
        n_online: int,
        n_offline: int,
        groups_per_step: int,
        offline_per_step: int,
        group_size: int,
        num_steps: int,
        num_processes: int = 1,
        repeat_count: int = 1,
        seed: int = 0,
    ):
        if groups_per_step % num_processes:
            raise ValueError(f"{groups_per_step} groups per step do not split over {num_processes} processes")
        if offline_per_step > groups_per_step or (offline_per_step and not n_offline):
            raise ValueError("not enough offline prompts for the requested offline share")
        if offline_per_step < groups_per_step and not n_online:
            raise ValueError("online groups requested but there are no online prompts")
        self.n_online, self.n_offline = n_online, n_offline
        self.groups_per_step, self.offline_per_step = groups_per_step, offline_per_step
        self.group_size, self.num_steps = group_size, num_steps
        self.num_processes, self.repeat_count, self.seed = num_processes, repeat_count, seed

    def __len__(self) -> int:
        return self.num_steps * self.groups_per_step * self.group_size * self.repeat_count

    def step_prompts(self) -> list[list[int]]:
        """The prompt indices of every step, process chunks in order."""
        online = _cyclic_permutations(self.n_online, self.seed)
        offline = _cyclic_permutations(self.n_offline, self.seed + 1)
        per_chunk = self.groups_per_step // self.num_processes
        steps = []
        for _ in range(self.num_steps):
            chunks: list[list[int]] = [[] for _ in range(self.num_processes)]
            for k in range(self.offline_per_step):
                chunks[k % self.num_processes].append(self.n_online + next(offline))
            for chunk in chunks:
                chunk.extend(next(online) for _ in range(per_chunk - len(chunk)))
            steps.append([i for chunk in chunks for i in chunk])
        return steps

    def __iter__(self) -> Iterator[int]:
        for prompts in self.step_prompts():
            for _ in range(self.repeat_count):
                for index in prompts:
                    yield from [index] * self.group_size


def _cyclic_permutations(n: int, seed: int) -> Iterator[int]:
    """0..n-1 in a fresh seeded random order, over and over (empty when n == 0)."""
    if n == 0:
        return
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


def min_sampled_answers_per_process(
    groups_per_step: int, offline_per_step: int, group_size: int, processes: int
) -> int:
    """Answers each process must sample per step (offline groups sample G-2): TRL's generation needs
    at least one on every process."""
    per_chunk = groups_per_step // processes
    most_offline = math.ceil(offline_per_step / processes)
    return most_offline * (group_size - 2) + (per_chunk - most_offline) * group_size
