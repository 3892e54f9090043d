"""Scenes: deterministic, valid (inside the canvas, no overlap), and what is drawn is what they say."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mbpo_core.testbed.scenes import ALL_KINDS, COLOURS, SHAPES, object_mask, render_scene
from mbpo_core.testbed.world import WorldSpec, draw_scene
from tests.mbpo_core.testbed.pixels import detect_objects

WORLD = WorldSpec()


def scenes(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    return [draw_scene(rng, WORLD, probe=i % 2 == 0)[0] for i in range(n)]


def test_world_has_at_least_five_shapes_and_colours() -> None:
    assert len(SHAPES) >= 5 and len(COLOURS) >= 5 and len(ALL_KINDS) == len(SHAPES) * len(COLOURS)


def test_same_seed_same_pixels_different_seed_different_pixels() -> None:
    a, b, c = scenes(7, 10), scenes(7, 10), scenes(8, 10)
    assert a == b
    assert all(np.array_equal(render_scene(x), render_scene(y)) for x, y in zip(a, b, strict=True))
    assert a != c


def test_objects_inside_canvas_and_never_overlapping() -> None:
    for scene in scenes(1, 80):
        assert WORLD.min_objects <= len(scene.objects) <= WORLD.max_objects
        masks = []
        for obj in scene.objects:
            assert obj.radius <= obj.cx <= scene.size - obj.radius
            assert obj.radius <= obj.cy <= scene.size - obj.radius
            mask = object_mask(obj, scene.size)
            assert mask.any()
            masks.append(mask)
        coverage = np.sum(masks, axis=0)
        assert coverage.max() <= 1


def test_rendered_pixels_show_exactly_the_scene_objects() -> None:
    for scene in scenes(2, 80):
        image = render_scene(scene)
        assert image.shape == (WORLD.image_size, WORLD.image_size, 3) and image.dtype == np.uint8
        drawn = Counter(detect_objects(image))
        assert drawn == Counter((o.kind.colour, o.kind.shape) for o in scene.objects)


def test_partners_are_drawn_small_and_faint() -> None:
    partners = set(WORLD.partners)
    for scene in scenes(3, 80):
        for obj in scene.objects:
            if obj.kind in partners:
                assert obj.radius <= WORLD.partner_radius[1] and obj.opacity <= WORLD.partner_opacity[1]
            else:
                assert obj.opacity == 1.0


def test_image_size_must_suit_qwen_patches() -> None:
    with pytest.raises(ValueError, match="multiple of 28"):
        WorldSpec(image_size=100)
