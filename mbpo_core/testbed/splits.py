"""The testbed's splits: which scenes and which questions each one holds.

- `sft`: the biased training data (co-occurrence prior in the scenes AND in which questions are
  asked: partners are asked about mostly when present).
- `pope_random` / `pope_popular` / `pope_adversarial`: POPE probing on the SAME probe images (an
  anchor without its partner) with the SAME positive questions; only the negative differs: a random
  absent object, one of the most frequent training objects that is absent, or the absent partner.
  Sharing images and positives means a gap between splits can only come from the negatives.
- `vqa`: colour (multiple choice) and count (number) questions.
- `offline` (negative mining) and `online` (GRPO prompts): close-ended pools with ground truth.
- `dev_pope_random` / `dev_pope_popular` / `dev_pope_adversarial` / `dev_vqa`: the same
  constructions on images of their own, for choosing recipes; the POPE and VQA splits above are the
  test splits, touched once for a final table.

Each split draws from its own random stream (seed, split index), so resizing one split never
changes another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mbpo_core.testbed.questions import QA, colour_qa, count_qa, existence_qa
from mbpo_core.testbed.scenes import ALL_KINDS, ObjectKind, Scene
from mbpo_core.testbed.world import WorldSpec, draw_scene

POPE_SPLITS = ("pope_random", "pope_popular", "pope_adversarial")
DEV_PREFIX = "dev_"
DEV_SPLITS = tuple(DEV_PREFIX + name for name in (*POPE_SPLITS, "vqa"))
SPLITS = ("sft", *POPE_SPLITS, "vqa", "offline", "online", *DEV_SPLITS)
# Existence pairs (one yes, one no) per sft image, plus one colour or count question. Several
# questions per image are cheap to train on: the vision tower runs once per image.
SFT_EXISTENCE_PAIRS = 4
# New streams go at the end: a stream's index seeds it, so the others never change.
_STREAM = {
    name: i for i, name in enumerate(("sft", "pope", "vqa", "offline", "online", "dev_pope", "dev_vqa"))
}


@dataclass(frozen=True)
class Sample:
    id: str
    image_id: str
    scene: Scene
    qa: QA


@dataclass(frozen=True)
class SplitSizes:
    """Images per split (sft: 2 * SFT_EXISTENCE_PAIRS + 1 questions an image, POPE 2, the others 1)."""

    sft_images: int = 8_000
    pope_images: int = 500
    vqa_images: int = 500
    offline: int = 2_000
    online: int = 2_000
    dev_pope_images: int = 250
    dev_vqa_images: int = 250

    @classmethod
    def quick(cls) -> SplitSizes:
        return cls(
            sft_images=2_000,
            pope_images=150,
            vqa_images=100,
            offline=200,
            online=200,
            dev_pope_images=100,
            dev_vqa_images=50,
        )


def split_rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[stream]])


def _pick(
    rng: np.random.Generator, kinds: list[ObjectKind], weights: list[float] | None = None
) -> ObjectKind:
    p = None if weights is None else np.asarray(weights) / np.sum(weights)
    return kinds[int(rng.choice(len(kinds), p=p))]


def sft_existence(rng: np.random.Generator, scene: Scene, world: WorldSpec) -> tuple[QA, QA]:
    """A positive and a negative existence question, both biased toward the prior: a present
    partner is asked about half the time; an absent partner is 10x less likely than other kinds."""
    present = sorted(scene.kinds())
    partners_present = [k for k in present if k in world.partners]
    if partners_present and rng.random() < 0.5:
        positive = _pick(rng, partners_present)
    else:
        positive = _pick(rng, present)
    absent = [k for k in ALL_KINDS if k not in scene.kinds()]
    negative = _pick(rng, absent, [0.1 if k in world.partners else 1.0 for k in absent])
    return existence_qa(positive, scene), existence_qa(negative, scene)


def colour_or_count(rng: np.random.Generator, scene: Scene) -> QA:
    qa = colour_qa(rng, scene) if rng.random() < 0.5 else None
    return qa or count_qa(rng, scene)


def build_sft(seed: int, world: WorldSpec, n_images: int) -> list[Sample]:
    rng = split_rng(seed, "sft")
    samples = []
    for i in range(n_images):
        scene, _ = draw_scene(rng, world, probe=False)
        image_id = f"sft-{i:06d}"
        qas = [qa for _ in range(SFT_EXISTENCE_PAIRS) for qa in sft_existence(rng, scene, world)]
        qas.append(colour_or_count(rng, scene))
        samples += [Sample(f"{image_id}-q{j}", image_id, scene, qa) for j, qa in enumerate(qas)]
    return samples


def kind_frequency(samples: list[Sample]) -> Counter[ObjectKind]:
    """In how many distinct images each kind appears (POPE's 'popular' ranking)."""
    seen: dict[str, Scene] = {s.image_id: s.scene for s in samples}
    return Counter(k for scene in seen.values() for k in scene.kinds())


def _pope_negatives(
    rng: np.random.Generator, scene: Scene, partner: ObjectKind, world: WorldSpec, ranking: list[ObjectKind]
) -> dict[str, ObjectKind]:
    absent = [k for k in ALL_KINDS if k not in scene.kinds()]
    # The random split must not ask about a present anchor's partner: that is the adversarial case.
    present_partners = {world.partner_of(k) for k in scene.kinds() if k in world.anchors}
    random_pool = [k for k in absent if k not in present_partners]
    popular_pool = [k for k in ranking if k in absent][:3]
    return {
        "pope_random": _pick(rng, random_pool),
        "pope_popular": _pick(rng, popular_pool),
        "pope_adversarial": partner,
    }


def build_pope(
    seed: int, world: WorldSpec, n_images: int, frequency: Counter[ObjectKind], stream: str = "pope"
) -> dict[str, list[Sample]]:
    """The three POPE splits: the same images and positives; balanced 50/50 yes/no. Keys and image
    ids carry the `dev_` prefix for the dev stream."""
    rng = split_rng(seed, stream)
    prefix = stream.removesuffix("pope")
    ranking = [k for k, _ in frequency.most_common()] + [k for k in ALL_KINDS if k not in frequency]
    splits: dict[str, list[Sample]] = {prefix + name: [] for name in POPE_SPLITS}
    for i in range(n_images):
        scene, partner = draw_scene(rng, world, probe=True)
        assert partner is not None
        image_id = f"{prefix.replace('_', '-')}pope-{i:06d}"
        positive = existence_qa(_pick(rng, sorted(scene.kinds())), scene, probe="positive")
        negatives = _pope_negatives(rng, scene, partner, world, ranking)
        for name in POPE_SPLITS:
            negative = existence_qa(negatives[name], scene, probe=name.removeprefix("pope_"))
            splits[prefix + name] += [
                Sample(f"{image_id}-pos", image_id, scene, positive),
                Sample(f"{image_id}-neg", image_id, scene, negative),
            ]
    return splits


def _one_question_split(
    seed: int, stream: str, world: WorldSpec, n: int, ask: Callable[[np.random.Generator, Scene], QA]
) -> list[Sample]:
    rng = split_rng(seed, stream)
    samples = []
    for i in range(n):
        # Pools mix training scenes with probe scenes so mining meets anchor-without-partner images.
        scene, _ = draw_scene(rng, world, probe=not stream.endswith("vqa") and rng.random() < 0.5)
        image_id = f"{stream.replace('_', '-')}-{i:06d}"
        samples.append(Sample(f"{image_id}-q0", image_id, scene, ask(rng, scene)))
    return samples


# Share of the pools' negative existence questions that ask about the absent partner of a present
# anchor, when the scene has one. Uniformly drawn negatives almost never do (1 absent kind in ~22),
# so a pool without them holds nearly none of the questions the co-occurrence prior gets wrong.
POOL_PARTNER_NEGATIVES = 0.5


def pool_question(world: WorldSpec) -> Callable[[np.random.Generator, Scene], QA]:
    """Close-ended pool question: existence (60%, half positive), colour or count. Half of the
    negatives on a scene with an anchor but not its partner ask about that partner, the absent
    co-occurring object hallucination data is built around; the rest ask about any absent kind."""

    def ask(rng: np.random.Generator, scene: Scene) -> QA:
        if rng.random() >= 0.6:
            return colour_or_count(rng, scene)
        if rng.random() < 0.5:
            return existence_qa(_pick(rng, sorted(scene.kinds())), scene)
        present = scene.kinds()
        absent = [k for k in ALL_KINDS if k not in present]
        partners = sorted({world.partner_of(k) for k in present if k in world.anchors} - present)
        if partners and rng.random() < POOL_PARTNER_NEGATIVES:
            return existence_qa(_pick(rng, partners), scene)
        return existence_qa(_pick(rng, absent), scene)

    return ask


def build_splits(seed: int, world: WorldSpec, sizes: SplitSizes) -> dict[str, list[Sample]]:
    """Every split of the testbed, keyed by name (see SPLITS)."""
    sft = build_sft(seed, world, sizes.sft_images)
    splits = {"sft": sft, **build_pope(seed, world, sizes.pope_images, kind_frequency(sft))}
    splits["vqa"] = _one_question_split(seed, "vqa", world, sizes.vqa_images, colour_or_count)
    splits["offline"] = _one_question_split(seed, "offline", world, sizes.offline, pool_question(world))
    splits["online"] = _one_question_split(seed, "online", world, sizes.online, pool_question(world))
    splits.update(build_pope(seed, world, sizes.dev_pope_images, kind_frequency(sft), stream="dev_pope"))
    splits["dev_vqa"] = _one_question_split(seed, "dev_vqa", world, sizes.dev_vqa_images, colour_or_count)
    return splits
