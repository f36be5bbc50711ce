"""Procedural subjects: small sprites that a colour word cannot identify.

A sprite is a shape (7 kinds) in a body colour, overlaid with a pattern (6 kinds) in a second colour, at a
size of 14-20 pixels. Colours are drawn from the continuous HSV cylinder, so two subjects of "the same
colour word" still differ, and shape x pattern x colours x size gives far more subjects than a prompt
can name: to draw the right one, a model has to look at its reference image.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw

__all__ = ["PATTERNS", "SHAPES", "Sprite", "draw_sprite", "random_sprite", "reference_image", "sprite_on"]

SHAPES = ("disc", "square", "triangle", "diamond", "hexagon", "cross", "star")
PATTERNS = ("solid", "hstripes", "vstripes", "dots", "checker", "ring")
SIZE_RANGE = (14, 20)  # sprite side in pixels, inclusive
_SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled, so edges are anti-aliased but masks stay crisp

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Sprite:
    """One subject's appearance; JSON-serialisable with :func:`dataclasses.asdict`."""

    shape: str
    pattern: str
    body: RGB
    accent: RGB
    size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sprite:
        return cls(
            shape=data["shape"],
            pattern=data["pattern"],
            body=tuple(data["body"]),
            accent=tuple(data["accent"]),
            size=int(data["size"]),
        )


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(255 * r), round(255 * g), round(255 * b))


def random_sprite(rng: np.random.Generator) -> Sprite:
    """A random sprite; the accent colour is far from the body colour in hue or brightness."""
    hue = rng.uniform()
    body = _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    if rng.uniform() < 0.5:  # complementary-ish hue
        accent = _hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
    else:  # same hue, light or dark
        accent = _hsv(hue, rng.uniform(0.0, 0.3), 1.0) if rng.uniform() < 0.5 else _hsv(hue, 0.8, 0.2)
    return Sprite(
        shape=str(rng.choice(SHAPES)),
        pattern=str(rng.choice(PATTERNS)),
        body=body,
        accent=accent,
        size=int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1)),
    )


def _shape_polygon(shape: str, n: float) -> list[tuple[float, float]] | None:
    """The outline of ``shape`` in an ``n`` x ``n`` box (``None`` for shapes drawn otherwise)."""
    c, r = n / 2, n / 2 - 0.5
    if shape == "triangle":
        return [(c, 0.5), (n - 0.5, n - 0.5), (0.5, n - 0.5)]
    if shape == "diamond":
        return [(c, 0.5), (n - 0.5, c), (c, n - 0.5), (0.5, c)]
    if shape == "hexagon":
        return [(c + r * math.cos(a), c + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((c + radius * math.cos(angle), c + radius * math.sin(angle)))
        return points
    return None


def _shape_mask(shape: str, size: int) -> np.ndarray:
    n = size * _SUPERSAMPLE
    canvas = PIL.Image.new("L", (n, n), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    if shape == "disc":
        draw.ellipse((0, 0, n - 1, n - 1), fill=255)
    elif shape == "square":
        draw.rectangle((n // 10, n // 10, n - 1 - n // 10, n - 1 - n // 10), fill=255)
    elif shape == "cross":
        t = n // 3
        draw.rectangle((t, 0, n - 1 - t, n - 1), fill=255)
        draw.rectangle((0, t, n - 1, n - 1 - t), fill=255)
    else:
        polygon = _shape_polygon(shape, n)
        if polygon is None:
            raise ValueError(f"unknown sprite shape {shape!r}; expected one of {SHAPES}")
        draw.polygon(polygon, fill=255)
    small = canvas.resize((size, size), PIL.Image.Resampling.BOX)
    return np.asarray(small) >= 128


def _pattern_mask(pattern: str, size: int) -> np.ndarray:
    """Where the accent colour goes, in the sprite's box."""
    y, x = np.mgrid[0:size, 0:size]
    period = max(4, size // 4)
    if pattern == "solid":
        return np.zeros((size, size), dtype=bool)
    if pattern == "hstripes":
        return (y % period) < period // 2
    if pattern == "vstripes":
        return (x % period) < period // 2
    if pattern == "dots":
        return ((y % period) - period / 2 + 0.5) ** 2 + ((x % period) - period / 2 + 0.5) ** 2 <= 1.6
    if pattern == "checker":
        return ((y // period) + (x // period)) % 2 == 0
    if pattern == "ring":
        d = np.hypot(y - (size - 1) / 2, x - (size - 1) / 2)
        return (d > size * 0.18) & (d < size * 0.32)
    raise ValueError(f"unknown sprite pattern {pattern!r}; expected one of {PATTERNS}")


def draw_sprite(sprite: Sprite) -> tuple[np.ndarray, np.ndarray]:
    """The sprite's pixels and mask: ``(size, size, 3)`` uint8 RGB and ``(size, size)`` bool.

    Pixels outside the mask are 0; composite with the mask.
    """
    mask = _shape_mask(sprite.shape, sprite.size)
    accent = _pattern_mask(sprite.pattern, sprite.size)
    rgb = np.where(accent[..., None], np.array(sprite.accent, np.uint8), np.array(sprite.body, np.uint8))
    rgb = np.where(mask[..., None], rgb, 0).astype(np.uint8)
    return rgb, mask


def sprite_on(sprite: Sprite, background: RGB) -> tuple[np.ndarray, np.ndarray]:
    """The sprite on a plain ``background``: ``(size, size, 3)`` uint8 pixels and the ``(size, size)`` mask."""
    rgb, mask = draw_sprite(sprite)
    return np.where(mask[..., None], rgb, np.array(background, np.uint8)).astype(np.uint8), mask


def reference_image(
    sprite: Sprite, background: RGB = (255, 255, 255)
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The subject as a user would crop it: the sprite on a plain ``background``, and its mask (L, 0/255)."""
    pixels, mask = sprite_on(sprite, background)
    return PIL.Image.fromarray(pixels, mode="RGB"), PIL.Image.fromarray(
        (mask * 255).astype(np.uint8), mode="L"
    )
