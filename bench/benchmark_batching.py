"""Mixed-size batching of the benchmark runner against batches of one raw image size (what
`mbpo_core/evaluation/evaluate.py` does), on a model and images of many sizes (docs/benchmarks.md).

    .venv/bin/python bench/benchmark_batching.py --model TESTBED/base_model \
        --images TESTBED/datasets/pope_random/images --sizes 48 --n 48

Takes the first `--n` images, resizes image k to one of `--sizes` distinct sizes (84 px and up,
3 px steps), and times greedy answers of both ways at `--batch-size` after one untimed pass that
fills the per-size resize caches for both. Prints items/s of each and whether the answers agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from mbpo_core.evaluation.benchmarks.common import BenchmarkItem
from mbpo_core.evaluation.benchmarks.runner import generate_answers, load_image
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.loader import load_adapter

PROMPT = "Is there a red circle in the image?"


def by_raw_size(
    adapter: VLMAdapter, items: list[BenchmarkItem], batch_size: int, max_new_tokens: int
) -> list[str]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(Image.open(item.image).size, []).append(index)
    answers = [""] * len(items)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            pixels = torch.cat([load_image(items[i].image) for i in batch])
            outputs = adapter.generate(
                pixels, [items[i].prompt for i in batch], max_new_tokens=max_new_tokens
            )
            for i, answer in zip(batch, outputs, strict=True):
                answers[i] = answer
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--sizes", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp())
    items = []
    for k, source in enumerate(sorted(args.images.iterdir())[: args.n]):
        s = k % args.sizes
        path = out / f"{k}.png"
        Image.open(source).convert("RGB").resize((84 + (s % 8) * 3, 84 + (s // 8) * 3)).save(path)
        items.append(BenchmarkItem(id=str(k), image=path, prompt=PROMPT))
    adapter = load_adapter(args.model)
    generate_answers(adapter, items, batch_size=1, max_new_tokens=1)  # fills the resize caches
    start = time.perf_counter()
    by_size = by_raw_size(adapter, items, args.batch_size, args.max_new_tokens)
    t_size = time.perf_counter() - start
    start = time.perf_counter()
    mixed = generate_answers(adapter, items, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    t_mixed = time.perf_counter() - start
    sizes = len({Image.open(i.image).size for i in items})
    print(f"{len(items)} items, {sizes} raw sizes, batch size {args.batch_size}")
    print(f"by raw size: {len(items) / t_size:.1f} items/s   mixed: {len(items) / t_mixed:.1f} items/s")
    print(f"same answers: {mixed == by_size}")


if __name__ == "__main__":
    main()
