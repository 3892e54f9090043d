"""Read objects back from rendered pixels, independently of the generator's metadata.

Foreground = pixels far from the background colour; objects = 4-connected components; colour =
palette entry whose direction from the background best matches the component's (so faint objects,
blended toward the background, still read as their colour); shape = from fill ratio, aspect and
where the shape is widest.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from mbpo_core.testbed.scenes import COLOURS

MIN_PIXELS = 12


def background_colour(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """(K, 2) pixel coordinates of each 4-connected component of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    height, width = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        queue, pixels = deque([(y, x)]), []
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            pixels.append((cy, cx))
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(np.array(pixels))
    return found


def classify_colour(mean_offset: np.ndarray, background: np.ndarray) -> str:
    def cosine(name: str) -> float:
        direction = np.array(COLOURS[name], dtype=np.float32) - background
        return float(
            direction @ mean_offset / (np.linalg.norm(direction) * np.linalg.norm(mean_offset) + 1e-9)
        )

    return max(COLOURS, key=cosine)


def classify_shape(pixels: np.ndarray) -> str:
    ys, xs = pixels[:, 0], pixels[:, 1]
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(pixels) / (height * width)
    aspect = width / height
    if fill > 0.88:
        return "square"
    if fill > 0.68:
        return "circle"
    if aspect < 0.85:
        return "diamond"
    # A triangle is widest at its base; a star at its arms, about a third of the way down.
    rows = np.bincount(ys - ys.min())
    return "triangle" if np.argmax(rows) / height > 0.6 else "star"


def detect_objects(image: np.ndarray, threshold: float = 40.0) -> list[tuple[str, str]]:
    """(colour, shape) of every object drawn in an RGB uint8 image."""
    background = background_colour(image)
    offset = image.astype(np.float32) - background
    mask = np.linalg.norm(offset, axis=-1) > threshold
    objects = []
    for pixels in components(mask):
        if len(pixels) < MIN_PIXELS:
            continue
        mean_offset = offset[pixels[:, 0], pixels[:, 1]].mean(axis=0)
        objects.append((classify_colour(mean_offset, background), classify_shape(pixels)))
    return objects
