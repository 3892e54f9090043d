"""The mixed prompt dataset and the sampler's exact offline share."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from mbpo_core.training.data import (
    MixedGroupSampler,
    build_prompt_dataset,
    load_offline_rows,
    load_prompts,
    offline_groups_per_step,
    source_counts,
)


def _sampler(**kw):
    settings = {
        "n_online": 5,
        "n_offline": 3,
        "groups_per_step": 4,
        "offline_per_step": 2,
        "group_size": 3,
        "num_steps": 6,
        "num_processes": 2,
        "repeat_count": 1,
        "seed": 0,
    }
    return MixedGroupSampler(**{**settings, **kw})


def test_every_step_has_the_exact_offline_share_spread_over_processes():
    sampler = _sampler()
    for prompts in sampler.step_prompts():
        chunks = [prompts[:2], prompts[2:]]
        assert [sum(i >= 5 for i in chunk) for chunk in chunks] == [1, 1]


def test_indices_repeat_per_group_and_step():
    sampler = _sampler(repeat_count=2, num_steps=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 4 * 3 * 2
    assert indices[:12] == indices[12:]
    assert all(len(set(indices[i : i + 3])) == 1 for i in range(0, 12, 3))


def test_order_depends_only_on_seed():
    assert list(_sampler()) == list(_sampler())
    assert list(_sampler()) != list(_sampler(seed=1))


def test_each_source_is_covered_before_repeating():
    steps = _sampler(num_steps=5, num_processes=1).step_prompts()
    offline = [i for step in steps for i in step if i >= 5]
    assert Counter(offline[:3]) == Counter({5: 1, 6: 1, 7: 1})


def test_offline_share_rounds_and_falls_back_to_the_available_source():
    assert offline_groups_per_step(0.5, 4, 10, 10) == 2
    assert offline_groups_per_step(0.5, 4, 10, 0) == 0
    assert offline_groups_per_step(0.5, 4, 0, 10) == 4
    assert offline_groups_per_step(0.5, 2, 10, 10, processes=2) == 0  # one offline group cannot split
    assert offline_groups_per_step(0.5, 4, 10, 10, processes=2) == 2


def test_dataset_columns_and_source_counts(tiny_data):
    prompts = load_prompts(tiny_data["online"], tiny_data["pairs"])
    dataset = build_prompt_dataset(prompts.online, prompts.offline)
    assert source_counts(dataset) == (6, 4)
    row = dataset[6]
    assert row["prompt"] == [{"role": "user", "content": "is there a red square ?"}]
    assert row["image"].mode == "RGB" and row["mined_chosen"] == row["answer"] == "no"
    assert dataset[0]["mined_chosen"] is None


def test_unverifiable_pairs_are_skipped_and_counted(tmp_path, tiny_data):
    lines = [json.loads(x) for x in tiny_data["pairs"].read_text().splitlines()]
    lines[0]["task"] = "multiple_choice"  # no choices: its sampled answers could not be verified
    lines[1]["task"] = "open"
    shutil.copytree(tiny_data["pairs"].parent / "images", tmp_path / "images")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows, skipped = load_offline_rows(path)
    assert [r.id for r in rows] == ["p2", "p3"]
    assert skipped == {"multiple_choice_without_choices": 1, "open_task": 1}


def test_pair_images_may_not_leave_the_pairs_directory(tmp_path, tiny_data):
    (tmp_path / "images").symlink_to(tiny_data["pairs"].parent / "images")
    (tmp_path / "pairs.jsonl").write_text(tiny_data["pairs"].read_text())
    with pytest.raises(ValueError, match="outside"):
        load_offline_rows(tmp_path / "pairs.jsonl")
