"""The released reference augmentation against hand-computed sizes and plain PIL calls (spec 4)."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest

from bindweave.conditioning.references import letterbox
from bindweave.training.augment import augment_reference, augment_released, augment_rng, fit_to_size
from bindweave.training.config import AugmentConfig

HEIGHT, WIDTH = 48, 64  # the target size
RED, BLUE = (200, 30, 40), (20, 40, 220)


class FixedDraws:
    """Stands in for the generator: returns a fixed angle and log-scale, and records what was asked."""

    def __init__(self, angle: int, log_scale: float):
        self.angle, self.log_scale = angle, log_scale
        self.asked: list[tuple] = []

    def integers(self, low: int, high: int) -> int:
        self.asked.append(("integers", low, high))
        return self.angle

    def uniform(self, low: float, high: float) -> float:
        self.asked.append(("uniform", low, high))
        return self.log_scale


def cut_out(width: int = 20, height: int = 10) -> PIL.Image.Image:
    """An RGBA cut-out: a red subject with a blue left end (flips show), white and transparent around it."""
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    alpha = np.zeros((height, width), dtype=np.uint8)
    rgb[2:8, 3:17], alpha[2:8, 3:17] = RED, 255
    rgb[2:8, 3:6] = BLUE
    return PIL.Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")


def on_canvas(pixels: np.ndarray, top: int, left: int) -> np.ndarray:
    """``pixels`` (h, w, 3) placed at (top, left) on a black (HEIGHT, WIDTH, 3) canvas."""
    canvas = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return canvas


def test_unit_draws_place_the_cut_out_unchanged_in_the_centre():
    """Angle 0 and scale 1: the cut-out's own pixels, centred, zero around; no flip, no colour change."""
    draws = FixedDraws(angle=0, log_scale=0.0)
    out = augment_released(cut_out(), HEIGHT, WIDTH, draws)
    assert draws.asked == [("integers", -45, 45), ("uniform", -1.5, 1.5)]  # the angle first, as released
    assert out.mode == "RGB" and out.size == (WIDTH, HEIGHT)
    # (48 - 10) // 2 = 19 rows above, (64 - 20) // 2 = 22 columns left. PIL's rotate by 0 and resize to the
    # same size are copies, so nothing is premultiplied: even the white background stays.
    expected = on_canvas(np.asarray(cut_out())[..., :3], top=19, left=22)
    assert np.array_equal(np.asarray(out), expected)


def test_the_scale_is_capped_so_the_subject_fits():
    """exp(1.5) = 4.48, capped by min(48 / 10, 64 / 20) = 3.2: a 64x32 LANCZOS resize, 8 rows above."""
    out = np.asarray(augment_released(cut_out(), HEIGHT, WIDTH, FixedDraws(angle=0, log_scale=1.5)))
    resized = np.asarray(cut_out().resize((64, 32), PIL.Image.Resampling.LANCZOS))  # plain PIL, RGBA
    assert np.array_equal(out, on_canvas(resized[..., :3], top=8, left=0))

    # PIL premultiplies alpha in an RGBA resize: every fully transparent pixel comes back black, so the
    # cut-out's white background is black in the reference; the opaque subject keeps its colours.
    transparent = resized[..., 3] == 0
    assert transparent.any() and (out[8:40][transparent] == 0).all()
    assert (out[8:40][resized[..., 3] == 255] != 0).any()
    left_half, right_half = out[8:40, :32], out[8:40, 32:]
    assert left_half[..., 2].sum() > right_half[..., 2].sum()  # the blue end stays on the left: no flip


@pytest.mark.parametrize(("angle", "log_scale"), [(30, -1.0), (-45, 0.7), (44, 1.49)])
def test_rotation_and_scale_match_plain_pil_calls(angle, log_scale):
    subject = cut_out()
    rotated = subject.rotate(angle, resample=PIL.Image.Resampling.BICUBIC, expand=True)  # fill: transparent
    w, h = rotated.size
    scale = min(math.exp(log_scale), HEIGHT / h, WIDTH / w)
    new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
    resized = np.asarray(rotated.resize((new_w, new_h), PIL.Image.Resampling.LANCZOS))
    expected = on_canvas(resized[..., :3], top=(HEIGHT - new_h) // 2, left=(WIDTH - new_w) // 2)

    out = augment_released(subject, HEIGHT, WIDTH, FixedDraws(angle, log_scale))
    assert np.array_equal(np.asarray(out), expected)
    assert letterbox(out, HEIGHT, WIDTH).box == (0, 0, WIDTH, HEIGHT)  # letterboxing leaves it as it is


def test_a_tiny_result_keeps_at_least_one_pixel():
    out = augment_released(cut_out(2, 2), HEIGHT, WIDTH, FixedDraws(angle=0, log_scale=-1.5))
    assert out.size == (WIDTH, HEIGHT)  # 2 * exp(-1.5) = 0.45 -> int 0 -> 1 pixel, padded to the target


def test_fit_to_size_crops_the_centre_and_pads_with_zeros():
    pixels = np.arange(10 * 12, dtype=np.int64).reshape(10, 12, 1) + 1
    cropped = fit_to_size(pixels, 6, 8)  # (10 - 6) // 2 = 2 rows off the top, (12 - 8) // 2 = 2 columns left
    assert np.array_equal(cropped, pixels[2:8, 2:10])
    padded = fit_to_size(pixels[:3, :3], 6, 8)  # 1 row above, 2 below; 2 columns left, 3 right
    assert padded.shape == (6, 8, 1) and np.array_equal(padded[1:4, 2:5], pixels[:3, :3])
    assert padded.sum() == pixels[:3, :3].sum()
    mixed = fit_to_size(pixels, 12, 8)  # taller target, narrower: pad rows, crop columns
    assert np.array_equal(mixed[1:11], pixels[:, 2:10]) and not mixed[[0, 11]].any()


def test_the_draws_come_from_the_seeded_generator():
    """Angles are the integers -45..44, log-scales lie in [-1.5, 1.5); the same seed gives the same image."""

    class Recorder:
        def __init__(self, rng: np.random.Generator):
            self.rng, self.angles, self.log_scales = rng, [], []

        def integers(self, low: int, high: int) -> int:
            self.angles.append(self.rng.integers(low, high))
            return self.angles[-1]

        def uniform(self, low: float, high: float) -> float:
            self.log_scales.append(self.rng.uniform(low, high))
            return self.log_scales[-1]

    subject = cut_out(6, 4)
    recorder = Recorder(np.random.default_rng(0))
    for _ in range(1000):
        augment_released(subject, 16, 16, recorder)
    assert set(recorder.angles) == set(range(-45, 45))
    assert -1.5 <= min(recorder.log_scales) < -1.49 and 1.49 < max(recorder.log_scales) < 1.5

    def released(epoch: int) -> np.ndarray:
        rng = augment_rng(seed=1, clip_line=3, epoch=epoch, reference=0)
        return np.asarray(augment_reference(cut_out(), AugmentConfig(), rng, HEIGHT, WIDTH))

    assert np.array_equal(released(0), released(0)) and not np.array_equal(released(0), released(1))
    direct = augment_released(
        cut_out(), HEIGHT, WIDTH, augment_rng(seed=1, clip_line=3, epoch=0, reference=0)
    )
    assert np.array_equal(released(0), np.asarray(direct))  # mode: released is the default
