"""Procedural scenes of coloured shapes: what the testbed's images show, and how they are drawn.

A scene is data (`Scene`: background + non-overlapping objects); `render_scene` turns it into an
RGB uint8 array. Everything random takes a `numpy.random.Generator`, so a seed fixes every pixel.
Object kinds are (colour, shape) pairs; `ObjectKind.name` ("blue square") is how questions say it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well separated hues, so an object's colour is unambiguous even when drawn faint.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 75, 215),
    "green": (30, 160, 55),
    "yellow": (225, 195, 20),
    "purple": (140, 50, 185),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")

# Light, low-saturation backgrounds that no palette colour is close to.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (236, 236, 236),
    (244, 240, 228),
    (226, 232, 238),
    (238, 238, 226),
)


@dataclass(frozen=True, order=True)
class ObjectKind:
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


ALL_KINDS: tuple[ObjectKind, ...] = tuple(ObjectKind(c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True)
class SceneObject:
    kind: ObjectKind
    cx: float
    cy: float
    radius: float  # the shape fits in the circle of this radius around (cx, cy)
    opacity: float  # 1 = full colour; lower blends toward the background (a faint object)


@dataclass(frozen=True)
class Scene:
    size: int
    background: tuple[int, int, int]
    texture_seed: int | None  # None = plain background; otherwise seed of a light noise texture
    objects: tuple[SceneObject, ...]

    def kinds(self) -> set[ObjectKind]:
        return {o.kind for o in self.objects}

    def count(self, *, shape: str | None = None, colour: str | None = None) -> int:
        return sum(
            (shape is None or o.kind.shape == shape) and (colour is None or o.kind.colour == colour)
            for o in self.objects
        )


@dataclass(frozen=True)
class Placement:
    """How big, how strong and how far apart objects are drawn (pixels at the scene size)."""

    min_radius: float = 10.0
    max_radius: float = 16.0
    margin: float = 3.0  # minimum gap between two objects' bounding circles
    texture_probability: float = 0.5


def place_objects(
    rng: np.random.Generator,
    size: int,
    kinds: list[ObjectKind],
    styles: list[tuple[float, float]],
    placement: Placement,
    max_tries: int = 200,
) -> tuple[SceneObject, ...] | None:
    """Non-overlapping objects fully inside the canvas; `styles[i]` = (radius, opacity) of kinds[i].

    Rejection sampling, largest first (they are hardest to fit); None when a layout cannot be found."""
    order = sorted(range(len(kinds)), key=lambda i: -styles[i][0])
    placed: dict[int, SceneObject] = {}
    for i in order:
        radius, opacity = styles[i]
        for _ in range(max_tries):
            cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
            if all(
                math.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + placement.margin
                for o in placed.values()
            ):
                placed[i] = SceneObject(kinds[i], float(cx), float(cy), float(radius), float(opacity))
                break
        else:
            return None
    return tuple(placed[i] for i in range(len(kinds)))


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def object_mask(obj: SceneObject, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the pixels the object covers."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if obj.kind.shape == "circle":
        draw.ellipse(
            (obj.cx - obj.radius, obj.cy - obj.radius, obj.cx + obj.radius, obj.cy + obj.radius), fill=255
        )
    else:
        draw.polygon(_shape_polygon(obj.kind.shape, obj.cx, obj.cy, obj.radius), fill=255)
    return np.asarray(mask) > 127


def render_background(scene: Scene) -> np.ndarray:
    """(size, size, 3) float32 background, plain or with a light noise texture."""
    base = np.broadcast_to(np.array(scene.background, dtype=np.float32), (scene.size, scene.size, 3)).copy()
    if scene.texture_seed is not None:
        noise = np.random.default_rng(scene.texture_seed).normal(0.0, 5.0, size=(scene.size, scene.size, 1))
        base += noise.astype(np.float32)
    return base


def render_scene(scene: Scene) -> np.ndarray:
    """The scene as an RGB uint8 array (size, size, 3)."""
    image = render_background(scene)
    for obj in scene.objects:
        mask = object_mask(obj, scene.size)
        colour = np.array(COLOURS[obj.kind.colour], dtype=np.float32)
        image[mask] = obj.opacity * colour + (1.0 - obj.opacity) * image[mask]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
