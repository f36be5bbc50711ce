"""Reference augmentation (spec 4): the released one by default, or a mild one.

A subject cut out of the very clip the model must reconstruct invites copy-paste: the model learns to
paste the reference's pixels into the video. Perturbing the references' geometry makes it use their
identity instead. Every draw comes from the generator it is given, so the caller controls determinism
(see :func:`augment_rng`): online encoding and the feature cache get the same draws, and a resumed run
replays them.

- ``released`` (:func:`augment_released`, the default): what the released feature extraction does to each
  subject cut-out, RGBA with its mask as alpha: rotate by an integer angle drawn uniformly from
  [-45, 45) (bicubic, expanded), scale by exp(U(-1.5, 1.5)) capped so the rotated image fits the target
  size, LANCZOS resize, then centre crop / zero pad to exactly the target size and keep the RGB. No flip,
  no colour change. The result already has the target size, so the letterboxing that follows (as at
  inference) leaves it as it is.

  PIL premultiplies alpha in ``rotate`` and ``resize`` of an RGBA image (``RGBA -> RGBa -> RGBA``), so
  every fully transparent pixel comes back with RGB 0: the cut-out's white background, the corners that
  the rotation adds and the padding all end up black. The subject's edge pixels, partly transparent,
  keep the subject's colour (un-premultiplied), not a blend with the background. Only a draw that
  neither rotates (angle 0) nor resizes (scale giving the same size) keeps the background colour.
- ``mild`` (:func:`augment_mild`): a small random scale, rotation, flip and colour jitter on the RGB
  cut-out (the toy uses it: its sprites' colours and patterns are their identity).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import PIL.ImageEnhance

from .config import AugmentConfig, MildAugmentConfig

__all__ = ["augment_mild", "augment_reference", "augment_released", "augment_rng", "fit_to_size"]

_HUE_LUT_SIZE = 256

#: The released augmentation's ranges: integer angles in [-45, 45) degrees, scale exp(U(-1.5, 1.5)).
RELEASED_MAX_ROTATION = 45
RELEASED_MAX_LOG_SCALE = 1.5


def augment_rng(seed: int, clip_line: int, epoch: int, reference: int) -> np.random.Generator:
    """The generator for one reference of one clip in one epoch: independent of process and worker layout."""
    return np.random.default_rng(np.random.SeedSequence([seed, clip_line, epoch, reference, 0xA7]))


def augment_reference(
    subject: PIL.Image.Image,
    config: AugmentConfig,
    rng: np.random.Generator,
    height: int,
    width: int,
    fill: tuple[int, int, int] = (255, 255, 255),
) -> PIL.Image.Image:
    """One RGBA subject cut-out (mask as alpha) -> the RGB reference, augmented as ``config`` says.

    ``height`` x ``width`` is the target size (the released augmentation's output size); ``fill`` is the
    cut-out's background colour (the mild rotation's corners).
    """
    if not config.enabled:
        return subject.convert("RGB")
    if config.mode == "released":
        return augment_released(subject, height, width, rng)
    return augment_mild(subject.convert("RGB"), config.mild, rng, fill)


def augment_released(
    subject: PIL.Image.Image, height: int, width: int, rng: np.random.Generator
) -> PIL.Image.Image:
    """The released augmentation of an RGBA cut-out: an RGB image of exactly ``width`` x ``height``.

    Draws, in this order: the angle (an integer, uniform in [-45, 45)), then the log-scale (uniform in
    [-1.5, 1.5)).
    """
    angle = int(rng.integers(-RELEASED_MAX_ROTATION, RELEASED_MAX_ROTATION))
    log_scale = rng.uniform(-RELEASED_MAX_LOG_SCALE, RELEASED_MAX_LOG_SCALE)

    rotated = subject.convert("RGBA").rotate(angle, resample=PIL.Image.Resampling.BICUBIC, expand=True)
    w, h = rotated.size
    scale = min(math.exp(log_scale), height / h, width / w)  # at most the size that fits the target
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    resized = rotated.resize(size, PIL.Image.Resampling.LANCZOS)
    pixels = fit_to_size(np.asarray(resized), height, width)  # (height, width, 4)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels[..., :3]), mode="RGB")


def fit_to_size(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(h, w, C)`` -> ``(height, width, C)``: centre crop where larger, centre zero pad where smaller.

    The crop keeps rows from ``(h - height) // 2``; the pad puts ``(height - h) // 2`` rows above (the same
    for columns).
    """
    h, w = pixels.shape[:2]
    top, left = max(0, (h - height) // 2), max(0, (w - width) // 2)
    pixels = pixels[top : top + min(h, height), left : left + min(w, width)]
    h, w = pixels.shape[:2]
    pad_top, pad_left = (height - h) // 2, (width - w) // 2
    padding = [(pad_top, height - h - pad_top), (pad_left, width - w - pad_left)]
    return np.pad(pixels, padding + [(0, 0)] * (pixels.ndim - 2), constant_values=0)


def augment_mild(
    image: PIL.Image.Image,
    config: MildAugmentConfig,
    rng: np.random.Generator,
    fill: tuple[int, int, int] = (255, 255, 255),
) -> PIL.Image.Image:
    """The mild augmentation of one RGB reference, in a fixed order.

    Order: scale, rotation (corners filled with ``fill``, the cut-out's background), flip, then
    brightness, contrast, saturation and hue. Every random number is drawn even when its augmentation
    is a no-op, so changing one setting does not reshuffle the others' draws.
    """
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
