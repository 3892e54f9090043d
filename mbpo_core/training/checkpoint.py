"""Checkpoints that are either complete or absent, and that load like any base model.

Layout of a run directory (`TrainingArguments.output_dir`):

    checkpoint-25/           TRL/transformers resume state: adapter or full weights (safetensors),
                             optimizer.pt, scheduler.pt, rng_state*.pth, trainer_state.json (step,
                             log history; the data position is the step, see data.MixedGroupSampler)
    checkpoint-25/model/     a complete model directory (config, safetensors, processor files):
                             LoRA merged into the base weights, or the fully fine-tuned weights
    .staging-25/             exists only while step 25 is being written

A checkpoint is written into `.staging-<step>`, every file fsynced, then renamed into place: a
crash leaves either the previous checkpoints or the new one, never half of one. Resume reads only
from a `checkpoint-<step>` inside the run directory (`latest_checkpoint`); the `.pt`/`.pth` files are
loaded by transformers with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
MODEL_SUBDIR = "model"
# Pickled training arguments that transformers writes for convenience and never reads back.
_UNUSED_PICKLES = ("training_args.bin",)


class WriteFenced(RuntimeError):
    """This process may no longer write into the run directory (another one owns the run now)."""


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in `run_dir`, ascending."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    steps = [
        int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
    ]
    return sorted(steps)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of `run_dir`, or None."""
    steps = checkpoint_steps(run_dir)
    return Path(run_dir) / f"checkpoint-{steps[-1]}" if steps else None


def require_inside(path: str | Path, run_dir: str | Path) -> Path:
    """`path` resolved, refused unless it lies inside `run_dir`: resume state contains pickles, and
    those are only ever read from the run's own directory."""
    real, root = Path(path).resolve(strict=True), Path(run_dir).resolve(strict=True)
    if not real.is_relative_to(root):
        raise ValueError(f"checkpoint {path} is outside the run directory {run_dir}")
    return real


@contextlib.contextmanager
def redirected_output_dir(args: Any, target: Path) -> Iterator[None]:
    """Make transformers write its checkpoint under `target` instead of the run directory."""
    original = args.output_dir
    args.output_dir = str(target)
    try:
        yield
    finally:
        args.output_dir = original


def staging_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f".staging-{step}"


def discard_partial(run_dir: str | Path) -> None:
    """Remove what an interrupted save left (staging directories); complete checkpoints stay."""
    root = Path(run_dir)
    if root.is_dir():
        for staged in root.glob(".staging-*"):
            shutil.rmtree(staged, ignore_errors=True)


def publish(
    staged_checkpoint: Path,
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    keep: int | None = None,
    may_write: Callable[[], bool] | None = None,
) -> Path:
    """Complete the staged checkpoint (loadable model, no stray pickles), fsync it, rename it into
    place, then drop all but the newest `keep` checkpoints. `may_write` is asked right before the
    rename: when it says no, the staging is removed and `WriteFenced` raised."""
    write_model(staged_checkpoint / MODEL_SUBDIR)
    for name in _UNUSED_PICKLES:
        (staged_checkpoint / name).unlink(missing_ok=True)
    _fsync_tree(staged_checkpoint)
    if may_write is not None and not may_write():
        shutil.rmtree(staged_checkpoint.parent, ignore_errors=True)
        raise WriteFenced(f"not publishing checkpoint-{step}: this process no longer owns the run")
    final = run_dir / f"checkpoint-{step}"
    if final.exists():  # a re-run of the same step after a crash between rename and rotation
        shutil.rmtree(final)
    os.replace(staged_checkpoint, final)
    _fsync_dir(run_dir)
    shutil.rmtree(staged_checkpoint.parent, ignore_errors=True)
    if keep is not None:
        for old in checkpoint_steps(run_dir)[:-keep]:
            shutil.rmtree(run_dir / f"checkpoint-{old}", ignore_errors=True)
    return final


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_loadable_model(model: Any, processor: Any, target: Path) -> None:
    """A model directory `mbpo_core.models.load_adapter` loads like a base model: the LoRA adapter
    merged into the base weights (the training model is left untouched), or the full weights."""
    target.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "get_base_model"):
        base = model.get_base_model()
        base.save_pretrained(target, state_dict=merged_lora_state_dict(model))
    else:
        model.save_pretrained(target)
    processor.save_pretrained(target)


def merged_lora_state_dict(peft_model: Any, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA layer folded in: W + scale * B @ A (peft's
    `get_delta_weight`), keys as the plain model names them. Computed out of place, so training
    continues on exactly the same weights (an in-place merge + unmerge would not round-trip)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            deltas[f"{name}.weight"] = module.get_delta_weight(adapter).detach()  # type: ignore[attr-defined]
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        value = tensor.detach()
        if plain in deltas:
            value = value + deltas[plain].to(value.dtype)
        merged[plain] = value.clone()
    return merged
