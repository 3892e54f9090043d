"""Hard-negative mining: pipeline logic on a transparent stand-in model, plus a real tiny-VLM run.

The stand-in answers "is the image busy?" from the image's contrast: p(yes) = sigmoid(40 (std - 0.1)).
A gray null image has no contrast, so its answer (the "prior") is "no". PGD with eps = 8/255
changes every pixel's deviation by eps, so an image within eps of the threshold flips and one far
from it does not; uniform sign noise barely moves the std. Every outcome is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mbpo_core.config import MBPOConfig
from mbpo_core.data.pairs import read_pairs
from mbpo_core.mining.mine import MiningSummary, mine, same_answer, select_by_iig
from mbpo_core.mining.report import summarize_records
from mbpo_core.models.base import VLMAdapter

THRESHOLD, SHARPNESS = 0.1, 40.0
PAIR_FIELDS = (
    *("id", "image", "perturbed_image", "question", "task", "chosen", "rejected"),
    *("iig", "logp_clean", "logp_adv", "prior_agreement"),
)
# id -> (contrast amplitude, ground truth). Near the threshold: flips; far: does not.
POOL = {
    "yes_near": (0.12, "yes"),
    "yes_far": (0.30, "yes"),
    "no_near": (0.08, "no"),
    "no_far": (0.02, "no"),
    "wrong": (0.30, "no"),  # the model says yes: answered wrong on the clean image, never attacked
}


class ContrastModel:
    """Duck-typed VLMAdapter: one-token yes/no answers decided by image contrast."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=40))
        self.device = torch.device("cpu")
        self.fail_on = fail_on
        self.attacked_questions: set[str] = set()

    def prompt_ids(self, question: str, height: int, width: int) -> list[int]:
        return list(range(len(question.split()) + 4))

    def answer_ids(self, answer: str) -> list[int]:
        return [0] * len(answer.split())

    def _p_yes(self, pixels: torch.Tensor) -> torch.Tensor:
        std = pixels.flatten(1).std(dim=1, unbiased=False)
        return torch.sigmoid(SHARPNESS * (std - THRESHOLD))

    def answer_logprobs(
        self, pixels: torch.Tensor, questions: Any, answers: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fail_on in questions:
            raise RuntimeError("boom")
        if pixels.requires_grad:
            self.attacked_questions.update(questions)
        p_yes = self._p_yes(pixels)
        is_yes = torch.tensor([a.strip().lower() == "yes" for a in answers])
        return torch.where(is_yes, p_yes, 1 - p_yes).log(), torch.ones(len(answers), dtype=torch.long)

    def generate(self, pixels: torch.Tensor, questions: Any, **_: Any) -> list[str]:
        return ["Yes." if p > 0.5 else "no" for p in self._p_yes(pixels).tolist()]


def checkerboard(amplitude: float, size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    sign = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    return np.repeat(((0.5 + amplitude * sign) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def manifest_line(sample_id: str, image: str, question: str, answer: str) -> str:
    return json.dumps(
        {"id": sample_id, "image": image, "question": question, "answer": answer, "task": "yes_no"}
    )


def run_mining(
    model: ContrastModel, manifest: Path, out: Path, cfg: MBPOConfig, **kwargs: Any
) -> MiningSummary:
    return mine(cast(VLMAdapter, model), manifest, out, cfg, **kwargs)


def write_pool(root: Path, pool: dict[str, tuple[float, str]], extra_lines: tuple[str, ...] = ()) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for sample_id, (amplitude, answer) in pool.items():
        Image.fromarray(checkerboard(amplitude)).save(root / "images" / f"{sample_id}.png")
        lines.append(manifest_line(sample_id, f"images/{sample_id}.png", f"is {sample_id} busy ?", answer))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return manifest


def config(**iig: Any) -> MBPOConfig:
    return MBPOConfig.model_validate({"iig": {"keep_fraction": 1.0, **iig}, "attack": {"batch_size": 2}})


def test_mining_keeps_the_flips_and_reports_both_attacks(tmp_path: Path) -> None:
    manifest = write_pool(tmp_path / "data", POOL)
    out = tmp_path / "out"
    summary = run_mining(ContrastModel(), manifest, out, config())

    pairs = {p["id"]: p for p in read_pairs(out / "pairs.jsonl", resolve_images=True)}
    assert set(pairs) == {"yes_near", "no_near"}
    assert pairs["yes_near"]["rejected"] == "no" and pairs["yes_near"]["chosen"] == "yes"
    assert pairs["yes_near"]["prior_agreement"] is True  # erased the object: agrees with the gray image
    assert pairs["no_near"]["prior_agreement"] is False  # invented one: the gray image says "no"
    assert all(p["logp_adv"] < p["logp_clean"] for p in pairs.values())
    assert summary.n_input == 5 and summary.n_pairs == 2 and summary.skipped == {}
    assert summary.details["n_clean_correct"] == 4 and summary.details["n_clean_wrong"] == 1
    assert summary.attack_success_rate == 0.5
    assert summary.prior_agreement_rate == 0.5
    assert summary.baseline_random_noise["attack_success_rate"] == 0.0
    directions = summary.details["by_direction"]
    assert (
        directions["yes->no"]["attack_success_rate"] == 0.5
        and directions["yes->no"]["prior_base_rate"] == 1.0
    )
    assert (
        directions["no->yes"]["prior_agreement_rate"] == 0.0
        and directions["no->yes"]["prior_base_rate"] == 0.0
    )

    written = json.loads((out / "summary.json").read_text())
    expected_keys = {
        "n_input",
        "n_pairs",
        "attack_success_rate",
        "prior_agreement_rate",
        "baseline_random_noise",
    }
    assert expected_keys | {"skipped", "config"} <= written.keys()
    line = json.loads((out / "pairs.jsonl").read_text().splitlines()[0])
    assert set(line) == set(PAIR_FIELDS)


def test_pairs_are_balanced_between_chosen_yes_and_no(tmp_path: Path) -> None:
    """Two "yes" questions flip and one "no" question does: the pairs keep one of each (the higher
    IIG "yes"), and the summary says how many were dropped; without balancing all three stay."""
    pool = {**POOL, "yes_near2": (0.115, "yes")}
    manifest = write_pool(tmp_path / "data", pool)
    balanced = run_mining(ContrastModel(), manifest, tmp_path / "balanced", config())
    chosen = sorted(
        p["chosen"] for p in read_pairs(tmp_path / "balanced" / "pairs.jsonl", resolve_images=True)
    )
    assert chosen == ["no", "yes"] and balanced.n_pairs == 2 and balanced.n_dropped_for_balance == 1
    assert balanced.attack_success_rate == pytest.approx(3 / 5)  # the attack statistics count every flip

    unbalanced_config = config().model_copy(
        update={"mining": config().mining.model_copy(update={"balance_yes_no": False})}
    )
    everything = run_mining(ContrastModel(), manifest, tmp_path / "all", unbalanced_config)
    assert everything.n_pairs == 3 and everything.n_dropped_for_balance == 0


def test_clean_wrong_samples_become_pairs_on_request(tmp_path: Path) -> None:
    """`wrong` (the model says "yes" to a "no" question on the clean image) is never attacked by
    default; with `attack_clean_wrong` it is, stays wrong, and becomes a pair, while the attack
    statistics still count only the correctly answered samples."""
    manifest = write_pool(tmp_path / "data", POOL)
    cfg = config()
    cfg = cfg.model_copy(
        update={"mining": cfg.mining.model_copy(update={"attack_clean_wrong": True, "balance_yes_no": False})}
    )
    model = ContrastModel()
    summary = run_mining(model, manifest, tmp_path / "out", cfg)

    pairs = {p["id"]: p for p in read_pairs(tmp_path / "out" / "pairs.jsonl", resolve_images=True)}
    assert set(pairs) == {"yes_near", "no_near", "wrong"}
    assert (pairs["wrong"]["chosen"], pairs["wrong"]["rejected"]) == ("no", "Yes.")
    assert pairs["wrong"]["logp_adv"] < pairs["wrong"]["logp_clean"]
    assert (tmp_path / "out" / pairs["wrong"]["perturbed_image"]).is_file()
    assert "is wrong busy ?" in model.attacked_questions
    assert summary.n_pairs == 3
    assert summary.attack_success_rate == 0.5  # 2 of the 4 correctly answered samples
    records = {
        r["id"]: r for r in map(json.loads, (tmp_path / "out" / "records.jsonl").read_text().splitlines())
    }
    # The noise run covers "wrong" too (its answer is a noise pair), but the noise baseline's rate
    # still counts only the correctly answered samples.
    assert all(
        "noise_prediction" in r for r in records.values() if r["status"] in ("attacked", "clean_wrong")
    )
    assert summary.baseline_random_noise["attack_success_rate"] == 0.0
    assert summary.details["n_clean_correct"] == 4 and summary.details["n_clean_wrong"] == 1
    noise = {p["id"]: p for p in read_pairs(tmp_path / "out" / "noise_pairs.jsonl", resolve_images=True)}
    assert set(noise) == {"wrong"}  # noise flips none of the correct answers here
    assert (noise["wrong"]["chosen"], noise["wrong"]["rejected"]) == ("no", "Yes.")
    assert "perturbed_image" not in noise["wrong"] and Path(noise["wrong"]["image"]).is_file()
    assert noise["wrong"]["logp_noise"] < 0


def test_perturbed_png_is_within_budget_and_reproduces_the_rejected_answer(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_mining(ContrastModel(), write_pool(tmp_path / "data", POOL), out, config())
    for pair in read_pairs(out / "pairs.jsonl", resolve_images=True):
        clean = np.asarray(Image.open(pair["image"]), dtype=np.int16)
        adv = np.asarray(Image.open(pair["perturbed_image"]), dtype=np.int16)
        assert 0 < np.abs(adv - clean).max() <= 8
        pixels = torch.from_numpy(adv[None]).float() / 255
        assert ContrastModel().generate(pixels, [pair["question"]]) == [pair["rejected"]]


def test_iig_filter_keeps_the_image_dependent_answers(tmp_path: Path) -> None:
    # Yes answers need the image (the gray null says no); no answers are the prior's anyway.
    out = tmp_path / "out"
    summary = run_mining(ContrastModel(), write_pool(tmp_path / "data", POOL), out, config(keep_fraction=0.5))
    assert summary.n_selected == 3
    iig = {r["id"]: r["iig"] for r in map(json.loads, (out / "iig.jsonl").read_text().splitlines())}
    assert min(iig["yes_near"], iig["yes_far"]) > max(iig["no_near"], iig["no_far"])


def test_rerun_resumes_and_a_torn_line_is_redone(tmp_path: Path) -> None:
    manifest, out = write_pool(tmp_path / "data", POOL), tmp_path / "out"
    run_mining(ContrastModel(), manifest, out, config(), limit=2)
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 2
    # Simulate a crash in the middle of writing the second record.
    (out / "records.jsonl").write_text(records[0] + "\n" + records[1][:20])
    model = ContrastModel()
    summary = run_mining(model, manifest, out, config())
    ids = [json.loads(line)["id"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(POOL) and len(ids) == len(set(ids))
    assert summary.n_pairs == 2 and summary.n_selected == 5
    done_before = json.loads(records[0])["id"]
    # Everything answered correctly except the finished id was attacked again; "wrong" never is.
    expected = {f"is {i} busy ?" for i in POOL if i not in (done_before, "wrong")}
    assert model.attacked_questions == expected


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    manifest, out = write_pool(tmp_path / "data", POOL), tmp_path / "out"
    run_mining(ContrastModel(), manifest, out, config(), limit=1)
    other = MBPOConfig.model_validate({"iig": {"keep_fraction": 1.0}, "attack": {"eps": 4 / 255}})
    with pytest.raises(ValueError, match="different settings"):
        run_mining(ContrastModel(), manifest, out, other)


def test_unprocessable_samples_are_skipped_with_counted_reasons(tmp_path: Path) -> None:
    root = tmp_path / "data"
    extra = (
        "{not json",
        manifest_line("gone", "images/gone.png", "q", "yes"),
        manifest_line("bad", "images/bad.png", "q", "yes"),
        manifest_line("empty", "images/yes_near.png", "q", " "),
        manifest_line("long", "images/yes_near.png", "w " * 50, "no"),  # 54 tokens > the stand-in's 40
    )
    manifest = write_pool(root, {"yes_near": POOL["yes_near"], "boom": (0.12, "yes")}, extra)
    (root / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    summary = run_mining(ContrastModel(fail_on="is boom busy ?"), manifest, tmp_path / "out", config())
    assert summary.n_input == 7
    assert summary.skipped == {
        "empty_answer": 1,
        "error:RuntimeError": 1,
        "invalid_json": 1,
        "missing_image": 1,
        "prompt_too_long": 1,
        "undecodable_image": 1,
    }
    assert summary.n_pairs == 1


def test_select_by_iig() -> None:
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.5}
    ids = list(scores)
    assert select_by_iig(ids, scores, keep_fraction=0.5, min_iig=None, limit=None) == ["b", "c"]
    assert select_by_iig(ids, scores, keep_fraction=0.5, min_iig=0.2, limit=None) == ["b", "c", "d"]
    assert select_by_iig(ids, scores, keep_fraction=1.0, min_iig=None, limit=1) == ["b"]


def test_same_answer_normalises_per_task() -> None:
    assert same_answer("yes_no", "Yes.", "yes, there is", None)
    assert not same_answer("yes_no", "yes", "no", None)
    assert same_answer("multiple_choice", "(B)", "blue", ["red", "blue"])
    assert same_answer("number", "three", "3", None)
    assert same_answer("yes_no", "maybe", "Maybe!", None)  # unparsable: compared as text


def test_summary_rates_against_hand_counts() -> None:
    def rec(answer: str, adv_ok: bool, agree: bool, null_ok: bool) -> dict[str, Any]:
        outcome = {"adv_correct": adv_ok, "adv_prior_agreement": agree, "null_correct": null_ok}
        return {
            "status": "attacked",
            "task": "yes_no",
            "answer": answer,
            **outcome,
            "logp_clean": -1.0,
            "logp_adv": -3.0,
        }

    records = [
        rec("yes", False, True, False),
        rec("yes", True, False, False),
        rec("no", False, False, True),
        rec("no", True, False, True),
        {"status": "clean_wrong"},
    ]
    stats = summarize_records(records)
    assert stats["attack_success_rate"] == 0.5 and stats["prior_agreement_rate"] == 0.5
    assert stats["prior_base_rate"] == 0.5 and stats["mean_logp_drop"] == 2.0
    assert stats["by_direction"]["yes->no"]["prior_agreement_rate"] == 1.0
    assert stats["by_direction"]["no->yes"]["attack_success_rate"] == 0.5
    assert stats["baseline_random_noise"]["attack_success_rate"] is None  # no baseline recorded


def test_cli_mines_with_a_real_tiny_vlm(tmp_path: Path) -> None:
    from mbpo_cli.main import app
    from mbpo_core.models.build import build_model, build_processor

    torch.set_num_threads(1)
    processor = build_processor("qwen2_vl", ["is", "it", "busy", "yes", "no"], image_size=56)
    model = build_model("qwen2_vl", processor, "tiny", seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    pool = {f"s{i}": (0.05 * i, "yes" if i % 2 else "no") for i in range(4)}
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = []
    for sample_id, (amplitude, answer) in pool.items():
        Image.fromarray(checkerboard(amplitude, size=56)).save(data / "images" / f"{sample_id}.png")
        lines.append(manifest_line(sample_id, f"images/{sample_id}.png", "is it busy ?", answer))
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("iig: {keep_fraction: 1.0}\nattack: {steps: 2}\nmining: {max_new_tokens: 2}\n")

    paths = {"--model": tmp_path / "model", "--data": data / "manifest.jsonl", "--out": tmp_path / "out"}
    args = ["mine", *[str(x) for item in paths.items() for x in item], "--config", str(cfg), "--limit", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # A random-weight model never says yes/no: nothing is answered correctly, so nothing is attacked.
    assert summary["n_input"] == 4 and summary["n_pairs"] == 0 and summary["config"]["limit"] == 3
    assert summary["details"]["n_clean_wrong"] == 3


def test_a_sample_flipped_by_noise_alone_makes_a_noise_pair() -> None:
    """PGD left it right, noise flipped it: no perturbed image exists, the line still builds."""
    from mbpo_core.mining.mine import noise_pair_line

    record = {
        "id": "s1",
        "image": "clean/s1.png",
        "question": "is s1 busy ?",
        "task": "yes_no",
        "answer": "yes",
        "noise_prediction": "no",
        "noise_correct": False,
        "noise_prior_agreement": True,
        "logp_noise": -2.0,
        "logp_clean": -0.1,
        "iig": 0.5,
    }
    line = noise_pair_line(record)
    assert line["rejected"] == "no" and line["chosen"] == "yes" and line["image"] == "clean/s1.png"
    assert "perturbed_image" not in line and line["logp_noise"] == -2.0 and line["prior_agreement"] is True
