"""MotionAmplitude (spec 7) on synthetic clips with a known flow, and on the real 14B fixture videos."""

from __future__ import annotations

import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from bindweave.eval.motion import downscaled_size, motion_amplitude, signed_motion  # noqa: E402


def textured_clip(n: int, h: int, w: int, dx: int, dy: int, seed: int = 0) -> np.ndarray:
    """``n`` RGB frames of a smooth random texture whose content moves by (dx, dy) pixels per frame.

    Frames are windows of one larger texture, so the whole image moves (no static border); the window
    moves by (-dx, -dy) so the content moves by (+dx, +dy), i.e. a true flow of (dx, dy) everywhere.
    """
    rng = np.random.default_rng(seed)
    margin = 40
    big_h, big_w = h + n * abs(dy) + 2 * margin, w + n * abs(dx) + 2 * margin
    texture = cv2.GaussianBlur(rng.random((big_h, big_w)).astype(np.float32), (0, 0), 3.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min()) * 255
    rgb = np.repeat(texture[..., None].astype(np.uint8), 3, axis=-1)
    y0, x0 = margin + n * abs(dy), margin + n * abs(dx)
    return np.stack([rgb[y0 - t * dy : y0 - t * dy + h, x0 - t * dx : x0 - t * dx + w] for t in range(n)])


def test_static_clip_scores_zero():
    frames = np.repeat(textured_clip(1, 96, 128, 0, 0), 6, axis=0)
    assert motion_amplitude(frames) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(("dx", "dy"), [(2, 1), (3, 0), (0, 2), (-2, -1), (4, 2)])
def test_uniform_translation_gives_mean_of_both_components(dx, dy):
    # Expected value worked out independently of the implementation: a uniform flow (dx, dy) averaged over
    # positions and both signed components is (dx + dy) / 2; the score is its absolute value.
    frames = textured_clip(8, 128, 160, dx, dy)
    expected = abs(dx + dy) / 2
    assert motion_amplitude(frames) == pytest.approx(expected, rel=0.03, abs=0.02)
    assert math.copysign(1, signed_motion(frames)) == math.copysign(1, dx + dy)


def test_components_that_cancel_score_zero():
    # A diagonal move with dx = -dy: real motion, but the signed components cancel (quirk kept on purpose).
    assert motion_amplitude(textured_clip(8, 128, 160, 2, -2)) == pytest.approx(0.0, abs=0.03)


def test_opposite_halves_cancel():
    right = textured_clip(8, 64, 160, 2, 0, seed=1)
    left = textured_clip(8, 64, 160, -2, 0, seed=2)
    frames = np.concatenate([right, left], axis=1)  # top half moves right, bottom half moves left
    assert motion_amplitude(frames) == pytest.approx(0.0, abs=0.05)
    assert motion_amplitude(right) == pytest.approx(1.0, rel=0.03)


def test_back_and_forth_motion_cancels_over_time():
    forward = textured_clip(5, 96, 128, 2, 0)
    frames = np.concatenate([forward, forward[::-1][1:]])  # moves right, then back left
    assert motion_amplitude(frames) == pytest.approx(0.0, abs=0.03)


def test_rgb_is_greyed_with_bgr_weights():
    # Quirk: a pattern drawn only in the red channel is weighted like blue (0.114) instead of 0.299. A red
    # texture moving over a static blue texture therefore counts much less than the same data in blue.
    moving = textured_clip(6, 96, 128, 3, 0, seed=3)[..., 0]
    static = np.repeat(textured_clip(1, 96, 128, 0, 0, seed=4)[..., 0], 6, axis=0)
    red_moves = np.stack([moving, np.zeros_like(moving), static], axis=-1)  # R moves, B static
    blue_moves = np.stack([static, np.zeros_like(moving), moving], axis=-1)  # R static, B moves
    assert motion_amplitude(blue_moves) > 2 * motion_amplitude(red_moves)


def test_downscaled_size_follows_released_rounding():
    assert downscaled_size(720, 1280) == (16, 9)
    assert downscaled_size(480, 832) == (16, 9)  # 9.23 truncated
    assert downscaled_size(100, 30) == (16, 53)


def test_needs_two_frames():
    with pytest.raises(ValueError, match="at least two frames"):
        motion_amplitude(textured_clip(1, 32, 32, 0, 0))


def _fixture_videos(fixtures_dir):
    videos = sorted((fixtures_dir / "Results").glob("*.mp4"))
    if not videos:
        pytest.skip("no Results/*.mp4 in the fixtures")
    return videos


def test_fixture_videos_first_frames_plausible(fixtures_dir):
    """Fast check on the real 14B outputs: the first 9 frames give a finite, plausible motion."""
    from bindweave.io.video import read_video

    frames, _ = read_video(_fixture_videos(fixtures_dir)[0])
    value = motion_amplitude(frames[:9])
    assert math.isfinite(value)
    assert 0.0 <= value < 5.0


@pytest.mark.slow
def test_fixture_videos_full(fixtures_dir):
    """All 81 frames of both fixture videos (about 20 s each on two CPU cores)."""
    from bindweave.io.video import read_video

    for video in _fixture_videos(fixtures_dir):
        frames, _ = read_video(video)
        assert frames.shape[0] == 81
        value = motion_amplitude(frames)
        # Generated 720p clips move by a fraction of a pixel per frame on average; leaderboard
        # MotionAmplitude (mean of min(|x|, 1)) is 5-50 % for current models.
        assert math.isfinite(value)
        assert 0.0 < value < 2.0, (video.name, value)
