"""The page's inputs checked and previewed: sizes and their presets, reference images, the prompt.

User mistakes raise :class:`UIError` with a message written for the page; the layout in
:mod:`bindweave.ui.app` turns it into ``gr.Error``. Nothing here imports Gradio, so every rule the page
enforces is unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..conditioning.references import (
    MAX_REFERENCES,
    ReferenceError,
    check_reference_size,
    letterbox,
    load_reference,
)

SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2
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
    """Preset name -> size: the model's native size first (the fast default), then the paper's 480p/720p.

    The paper's sizes are offered only to a model native to one of them (the released model). A model
    native to another size, like the embedded toy (64x64), was trained at that size alone: 480p or 720p
    would be slow and outside what it knows (a custom size can still be typed in).
    """
    presets = {f"native ({native.label()})": native}
    if not paper_sizes_fit(native):
        return presets
    for name, (height, width) in PAPER_RESOLUTIONS.items():
        size = Size(height, width, PAPER_FRAMES)
        if size != native:
            presets[f"{name} ({height}x{width}, {PAPER_FRAMES} frames)"] = size
    return presets


def paper_sizes_fit(native: Size) -> bool:
    """Whether the paper's 480p/720p suit a model of this native size (it is one of them)."""
    return (native.height, native.width) in PAPER_RESOLUTIONS.values()


def native_size(pipe: Any) -> Size:
    """The size a pipeline generates when none is given (``default_*`` in its ``model_index.json``)."""
    config = pipe.config
    return Size(config.default_height, config.default_width, config.default_num_frames)


def whole_number(value: float | int | None, name: str) -> int:
    """Gradio number boxes give floats or None; only whole numbers are meaningful for sizes and steps."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        raise UIError(f"{name} is empty: enter a whole number.")
    if int(value) != value:
        raise UIError(f"{name} must be a whole number (got {value}).")
    return int(value)


def check_size(height: float | None, width: float | None, num_frames: float | None) -> Size:
    """The size rules of the model (spec 2.4), with messages that say what to type instead."""
    h, w = whole_number(height, "Height"), whole_number(width, "Width")
    for name, value in (("Height", h), ("Width", w)):
        if value <= 0 or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise UIError(
                f"{name} must be a positive multiple of {SIZE_MULTIPLE} (got {value}; try {lower} or "
                f"{lower + SIZE_MULTIPLE})."
            )
    frames = whole_number(num_frames, "Frames")
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


def check_prompt(prompt: str | None) -> str:
    if prompt is None or not prompt.strip():
        raise UIError("Enter a prompt: what should the subjects do?")
    return prompt.strip()
