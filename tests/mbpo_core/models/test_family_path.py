"""The whole method on a tiny random model of every registered family, on CPU: IIG scoring, PGD
mining (gradients reach the pixels, the perturbation stays in the eps ball through the family's
preprocessing), hybrid GRPO with an exact resume, a checkpoint that loads with the stock
`from_pretrained`, and serving (batched chat generation, a spot-check).

A random model answers nothing sensible, so these tests check that every stage runs and keeps its
contracts for the family, not that the model learns (the testbed's tests do that)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText

from mbpo_core.config import LoraConfig, MBPOConfig, TrainConfig
from mbpo_core.mining.attack import pgd_perturb
from mbpo_core.mining.mine import mine
from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.loader import load_adapter
from mbpo_core.scoring.iig import compute_iig
from mbpo_core.serving.engine import ChatRequest, SamplingParams, generate_batch, spot_check
from mbpo_core.training.session import train_policy
from tests.mbpo_core.models.conftest import FAMILIES, random_uint8, to_pixels

pytestmark = pytest.mark.slow
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
SIZE = (56, 84)  # (H, W): not square, so tiling / splitting families tile it


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six yes/no samples (56x84 images) in a manifest, the layout mining and training read."""
    root = tmp_path_factory.mktemp("family-data")
    (root / "images").mkdir()
    rows = []
    for i in range(6):
        colour = "red" if i % 2 else "blue"
        Image.new("RGB", (SIZE[1], SIZE[0]), COLOURS[colour]).save(root / "images" / f"s{i}.png")
        rows.append(
            {
                "id": f"s{i}",
                "image": f"images/s{i}.png",
                "question": f"is there a {colour} circle in the image",
                "answer": "yes" if i < 3 else "no",
                "task": "yes_no",
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Mined pairs as mining writes them: chosen (reward 2) against rejected (0) gives the offline
    # groups a non-zero advantage, so training moves the weights even though the model is random.
    pairs = [
        {**{k: r[k] for k in ("id", "image", "question", "task")}, "perturbed_image": r["image"]}
        | {"chosen": r["answer"], "rejected": "no" if r["answer"] == "yes" else "yes", "iig": 0.1}
        | {"logp_clean": -1.0, "logp_adv": -3.0, "prior_agreement": True}
        for r in rows
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root / "manifest.jsonl"


def _config(**train: object) -> MBPOConfig:
    settings: dict[str, object] = {
        "num_generations": 4,
        "prompts_per_step": 2,
        "max_completion_length": 3,
        "max_steps": 2,
        "save_steps": 1,
        "learning_rate": 1e-3,
        "lora": LoraConfig(r=4, alpha=8),
        **train,
    }
    return MBPOConfig.model_validate(
        {
            "seed": 0,
            "device": "cpu",
            "train": TrainConfig.model_validate(settings),
            "iig": {"keep_fraction": 1.0, "null_image": "noise"},
            "attack": {"steps": 2, "batch_size": 4},
            "mining": {"max_new_tokens": 3, "attack_clean_wrong": True, "balance_yes_no": False},
        }
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_and_pgd_through_the_familys_preprocessing(
    adapters: dict[str, VLMAdapter], family: str
) -> None:
    adapter = adapters[family]
    pixels = to_pixels(random_uint8(*SIZE, seed=0), random_uint8(*SIZE, seed=1))
    questions, answers = ["is there a red circle"] * 2, ["yes", "no"]
    iig = compute_iig(adapter, pixels, questions, answers, "noise")
    assert iig.shape == (2,) and torch.isfinite(iig).all()

    eps = 8 / 255

    def logprob(x: torch.Tensor) -> torch.Tensor:
        logp, _ = adapter.answer_logprobs(x, questions, answers)
        return logp

    adv = pgd_perturb(logprob, pixels, eps=eps, step_size=2 / 255, steps=2)
    assert (adv - pixels).abs().max() <= eps + 1e-6 and ((adv >= 0) & (adv <= 1)).all()
    assert (adv - pixels).abs().max() > 0  # the gradient reached the pixels and moved them
    ours, theirs = adapter.pixel_inputs(pixels)["pixel_values"], adapter.pixel_inputs(adv)["pixel_values"]
    std = torch.tensor(adapter.processor.image_processor.image_std).min()
    # Resizing is a convex (bilinear/bicubic: nearly convex) map: normalised inputs move by about eps/std.
    assert (theirs - ours).abs().max() <= 1.5 * eps / float(std)


@pytest.mark.parametrize("family", FAMILIES)
def test_mining_runs_to_a_summary(
    model_dirs: dict[str, Path], dataset: Path, family: str, tmp_path: Path
) -> None:
    summary = mine(load_adapter(model_dirs[family]), dataset, tmp_path / "mining", _config())
    assert summary.n_input == 6 and summary.n_selected == 6
    assert (tmp_path / "mining" / "pairs.jsonl").is_file()
    assert summary.n_pairs == len((tmp_path / "mining" / "pairs.jsonl").read_text().splitlines())


def _losses(result) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in result.log_history if "loss" in entry}


@pytest.mark.parametrize("family", FAMILIES)
def test_training_resumes_exactly_and_saves_a_stock_loadable_model(
    model_dirs: dict[str, Path], dataset: Path, family: str, tmp_path: Path
) -> None:
    config = _config(offline_fraction=0.5)
    data = {"online": dataset, "pairs": dataset.parent / "pairs.jsonl"}
    straight = train_policy(model_dirs[family], tmp_path / "straight", config, **data)
    asked: list[int] = []

    def after_one_step() -> bool:  # asked once before the first step, then after every step
        asked.append(1)
        return len(asked) > 1

    stopped = train_policy(
        model_dirs[family], tmp_path / "resumed", config, should_stop=after_one_step, **data
    )
    assert stopped.cancelled and stopped.steps == 1
    resumed = train_policy(model_dirs[family], tmp_path / "resumed", config, resume=True, **data)
    expected, got = _losses(straight), _losses(resumed)
    assert sorted(got) == [1, 2]
    for step in (1, 2):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    assert straight.model_dir is not None and resumed.model_dir is not None
    trained = load_adapter(straight.model_dir).model.state_dict()
    base = load_adapter(model_dirs[family]).model.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # training moved the weights
    again = load_adapter(resumed.model_dir).model.state_dict()
    for key, value in trained.items():
        torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6, msg=key)

    assert resumed.model_dir is not None
    model = AutoModelForImageTextToText.from_pretrained(resumed.model_dir, local_files_only=True)
    adapter_class = type(load_adapter(model_dirs[family]))
    assert type(model) is adapter_class.model_class
    assert_names_stock_classes(resumed.model_dir, adapter_class)


def assert_names_stock_classes(model_dir: Path, adapter_class: type[VLMAdapter]) -> None:
    """Every class a saved config names is a stock transformers class (what other tools load), and
    the processor the adapter uses is that class or a subclass of it."""
    named = {}
    for name in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            for key in ("architectures", "processor_class", "image_processor_type", "tokenizer_class"):
                for value in data.get(key) or [] if key == "architectures" else [data.get(key)]:
                    if value:
                        named[f"{name}:{key}"] = value
    assert named, "no class names saved"
    for where, value in named.items():
        assert hasattr(transformers, value), f"{where} names {value!r}, not a transformers class"
    stock = getattr(transformers, named["processor_config.json:processor_class"])
    assert issubclass(adapter_class.processor_class, stock)


@pytest.mark.parametrize("family", FAMILIES)
def test_serving_batches_chat_requests_and_spot_checks(adapters: dict[str, VLMAdapter], family: str) -> None:
    adapter = adapters[family]
    image = to_pixels(random_uint8(*SIZE, seed=3))[0]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a red circle"}]}
    ]
    requests = [
        ChatRequest(messages, [image], SamplingParams(max_tokens=3, temperature=0.0)) for _ in range(2)
    ]
    first, second = generate_batch(adapter, requests)
    expected = adapter.generate(image.unsqueeze(0), ["is there a red circle"], max_new_tokens=3)[0]
    assert first.text == second.text == expected
    result = spot_check(adapter, image, "is there a red circle", null_image="noise", max_tokens=3)
    assert result.answer == expected and isinstance(result.answer_iig, float)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_vision_side_is_frozen_and_never_gets_lora(model_dirs: dict[str, Path], family: str) -> None:
    from peft import get_peft_model

    from mbpo_core.models.base import VISION_ENCODERS, VISION_PROJECTORS
    from mbpo_core.training.arguments import peft_config
    from mbpo_core.training.session import freeze_vision_tower

    model = load_adapter(model_dirs[family]).model
    assert freeze_vision_tower(model) > 0
    vision = [n for n, _ in model.named_parameters() if any(f".{v}." in f".{n}" for v in VISION_ENCODERS)]
    assert vision and all(not p.requires_grad for n, p in model.named_parameters() if n in vision)
    assert any(p.requires_grad for n, p in model.named_parameters() if n not in vision)  # the language model
    adapted = get_peft_model(model, peft_config(LoraConfig(r=4, alpha=8)))
    lora = [n for n, _ in adapted.named_parameters() if "lora_" in n]
    assert lora and not [n for n in lora if any(v in n for v in VISION_ENCODERS + VISION_PROJECTORS)]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_chat_prompt_expands_images_as_the_adapter_does(
    adapters: dict[str, VLMAdapter], family: str
) -> None:
    from mbpo_core.serving.engine import prompt_ids

    adapter = adapters[family]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a red circle"}]}
    ]
    image = to_pixels(random_uint8(*SIZE, seed=4))[0]
    assert prompt_ids(adapter, messages, [image]) == adapter.prompt_ids("is there a red circle", *SIZE)
