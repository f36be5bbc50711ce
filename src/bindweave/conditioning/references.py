"""Reference images: loading, validation and letterboxing (spec 2.1)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)

MAX_REFERENCES = 4

ReferenceInput = str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor


class ReferenceError(ValueError):
    """A reference image that cannot be used; the message names it."""


def load_reference(reference: ReferenceInput, name: str = "reference") -> PIL.Image.Image:
    """Load one reference as an RGB PIL image.

    Accepts a path, a PIL image, an ``(H, W, 3)`` uint8 array / tensor, or a float one in [0, 1].
    """
    if isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        if not path.is_file():
            raise ReferenceError(f"{name}: image file not found: {path}")
        try:
            with PIL.Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ReferenceError(f"{name}: cannot read image {path}: {err}") from err
    if isinstance(reference, PIL.Image.Image):
        return reference.convert("RGB")
    if isinstance(reference, torch.Tensor):
        tensor = reference.detach().cpu()
        reference = (tensor if tensor.dtype == torch.uint8 else tensor.float()).numpy()  # numpy has no bf16
    if isinstance(reference, np.ndarray):
        if reference.ndim != 3 or reference.shape[-1] != 3:
            raise ReferenceError(f"{name}: array must have shape (H, W, 3), got {reference.shape}")
        if reference.dtype != np.uint8:
            if not np.issubdtype(reference.dtype, np.floating):
                raise ReferenceError(f"{name}: array must be uint8 or float in [0, 1], got {reference.dtype}")
            if not np.isfinite(reference).all() or reference.min() < 0 or reference.max() > 1:
                raise ReferenceError(f"{name}: float array values must be finite and lie in [0, 1]")
            reference = np.round(reference * 255).astype(np.uint8)
        return PIL.Image.fromarray(reference, mode="RGB")
    raise ReferenceError(f"{name}: unsupported reference type {type(reference).__name__}")


def load_references(references: ReferenceInput | Sequence[ReferenceInput]) -> list[PIL.Image.Image]:
    """Load 1-4 references in order; more than 4 are dropped with a warning (as the release does).

    Each must be a size the MLLM can read (:func:`check_reference_size`). Messages count from 1.
    """
    if isinstance(references, (str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor)):
        references = [references]
    references = list(references)
    if not references:
        raise ReferenceError("at least one reference image is required (got 0)")
    if len(references) > MAX_REFERENCES:
        logger.warning(
            "%d reference images given; BindWeave uses at most %d, keeping the first %d",
            len(references),
            MAX_REFERENCES,
            MAX_REFERENCES,
        )
        references = references[:MAX_REFERENCES]
    images = []
    for index, reference in enumerate(references):
        image = load_reference(reference, name=f"reference {index + 1}")  # its messages name the file
        check_reference_size(image.size, reference_name(index, reference))
        images.append(image)
    return images


def reference_name(index: int, reference: ReferenceInput | None = None) -> str:
    """How messages name the reference at ``index``: counted from 1, with its file when it has one."""
    name = f"reference {index + 1}"
    return f"{name} ({reference})" if isinstance(reference, (str, os.PathLike)) else name


def check_reference_size(size: tuple[int, int], name: str) -> None:
    """Refuse a ``(width, height)`` the MLLM cannot read (:func:`~.mllm.mllm_size_problem`), naming it.

    At least 2 pixels per side for most images (the MLLM's x0.75 pre-scale must leave 1), an aspect ratio
    up to 200:1; letterboxing and CLIP take any size.
    """
    from .mllm import mllm_size_problem  # the rule is the MLLM's (spec 2.5)

    problem = mllm_size_problem(*size)
    if problem is not None:
        raise ReferenceError(f"{name} is {size[0]}x{size[1]} pixels: {problem}")


def check_reference_files(paths: Sequence[str | os.PathLike]) -> None:
    """Check 1-4 reference files as :func:`load_references` would, reading only their headers.

    For jobs that load the images much later (a manifest run), so that a bad file fails the job at once.
    """
    for index, path in enumerate(list(paths)[:MAX_REFERENCES]):
        name = reference_name(index, path)
        if not Path(path).is_file():
            raise ReferenceError(f"{name}: image file not found")
        try:
            with PIL.Image.open(path) as image:  # reads the header, not the pixels
                size = image.size
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ReferenceError(f"{name}: cannot read image: {err}") from err
        check_reference_size(size, name)


@dataclass(frozen=True)
class Letterboxed:
    """A reference pasted on a black canvas of the target size.

    Attributes:
        canvas: ``(3, H, W)`` float32 in [0, 1].
        mask: ``(H, W)`` float32, 1 on the pasted rectangle, 0 on the border.
        box: ``(left, top, width, height)`` of the pasted rectangle.
    """

    canvas: torch.Tensor
    mask: torch.Tensor
    box: tuple[int, int, int, int]


def letterbox(image: PIL.Image.Image, height: int, width: int) -> Letterboxed:
    """Fit ``image`` inside ``height x width`` without enlarging it, centred on black (spec 2.1)."""
    w, h = image.size
    scale = min(width / w, height / h, 1.0)
    new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), PIL.Image.Resampling.LANCZOS)
    left, top = (width - new_w) // 2, (height - new_h) // 2

    canvas = torch.zeros(3, height, width)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    canvas[:, top : top + new_h, left : left + new_w] = pixels
    mask = torch.zeros(height, width)
    mask[top : top + new_h, left : left + new_w] = 1.0
    return Letterboxed(canvas=canvas, mask=mask, box=(left, top, new_w, new_h))
