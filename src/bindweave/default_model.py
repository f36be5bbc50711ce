"""The embedded default model, so that ``make demo`` works on a fresh machine with no download.

The default is the toy BindWeave (:mod:`bindweave.toy`), shipped inside the package as a
``BindWeavePipeline`` folder of 8.2 MiB: a small BindWeave trained by ``make toy-long`` on the procedural
toy world and landed by ``make toy-long-land``, at 64 x 64 x 17, sampled at the guidance scale that scored
best on held-out toy scenes (its ``model_index.json``). Within the toy world only, it draws the prompt's
background and its references' checkered looks, but not yet reliably at their places or on their paths
(docs/toy-world.md's results table). The demo's prompt and references are a scene of the toy world's
``demo`` split, which training never sees.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import PIL.Image

SHIPPED_MODEL = Path(__file__).parent / "assets" / "toy-bindweave"
DEMO_SCENE = (0, "demo", 9)  # (world seed, split, index): two subjects, one falls while the other rises


def default_model_path() -> Path:
    """The folder of the shipped toy pipeline."""
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shipped toy model is missing: no model_index.json in {SHIPPED_MODEL}. Reinstall bindweave "
            "(the folder is part of the package), or pass --model"
        )
    return SHIPPED_MODEL


@cache
def embedded_guidance_scale() -> float:
    """The shipped model's saved ``default_guidance_scale`` (``toy land`` chooses it on held-out scenes)."""
    return float(
        json.loads((default_model_path() / "model_index.json").read_text())["default_guidance_scale"]
    )


def default_model_notice() -> str:
    """The line a command prints when it runs the embedded default model."""
    return f"Using the embedded default model, the toy BindWeave ({default_model_path()})."


@cache
def _demo_scene():
    from .toy.world import toy_scene

    return toy_scene(*DEMO_SCENE)


def demo_prompt() -> str:
    """The demo scene's prompt; it names each subject by its reference image's position."""
    return _demo_scene().prompt


def demo_references() -> list[PIL.Image.Image]:
    """The demo scene's reference images: each subject alone on white, as a user would crop it."""
    from .toy.sprites import reference_image

    return [reference_image(subject.sprite)[0] for subject in _demo_scene().subjects]


def demo_true_frames(num_frames: int) -> np.ndarray:
    """The demo scene's true clip, ``(num_frames, 64, 64, 3)`` uint8: what a perfect model would draw."""
    from .toy.world import render_clip

    return render_clip(_demo_scene(), num_frames)
