"""Reference subjects for training: segmented cut-outs (spec 4).

At inference a reference is a photo of the subject, usually on a plain background. Training references
come from the clip itself (or a paired clip) with a segmentation mask from the dataset's annotations; to
look like inference references they are cut out the way OpenS2V-5M's own data loader does:

1. crop the image to the bounding box of the mask;
2. set every pixel outside the mask to the background colour (white by default, as OpenS2V does;
   ``data.subject_background: black`` is the option);
3. keep the mask as the alpha channel (RGBA), which the released augmentation rotates and resizes along
   with the subject (:mod:`bindweave.training.augment`); the mild augmentation uses the RGB alone.

and then, like every reference, they are letterboxed onto the black canvas by the inference code
(:func:`bindweave.conditioning.references.letterbox`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image

from bindweave.conditioning.references import ReferenceError, load_reference

__all__ = ["BACKGROUND_RGB", "cut_out_subject", "load_mask", "load_subject"]

Background = Literal["white", "black"]
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}


def cut_out_subject(
    image: PIL.Image.Image, mask: np.ndarray, background: Background = "white"
) -> PIL.Image.Image:
    """``image`` cropped to the box of ``mask`` (``(H, W)`` bool), as RGBA: RGB ``background`` outside the
    mask, alpha 255 on the mask and 0 elsewhere.

    Raises:
        ReferenceError: when the mask's size differs from the image's or the mask is empty.
    """
    if mask.shape != (image.height, image.width):
        raise ReferenceError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {image.width}x{image.height}"
        )
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ReferenceError("subject mask is empty")
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pixels = np.asarray(image.convert("RGB"))[top:bottom, left:right].copy()  # (h, w, 3)
    inside = mask[top:bottom, left:right]
    pixels[~inside] = BACKGROUND_RGB[background]
    alpha = np.where(inside, 255, 0).astype(np.uint8)[..., None]  # (h, w, 1)
    return PIL.Image.fromarray(np.concatenate([pixels, alpha], axis=-1), mode="RGBA")


def load_mask(path: Path) -> np.ndarray:
    """A subject mask file as ``(H, W)`` bool: pixels brighter than 127 (after greyscale) are the subject."""
    try:
        with PIL.Image.open(path) as mask:
            return np.asarray(mask.convert("L")) > 127
    except (OSError, PIL.UnidentifiedImageError) as err:
        raise ReferenceError(f"cannot read mask {path}: {err}") from err


def load_subject(
    image_path: Path, mask_path: Path | None, background: Background = "white"
) -> PIL.Image.Image:
    """A training reference as RGBA: the image cut out with its mask, or the whole image (opaque)."""
    image = load_reference(image_path, name=str(image_path))
    if mask_path is None:
        return image.convert("RGBA")
    try:
        return cut_out_subject(image, load_mask(mask_path), background)
    except ReferenceError as err:
        raise ReferenceError(f"{image_path} with mask {mask_path}: {err}") from err
