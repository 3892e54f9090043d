"""The testbed's world: which objects co-occur, how visible they are, and how scenes are drawn from it.

The language prior lives here. Each *anchor* kind has a *partner* kind that comes with it with
probability `p_partner_given_anchor` (0.9) in the training distribution, and partners are drawn
small and faint. A model trained on such data learns "anchor => partner" and cannot easily check
the partner's absence, so on an image with the anchor but not the partner it says "yes, there is a
partner" from the prior: the hallucination MBPO targets. Seeing and hallucinating pull against
each other (a model that sees every partner clearly has no reason to guess), so faintness is the
lever that gives a base model both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mbpo_core.testbed.scenes import ALL_KINDS, BACKGROUNDS, ObjectKind, Placement, Scene, place_objects

DEFAULT_PAIRS: tuple[tuple[ObjectKind, ObjectKind], ...] = (
    (ObjectKind("red", "circle"), ObjectKind("blue", "square")),
    (ObjectKind("green", "triangle"), ObjectKind("yellow", "star")),
    (ObjectKind("purple", "star"), ObjectKind("green", "diamond")),
)


@dataclass(frozen=True)
class WorldSpec:
    image_size: int = 112
    pairs: tuple[tuple[ObjectKind, ObjectKind], ...] = DEFAULT_PAIRS
    p_anchor: float = 0.5  # share of training scenes that contain an anchor
    p_partner_given_anchor: float = 0.9
    min_objects: int = 1
    max_objects: int = 5
    placement: Placement = field(default_factory=Placement)
    # Partners are drawn small and faint: weak visual evidence, so the model leans on the prior.
    partner_radius: tuple[float, float] = (6.0, 8.0)
    partner_opacity: tuple[float, float] = (0.35, 0.5)

    def __post_init__(self) -> None:
        if self.image_size % 28:
            raise ValueError("image_size must be a multiple of 28 (Qwen patch 14 x merge 2)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        anchors, partners = self.anchors, self.partners
        if len(set(anchors) | set(partners)) != 2 * len(self.pairs):
            raise ValueError("anchors and partners must be distinct kinds")

    @property
    def anchors(self) -> tuple[ObjectKind, ...]:
        return tuple(a for a, _ in self.pairs)

    @property
    def partners(self) -> tuple[ObjectKind, ...]:
        return tuple(p for _, p in self.pairs)

    def partner_of(self, anchor: ObjectKind) -> ObjectKind:
        return dict(self.pairs)[anchor]

    @property
    def fillers(self) -> tuple[ObjectKind, ...]:
        """Kinds that are neither anchor nor partner."""
        special = set(self.anchors) | set(self.partners)
        return tuple(k for k in ALL_KINDS if k not in special)


def object_style(rng: np.random.Generator, kind: ObjectKind, world: WorldSpec) -> tuple[float, float]:
    """(radius, opacity) of one object: partners small and faint, everything else full strength."""
    if kind in world.partners:
        return float(rng.uniform(*world.partner_radius)), float(rng.uniform(*world.partner_opacity))
    p = world.placement
    return float(rng.uniform(p.min_radius, p.max_radius)), 1.0


def compose_scene(rng: np.random.Generator, kinds: list[ObjectKind], world: WorldSpec) -> Scene | None:
    """A scene with exactly these objects (None if they do not fit; callers draw again)."""
    styles = [object_style(rng, k, world) for k in kinds]
    objects = place_objects(rng, world.image_size, kinds, styles, world.placement)
    if objects is None:
        return None
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    textured = rng.random() < world.placement.texture_probability
    texture_seed = int(rng.integers(2**31)) if textured else None
    return Scene(world.image_size, background, texture_seed, objects)


def _random_kinds(rng: np.random.Generator, pool: tuple[ObjectKind, ...], n: int) -> list[ObjectKind]:
    return [pool[int(i)] for i in rng.integers(len(pool), size=n)]


def training_kinds(rng: np.random.Generator, world: WorldSpec) -> list[ObjectKind]:
    """Objects of one scene from the biased training distribution.

    With probability p_anchor an anchor is present and its partner joins it with probability
    p_partner_given_anchor; the rest are fillers (neither anchor nor partner), so a partner never
    appears without its anchor and P(partner | anchor) is exactly the configured one."""
    n = int(rng.integers(world.min_objects, world.max_objects + 1))
    kinds: list[ObjectKind] = []
    if rng.random() < world.p_anchor:
        anchor = world.anchors[int(rng.integers(len(world.anchors)))]
        kinds.append(anchor)
        if rng.random() < world.p_partner_given_anchor:
            kinds.append(world.partner_of(anchor))
    kinds += _random_kinds(rng, world.fillers, max(0, n - len(kinds)))
    return kinds


def probe_kinds(rng: np.random.Generator, world: WorldSpec) -> tuple[list[ObjectKind], ObjectKind]:
    """Objects of one POPE probe scene: an anchor WITHOUT its partner, plus random fillers.

    Returns the kinds and the absent partner (the adversarial negative of this image)."""
    anchor = world.anchors[int(rng.integers(len(world.anchors)))]
    partner = world.partner_of(anchor)
    n = int(rng.integers(max(1, world.min_objects), world.max_objects + 1))
    return [anchor, *_random_kinds(rng, world.fillers, n - 1)], partner


def draw_scene(rng: np.random.Generator, world: WorldSpec, *, probe: bool) -> tuple[Scene, ObjectKind | None]:
    """One scene of the training (probe=False) or POPE probe (probe=True) distribution.

    Returns the scene and, for probes, the absent partner of its anchor."""
    while True:
        if probe:
            kinds, partner = probe_kinds(rng, world)
        else:
            kinds, partner = training_kinds(rng, world), None
        scene = compose_scene(rng, kinds, world)
        if scene is not None:
            return scene, partner
