"""The project's results table: MBPO against its ablations on the testbed (docs/method.md, the testbed).

    .venv/bin/python bench/ablation.py --seeds 0 1 2 --out /tmp/mbpo-ablation --doc docs/results.md

Every trained row uses the `config:` of one run file (`--recipe`, default examples/testbed.yaml, the
recipe `mbpo run` ships). Per seed: build (or reuse, OUT/testbed-<size>-<seed> or `--testbed-dir`)
the testbed (`--testbed full` by default), mine hard negatives from its `offline` pool
once, train every row from the same base model, and evaluate every model on pope_random /
pope_popular / pope_adversarial / vqa. Rows:

    base          the testbed's base model, no training
    sft           more supervised training on the biased `sft` split, same number of trained
                  sequences as the GRPO rows (steps x prompts x G)   (mbpo_core.training.baselines)
    dpo_random    TRL DPOTrainer on pairs with random negatives: pool samples drawn at random (no IIG
                  filter, no attack), rejected = a random wrong answer of the task's answer space
                  (mbpo_core.training.baselines)
    dpo_noise     TRL DPOTrainer on the random-noise pairs of the same mining (rejected = the model's
                  answer on the image under uniform sign noise of the attack's budget: the paper's
                  key baseline; mining/noise_pairs.jsonl)
    dpo_pgd       TRL DPOTrainer on the mined PGD pairs (mining/pairs.jsonl)
    grpo_online   hybrid trainer with offline_fraction = 0 (plain online GRPO, verified rewards)
    offline_only  hybrid trainer with offline_fraction = 1 (mined pairs + G-2 samples, no online prompts)
    mbpo          hybrid trainer with the recipe's offline_fraction

`--on dev` evaluates on the testbed's dev splits (dev_pope_*, dev_vqa: for choosing a recipe) instead
of its test splits (the default, touched once for the final table), into OUT/results-dev.jsonl.
Results are appended to OUT/results.jsonl as they finish (a re-run skips finished (seed, row) cells),
every answer of a cell to OUT/seed-<seed>/<row>/answers/<split>.json. The report has two tables:
each row's metrics (mean +- std over seeds), and the comparisons (`--compare`, default: every row
against base, and mbpo against grpo_online) as the difference pooled over seeds with its 95%
interval from a two-level bootstrap over seeds and questions (mbpo_core/evaluation/stats.py),
"n.s." where the interval contains 0. `--doc` writes both into the markdown file's marker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from mbpo_core.config import MBPOConfig

ROWS = ("base", "sft", "dpo_random", "dpo_noise", "dpo_pgd", "grpo_online", "offline_only", "mbpo")
SPLITS = ("pope_random", "pope_popular", "pope_adversarial", "vqa")
POPE_COLUMNS = ("f1", "accuracy", "yes_ratio", "unparsable_rate")


DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "examples" / "testbed.yaml"


def base_config(recipe: Path, seed: int, steps: int | None) -> MBPOConfig:
    """The `config:` block of a run file (the same recipe `mbpo run` uses), with this cell's seed
    (and `--steps` when given). Every trained row shares its optimiser settings and step count."""
    import yaml

    data = (yaml.safe_load(recipe.read_text()) or {}).get("config") or {}
    config = MBPOConfig.model_validate({**data, "seed": seed, "device": "cpu"})
    updates: dict[str, Any] = {"save_steps": config.train.max_steps, "keep_checkpoints": 1}
    if steps is not None:
        warmup = min(config.train.warmup_steps, steps - 1)
        updates.update(max_steps=steps, save_steps=steps, warmup_steps=warmup)
    evaluation = config.eval.model_copy(update={"attack_eval": False, "limit": None})
    return config.model_copy(update={"train": config.train.model_copy(update=updates), "eval": evaluation})


def testbed_dir(args: argparse.Namespace, seed: int) -> Path:
    from mbpo_core.testbed.build import BuildSpec, build_testbed

    if args.testbed_dir and seed == args.seeds[0]:
        return Path(args.testbed_dir)
    root = args.out / f"testbed-{args.testbed}-{seed}"
    if not (root / "build_report.json").exists():
        spec = BuildSpec.quick(seed) if args.testbed == "quick" else BuildSpec.full(seed)
        build_testbed(root, spec)
    return root


def manifest(testbed: Path, split: str) -> Path:
    from mbpo_core.testbed.build import manifest_path

    return manifest_path(testbed, split)


# --- rows ---------------------------------------------------------------------------------------


def train_hybrid(testbed: Path, work: Path, config: MBPOConfig, offline_fraction: float, pairs: Path) -> Path:
    from mbpo_core.training.session import train_policy

    train = config.train.model_copy(update={"offline_fraction": offline_fraction})
    config = config.model_copy(update={"train": train})
    online = manifest(testbed, "online") if offline_fraction < 1 else None
    result = train_policy(
        testbed / "base_model",
        work,
        config,
        online=online,
        pairs=pairs if offline_fraction > 0 else None,
        resume=True,
    )
    assert result.model_dir is not None
    return result.model_dir


# --- evaluation and the table -------------------------------------------------------------------


def evaluate(
    model_dir: Path, testbed: Path, config: MBPOConfig, limit: int | None, answers_dir: Path, prefix: str
) -> dict[str, dict[str, float]]:
    """Metrics per split; every answer saved to answers_dir/<split>.json (the paired comparisons)."""
    from dataclasses import asdict

    from mbpo_core.evaluation.evaluate import evaluate_manifest
    from mbpo_core.models.loader import load_adapter

    adapter = load_adapter(model_dir)
    answers_dir.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split in SPLITS:
        evaluation = evaluate_manifest(
            adapter,
            manifest(testbed, prefix + split),
            limit=limit,
            seed=config.seed,
            batch_size=config.eval.batch_size,
            max_new_tokens=config.eval.max_new_tokens,
            null_image=config.iig.null_image,
        )
        (answers_dir / f"{prefix}{split}.json").write_text(
            json.dumps([asdict(r) for r in evaluation.results])
        )
        metrics[split] = evaluation.metrics
    return metrics


def split_prefix(args: argparse.Namespace) -> str:
    return "dev_" if args.on == "dev" else ""


def load_answers(out: Path, seed: int, row: str, split: str) -> list[Any] | None:
    from mbpo_core.evaluation.evaluate import SampleResult

    path = out / f"seed-{seed}" / row / "answers" / f"{split}.json"
    if not path.exists():
        return None
    return [SampleResult(**r) for r in json.loads(path.read_text())]


def run_cell(row: str, seed: int, testbed: Path, args: argparse.Namespace) -> dict[str, Any]:
    from mbpo_core.mining.mine import NOISE_PAIRS, mine
    from mbpo_core.models.loader import load_adapter
    from mbpo_core.training.baselines import train_dpo_pairs, train_dpo_random, train_sft

    config = base_config(args.recipe, seed, args.steps)
    work = args.out / f"seed-{seed}"
    pairs = work / "mining" / "pairs.jsonl"
    if (
        row in ("dpo_noise", "dpo_pgd", "offline_only", "mbpo")
        and not (work / "mining" / "summary.json").exists()
    ):
        mine(load_adapter(testbed / "base_model"), manifest(testbed, "offline"), work / "mining", config)
    start = time.perf_counter()
    if row == "base":
        model_dir = testbed / "base_model"
    elif row == "sft":
        model_dir = train_sft(testbed / "base_model", manifest(testbed, "sft"), work / row, config)
    elif row in ("dpo_noise", "dpo_pgd"):
        mined = pairs if row == "dpo_pgd" else work / "mining" / NOISE_PAIRS
        model_dir = train_dpo_pairs(testbed / "base_model", mined, work / row, config)
    elif row == "dpo_random":
        n_pairs = config.mining.limit or 200
        model_dir = train_dpo_random(
            testbed / "base_model", manifest(testbed, "offline"), work / row, config, n_pairs=n_pairs
        )
    else:
        fraction = {"grpo_online": 0.0, "offline_only": 1.0, "mbpo": config.train.offline_fraction}[row]
        model_dir = train_hybrid(testbed, work / row, config, fraction, pairs)
    train_s = time.perf_counter() - start
    metrics = evaluate(
        model_dir, testbed, config, args.eval_limit, work / row / "answers", split_prefix(args)
    )
    return {"seed": seed, "row": row, "train_s": train_s, "metrics": metrics}


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: rows x (F1 / accuracy / yes-ratio per POPE split, VQA accuracy, mean IIG), in %,
    mean ± std over seeds; plus the unparsable rate (the collapse check)."""
    header = ["row", "seeds"]
    for split in SPLITS[:3]:
        header += [f"{split} F1", f"{split} acc", f"{split} yes"]
    header += ["vqa acc", "IIG (adv)", "max unparsable"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ROWS:
        cells = [r for r in results if r["row"] == row]
        if not cells:
            continue
        out = [row, str(len(cells))]
        for split in SPLITS[:3]:
            for key in ("f1", "accuracy", "yes_ratio"):
                out.append(mean_std([c["metrics"][split][key] for c in cells]))
        out.append(mean_std([c["metrics"]["vqa"]["accuracy"] for c in cells]))
        iig = [c["metrics"]["pope_adversarial"]["iig_mean"] for c in cells]
        out.append(f"{statistics.mean(iig):.3f}")
        out.append(mean_std([max(c["metrics"][s]["unparsable_rate"] for s in SPLITS[:3]) for c in cells]))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


DEFAULT_COMPARISONS = (
    "sft-base",
    "dpo_random-base",
    "dpo_noise-base",
    "dpo_pgd-base",
    "grpo_online-base",
    "offline_only-base",
    "mbpo-base",
    "mbpo-grpo_online",
    "mbpo-dpo_noise",
)
COMPARED = (
    ("pope_adversarial", "f1"),
    ("pope_adversarial", "recall"),
    ("pope_adversarial", "false_yes_rate"),
    ("pope_random", "f1"),
)


def _cell(interval: Any) -> str:
    verdict = "" if interval.significant else " n.s."
    low, high = 100 * interval.low, 100 * interval.high
    return f"{100 * interval.delta:+.1f} [{low:+.1f}, {high:+.1f}]{verdict}"


def comparisons(out: Path, results: list[dict[str, Any]], pairs: list[str], prefix: str) -> str:
    """Markdown: for each `a-b` pair of rows, a - b on the COMPARED metrics pooled over the seeds
    both rows finished (95% two-level bootstrap interval), then each seed alone (95% paired
    bootstrap over its questions, McNemar's p on accuracy of the first compared split); points of %."""
    from mbpo_core.evaluation.stats import mcnemar, paired_intervals, pooled_intervals

    header = ["comparison", "seeds"] + [f"{split} {metric}" for split, metric in COMPARED]
    pooled = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    header = ["comparison", "seed"] + [f"{split} {metric}" for split, metric in COMPARED]
    header.append(f"{COMPARED[0][0]} McNemar p")
    per_seed = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    finished = {(r["seed"], r["row"]) for r in results}
    for pair in pairs:
        a, b = pair.split("-", 1)
        seeds = sorted(s for s, row in finished if row == a and (s, b) in finished)
        answers = {
            (s, split): (load_answers(out, s, b, prefix + split), load_answers(out, s, a, prefix + split))
            for s in seeds
            for split in {split for split, _ in COMPARED}
        }
        if not seeds or any(x is None or y is None for x, y in answers.values()):
            continue
        cells = [f"{a} - {b}", str(len(seeds))]
        for split, metric in COMPARED:
            runs = [answers[s, split] for s in seeds]
            cells.append(_cell(pooled_intervals(runs, seed=0)[metric]))  # type: ignore[arg-type]
        pooled.append("| " + " | ".join(cells) + " |")
        for s in seeds:
            cells = [f"{a} - {b}", str(s)]
            for split, metric in COMPARED:
                cells.append(_cell(paired_intervals(*answers[s, split], seed=0)[metric]))  # type: ignore[arg-type]
            test = mcnemar(*answers[s, COMPARED[0][0]])  # type: ignore[arg-type]
            cells.append(f"{test.p_value:.3g} ({test.base_only} / {test.aligned_only})")
            per_seed.append("| " + " | ".join(cells) + " |")
    return "\n".join(pooled) + "\n\nPer seed:\n\n" + "\n".join(per_seed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--testbed", choices=("quick", "full"), default="full")
    parser.add_argument(
        "--testbed-dir", type=Path, default=None, help="an already built testbed for the first seed"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument(
        "--recipe",
        type=Path,
        default=DEFAULT_RECIPE,
        help="run file whose `config:` block every row uses (default: examples/testbed.yaml)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override train.max_steps of every trained row"
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="samples per eval split (balanced)")
    parser.add_argument(
        "--on", choices=("test", "dev"), default="test", help="evaluate on the test splits or the dev splits"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=list(DEFAULT_COMPARISONS),
        help="row pairs a-b to report as paired differences with intervals",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--doc", type=Path, default=None, help="print the table into this markdown file's marker"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / ("results-dev.jsonl" if args.on == "dev" else "results.jsonl")
    done = {(r["seed"], r["row"]) for r in load_results(results_path)}
    for seed in args.seeds:
        testbed = testbed_dir(args, seed)
        for row in args.rows:
            if (seed, row) in done:
                continue
            try:
                cell = run_cell(row, seed, testbed, args)
            except Exception as exc:  # a failing row must not lose the others; it is reported
                cell = {"seed": seed, "row": row, "error": f"{type(exc).__name__}: {exc}"}
            with results_path.open("a") as f:
                f.write(json.dumps(cell) + "\n")
            print(json.dumps({k: v for k, v in cell.items() if k != "metrics"}), flush=True)
    results = [r for r in load_results(results_path) if "metrics" in r]
    report = table(results) + "\n\n" + comparisons(args.out, results, args.compare, split_prefix(args))
    print(report)
    if args.doc:
        marker = "<!-- ablation-table -->"
        text = args.doc.read_text()
        start, end = text.index(marker), text.index(marker, text.index(marker) + 1)
        args.doc.write_text(text[: start + len(marker)] + "\n" + report + "\n" + text[end:])


if __name__ == "__main__":
    main()
