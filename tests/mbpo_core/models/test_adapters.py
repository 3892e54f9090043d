"""Adapters: loading, prompts, teacher-forced log-probs and generation agree with the plain HF model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mbpo_core.models.base import VLMAdapter
from mbpo_core.models.info import ModelDirError
from mbpo_core.models.loader import adapter_class, load_adapter
from tests.mbpo_core.models.conftest import FAMILIES, random_uint8, to_pixels

QUESTIONS = ["is there a red circle ?", "how many squares are in the image ?", "what color is the triangle ?"]
ANSWERS = ["yes", "3", "a blue green of red"]


@pytest.mark.parametrize("family", FAMILIES)
def test_load_adapter_picks_the_family(adapters: dict[str, VLMAdapter], family: str) -> None:
    adapter = adapters[family]
    assert type(adapter) is adapter_class(family)
    assert adapter.family == family
    assert not adapter.model.training


def test_load_adapter_refuses_pickled_weights(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    for item in model_dirs["qwen2_vl"].iterdir():
        if item.suffix != ".safetensors":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelDirError, match="safetensors"):
        load_adapter(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(56, 56), (60, 90)])
def test_prompt_ids_match_processor(
    adapters: dict[str, VLMAdapter], family: str, size: tuple[int, int]
) -> None:
    adapter = adapters[family]
    image = Image.fromarray(random_uint8(*size, seed=0))
    theirs = adapter.processor(text=[adapter.prompt_text(QUESTIONS[0])], images=[image], return_tensors="pt")
    assert adapter.prompt_ids(QUESTIONS[0], *size) == theirs["input_ids"][0].tolist()


def reference_logprob(adapter: VLMAdapter, image: Image.Image, question: str, answer: str) -> float:
    """The answer's log-prob from the plain HF model on HF processor inputs, one sample."""
    text = adapter.prompt_text(question) + answer
    inputs = adapter.processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = adapter.model(**inputs).logits[0].float()
    n = len(adapter.answer_ids(answer))
    ids = inputs["input_ids"][0]
    logprobs = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
    return float(logprobs.gather(-1, ids[-n:].unsqueeze(-1)).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_logprobs_match_the_model_on_processor_inputs(
    adapters: dict[str, VLMAdapter], family: str
) -> None:
    adapter = adapters[family]
    images = [random_uint8(60, 90, seed=s) for s in range(3)]
    with torch.no_grad():
        ours, lengths = adapter.answer_logprobs(to_pixels(*images), QUESTIONS, ANSWERS)
    expected = [
        reference_logprob(adapter, Image.fromarray(i), q, a)
        for i, q, a in zip(images, QUESTIONS, ANSWERS, strict=True)
    ]
    assert lengths.tolist() == [len(adapter.answer_ids(a)) for a in ANSWERS] == [1, 1, 5]
    assert torch.allclose(ours, torch.tensor(expected), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_logprobs_equal_one_at_a_time(adapters: dict[str, VLMAdapter], family: str) -> None:
    adapter = adapters[family]
    pixels = to_pixels(*[random_uint8(56, 84, seed=s) for s in range(3)])
    with torch.no_grad():
        batched, _ = adapter.answer_logprobs(pixels, QUESTIONS, ANSWERS)
        single = [
            adapter.answer_logprobs(pixels[i : i + 1], QUESTIONS[i : i + 1], ANSWERS[i : i + 1])[0]
            for i in range(3)
        ]
    assert torch.allclose(batched, torch.cat(single), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_logprobs_are_differentiable_in_pixels(adapters: dict[str, VLMAdapter], family: str) -> None:
    pixels = to_pixels(random_uint8(60, 90, seed=5), random_uint8(60, 90, seed=6)).requires_grad_(True)
    total, _ = adapters[family].answer_logprobs(pixels, QUESTIONS[:2], ANSWERS[:2])
    (grad,) = torch.autograd.grad(total.sum(), pixels)
    assert grad.shape == pixels.shape
    assert (grad[0].abs().sum() > 0) and (grad[1].abs().sum() > 0)


def test_empty_answer_has_zero_tokens(adapters: dict[str, VLMAdapter]) -> None:
    with torch.no_grad():
        total, lengths = adapters["qwen2_vl"].answer_logprobs(to_pixels(random_uint8(56, 56, 0)), ["x"], [""])
    assert lengths.tolist() == [0] and total.tolist() == [0.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_one_at_a_time(adapters: dict[str, VLMAdapter], family: str) -> None:
    adapter = adapters[family]
    pixels = to_pixels(*[random_uint8(56, 84, seed=s) for s in range(3)])
    batched = adapter.generate(pixels, QUESTIONS, max_new_tokens=4)
    single = [
        adapter.generate(pixels[i : i + 1], QUESTIONS[i : i + 1], max_new_tokens=4)[0] for i in range(3)
    ]
    assert batched == single
    assert all(isinstance(a, str) and a == a.strip() for a in batched)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_matches_hf_generate_on_processor_inputs(
    adapters: dict[str, VLMAdapter], family: str
) -> None:
    adapter = adapters[family]
    image = random_uint8(60, 90, seed=7)
    inputs = adapter.processor(
        text=[adapter.prompt_text(QUESTIONS[0])], images=[Image.fromarray(image)], return_tensors="pt"
    )
    out = adapter.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = adapter.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    ).strip()
    assert adapter.generate(to_pixels(image), QUESTIONS[:1], max_new_tokens=4) == [expected]
