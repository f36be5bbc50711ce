"""The benchmark's frame sampling: 32 frames for Aesthetic/FaceSim/GME/Nexus."""

from __future__ import annotations

import numpy as np
import pytest

from bindweave.eval.scorers.base import VideoSample, benchmark_frame_indices

# np.linspace(0, 80, 32, dtype=int), written out: what the benchmark reads of an 81-frame video.
BENCHMARK_81 = [0, 2, 5, 7, 10, 12, 15, 18, 20, 23, 25, 28, 30, 33, 36, 38]
BENCHMARK_81 += [41, 43, 46, 49, 51, 54, 56, 59, 61, 64, 67, 69, 72, 74, 77, 80]


def test_32_of_81_frames_are_truncated_not_rounded():
    indices = benchmark_frame_indices(81, 32)
    assert indices == BENCHMARK_81
    rounded = [int(i) for i in np.rint(np.linspace(0, 80, 32))]
    assert sum(a != b for a, b in zip(indices, rounded, strict=True)) == 15


def test_short_videos_repeat_frames_as_the_benchmark():
    assert benchmark_frame_indices(4, 8) == [0, 0, 0, 1, 1, 2, 2, 3]
    assert benchmark_frame_indices(1, 3) == [0, 0, 0]
    assert benchmark_frame_indices(32, 32) == list(range(32))
    with pytest.raises(ValueError, match="0 frames"):
        benchmark_frame_indices(0, 32)


def test_video_sample_uses_the_benchmark_indices():
    frames = np.arange(81, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    sample = VideoSample.from_frames("singleobj_1", frames)
    assert sample.sampled_frames(32)[:, 0, 0, 0].tolist() == BENCHMARK_81
    assert len(sample.sampled_images(32)) == 32
    assert sample.sampled_frames(None).shape[0] == 81
