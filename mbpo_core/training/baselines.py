"""The baselines MBPO must beat (docs/method.md §6), trained from the same base model and config:

- `train_sft`: more supervised training (teacher-forced NLL of the ground-truth answer) on a
  manifest, for as many sequences as a GRPO run of the same config trains on;
- `train_dpo_random`: TRL's DPOTrainer on pairs whose rejected side is a random wrong answer of
  the task's answer space, on random pool samples (no IIG filter, no attack);
- `train_dpo_pairs`: the same DPO on a pairs file of mining: `pairs.jsonl` (rejected = the answer
  on the PGD image: DPO on the mined pairs) or `noise_pairs.jsonl` (rejected = the answer on the
  image under uniform noise of the same budget: the paper's random-noise-image baseline).

Online GRPO alone and the offline pairs alone are the hybrid trainer with `offline_fraction` 0
and 1 (`training.session.train_policy`). Each function writes a loadable model to `out/model` and
returns it; a finished one is reused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mbpo_core.config import MBPOConfig
from mbpo_core.data.manifest import read_manifest, resolve_image_path
from mbpo_core.data.verifiers import choice_letter, parse_answer
from mbpo_core.models.device import resolve_device, resolve_dtype
from mbpo_core.models.loader import load_adapter
from mbpo_core.training.session import freeze_vision_tower

MODEL_SUBDIR = "model"


def _done(out: Path) -> Path | None:
    target = out / MODEL_SUBDIR
    return target if (target / "config.json").exists() else None


def train_sft(base_model: Path, manifest: Path, out: Path, config: MBPOConfig) -> Path:
    """Supervised fine-tuning on `manifest` (vision tower frozen, AdamW at the config's learning
    rate): `train.max_steps` steps of `prompts_per_step x num_generations` sampled sequences."""
    if (done := _done(out)) is not None:
        return done
    device = resolve_device(config.device)
    adapter = load_adapter(base_model, device=device, dtype=resolve_dtype(config.dtype, device))
    model = adapter.model.train()
    freeze_vision_tower(model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.train.learning_rate
    )
    samples = read_manifest(manifest)
    rng = random.Random(config.seed)
    batch_size = config.train.prompts_per_step * config.train.num_generations
    for _ in range(config.train.max_steps):
        batch = rng.sample(samples, min(batch_size, len(samples)))
        by_size: dict[tuple[int, int], list[Any]] = {}
        images = {}
        for s in batch:
            img = Image.open(resolve_image_path(manifest.parent, s.image, line=s.line)).convert("RGB")
            images[s.id] = np.asarray(img)
            by_size.setdefault(img.size, []).append(s)
        optimizer.zero_grad()
        for group in by_size.values():  # one forward per image size: pixels stack into one batch
            pixels = torch.from_numpy(np.stack([images[s.id] for s in group])).float().to(device) / 255.0
            logp, n_tokens = adapter.answer_logprobs(
                pixels, [s.question for s in group], [s.answer for s in group]
            )
            loss = -(logp.sum() / n_tokens.sum()) * len(group) / len(batch)
            loss.backward()
        optimizer.step()
    model.eval()
    target = out / MODEL_SUBDIR
    model.save_pretrained(target)
    adapter.processor.save_pretrained(target)
    return target


def random_wrong_answer(rng: random.Random, task: str, answer: str, choices: tuple[str, ...] = ()) -> str:
    """A wrong answer of the task's answer space, drawn at random."""
    if task == "yes_no":
        return "no" if parse_answer(task, answer) == "yes" else "yes"
    if task == "multiple_choice":
        truth = parse_answer(task, answer, choices)
        return rng.choice([c for i, c in enumerate(choices) if choice_letter(i) != truth])
    if task == "number":
        value = int(float(parse_answer(task, answer) or 0.0))
        return str(value + (rng.choice([-2, -1, 1, 2]) if value >= 2 else rng.choice([1, 2])))
    raise ValueError(f"no random wrong answer for task {task!r}")


@dataclass(frozen=True)
class PreferencePair:
    image: Path
    question: str
    chosen: str
    rejected: str


def train_dpo_random(
    base_model: Path, pool: Path, out: Path, config: MBPOConfig, *, n_pairs: int, beta: float = 0.1
) -> Path:
    """DPO on `n_pairs` random samples of the `pool` manifest: chosen = the ground truth, rejected =
    `random_wrong_answer`."""
    rng = random.Random(config.seed)
    closed = [s for s in read_manifest(pool) if s.task != "open"]
    samples = rng.sample(closed, min(n_pairs, len(closed)))
    pairs = [
        PreferencePair(
            resolve_image_path(pool.parent, s.image, line=s.line),
            s.question,
            s.answer,
            random_wrong_answer(rng, s.task, s.answer, tuple(s.choices)),
        )
        for s in samples
    ]
    return train_dpo(base_model, pairs, out, config, beta=beta)


def train_dpo_pairs(
    base_model: Path, pairs_file: Path, out: Path, config: MBPOConfig, *, beta: float = 0.1
) -> Path:
    """DPO on a pairs file of mining (chosen = the ground truth, rejected = its `rejected`), each
    pair on its clean image."""
    from mbpo_core.data.pairs import read_pairs

    pairs = [
        PreferencePair(Path(p["image"]), p["question"], p["chosen"], p["rejected"])
        for p in read_pairs(pairs_file, resolve_images=True)
    ]
    if not pairs:
        raise ValueError(f"{pairs_file} holds no pairs")
    return train_dpo(base_model, pairs, out, config, beta=beta)


def train_dpo(
    base_model: Path, pairs: list[PreferencePair], out: Path, config: MBPOConfig, *, beta: float = 0.1
) -> Path:
    """TRL's DPOTrainer on `pairs`: as many steps and sequences per step as the config's GRPO run."""
    if (done := _done(out)) is not None:
        return done
    from datasets import Dataset
    from datasets import Image as DatasetImage
    from trl import DPOConfig, DPOTrainer

    def turn(role: str, text: str, image: bool = False) -> list[dict[str, Any]]:
        content = [{"type": "image"}] if image else []
        return [{"role": role, "content": [*content, {"type": "text", "text": text}]}]

    dataset = Dataset.from_dict(
        {
            "prompt": [turn("user", p.question, image=True) for p in pairs],
            "chosen": [turn("assistant", p.chosen) for p in pairs],
            "rejected": [turn("assistant", p.rejected) for p in pairs],
            "images": [[str(p.image)] for p in pairs],
        }
    ).cast_column("images", [DatasetImage(mode="RGB")])
    device = resolve_device(config.device)
    adapter = load_adapter(base_model, device=device, dtype=resolve_dtype(config.dtype, device))
    adapter.processor.tokenizer.padding_side = "left"
    freeze_vision_tower(adapter.model)
    args = DPOConfig(
        output_dir=str(out / "dpo"),
        max_steps=config.train.max_steps,
        # A pair is two sequences: as many sequences per step as a GRPO step.
        per_device_train_batch_size=max(1, config.train.prompts_per_step * config.train.num_generations // 2),
        learning_rate=config.train.learning_rate,
        beta=beta,
        use_cpu=device == "cpu",
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        seed=config.seed,
        disable_tqdm=True,
    )
    DPOTrainer(
        model=adapter.model, args=args, train_dataset=dataset, processing_class=adapter.processor
    ).train()
    target = out / MODEL_SUBDIR
    adapter.model.save_pretrained(target)
    adapter.processor.save_pretrained(target)
    return target
