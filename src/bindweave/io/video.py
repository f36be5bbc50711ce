"""Reading and writing the mp4 videos BindWeave produces and OpenS2V-Eval scores.

Encoding uses PyAV's libx264 with yuv420p, the format of the released results (H.264, 16 fps) and the one
every player and the OpenS2V scripts (imageio/ffmpeg, OpenCV) decode. Files are written through
:func:`bindweave.io.files.atomic_write`, so an interrupted encode never leaves a truncated ``<id>.mp4``
that a resumed run would mistake for a finished case.

The same frames give the same file (:func:`x264_options`): x264's thread count is fixed rather than
derived from the machine's cores, and on CPUs with AVX-512 x264 is kept to its AVX2 kernels. On its
AVX-512 path the x264 in PyAV's wheel made the bytes, and the decoded pixels, depend on what the process
had allocated before (a loaded pipeline, an earlier encode), as if it read uninitialised memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from bindweave.io.files import PathLike, atomic_write

__all__ = [
    "DEFAULT_QUALITY",
    "VideoInfo",
    "probe_video",
    "quality_to_crf",
    "read_video",
    "sample_frame_indices",
    "write_video",
    "x264_options",
]

DEFAULT_QUALITY = 8.0
"""imageio's 0-10 quality scale (CRF 10). Not the release's setting: its ``inference_s2v.py`` writes
imageio ``quality=6`` (CRF 20); Wan's ``cache_video`` uses 8. We keep 8 so that what is scored and
viewed is closer to the generated frames; pass ``quality=6`` to compress like the released files."""

ENCODER_THREADS = 8
"""x264 frame threads. Fixed, because x264's output depends on its thread count (and PyAV's default
derives it from the cores): the same frames must give the same file on every machine."""

# x264's AVX-512 kernels need all of these; x264 chooses them when the CPU (and OS) has them.
_AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts read from the container header without decoding pixels."""

    num_frames: int
    height: int
    width: int
    fps: float
    codec: str


def quality_to_crf(quality: float) -> int:
    """Map imageio's 0-10 quality (10 best) to an x264 CRF exactly as imageio-ffmpeg does.

    Keeping imageio's scale makes the reference code's settings directly usable: the release's
    ``quality=6`` is CRF 20, our default 8 is CRF 10.
    """
    if not 0 <= quality <= 10:
        raise ValueError(f"quality must be in [0, 10] (imageio scale, 10 = best), got {quality}")
    return int((1 - quality / 10) * 51)


def _to_numpy(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        tensor = frames.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.numpy()
    if isinstance(frames, np.ndarray):
        return frames
    raise ValueError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")


def _validate_frames(frames: np.ndarray) -> None:
    """Reject anything that would encode to a wrong-looking video instead of failing obscurely later."""
    if frames.ndim != 4:
        raise ValueError(
            f"frames must have shape (F, H, W, 3), got {frames.ndim} dims with shape {frames.shape}"
        )
    num, height, width, channels = frames.shape
    if channels != 3:
        hint = " (looks channels-first; permute to (F, H, W, 3))" if frames.shape[1] == 3 else ""
        raise ValueError(f"frames must have 3 (RGB) channels last, got shape {frames.shape}{hint}")
    if num == 0 or height == 0 or width == 0:
        raise ValueError(f"frames must be non-empty, got shape {frames.shape}")
    if height % 2 or width % 2:
        raise ValueError(
            f"H.264 with yuv420p needs even height and width, got {height}x{width} (HxW); "
            "crop or resize the frames before writing"
        )
    if frames.dtype == np.uint8:
        return
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames dtype must be uint8 or float in [0, 1], got {frames.dtype}")
    if not np.isfinite(frames).all():
        raise ValueError("float frames contain NaN or infinite values")
    low, high = float(frames.min()), float(frames.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"float frames must be in [0, 1], got range [{low:.4g}, {high:.4g}]"
            + (" (frames in [-1, 1]? map them with (x + 1) / 2)" if low >= -1.0 and low < 0.0 else "")
        )


def _frame_to_uint8(frame: np.ndarray) -> np.ndarray:
    """Convert one frame (not the whole clip, to keep peak memory low) to contiguous uint8 RGB."""
    if frame.dtype != np.uint8:
        frame = np.rint(frame.astype(np.float32) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(frame)


@functools.cache
def _cpu_has_avx512() -> bool:
    """Whether this CPU has the AVX-512 subsets x264 uses (Linux: the kernel's flags; elsewhere: no)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return _AVX512_FLAGS <= set(flags)


def x264_options(crf: int) -> dict[str, str]:
    """The libx264 options :func:`write_video` encodes with.

    On an AVX-512 CPU x264 is limited to its AVX2 kernels (every AVX-512 CPU has AVX2). Its AVX-512 path
    makes the output depend on the prior contents of freshly allocated memory: two encodes of the same
    frames in different processes, or after other allocations in one process, differed, while filling
    new allocations with a fixed byte (glibc's ``MALLOC_PERTURB_``) made each result reproducible, and
    limiting x264 to AVX2 made them all equal. Only where AVX-512 exists, because naming AVX2 on a CPU
    without it would make x264 run instructions the CPU lacks.
    """
    options = {"crf": str(crf)}
    if _cpu_has_avx512():
        options["x264-params"] = "asm=AVX2"
    return options


def _encode_h264(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
    """Encode ``frames`` (validated) to an H.264/yuv420p mp4 at ``path``; same frames, same bytes."""
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.options = x264_options(crf)
        # Frame threads as ffmpeg uses for x264 (PyAV's default is slice threads, one slice per core).
        stream.codec_context.thread_type = "FRAME"
        stream.codec_context.thread_count = ENCODER_THREADS
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(_frame_to_uint8(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))  # flush delayed frames


def write_video(
    frames: np.ndarray | torch.Tensor,
    path: PathLike,
    fps: float = 16,
    *,
    quality: float = DEFAULT_QUALITY,
) -> Path:
    """Write RGB frames (F, H, W, 3), uint8 or float in [0, 1], as an H.264 mp4; returns the path.

    The file appears only once fully encoded: a failure or Ctrl-C leaves no partial file (and keeps an
    existing file at ``path``). Odd sizes are rejected rather than silently resized, so what is scored is
    exactly what was generated.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    crf = quality_to_crf(quality)
    array = _to_numpy(frames)
    _validate_frames(array)
    target = Path(path)
    with atomic_write(target) as tmp:
        _encode_h264(array, tmp, fps, crf)
    return target


def _open_input(path: PathLike) -> av.container.InputContainer:
    """Open a video for reading, turning PyAV's errors into ones that name the file."""
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"video file not found: {source}")
    if not source.is_file():
        raise ValueError(f"not a regular file, cannot read as video: {source}")
    try:
        container = av.open(str(source), mode="r")
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot open video {source}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"no video stream in {source}")
    return container


def _stream_fps(stream: av.video.stream.VideoStream, source: PathLike) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise ValueError(f"cannot determine the frame rate of {source}")
    return float(rate)


def read_video(path: PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of ``path``; returns (frames (F, H, W, 3) uint8 RGB, fps).

    Decodes the whole clip into memory (81 frames of 720p is ~220 MB); for scoring a few frames use
    :func:`sample_frame_indices` on the result or read with a streaming reader instead.
    """
    with _open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream, path)
        try:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot decode video {path}: {exc}") from exc
    if not frames:
        raise ValueError(f"video {path} contains no decodable frames")
    return np.stack(frames), fps


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, size, fps and codec of ``path``, from the header (counting packets if it has no count)."""
    with _open_input(path) as container:
        stream = container.streams.video[0]
        num_frames = stream.frames
        if num_frames <= 0:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            except av.error.FFmpegError as exc:
                raise ValueError(f"cannot read video {path}: {exc}") from exc
        context = stream.codec_context
        return VideoInfo(
            num_frames=int(num_frames),
            height=int(context.height),
            width=int(context.width),
            fps=_stream_fps(stream, path),
            codec=str(context.name),
        )


def sample_frame_indices(num_frames: int, k: int) -> list[int]:
    """``k`` uniformly spaced frame indices over [0, num_frames - 1], endpoints included.

    ``np.linspace`` rounded to the nearest frame; every frame (no duplicates) when ``num_frames <= k``.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if num_frames <= k:
        return list(range(num_frames))
    return [int(i) for i in np.rint(np.linspace(0, num_frames - 1, k))]
