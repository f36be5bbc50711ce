"""Video I/O: H.264 round trips, input validation, atomicity, and the released 720p results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bindweave.io import video
from bindweave.io.video import (
    VideoInfo,
    probe_video,
    quality_to_crf,
    read_video,
    sample_frame_indices,
    write_video,
)


def _gradient_video(num_frames: int = 9, height: int = 64, width: int = 96) -> np.ndarray:
    """A smooth moving RGB gradient: compresses well, so decoded values should stay close."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    red = (x * 255 / (width - 1) + 4 * t) % 256
    green = y * 255 / (height - 1)
    blue = (x + y) * 255 / (width + height - 2)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _moving_noise_video(num_frames: int = 17, size: int = 64) -> np.ndarray:
    """Random texture panning diagonally: content on which x264's AVX-512 path encoded differently per run."""
    texture = np.random.default_rng(0).integers(0, 256, (2 * size, 2 * size, 3), dtype=np.uint8)
    return np.stack([np.roll(texture, (2 * t, 3 * t), (0, 1))[:size, :size] for t in range(num_frames)])


def _no_leftovers(folder: Path) -> bool:
    return not any(".tmp-" in p.name for p in folder.iterdir())


def test_round_trip_uint8(tmp_path: Path) -> None:
    frames = _gradient_video()
    path = write_video(frames, tmp_path / "clip.mp4", fps=16)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(16.0)
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 3.0
    assert probe_video(path) == VideoInfo(num_frames=9, height=64, width=96, fps=16.0, codec="h264")
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_float_tensor(tmp_path: Path, dtype: torch.dtype) -> None:
    frames = _gradient_video()
    tensor = torch.from_numpy(frames).to(dtype) / 255.0
    path = write_video(tensor, tmp_path / "f.mp4", fps=24)
    decoded, fps = read_video(path)
    assert fps == pytest.approx(24.0)
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 3.0


# Writes frames in a fresh process. MALLOC_PERTURB_ fills every new allocation with a fixed byte, so the two
# processes start the encoder from different memory contents (it decided x264's output before the fix);
# one of them first loads and runs the default model, the other is pinned to one CPU core.
_WRITE_IN_FRESH_PROCESS = """
import os, sys
import numpy as np
frames, out, mode = sys.argv[1:]
if mode == "pipeline":
    import torch
    from bindweave.default_model import demo_prompt, demo_references
    from bindweave.generate import ModelConfig, load_pipeline
    pipe = load_pipeline(ModelConfig(device="cpu"))
    pipe(demo_prompt(), demo_references(), num_inference_steps=1, num_frames=5,
         generator=torch.Generator().manual_seed(0))
elif hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from bindweave.io.video import write_video
write_video(np.load(frames), out)
"""


def test_same_frames_give_the_same_file(tmp_path: Path) -> None:
    frames = _moving_noise_video()
    np.save(tmp_path / "frames.npy", frames)
    outputs = []
    for perturb, mode in (("17", "one-core"), ("200", "pipeline")):
        out = tmp_path / f"{mode}.mp4"
        subprocess.run(
            [sys.executable, "-c", _WRITE_IN_FRESH_PROCESS, str(tmp_path / "frames.npy"), str(out), mode],
            check=True,
            env={**os.environ, "MALLOC_PERTURB_": perturb},
        )
        outputs.append(out.read_bytes())
    here = write_video(frames, tmp_path / "here.mp4").read_bytes()
    assert write_video(frames, tmp_path / "again.mp4").read_bytes() == here
    assert outputs[0] == here and outputs[1] == here
    assert b"threads=8 " in here  # x264's settings string, stored in the stream: not the core count


@pytest.mark.parametrize("avx512", [True, False])
def test_x264_kept_off_avx512(monkeypatch: pytest.MonkeyPatch, avx512: bool) -> None:
    monkeypatch.setattr(video, "_cpu_has_avx512", lambda: avx512)
    expected = {"crf": "10", "x264-params": "asm=AVX2"} if avx512 else {"crf": "10"}
    assert video.x264_options(10) == expected


def test_non_integer_fps(tmp_path: Path) -> None:
    path = write_video(_gradient_video(num_frames=4), tmp_path / "ntsc.mp4", fps=30000 / 1001)
    assert probe_video(path).fps == pytest.approx(29.97, abs=0.01)


def test_quality_maps_like_imageio() -> None:
    assert quality_to_crf(8) == 10  # our default (Wan's cache_video)
    assert quality_to_crf(6) == 20  # the release's inference_s2v.py
    assert quality_to_crf(5) == 25  # imageio's default
    assert quality_to_crf(10) == 0
    with pytest.raises(ValueError, match="quality"):
        quality_to_crf(11)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, 8, 3), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 4), np.uint8), "3 \\(RGB\\) channels"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((0, 8, 8, 3), np.uint8), "non-empty"),
        (np.zeros((2, 9, 8, 3), np.uint8), "even height and width"),
        (np.zeros((2, 8, 7, 3), np.uint8), "even height and width"),
        (np.zeros((2, 8, 8, 3), np.int64), "dtype"),
        (np.full((2, 8, 8, 3), 1.5, np.float32), "\\[0, 1\\]"),
        (np.full((2, 8, 8, 3), -0.5, np.float32), "\\(x \\+ 1\\) / 2"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), "NaN"),
        ([[[[0, 0, 0]]]], "numpy array or torch tensor"),
    ],
)
def test_invalid_frames(tmp_path: Path, frames: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_video(frames, tmp_path / "bad.mp4")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -16, float("nan")])
def test_invalid_fps(tmp_path: Path, fps: float) -> None:
    with pytest.raises(ValueError, match="fps"):
        write_video(_gradient_video(num_frames=2), tmp_path / "bad.mp4", fps=fps)


@pytest.mark.parametrize("error", [RuntimeError("encoder died"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """Encode half the frames for real, then fail: neither the target nor the temp file may remain."""
    real_encode = video._encode_h264

    def encode_then_fail(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
        real_encode(frames[: len(frames) // 2], path, fps, crf)
        assert path.exists()  # a partial file really was on disk
        raise error

    monkeypatch.setattr(video, "_encode_h264", encode_then_fail)
    target = tmp_path / "out.mp4"
    with pytest.raises(type(error)):
        write_video(_gradient_video(), target)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_existing_video(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_video(_gradient_video(num_frames=3), tmp_path / "keep.mp4")
    before = target.read_bytes()

    def fail(*args: object) -> None:
        raise RuntimeError("encoder died")

    monkeypatch.setattr(video, "_encode_h264", fail)
    with pytest.raises(RuntimeError):
        write_video(_gradient_video(), target)
    assert target.read_bytes() == before
    assert _no_leftovers(tmp_path)


def test_read_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(missing)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        probe_video(missing)


def test_read_garbage_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="garbage.mp4"):
        read_video(garbage)
    with pytest.raises(ValueError, match="garbage.mp4"):
        probe_video(garbage)


def test_read_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        read_video(tmp_path)


@pytest.mark.parametrize(
    ("num_frames", "k", "expected"),
    [
        (81, 5, [0, 20, 40, 60, 80]),
        (10, 4, [0, 3, 6, 9]),
        (11, 4, [0, 3, 7, 10]),  # 3.33 -> 3, 6.67 -> 7: rounded, not truncated
        (5, 8, [0, 1, 2, 3, 4]),
        (5, 5, [0, 1, 2, 3, 4]),
        (100, 1, [0]),
        (0, 3, []),
    ],
)
def test_sample_frame_indices(num_frames: int, k: int, expected: list[int]) -> None:
    assert sample_frame_indices(num_frames, k) == expected


def test_sample_frame_indices_32_of_81() -> None:
    indices = sample_frame_indices(81, 32)
    assert len(indices) == 32 and indices[0] == 0 and indices[-1] == 80
    assert all(b > a for a, b in zip(indices, indices[1:], strict=False))
    assert all(isinstance(i, int) for i in indices)


@pytest.mark.parametrize(("num_frames", "k"), [(-1, 3), (10, 0)])
def test_sample_frame_indices_invalid(num_frames: int, k: int) -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(num_frames, k)


@pytest.fixture(scope="module")
def result_videos(fixtures_dir: Path) -> list[Path]:
    videos = sorted((fixtures_dir / "Results").glob("*.mp4"))
    if not videos:
        pytest.skip(f"no result videos in {fixtures_dir / 'Results'}")
    return videos


def test_probe_released_results(result_videos: list[Path]) -> None:
    for path in result_videos:
        assert probe_video(path) == VideoInfo(num_frames=81, height=720, width=1280, fps=16.0, codec="h264")


def test_read_released_result(result_videos: list[Path]) -> None:
    frames, fps = read_video(result_videos[0])
    assert frames.shape == (81, 720, 1280, 3) and frames.dtype == np.uint8
    assert fps == 16.0
    assert 10 < frames.mean() < 245  # real content, not a black/white decode failure


@pytest.mark.slow
def test_rewrite_released_result_full_size(result_videos: list[Path], tmp_path: Path) -> None:
    """Re-encoding a real 720p result at the default quality keeps it visually identical (~13 s on 2 CPU cores)."""
    frames, fps = read_video(result_videos[0])
    copy = write_video(frames, tmp_path / "copy.mp4", fps=fps)
    assert probe_video(copy) == probe_video(result_videos[0])
    decoded, _ = read_video(copy)
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 2.0
