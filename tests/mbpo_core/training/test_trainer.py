"""HybridGRPOTrainer against plain TRL GRPOTrainer, and the anatomy of an offline group.

Parity: with no offline groups, the hybrid trainer's scored batch, loss and gradients equal TRL's for
the same weights, seed and batch (for every supported loss type, and through the LUFFY loss path).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from trl import GRPOTrainer

from mbpo_core.models.loader import load_adapter
from mbpo_core.training.arguments import grpo_config, peft_config
from mbpo_core.training.data import build_prompt_dataset, load_prompts
from mbpo_core.training.rewards import TRL_REWARD_FUNCS, TRL_REWARD_MAXIMA
from mbpo_core.training.trainer import HybridGRPOTrainer

from .conftest import length_reward, tiny_config

G = 4


def _trainer(cls, model_dir: Path, out: Path, dataset, loss_type: str = "dapo", **hybrid):
    config = tiny_config(loss_type=loss_type, beta=0.04)
    adapter = load_adapter(model_dir)
    adapter.processor.tokenizer.padding_side = "left"
    kwargs = {
        "model": adapter.model,
        "reward_funcs": [length_reward],
        "args": grpo_config(config.train, output_dir=out, seed=0, use_cpu=True, bf16=False),
        "train_dataset": dataset,
        "processing_class": adapter.processor,
        "peft_config": peft_config(config.train.lora),
    }
    if cls is HybridGRPOTrainer:
        kwargs |= {"reward_maxima": [4.0], "offline_groups_per_step": 0, **hybrid}
    trainer = cls(**kwargs)
    # A trained adapter (LoRA B is zero at init), so the policy differs from the reference and the
    # KL term and its gradient are not trivially zero.
    generator = torch.Generator().manual_seed(3)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _score_and_backprop(trainer, rows, seed: int = 7):
    torch.manual_seed(seed)
    batch = trainer._generate_and_score_completions(copy.deepcopy(rows))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return batch, loss.detach(), grads


@pytest.fixture(scope="module")
def online_dataset(tiny_data):
    return build_prompt_dataset(load_prompts(tiny_data["online"], None).online, [])


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_parity_with_trl_without_offline_groups(tiny_model_dir, online_dataset, tmp_path, loss_type):
    rows = [online_dataset[i] for i in (0, 1) for _ in range(G)]
    plain = _trainer(GRPOTrainer, tiny_model_dir, tmp_path / "plain", online_dataset, loss_type)
    hybrid = _trainer(HybridGRPOTrainer, tiny_model_dir, tmp_path / "hybrid", online_dataset, loss_type)

    plain_batch, plain_loss, plain_grads = _score_and_backprop(plain, rows)
    hybrid_batch, hybrid_loss, hybrid_grads = _score_and_backprop(hybrid, rows)

    assert torch.equal(plain_batch["completion_ids"], hybrid_batch["completion_ids"])
    assert plain_batch["advantages"].abs().sum() > 0  # the comparison is not vacuous
    assert plain._metrics["train"]["kl"][-1] > 1e-4  # nor is the KL term
    torch.testing.assert_close(hybrid_batch["advantages"], plain_batch["advantages"], rtol=0, atol=1e-6)
    torch.testing.assert_close(hybrid_loss, plain_loss, rtol=0, atol=1e-7)
    assert plain_grads.keys() == hybrid_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(hybrid_grads[name], grad, rtol=0, atol=1e-7, msg=name)

    # The LUFFY loss path is our own code; without mined answers it must be TRL's loss too.
    hybrid.offline_ratio = "luffy"
    hybrid.model.zero_grad()
    luffy_loss = hybrid.compute_loss(hybrid.model, hybrid_batch)
    luffy_loss.backward()
    torch.testing.assert_close(luffy_loss.detach(), plain_loss, rtol=0, atol=1e-7)
    for name, grad in plain_grads.items():
        param = dict(hybrid.model.named_parameters())[name]
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=1e-7, msg=name)


def test_offline_group_splices_mined_answers_on_the_clean_image(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    prompts = load_prompts(tiny_data["online"], tiny_data["pairs"])
    dataset = build_prompt_dataset(prompts.online, prompts.offline)
    trainer = _trainer(
        HybridGRPOTrainer,
        tiny_model_dir,
        tmp_path,
        dataset,
        offline_groups_per_step=1,
        reward_funcs=TRL_REWARD_FUNCS,
        reward_maxima=TRL_REWARD_MAXIMA,
    )
    sampled_counts = []
    original = GRPOTrainer._generate_single_turn

    def counting(self, prompt_ids, *args, **kwargs):
        sampled_counts.append(len(prompt_ids))
        return original(self, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", counting)
    offline_index, online_index = 6, 0  # pair p0: chosen "no", rejected "yes"
    rows = [dataset[offline_index]] * G + [dataset[online_index]] * G
    batch, _, _ = _score_and_backprop(trainer, rows)

    assert sampled_counts == [2 * G - 2]  # chosen and rejected are not sampled
    tokenizer = trainer.processing_class.tokenizer
    for row, answer in ((0, "no"), (1, "yes")):
        ids = batch["completion_ids"][row][batch["completion_mask"][row].bool()].tolist()
        assert ids == tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert batch["off_policy_mask"].tolist() == [True, True] + [False] * (2 * G - 2)
    # A random model's samples earn 0 (no yes/no), so chosen (2) > samples (0) = rejected (0).
    assert batch["advantages"][0] > 0 > batch["advantages"][1]
    # Every answer, the rejected one included, is scored with the clean image's pixels.
    clean = trainer.processing_class.image_processor(images=[r["image"] for r in rows], return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"], clean["pixel_values"])


def test_luffy_shapes_only_the_mined_answers(tiny_model_dir, tiny_data, tmp_path):
    prompts = load_prompts(tiny_data["online"], tiny_data["pairs"])
    dataset = build_prompt_dataset(prompts.online, prompts.offline)
    rows = [dataset[6]] * G + [dataset[0]] * G
    on_policy = _trainer(
        HybridGRPOTrainer, tiny_model_dir, tmp_path / "a", dataset, offline_groups_per_step=1
    )
    luffy = _trainer(
        HybridGRPOTrainer,
        tiny_model_dir,
        tmp_path / "b",
        dataset,
        offline_groups_per_step=1,
        offline_ratio="luffy",
    )
    batch_a, loss_a, _ = _score_and_backprop(on_policy, rows)
    batch_b, loss_b, _ = _score_and_backprop(luffy, rows)
    assert torch.equal(batch_a["completion_ids"], batch_b["completion_ids"])
    assert not torch.isclose(loss_a, loss_b)  # the shaped ratio p/(p+0.1) differs from the ratio 1
