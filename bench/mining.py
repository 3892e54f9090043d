"""Benchmark of adversarial mining: PGD throughput, its overhead over plain gradient computation,
and whole-batch mining throughput.

For one batch of same-size images it measures, in one process:
  fwd_bwd     one teacher-forced forward + backward to the pixels (the unit of PGD work)
  pgd         `pgd_perturb` with --steps steps
  overhead    pgd / (steps * fwd_bwd): goal <= 1.2 (no waste beyond the gradients themselves)
  mine_batch  the full per-batch mining step (clean, null, PGD, noise decodes + log-probs)
and reports images/s for PGD and for mining, plus peak memory (CUDA: max allocated; CPU: peak RSS
of the process). Each timing is the median of --repeats runs after one warm-up.

    .venv/bin/python bench/mining.py --model DIR [--data MANIFEST]          # a saved model
    .venv/bin/python bench/mining.py --random 100m --image-size 448         # random Qwen2.5-VL ~100 M
    .venv/bin/python bench/mining.py --random 3b --device cuda --dtype bfloat16
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbpo_core.config import MBPOConfig  # noqa: E402
from mbpo_core.data.manifest import ManifestSample, read_manifest  # noqa: E402
from mbpo_core.mining.attack import pgd_perturb  # noqa: E402
from mbpo_core.mining.mine import mine_batch  # noqa: E402
from mbpo_core.models.base import VLMAdapter  # noqa: E402
from mbpo_core.models.build import build_model, build_processor  # noqa: E402
from mbpo_core.models.loader import adapter_class, load_adapter  # noqa: E402

QUESTION_WORDS = ["is", "there", "a", "red", "blue", "circle", "square", "in", "the", "image", "yes", "no"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="saved model directory")
    source.add_argument("--random", choices=["100m", "3b", "small", "tiny"], help="random Qwen2.5-VL preset")
    parser.add_argument("--data", type=Path, help="manifest to take images/questions from (else random)")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-mining", action="store_true", help="time PGD only")
    return parser.parse_args()


def make_adapter(args: argparse.Namespace, dtype: torch.dtype) -> VLMAdapter:
    if args.model:
        return load_adapter(args.model, device=args.device, dtype=dtype)
    processor = build_processor("qwen2_5_vl", QUESTION_WORDS, image_size=args.image_size)
    model = build_model("qwen2_5_vl", processor, args.random, device=args.device, dtype=dtype)
    return adapter_class("qwen2_5_vl")(model, processor)


def make_batch(args: argparse.Namespace) -> tuple[torch.Tensor, list[ManifestSample]]:
    """Pixels (B, H, W, 3) and samples: the first same-size images of --data, or random ones."""
    if args.data:
        from PIL import Image

        samples = read_manifest(args.data)[: args.batch_size]
        arrays = [np.asarray(Image.open(args.data.parent / s.image).convert("RGB")) for s in samples]
        return torch.from_numpy(np.stack(arrays)).float() / 255, samples
    rng = np.random.default_rng(0)
    size = args.image_size
    pixels = torch.from_numpy(rng.integers(0, 256, (args.batch_size, size, size, 3))).float() / 255
    samples = [
        ManifestSample(
            id=str(i), image="", question="is there a red circle in the image ?", answer="yes", task="yes_no"
        )
        for i in range(args.batch_size)
    ]
    return pixels, samples


def timed(fns: dict[str, Callable[[], Any]], repeats: int, device: str) -> dict[str, tuple[float, float]]:
    """Median (wall, process-CPU) seconds of each function over `repeats` rounds, after one warm-up.

    The functions run interleaved round by round, so drift in machine load (other processes on a
    shared CPU) hits all of them alike; CPU time is reported too because it ignores that load."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in fns.values():
        fn()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in samples.items()
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    adapter = make_adapter(args, dtype)
    pixels, samples = make_batch(args)
    pixels = pixels.to(args.device)
    questions, answers = [s.question for s in samples], [s.answer for s in samples]
    config = MBPOConfig.model_validate({"attack": {"steps": args.steps}})

    def logprob(x: torch.Tensor) -> torch.Tensor:
        return adapter.answer_logprobs(x, questions, answers)[0]

    def fwd_bwd() -> None:
        x = pixels.clone().requires_grad_(True)
        torch.autograd.grad(logprob(x).sum(), x)

    def pgd() -> None:
        pgd_perturb(logprob, pixels, eps=8 / 255, step_size=2 / 255, steps=args.steps)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = timed({"fwd_bwd": fwd_bwd, "pgd": pgd}, args.repeats, args.device)
    (t_fwd_bwd, cpu_fwd_bwd), (t_pgd, cpu_pgd) = times["fwd_bwd"], times["pgd"]
    result: dict[str, Any] = {
        "model": str(args.model) if args.model else f"random qwen2_5_vl {args.random}",
        "params_m": round(sum(p.numel() for p in adapter.model.parameters()) / 1e6, 1),
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "threads": args.threads,
        "batch": len(samples),
        "image": list(pixels.shape[1:3]),
        "steps": args.steps,
        "fwd_bwd_s": round(t_fwd_bwd, 4),
        "pgd_s": round(t_pgd, 4),
        "overhead_ratio": round(t_pgd / (args.steps * t_fwd_bwd), 3),
        "overhead_ratio_cpu_time": round(cpu_pgd / (args.steps * cpu_fwd_bwd), 3),
        "pgd_images_per_s": round(len(samples) / t_pgd, 3),
    }
    if not args.skip_mining:
        if not args.model:
            # A random model never answers "yes" correctly, so nothing would be attacked; taking its
            # own greedy answers as open-ended ground truth makes every sample go through the attack.
            predictions = adapter.generate(pixels, questions, max_new_tokens=config.mining.max_new_tokens)
            samples = [
                ManifestSample(id=s.id, image="", question=s.question, answer=p or "yes", task="open")
                for s, p in zip(samples, predictions, strict=True)
            ]
        mined = {"mine": lambda: mine_batch(adapter, pixels, samples, config)}
        t_mine, _ = timed(mined, max(1, args.repeats - 1), args.device)["mine"]
        result.update(mine_batch_s=round(t_mine, 4), mining_images_per_s=round(len(samples) / t_mine, 3))
    if args.device.startswith("cuda"):
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
