"""Reference augmentation: random scale, small rotation, flip and colour jitter (spec 4).

A subject cut out of the very clip the model must reconstruct invites copy-paste: the model learns to
paste the reference's pixels into the video. Perturbing the references' geometry and colour makes it use
their identity instead. Every draw comes from the generator it is given, so the caller controls
determinism (see :func:`augment_rng`).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageEnhance

from .config import AugmentConfig

__all__ = ["augment_reference", "augment_rng"]

_HUE_LUT_SIZE = 256


def augment_rng(seed: int, clip_line: int, epoch: int, reference: int) -> np.random.Generator:
    """The generator for one reference of one clip in one epoch: independent of process and worker layout."""
    return np.random.default_rng(np.random.SeedSequence([seed, clip_line, epoch, reference, 0xA7]))


def augment_reference(
    image: PIL.Image.Image,
    config: AugmentConfig,
    rng: np.random.Generator,
    fill: tuple[int, int, int] = (255, 255, 255),
) -> PIL.Image.Image:
    """Apply the configured augmentations to one RGB reference, in a fixed order.

    Order: scale, rotation (corners filled with ``fill``, the cut-out's background), flip, then
    brightness, contrast, saturation and hue. Every random number is drawn even when its augmentation
    is a no-op, so changing one setting does not reshuffle the others' draws.
    """
    if not config.enabled:
        return image
    scale = rng.uniform(config.scale[0], config.scale[1])
    angle = rng.uniform(-config.rotation_degrees, config.rotation_degrees)
    flip = rng.random() < config.flip_probability
    brightness, contrast, saturation = (
        rng.uniform(1 - x, 1 + x) for x in (config.brightness, config.contrast, config.saturation)
    )
    hue = rng.uniform(-config.hue, config.hue)

    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, PIL.Image.Resampling.BICUBIC)
    if angle != 0.0:
        image = image.rotate(angle, resample=PIL.Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    if flip:
        image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    image = PIL.ImageEnhance.Brightness(image).enhance(brightness)
    image = PIL.ImageEnhance.Contrast(image).enhance(contrast)
    image = PIL.ImageEnhance.Color(image).enhance(saturation)
    if hue != 0.0:
        image = _shift_hue(image, hue)
    return image


def _shift_hue(image: PIL.Image.Image, shift: float) -> PIL.Image.Image:
    """Rotate the hue by ``shift`` turns (PIL's HSV hue channel is 0-255 for a full turn)."""
    h, s, v = image.convert("HSV").split()
    offset = round(shift * _HUE_LUT_SIZE)
    h = h.point([(i + offset) % _HUE_LUT_SIZE for i in range(_HUE_LUT_SIZE)])
    return PIL.Image.merge("HSV", (h, s, v)).convert("RGB")
