"""The SFT and DPO baselines (random negatives, mined pairs) train the tiny model and save a
loadable one."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mbpo_core.data.verifiers import is_correct
from mbpo_core.models.loader import load_adapter
from mbpo_core.training.baselines import random_wrong_answer, train_dpo_pairs, train_dpo_random, train_sft

from .conftest import tiny_config


@pytest.mark.parametrize(
    ("task", "answer", "choices"),
    [
        ("yes_no", "Yes.", ()),
        ("yes_no", "no", ()),
        ("multiple_choice", "B", ("red", "blue", "green")),
        ("number", "3", ()),
    ],
)
def test_random_wrong_answer_is_always_wrong(task, answer, choices):
    rng = random.Random(0)
    for _ in range(20):
        assert not is_correct(task, random_wrong_answer(rng, task, answer, choices), answer, choices)


def test_sft_lowers_the_nll_of_the_answers_and_saves_a_loadable_model(tiny_model_dir, tiny_data, tmp_path):
    config = tiny_config(max_steps=3, learning_rate=1e-2)
    model_dir = train_sft(tiny_model_dir, tiny_data["online"], tmp_path / "sft", config)

    def answer_nll(path):
        adapter = load_adapter(path)
        pixels = torch.zeros(1, 28, 28, 3)
        with torch.no_grad():
            logp, n = adapter.answer_logprobs(pixels, ["is there a red circle ?"], ["yes"])
        return float(-(logp.sum() / n.sum()))

    assert answer_nll(model_dir) < answer_nll(tiny_model_dir)
    assert train_sft(tiny_model_dir, tiny_data["online"], tmp_path / "sft", config) == model_dir  # reused


def test_dpo_with_random_negatives_trains_and_saves_a_loadable_model(tiny_model_dir, tiny_data, tmp_path):
    config = tiny_config(max_steps=1)
    model_dir = train_dpo_random(tiny_model_dir, tiny_data["online"], tmp_path / "dpo", config, n_pairs=4)
    trained = load_adapter(model_dir).model.state_dict()
    base = load_adapter(tiny_model_dir).model.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base if k in trained)


def test_dpo_on_mined_pairs_raises_the_chosen_answers_margin(tiny_model_dir, tiny_data, tmp_path):
    """DPO on a pairs file (the PGD pairs or noise_pairs.jsonl: both the same shape, the noise ones
    without a perturbed image) moves log p(chosen) - log p(rejected) up on its own pairs."""
    lines = [json.loads(line) for line in tiny_data["pairs"].read_text().splitlines()]
    noise_file = tiny_data["pairs"].with_name("noise_pairs.jsonl")
    noise_file.write_text(
        "".join(json.dumps({k: v for k, v in p.items() if k != "perturbed_image"}) + "\n" for p in lines)
    )
    config = tiny_config(max_steps=6, learning_rate=3e-3)
    model_dir = train_dpo_pairs(tiny_model_dir, noise_file, tmp_path / "dpo_noise", config)

    def margin(path):
        adapter = load_adapter(path)
        images = [
            np.asarray(Image.open(tiny_data["pairs"].parent / p["image"]).convert("RGB")) for p in lines
        ]
        pixels = torch.from_numpy(np.stack(images)).float() / 255
        questions = [p["question"] for p in lines]
        with torch.no_grad():
            chosen, _ = adapter.answer_logprobs(pixels, questions, [p["chosen"] for p in lines])
            rejected, _ = adapter.answer_logprobs(pixels, questions, [p["rejected"] for p in lines])
        return float((chosen - rejected).mean())

    assert margin(model_dir) > margin(tiny_model_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no pairs"):
        train_dpo_pairs(tiny_model_dir, empty, tmp_path / "dpo_empty", config)
