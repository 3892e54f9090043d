"""Splits: POPE built the POPE way, the prior really in the training data, answers true to the pixels."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from mbpo_core.data.manifest import read_manifest
from mbpo_core.data.verifiers import is_correct
from mbpo_core.testbed.scenes import render_scene
from mbpo_core.testbed.splits import (
    DEV_SPLITS,
    POPE_SPLITS,
    SFT_EXISTENCE_PAIRS,
    SPLITS,
    Sample,
    SplitSizes,
    build_splits,
    kind_frequency,
)
from mbpo_core.testbed.world import WorldSpec
from mbpo_core.testbed.writer import write_split
from tests.mbpo_core.testbed.pixels import detect_objects

WORLD = WorldSpec()
SIZES = SplitSizes(
    sft_images=400,
    pope_images=80,
    vqa_images=40,
    offline=40,
    online=40,
    dev_pope_images=30,
    dev_vqa_images=20,
)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Sample]]:
    return build_splits(0, WORLD, SIZES)


def answer_from_pixels(sample: Sample) -> str:
    """The true answer to the sample's question, read off the rendered image."""
    drawn = detect_objects(render_scene(sample.scene))
    qa = sample.qa
    if qa.task == "yes_no":
        colour, shape = qa.meta["object"].split()
        return "yes" if (colour, shape) in drawn else "no"
    if qa.task == "number":
        return str(sum(shape == qa.meta["shape"] for _, shape in drawn))
    shape = qa.meta["object"].split()[1]
    (colour,) = [c for c, s in drawn if s == shape]
    return colour


def test_every_split_is_built(splits: dict[str, list[Sample]]) -> None:
    assert set(splits) == set(SPLITS)
    assert len(splits["sft"]) == (2 * SFT_EXISTENCE_PAIRS + 1) * SIZES.sft_images
    assert all(len(splits[name]) == 2 * SIZES.pope_images for name in POPE_SPLITS)


@pytest.mark.parametrize("name", SPLITS)
def test_answers_match_the_pixels(splits: dict[str, list[Sample]], name: str) -> None:
    for sample in splits[name][:150]:
        truth = answer_from_pixels(sample)
        qa = sample.qa
        assert is_correct(qa.task, truth, qa.answer, qa.choices or None), (
            sample.id,
            qa.question,
            qa.answer,
            truth,
        )


def test_dev_splits_are_built_the_same_way_on_images_of_their_own(splits: dict[str, list[Sample]]) -> None:
    assert DEV_SPLITS == ("dev_pope_random", "dev_pope_popular", "dev_pope_adversarial", "dev_vqa")
    test_images = {s.image_id for name in (*POPE_SPLITS, "vqa") for s in splits[name]}
    for name in DEV_SPLITS:
        images = {s.image_id for s in splits[name]}
        assert images and not images & test_images and all(i.startswith("dev-") for i in images)
    for name in POPE_SPLITS:
        dev = splits["dev_" + name]
        assert Counter(s.qa.answer for s in dev) == {"yes": 30, "no": 30}
        probes = {s.qa.meta.get("probe") for s in dev} - {"positive"}
        assert probes == {s.qa.meta.get("probe") for s in splits[name]} - {"positive"}
    assert len(splits["dev_vqa"]) == 20 and {s.qa.task for s in splits["dev_vqa"]} <= {
        "multiple_choice",
        "number",
    }


def test_pope_splits_share_images_and_positives_and_are_balanced(splits: dict[str, list[Sample]]) -> None:
    positives = {}
    for name in POPE_SPLITS:
        samples = splits[name]
        assert Counter(s.qa.answer for s in samples) == {"yes": SIZES.pope_images, "no": SIZES.pope_images}
        positives[name] = [(s.image_id, s.scene, s.qa.question) for s in samples if s.qa.answer == "yes"]
    assert positives["pope_random"] == positives["pope_popular"] == positives["pope_adversarial"]


def test_adversarial_negatives_are_absent_partners_of_a_visible_anchor(
    splits: dict[str, list[Sample]],
) -> None:
    partner_of = dict(WORLD.pairs)
    for sample in splits["pope_adversarial"]:
        if sample.qa.answer != "no":
            continue
        drawn = set(detect_objects(render_scene(sample.scene)))
        asked = tuple(sample.qa.meta["object"].split())
        assert asked not in drawn
        assert any(
            (p.colour, p.shape) == asked for a, p in partner_of.items() if (a.colour, a.shape) in drawn
        )


def test_random_negatives_avoid_partners_of_present_anchors(splits: dict[str, list[Sample]]) -> None:
    for sample in splits["pope_random"]:
        if sample.qa.answer == "no":
            present_partners = {WORLD.partner_of(k).name for k in sample.scene.kinds() if k in WORLD.anchors}
            assert sample.qa.meta["object"] not in present_partners


@pytest.mark.parametrize("pool", ["offline", "online"])
def test_pools_ask_about_absent_partners_and_other_absent_kinds(pool: str) -> None:
    """About half of a pool's negatives on an anchor-without-partner scene ask about the partner
    (POOL_PARTNER_NEGATIVES), the rest about any absent kind."""
    samples = build_splits(0, WORLD, replace(SIZES, offline=600, online=600))[pool]
    partner_asked, other_asked = 0, 0
    for sample in samples:
        if sample.qa.task != "yes_no" or sample.qa.answer != "no":
            continue
        absent_partners = {WORLD.partner_of(k).name for k in sample.scene.kinds() if k in WORLD.anchors}
        absent_partners -= {k.name for k in sample.scene.kinds()}
        if absent_partners:
            asked_partner = sample.qa.meta["object"] in absent_partners
            partner_asked += asked_partner
            other_asked += not asked_partner
    assert partner_asked + other_asked > 20
    assert 0.3 < partner_asked / (partner_asked + other_asked) < 0.75


def test_popular_negatives_are_frequent_training_objects(splits: dict[str, list[Sample]]) -> None:
    frequency = kind_frequency(splits["sft"])
    top = {k.name for k, _ in frequency.most_common(8)}
    negatives = [s.qa.meta["object"] for s in splits["pope_popular"] if s.qa.answer == "no"]
    assert sum(n in top for n in negatives) / len(negatives) > 0.9


def test_training_data_carries_the_co_occurrence_prior(splits: dict[str, list[Sample]]) -> None:
    scenes = {s.image_id: s.scene for s in splits["sft"]}.values()
    with_anchor = [sc for sc in scenes if any(k in WORLD.anchors for k in sc.kinds())]
    with_partner = [
        sc
        for sc in with_anchor
        if any(WORLD.partner_of(k) in sc.kinds() for k in sc.kinds() if k in WORLD.anchors)
    ]
    assert len(with_partner) / len(with_anchor) == pytest.approx(WORLD.p_partner_given_anchor, abs=0.05)
    partner_questions = [s for s in splits["sft"] if s.qa.task == "yes_no" and s.qa.meta["object"] in
                         {p.name for p in WORLD.partners}]  # fmt: skip
    yes_share = sum(s.qa.answer == "yes" for s in partner_questions) / len(partner_questions)
    assert yes_share > 0.85  # partners are asked about far more often when present


def test_splits_are_deterministic_and_independent(splits: dict[str, list[Sample]]) -> None:
    again = build_splits(0, WORLD, SIZES)
    assert [s.qa for s in again["sft"]] == [s.qa for s in splits["sft"]]
    resized = build_splits(0, WORLD, replace(SIZES, vqa_images=10, dev_pope_images=5))
    assert [s.qa for s in resized["offline"]] == [s.qa for s in splits["offline"]]
    assert [s.qa for s in resized["pope_adversarial"]] == [s.qa for s in splits["pope_adversarial"]]
    other_seed = build_splits(1, WORLD, SIZES)
    assert [s.qa for s in other_seed["sft"]] != [s.qa for s in splits["sft"]]


def test_written_split_parses_as_a_manifest(splits: dict[str, list[Sample]], tmp_path: Path) -> None:
    manifest = write_split(tmp_path / "vqa", splits["vqa"])
    samples = read_manifest(manifest)
    assert [s.id for s in samples] == [s.id for s in splits["vqa"]]
    assert all((manifest.parent / s.image).is_file() for s in samples)
    assert all(s.meta["objects"] for s in samples)
    mc = [s for s in samples if s.task == "multiple_choice"]
    assert mc and all(len(s.choices) == 4 for s in mc)
