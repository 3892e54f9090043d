"""Adversarial hard-negative mining (docs/method.md §1-3): IIG filter -> PGD -> PNG -> decode -> verify.

    mine(adapter, manifest, out_dir, config) -> MiningSummary

1. Scan the manifest. A sample that cannot be processed (invalid line, missing or undecodable
   image, empty answer, prompt longer than the model's context) is skipped with a counted reason.
2. Score the ground-truth answers' IIG and keep the top `iig.keep_fraction` (or IIG >= `iig.min_iig`),
   then at most `mining.limit` samples, highest IIG first.
3. Per batch of same-size images: decode on the clean and the null image; attack the samples the
   model answers correctly (and, with `mining.attack_clean_wrong`, those it already gets wrong)
   (PGD, quantised to uint8 exactly as the PNG stores it), decode on the perturbed image; keep a
   pair when the verifier says that answer is wrong. The random-noise baseline of the same budget
   runs on the same samples.

Output directory (resumable: a re-run skips every id already in records.jsonl):
    records.jsonl  one line per processed sample (the log; appended with one write + fsync, so a
                   crash leaves at most a torn last line, which the next run drops)
    iig.jsonl      cached IIG scores
    pairs.jsonl    the mined pairs (rewritten atomically from the records at the end of a run)
    perturbed/     the perturbed PNG of every pair
    clean/         a copy of every pair's clean image (the directory is self-contained)
    summary.json   `MiningSummary` (n_input, n_pairs, rates, baseline, skipped reasons, config)
    run.json       the settings the directory was started with; resuming with others is refused
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from mbpo_core.config import MBPOConfig
from mbpo_core.data.manifest import (
    ManifestError,
    ManifestSample,
    iter_manifest,
    open_image_checked,
    resolve_image_path,
)
from mbpo_core.data.verifiers import is_correct, normalize_open, normalize_yes_no, parse_answer
from mbpo_core.mining.attack import (
    Interrupted,
    bucket_by_size,
    interrupt_if,
    pgd_perturb,
    quantize_uint8,
    random_sign_noise,
)
from mbpo_core.mining.report import Record, summarize_records
from mbpo_core.mining.store import (
    append_line,
    check_run_settings,
    read_lines,
    save_clean_image,
    save_pair_images,
    write_atomic,
)
from mbpo_core.models.base import VLMAdapter
from mbpo_core.scoring.iig import compute_iig, null_pixels

# Decompression-bomb guards for pool images (a VLM never needs more).
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 64 * 1024 * 1024

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
T = TypeVar("T")


@dataclass(frozen=True)
class PoolSample:
    """A manifest sample that passed the scan: its image file and size are known to be good."""

    sample: ManifestSample
    path: Path
    size: tuple[int, int]  # (H, W)


@dataclass
class MiningSummary:
    n_input: int
    n_pairs: int
    attack_success_rate: float | None
    prior_agreement_rate: float | None
    baseline_random_noise: dict[str, Any]
    skipped: dict[str, int]
    config: dict[str, Any]
    n_valid: int = 0
    n_selected: int = 0
    n_dropped_for_balance: int = 0  # flipped yes/no pairs left out by `mining.balance_yes_no`
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_pixels(paths: Sequence[Path]) -> torch.Tensor:
    """(B, H, W, 3) float in [0, 1] from same-size image files."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).float() / 255


# ---- 1. scan -----------------------------------------------------------------------------------


def _skip_reason(error: ManifestError) -> str:
    if error.field == "answer" and error.code in ("empty_field", "missing_field"):
        return "empty_answer"
    if error.code == "corrupt_image":
        return "undecodable_image"
    return error.code


def scan_pool(
    adapter: VLMAdapter, manifest: Path, on_progress: ProgressFn | None = None
) -> tuple[list[PoolSample], Counter[str], int]:
    """(usable samples, skip reasons, number of manifest lines)."""
    root = manifest.parent
    max_tokens = _context_length(adapter)
    pool: list[PoolSample] = []
    skipped: Counter[str] = Counter()
    n_input = 0
    for _, item in iter_manifest(manifest):
        n_input += 1
        if on_progress is not None:
            on_progress("scan", n_input, 0)
        if isinstance(item, ManifestError):
            skipped[_skip_reason(item)] += 1
            continue
        try:
            path = resolve_image_path(root, item.image, line=item.line)
            _, info = open_image_checked(
                path, max_pixels=MAX_IMAGE_PIXELS, max_bytes=MAX_IMAGE_BYTES, line=item.line
            )
        except ManifestError as exc:
            skipped[_skip_reason(exc)] += 1
            continue
        n_tokens = len(adapter.prompt_ids(item.question, info.height, info.width)) + len(
            adapter.answer_ids(item.answer)
        )
        if n_tokens > max_tokens:
            skipped["prompt_too_long"] += 1
            continue
        pool.append(PoolSample(item, path, (info.height, info.width)))
    return pool, skipped, n_input


def _context_length(adapter: VLMAdapter) -> int:
    config = adapter.model.config
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "max_position_embeddings", 1 << 30))


# ---- 2. IIG filter -----------------------------------------------------------------------------


def score_iig(
    adapter: VLMAdapter,
    pool: Sequence[PoolSample],
    config: MBPOConfig,
    cache: Path,
    on_progress: ProgressFn | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """IIG of every pool sample's ground-truth answer, reusing and extending the cache file.

    Returns (scores by id, skip reason by id for samples whose scoring failed). A failing batch is
    retried one sample at a time so only the culprit is lost; failures are not cached (a re-run
    meets and counts them again)."""
    scores = {row["id"]: float(row["iig"]) for row in read_lines(cache)}
    failed: dict[str, str] = {}
    todo = [p for p in pool if p.sample.id not in scores]
    done = len(pool) - len(todo)
    for batch_idx in bucket_by_size([p.size for p in todo], config.iig.batch_size):
        batch = [todo[i] for i in batch_idx]
        pixels = _load_pixels([p.path for p in batch])

        def score(
            group: list[int], batch: list[PoolSample] = batch, pixels: torch.Tensor = pixels
        ) -> list[float]:
            return compute_iig(
                adapter,
                pixels[group],
                [batch[i].sample.question for i in group],
                [batch[i].sample.answer for i in group],
                config.iig.null_image,
                seed=config.seed,
            ).tolist()

        gains, errors = map_with_fallback(score, len(batch))
        for i, reason in errors.items():
            failed[batch[i].sample.id] = reason
        for i, gain in gains.items():
            scores[batch[i].sample.id] = float(gain)
            append_line(cache, {"id": batch[i].sample.id, "iig": float(gain)})
        done += len(batch)
        if on_progress is not None:
            on_progress("iig", done, len(pool))
    return scores, failed


def map_with_fallback(fn: Callable[[list[int]], Sequence[T]], n: int) -> tuple[dict[int, T], dict[int, str]]:
    """Apply `fn` to all indices 0..n-1 at once; if that raises, to each index alone, so one bad
    sample costs only itself. Returns (result by index, "error:<ExceptionType>" by failed index)."""
    try:
        return dict(enumerate(fn(list(range(n))))), {}
    except Interrupted:
        raise
    except Exception:
        if n == 1:
            return {}, {0: _error_reason()}
    results: dict[int, T] = {}
    errors: dict[int, str] = {}
    for i in range(n):
        try:
            (results[i],) = fn([i])
        except Interrupted:
            raise
        except Exception:  # any failure of one sample is counted, never raised
            errors[i] = _error_reason()
    return results, errors


def _error_reason() -> str:
    exc = sys.exc_info()[1]
    return f"error:{type(exc).__name__}"


def select_by_iig(
    ids: Sequence[str],
    scores: dict[str, float],
    *,
    keep_fraction: float,
    min_iig: float | None,
    limit: int | None,
) -> list[str]:
    """Ids to attack, highest IIG first: IIG >= min_iig when set, else the top keep_fraction
    (rounded up); then at most `limit`. Ties keep manifest order."""
    ranked = sorted(ids, key=lambda i: -scores[i])
    if min_iig is not None:
        kept = [i for i in ranked if scores[i] >= min_iig]
    else:
        kept = ranked[: math.ceil(keep_fraction * len(ranked))]
    return kept[:limit] if limit is not None else kept


# ---- 3. attack ---------------------------------------------------------------------------------


def same_answer(task: str, a: str, b: str, choices: Sequence[str] | None) -> bool:
    """Whether two model answers mean the same (normalised per task; unparsable ones as text)."""
    pa, pb = parse_answer(task, a, choices), parse_answer(task, b, choices)
    if pa is None or pb is None:
        return normalize_open(a) == normalize_open(b)
    if isinstance(pa, float) and isinstance(pb, float):
        return math.isclose(pa, pb, abs_tol=1e-9)
    return pa == pb


def _sample_generator(seed: int, sample_id: str, salt: str) -> torch.Generator:
    """A generator that depends on the sample, not on its batch, so a resumed run draws the same."""
    digest = hashlib.sha256(f"{seed}:{salt}:{sample_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def mine_batch(
    adapter: VLMAdapter,
    pixels: torch.Tensor,
    samples: Sequence[ManifestSample],
    config: MBPOConfig,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[Record], torch.Tensor]:
    """Mine one batch of same-size images. Returns one record per sample (without file paths) and
    the quantised PGD images (B, H, W, 3) (rows of samples not attacked are the clean image).
    Records keep `status` "attacked" (clean answer correct) or "clean_wrong" either way.
    `should_stop` is asked between the batch's decodes and attack steps (`Interrupted`)."""
    questions = [s.question for s in samples]
    answers = [s.answer for s in samples]
    decode = _decoder(adapter, config)
    clean_pred = decode(pixels, questions)
    interrupt_if(should_stop)
    null_pred = decode(null_pixels(pixels, config.iig.null_image, seed=config.seed), questions)
    records: list[Record] = []
    for s, clean, null in zip(samples, clean_pred, null_pred, strict=True):
        choices = list(s.choices) or None
        records.append(
            {
                "id": s.id,
                "task": s.task,
                "question": s.question,
                "answer": s.answer,
                "choices": list(s.choices),
                "clean_prediction": clean,
                "null_prediction": null,
                "null_correct": is_correct(s.task, null, s.answer, choices),
                "status": "attacked" if is_correct(s.task, clean, s.answer, choices) else "clean_wrong",
            }
        )
    adv_all = pixels.clone()
    idx = [i for i, r in enumerate(records) if r["status"] == "attacked" or config.mining.attack_clean_wrong]
    if not idx:
        return records, adv_all
    sub_pixels = pixels[idx]
    sub_q, sub_a = [questions[i] for i in idx], [answers[i] for i in idx]
    attack = config.attack

    def logprob(x: torch.Tensor) -> torch.Tensor:
        return adapter.answer_logprobs(x, sub_q, sub_a)[0]

    start = _sample_generator(config.seed, samples[idx[0]].id, "pgd")
    adv = quantize_uint8(
        pgd_perturb(
            logprob,
            sub_pixels,
            eps=attack.eps,
            step_size=attack.step_size,
            steps=attack.steps,
            random_start=attack.random_start,
            generator=start,
            should_stop=should_stop,
        )
    )
    interrupt_if(should_stop)
    adv_all[idx] = adv
    with torch.no_grad():
        logp_clean = logprob(sub_pixels).tolist()
        logp_adv = logprob(adv).tolist()
    adv_pred = decode(adv, sub_q)
    noise_pred: list[str | None] = [None] * len(idx)
    logp_noise: list[float | None] = [None] * len(idx)
    # Every sample the attack runs on also gets the noise run: its success rate (report.attack_rates)
    # counts only the samples answered correctly on the clean image, and the answers on all of
    # them are the rejected sides of the random-noise DPO baseline (noise_pairs.jsonl).
    baseline = list(range(len(idx)))
    if config.mining.random_noise_baseline and baseline:
        interrupt_if(should_stop)
        noisy = quantize_uint8(
            torch.cat(
                [
                    random_sign_noise(
                        sub_pixels[j : j + 1],
                        attack.eps,
                        _sample_generator(config.seed, samples[idx[j]].id, "noise"),
                    )
                    for j in baseline
                ]
            )
        )
        base_q = [sub_q[j] for j in baseline]
        with torch.no_grad():
            base_logp = adapter.answer_logprobs(noisy, base_q, [sub_a[j] for j in baseline])[0].tolist()
        for j, prediction, logp in zip(baseline, decode(noisy, base_q), base_logp, strict=True):
            noise_pred[j], logp_noise[j] = prediction, logp
    for j, i in enumerate(idx):
        r, s = records[i], samples[i]
        choices = list(s.choices) or None
        r.update(
            logp_clean=logp_clean[j],
            logp_adv=logp_adv[j],
            adv_prediction=adv_pred[j],
            adv_correct=is_correct(s.task, adv_pred[j], s.answer, choices),
            adv_prior_agreement=same_answer(s.task, adv_pred[j], r["null_prediction"], choices),
            linf=float((adv[j] - sub_pixels[j]).abs().max()),
        )
        if noise_pred[j] is not None:
            prediction = str(noise_pred[j])
            r.update(
                noise_prediction=prediction,
                logp_noise=logp_noise[j],
                noise_correct=is_correct(s.task, prediction, s.answer, choices),
                noise_prior_agreement=same_answer(s.task, prediction, r["null_prediction"], choices),
            )
    return records, adv_all


def _decoder(adapter: VLMAdapter, config: MBPOConfig) -> Callable[[torch.Tensor, list[str]], list[str]]:
    def decode(pixels: torch.Tensor, questions: list[str]) -> list[str]:
        return adapter.generate(
            pixels, questions, max_new_tokens=config.mining.max_new_tokens, do_sample=config.mining.do_sample
        )

    return decode


# ---- the whole job -----------------------------------------------------------------------------


def _run_settings(config: MBPOConfig, manifest: Path) -> dict[str, Any]:
    return {
        "manifest": str(manifest.resolve()),
        "seed": config.seed,
        "iig": config.iig.model_dump(),
        "attack": config.attack.model_dump(),
        "mining": config.mining.model_dump(exclude={"limit"}),
    }


def mine(
    adapter: VLMAdapter,
    manifest: str | Path,
    out_dir: str | Path,
    config: MBPOConfig,
    *,
    limit: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MiningSummary:
    """Mine hard negatives from `manifest` into `out_dir` (see the module docstring). A yes from
    `should_stop` inside a batch raises `Interrupted`; the finished batches are kept."""
    manifest, out = Path(manifest), Path(out_dir)
    (out / "perturbed").mkdir(parents=True, exist_ok=True)
    check_run_settings(out, _run_settings(config, manifest))
    limit = limit if limit is not None else config.mining.limit

    pool, skipped, n_input = scan_pool(adapter, manifest, on_progress)
    scores, failed = score_iig(adapter, pool, config, out / "iig.jsonl", on_progress)
    skipped.update(failed.values())
    selected = select_by_iig(
        [p.sample.id for p in pool if p.sample.id in scores],
        scores,
        keep_fraction=config.iig.keep_fraction,
        min_iig=config.iig.min_iig,
        limit=limit,
    )
    by_id = {p.sample.id: p for p in pool}
    finished = {r["id"]: r for r in read_lines(out / "records.jsonl")}
    todo = [by_id[i] for i in selected if i not in finished]
    done = len(selected) - len(todo)
    for batch_idx in bucket_by_size([p.size for p in todo], config.attack.batch_size):
        batch = [todo[i] for i in batch_idx]
        pixels = _load_pixels([p.path for p in batch])

        def mine_group(
            group: list[int], batch: list[PoolSample] = batch, pixels: torch.Tensor = pixels
        ) -> list[Any]:
            records, adv = mine_batch(
                adapter, pixels[group], [batch[i].sample for i in group], config, should_stop
            )
            return list(zip(records, adv, strict=True))

        mined, errors = map_with_fallback(mine_group, len(batch))
        for i, reason in errors.items():
            mined[i] = ({"id": batch[i].sample.id, "status": "error", "reason": reason}, pixels[i])
        for i, p in enumerate(batch):
            record, adv = mined[i]
            record["iig"] = scores[p.sample.id]
            record["source_image"] = str(p.path)
            if record.get("adv_correct") is False:
                save_pair_images(out, record, p.path, adv)
            elif record.get("noise_correct") is False:
                save_clean_image(out, record, p.path)
            append_line(out / "records.jsonl", record)
            finished[record["id"]] = record
        done += len(batch)
        if on_progress is not None:
            on_progress("attack", done, len(selected))

    records = [finished[i] for i in selected if i in finished]
    return _finish(out, records, skipped, n_input, len(pool), config, manifest, limit)


def pair_line(record: Record) -> dict[str, Any]:
    """One line of pairs.jsonl: chosen = the ground truth, rejected = the answer on the PGD image."""
    line = {
        "id": record["id"],
        "image": record["image"],
        "perturbed_image": record["perturbed_image"],
        "question": record["question"],
        "task": record["task"],
        "chosen": record["answer"],
        "rejected": record["adv_prediction"],
        "iig": record["iig"],
        "logp_clean": record["logp_clean"],
        "logp_adv": record["logp_adv"],
        "prior_agreement": record["adv_prior_agreement"],
    }
    if record.get("choices"):
        line["choices"] = record["choices"]
    return line


# The paper's key baseline: rejected = the answer on the image perturbed by uniform sign noise of
# the attack's budget (not saved: training uses the clean image), chosen = the ground truth.
NOISE_PAIRS = "noise_pairs.jsonl"


def noise_pair_line(record: Record) -> dict[str, Any]:
    """One line of noise_pairs.jsonl: pairs.jsonl's fields with the rejected answer of the noise
    image, and no `perturbed_image` (the noisy image is not kept)."""
    # A sample flipped by noise alone has none of the PGD fields.
    line = pair_line(
        {
            **record,
            "perturbed_image": None,
            "logp_adv": None,
            "adv_prediction": None,
            "adv_prior_agreement": None,
        }
    )
    del line["perturbed_image"], line["logp_adv"]
    line.update(
        rejected=record["noise_prediction"],
        logp_noise=record["logp_noise"],
        prior_agreement=record["noise_prior_agreement"],
    )
    return line


def balance_yes_no(records: Sequence[Record]) -> list[Record]:
    """The records (in order, which is highest IIG first) with as many yes/no pairs whose chosen
    answer is "yes" as "no": the first n of each, n the smaller count. Other tasks are all kept, and
    so is everything when one side has no pair at all (nothing to balance against)."""
    chosen = [normalize_yes_no(r["answer"]) if r["task"] == "yes_no" else None for r in records]
    n = min(chosen.count("yes"), chosen.count("no")) or len(records)
    seen: Counter[str] = Counter()
    kept = []
    for record, answer in zip(records, chosen, strict=True):
        if answer is not None:
            seen[answer] += 1
            if seen[answer] > n:
                continue
        kept.append(record)
    return kept


def _finish(
    out: Path,
    records: Sequence[Record],
    skipped: Counter[str],
    n_input: int,
    n_valid: int,
    config: MBPOConfig,
    manifest: Path,
    limit: int | None,
) -> MiningSummary:
    # Records of samples that were not attacked have no `adv_correct`.
    flipped = [r for r in records if r.get("adv_correct") is False]
    kept = balance_yes_no(flipped) if config.mining.balance_yes_no else flipped
    pairs = [pair_line(r) for r in kept]
    write_atomic(
        out / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs).encode()
    )
    noisy = [r for r in records if r.get("noise_correct") is False]
    noise_pairs = [
        noise_pair_line(r) for r in (balance_yes_no(noisy) if config.mining.balance_yes_no else noisy)
    ]
    write_atomic(
        out / NOISE_PAIRS,
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in noise_pairs).encode(),
    )
    skipped = skipped + Counter(r["reason"] for r in records if r.get("status") == "error")
    stats = summarize_records(records)
    summary = MiningSummary(
        n_input=n_input,
        n_pairs=len(pairs),
        attack_success_rate=stats.pop("attack_success_rate"),
        prior_agreement_rate=stats.pop("prior_agreement_rate"),
        baseline_random_noise=stats.pop("baseline_random_noise"),
        skipped=dict(sorted(skipped.items())),
        config={**_run_settings(config, manifest), "limit": limit},
        n_valid=n_valid,
        n_selected=len(records),
        n_dropped_for_balance=len(flipped) - len(kept),
        details=stats,
    )
    write_atomic(out / "summary.json", json.dumps(summary.to_dict(), indent=2).encode())
    return summary
