"""The page's inputs, checked before any model work: sizes, references, prompt, the whole request.

Mistakes raise :class:`UIError` with a message written for the page.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ...conditioning.references import (
    MAX_REFERENCES,
    ReferenceError,
    check_reference_size,
    letterbox,
    load_reference,
)
from ...generate import ModelConfig, SamplingConfig
from ...perf.config import MemoryMode

SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2
MAX_SEED = 2**63 - 1
PAPER_FRAMES = 81
# The paper's resolutions (height x width); the model's native size is added at runtime.
PAPER_RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
CUSTOM = "custom"


class UIError(ValueError):
    """A mistake in the page's inputs; the message is shown to the user as is."""


# ------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    height: int
    width: int
    num_frames: int

    def label(self) -> str:
        return f"{self.height}x{self.width}, {self.num_frames} frames"


def resolution_presets(native: Size) -> dict[str, Size]:
    """Preset name -> size: the model's native size first (the fast default), then the paper's 480p/720p."""
    presets = {f"native ({native.label()})": native}
    for name, (height, width) in PAPER_RESOLUTIONS.items():
        presets[f"{name} ({height}x{width}, {PAPER_FRAMES} frames)"] = Size(height, width, PAPER_FRAMES)
    return presets


def native_size(pipe: Any) -> Size:
    """The size a pipeline generates when none is given (``default_*`` in its ``model_index.json``)."""
    config = pipe.config
    return Size(config.default_height, config.default_width, config.default_num_frames)


def _whole_number(value: float | int | None, name: str) -> int:
    """Gradio number boxes give floats or None; only whole numbers are meaningful for sizes and steps."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        raise UIError(f"{name} is empty: enter a whole number.")
    if int(value) != value:
        raise UIError(f"{name} must be a whole number (got {value}).")
    return int(value)


def check_size(height: float | None, width: float | None, num_frames: float | None) -> Size:
    """The size rules of the model (spec 2.4), with messages that say what to type instead."""
    h, w = _whole_number(height, "Height"), _whole_number(width, "Width")
    for name, value in (("Height", h), ("Width", w)):
        if value <= 0 or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise UIError(
                f"{name} must be a positive multiple of {SIZE_MULTIPLE} (got {value}; try {lower} or "
                f"{lower + SIZE_MULTIPLE})."
            )
    frames = _whole_number(num_frames, "Frames")
    if frames < 1 or (frames - 1) % 4:
        nearest = max(1, round((frames - 1) / 4) * 4 + 1)
        raise UIError(f"Frames must be 4k + 1 (1, 5, 9, ..., 17, ..., 81); got {frames}, try {nearest}.")
    return Size(h, w, frames)


# -------------------------------------------------------------------------------------- references


def _ref_name(index: int, path: str | Path) -> str:
    return f"Reference {index + 1} ({Path(path).name})"


def check_reference_paths(paths: Sequence[str | Path] | None) -> list[Path]:
    """1-4 uploaded files, in order. The CLI drops extra references; the page asks instead of guessing."""
    paths = [Path(p) for p in paths or []]
    if not paths:
        raise UIError(f"Add 1 to {MAX_REFERENCES} reference images: none is uploaded.")
    if len(paths) > MAX_REFERENCES:
        extra = len(paths) - MAX_REFERENCES
        raise UIError(
            f"BindWeave uses at most {MAX_REFERENCES} reference images; {len(paths)} are uploaded. "
            f"Remove {extra}."
        )
    return paths


def load_reference_images(paths: Sequence[str | Path] | None) -> list[PIL.Image.Image]:
    """Check and load the references exactly as the pipeline will (RGB), naming a file that is no image
    or of a size the model cannot read."""
    images = []
    for index, path in enumerate(check_reference_paths(paths)):
        try:
            image = load_reference(path, name=_ref_name(index, path))
        except ReferenceError as err:
            raise UIError(
                f"{_ref_name(index, path)} is not an image that can be read (use PNG, JPEG or WebP)."
            ) from err
        try:
            check_reference_size(image.size, _ref_name(index, path))
        except ReferenceError as err:
            raise UIError(f"{err}.") from err
        images.append(image)
    return images


@dataclass(frozen=True)
class Preview:
    """What the model sees of one reference: the letterboxed canvas and its mask (spec 2.1)."""

    canvas: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 255 on the pasted reference, 0 on the black border
    box: tuple[int, int, int, int]  # left, top, width, height
    caption: str


def preview_references(
    paths: Sequence[str | Path] | None, height: float | None, width: float | None
) -> list[Preview]:
    """Letterbox every reference at the chosen size with the pipeline's own :func:`letterbox`."""
    images = load_reference_images(paths)
    size = check_size(height, width, 1)
    previews = []
    for index, (path, image) in enumerate(zip(check_reference_paths(paths), images, strict=True)):
        boxed = letterbox(image, size.height, size.width)
        canvas = (boxed.canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        mask = (boxed.mask.numpy() * 255).round().astype(np.uint8)
        left, top, w, h = boxed.box
        scale = w / image.width
        caption = (
            f"{_ref_name(index, path)}: {image.width}x{image.height} -> {w}x{h}"
            f"{'' if scale == 1 else f' (x{scale:.2f})'} at ({left}, {top}) on {size.width}x{size.height}"
        )
        previews.append(Preview(canvas=canvas, mask=mask, box=boxed.box, caption=caption))
    return previews


# -------------------------------------------------------------------------------------- request


def memory_modes() -> tuple[str, ...]:
    """The ``--memory`` choices of the CLI, offered in the page."""
    return typing.get_args(MemoryMode)


@dataclass(frozen=True)
class JobRequest:
    """Everything the page collects for one run, already checked by :func:`parse_request`."""

    refs: tuple[Path, ...]
    prompt: str
    negative_prompt: str
    size: Size
    steps: int
    guidance: float
    seed: int | None  # None draws a random seed, reported with the result
    memory: str


def check_prompt(prompt: str | None) -> str:
    if prompt is None or not prompt.strip():
        raise UIError("Enter a prompt: what should the subjects do?")
    return prompt.strip()


def parse_request(
    refs: Sequence[str | Path] | None,
    prompt: str | None,
    negative_prompt: str | None,
    height: float | None,
    width: float | None,
    num_frames: float | None,
    steps: float | None,
    guidance: float | None,
    random_seed: bool,
    seed: float | None,
    memory: str | None,
) -> JobRequest:
    """Check every input of the page before any model work, so a mistake costs nothing."""
    load_reference_images(refs)
    prompt = check_prompt(prompt)
    size = check_size(height, width, num_frames)
    steps_ = _whole_number(steps, "Steps")
    if steps_ < 1:
        raise UIError(f"Steps must be at least 1 (got {steps_}).")
    if guidance is None or not np.isfinite(guidance) or guidance < 1:
        raise UIError(f"Guidance must be at least 1 (1 turns the negative prompt off); got {guidance}.")
    fixed_seed = None
    if not random_seed:
        fixed_seed = _whole_number(seed, "Seed")
        if not 0 <= fixed_seed <= MAX_SEED:
            raise UIError(f"Seed must be between 0 and {MAX_SEED} (got {fixed_seed}).")
    mode = memory or ModelConfig().memory
    if mode not in memory_modes():
        raise UIError(f"Unknown memory mode {mode!r}; choose one of {', '.join(memory_modes())}.")
    request = JobRequest(
        refs=tuple(check_reference_paths(refs)),
        prompt=prompt,
        negative_prompt=negative_prompt or "",
        size=size,
        steps=steps_,
        guidance=float(guidance),
        seed=fixed_seed,
        memory=mode,
    )
    # The CLI's own rules as the last word, so the page never accepts what `bindweave generate` refuses.
    sampling_config(request, seed=0).validate()
    return request


def sampling_config(request: JobRequest, seed: int) -> SamplingConfig:
    """The ``bindweave generate`` sampling settings of a request, with this run's seed."""
    return SamplingConfig(
        height=request.size.height,
        width=request.size.width,
        num_frames=request.size.num_frames,
        steps=request.steps,
        guidance=request.guidance,
        seed=seed,
        negative_prompt=request.negative_prompt,
    )
