"""The contact strip: references then evenly spaced frames; optionally the true frames beneath."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from bindweave.io.strip import contact_strip, write_strip
from bindweave.io.video import sample_frame_indices


def _video(seed: int, frames: int = 9, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def test_one_row_holds_the_references_then_the_sampled_frames():
    video = _video(0)
    reference = PIL.Image.new("RGB", (8, 4), (10, 20, 30))  # 2:1, so it becomes 32 x 16
    strip = np.asarray(contact_strip([reference], video, num_frames=3, gap=4))
    assert strip.shape == (16, 32 + 3 * (4 + 16), 3)
    assert (strip[:, :32] == (10, 20, 30)).all()
    for k, i in enumerate(sample_frame_indices(9, 3)):
        x = 32 + 4 + k * 20
        assert np.array_equal(strip[:, x : x + 16], video[i])


def test_the_true_frames_sit_under_the_generated_ones(tmp_path):
    video, truth = _video(0), _video(1)
    reference = PIL.Image.new("RGB", (16, 16), (0, 0, 0))
    path = write_strip([reference], video / 255.0, tmp_path / "s.png", num_frames=4, truth=truth)
    with PIL.Image.open(path) as image:
        strip = np.asarray(image.convert("RGB"))
    assert strip.shape == (16 + 4 + 16, 5 * 16 + 4 * 4, 3)
    assert (strip[16:20] == 255).all()  # the gap between the rows
    assert (strip[20:, :16] == 255).all()  # white under the reference
    for k, i in enumerate(sample_frame_indices(9, 4)):
        x = 20 + k * 20
        assert np.array_equal(strip[:16, x : x + 16], video[i])
        assert np.array_equal(strip[20:, x : x + 16], truth[i])


def test_true_frames_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"truth has shape \(9, 8, 8, 3\), the frames \(9, 16, 16, 3\)"):
        contact_strip([], _video(0), truth=_video(1, size=8))
