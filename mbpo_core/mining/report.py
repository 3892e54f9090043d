"""Mining statistics (docs/method.md §3): pure functions from per-sample records to the summary numbers.

A record (one JSON line of `records.jsonl`, written by `mbpo_core.mining.mine`) describes one sample
that reached the attack stage. Only samples answered correctly on the clean image are attacked
(`status == "attacked"`); their fields used here:

- `adv_correct` / `noise_correct`: the verifier's verdict on the answer decoded from the PGD /
  random-noise image (a flip is `False`);
- `adv_prior_agreement` / `noise_prior_agreement`: that answer equals the null-image answer;
- `null_correct`: the null-image answer is right anyway (so agreeing with it cannot be a flip).

Prior agreement alone proves little: for yes/no, a flip agrees with the null-image answer exactly
when that answer is wrong. So every rate comes with its base rate (share of attacked samples whose
null-image answer is wrong) and is also reported per yes/no answer direction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mbpo_core.data.verifiers import parse_answer

Record = dict[str, Any]


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def attack_rates(records: Sequence[Record], prefix: str) -> dict[str, Any]:
    """Success and prior agreement of one attack (`prefix` "adv" or "noise") over attacked records.

    attack_success_rate = flipped / attacked; prior_agreement_rate = flipped answers equal to the
    null-image answer / flipped; prior_base_rate = attacked samples whose null-image answer is wrong
    / attacked (what prior agreement would be if flips simply copied a wrong null answer)."""
    attacked = [r for r in records if r.get("status") == "attacked" and f"{prefix}_correct" in r]
    flipped = [r for r in attacked if not r[f"{prefix}_correct"]]
    agreeing = [r for r in flipped if r[f"{prefix}_prior_agreement"]]
    null_wrong = [r for r in attacked if not r["null_correct"]]
    return {
        "n_attacked": len(attacked),
        "n_flipped": len(flipped),
        "attack_success_rate": _rate(len(flipped), len(attacked)),
        "prior_agreement_rate": _rate(len(agreeing), len(flipped)),
        "prior_base_rate": _rate(len(null_wrong), len(attacked)),
    }


def yes_no_direction(record: Record) -> str | None:
    """'yes->no' when the truth is yes (a flip erases a present object), 'no->yes' when it is no."""
    if record.get("task") != "yes_no":
        return None
    truth = parse_answer("yes_no", record["answer"])
    return f"{truth}->{'no' if truth == 'yes' else 'yes'}" if truth else None


def by_direction(records: Sequence[Record], prefix: str) -> dict[str, dict[str, Any]]:
    """`attack_rates` per yes/no answer direction (empty when there are no yes/no records)."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        direction = yes_no_direction(r)
        if direction is not None:
            groups.setdefault(direction, []).append(r)
    return {d: attack_rates(groups[d], prefix) for d in sorted(groups)}


def by_task(records: Sequence[Record], prefix: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(str(r.get("task")), []).append(r)
    return {t: attack_rates(groups[t], prefix) for t in sorted(groups)}


def mean_of(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summarize_records(records: Sequence[Record]) -> dict[str, Any]:
    """The attack part of summary.json: adversarial and random-noise rates, overall, per task and
    per yes/no direction, plus the mean log-prob drop of the ground truth."""
    attacked = [r for r in records if r.get("status") == "attacked"]
    adversarial = attack_rates(records, "adv")
    noise = attack_rates(records, "noise")
    return {
        "n_clean_correct": len(attacked),
        "n_clean_wrong": sum(r.get("status") == "clean_wrong" for r in records),
        "attack_success_rate": adversarial["attack_success_rate"],
        "prior_agreement_rate": adversarial["prior_agreement_rate"],
        "prior_base_rate": adversarial["prior_base_rate"],
        "mean_logp_drop": mean_of(r["logp_clean"] - r["logp_adv"] for r in attacked),
        "by_task": by_task(records, "adv"),
        "by_direction": by_direction(records, "adv"),
        "baseline_random_noise": {
            "attack_success_rate": noise["attack_success_rate"],
            "prior_agreement_rate": noise["prior_agreement_rate"],
            "prior_base_rate": noise["prior_base_rate"],
            "mean_logp_drop": mean_of(
                r["logp_clean"] - r["logp_noise"] for r in attacked if r.get("logp_noise") is not None
            ),
            "by_direction": by_direction(records, "noise"),
        },
    }
