"""Attack success and prior agreement against the perturbation budget (issue "Must show" table).

Runs the real mining pipeline (`mbpo_core.mining.mine.mine`) once per eps on the same pool, with
10 PGD steps of eps/4 (the defaults' 2/255 at 8/255), and prints, per eps, for PGD and for uniform
sign noise of the same budget: attack success rate (flips among samples answered correctly on the
clean image), prior agreement (flipped answers equal to the null-image answer) and its base rate
(share of attacked samples whose null-image answer is wrong anyway), overall and per yes/no
direction (yes->no erases a present object, no->yes invents an absent one).

    .venv/bin/python bench/attack_sweep.py --model DIR --data offline/manifest.jsonl --out /tmp/sweep \\
        [--eps 2,4,8,16] [--limit 200] [--seed 0]
Writes OUT/sweep.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mbpo_core.config import MBPOConfig  # noqa: E402
from mbpo_core.mining.mine import mine  # noqa: E402
from mbpo_core.models.loader import load_adapter  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--eps", default="2,4,8,16", help="budgets in 1/255 units")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--keep-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(eps: int, attack: str, stats: dict[str, Any], directions: dict[str, dict[str, Any]]) -> str:
    cells = [f"{eps}/255", attack, fmt(stats["attack_success_rate"]), fmt(stats["prior_agreement_rate"])]
    cells.append(fmt(stats.get("prior_base_rate")))
    for direction in ("yes->no", "no->yes"):
        d = directions.get(direction, {})
        cells += [
            fmt(d.get("attack_success_rate")),
            fmt(d.get("prior_agreement_rate")),
            fmt(d.get("prior_base_rate")),
        ]
        cells.append(str(d.get("n_attacked", 0)))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    adapter = load_adapter(args.model)
    results: dict[str, Any] = {}
    first: Path | None = None
    for eps in [int(e) for e in args.eps.split(",")]:
        out = args.out / f"eps{eps}"
        out.mkdir(parents=True, exist_ok=True)
        if first is not None and not (out / "iig.jsonl").exists():
            shutil.copyfile(first / "iig.jsonl", out / "iig.jsonl")  # IIG does not depend on eps
        config = MBPOConfig.model_validate(
            {
                "seed": args.seed,
                "iig": {"keep_fraction": args.keep_fraction},
                "attack": {"eps": eps / 255, "step_size": eps / 255 / 4, "steps": args.steps},
            }
        )
        summary = mine(adapter, args.data, out, config, limit=args.limit).to_dict()
        first = first or out
        results[str(eps)] = summary
        print(
            f"eps {eps}/255: {json.dumps({k: summary[k] for k in ('n_pairs', 'attack_success_rate')})}",
            flush=True,
        )

    (args.out / "sweep.json").write_text(json.dumps(results, indent=2))
    header = "| eps | attack | success | prior agr. | base rate |"
    header += " yes->no success | agr. | base | n | no->yes success | agr. | base | n |"
    print(header)
    print("|" + "---|" * 13)
    for eps_key, summary in results.items():
        details = summary["details"]
        adversarial = {
            "attack_success_rate": summary["attack_success_rate"],
            "prior_agreement_rate": summary["prior_agreement_rate"],
            "prior_base_rate": details["prior_base_rate"],
        }
        noise = summary["baseline_random_noise"]
        print(row(int(eps_key), "PGD", adversarial, details["by_direction"]))
        print(row(int(eps_key), "noise", noise, noise["by_direction"]))


if __name__ == "__main__":
    main()
