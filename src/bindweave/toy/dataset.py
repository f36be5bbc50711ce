"""``bindweave toy data``: write toy samples as a training manifest (the real data path) plus ground truth.

Layout of the output folder::

    manifest.jsonl                the training manifest (bindweave.training.manifest format)
    scenes.jsonl                  line i: the Scene of manifest line i (ground truth for scoring)
    clips/000042.mp4              17 frames, 64 x 64, 16 fps, H.264 at the highest quality
    masks/000042.mp4              the clip's subject mask (white on the subjects), the same frames
    references/000042_0.png       subject 0 as a user would crop it (sprite on white) ...
    references/000042_0_mask.png  ... and its mask (white on the subject)

Every file is written atomically and a sample whose files all exist is not rewritten, so an interrupted
run resumes; the two JSONL files are written last, in sample order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bindweave.io.files import atomic_write, atomic_write_text
from bindweave.io.video import write_video

from .config import ToyDataConfig
from .sprites import reference_image
from .world import Scene, render_clip, render_subject_mask, toy_scene

logger = logging.getLogger(__name__)

__all__ = ["ToyDataConfig", "read_scenes", "run_toy_data", "toy_scene", "write_scenes", "write_toy_dataset"]

FPS = 16


def _save_png(image, path: Path) -> None:
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")


def _write_sample(out: Path, index: int, scene: Scene) -> dict:
    """Write one sample's files (unless all exist) and return its manifest entry."""
    stem = f"{index:06d}"
    video, subject_mask = Path("clips") / f"{stem}.mp4", Path("masks") / f"{stem}.mp4"
    references = []
    for k, subject in enumerate(scene.subjects):
        image_path = Path("references") / f"{stem}_{k}.png"
        mask_path = Path("references") / f"{stem}_{k}_mask.png"
        if not ((out / image_path).is_file() and (out / mask_path).is_file()):
            image, mask = reference_image(subject.sprite)
            _save_png(image, out / image_path)
            _save_png(mask, out / mask_path)
        references.append({"image": image_path.as_posix(), "mask": mask_path.as_posix()})
    if not (out / video).is_file():
        write_video(render_clip(scene), out / video, fps=FPS, quality=10)
    if not (out / subject_mask).is_file():
        white = np.repeat(render_subject_mask(scene)[..., None], 3, axis=-1).astype(np.uint8) * 255
        write_video(white, out / subject_mask, fps=FPS, quality=10)
    return {
        "video": video.as_posix(),
        "prompt": scene.prompt,
        "references": references,
        "subject_mask": subject_mask.as_posix(),
    }


def write_toy_dataset(out: Path, num_clips: int, *, split: str = "train", seed: int = 0) -> Path:
    """Write ``num_clips`` samples of ``split`` to ``out``; returns the manifest path."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    scenes = (toy_scene(seed, split, index) for index in range(num_clips))
    manifest = write_scenes(out, scenes, total=num_clips, desc=f"toy {split} samples")
    logger.info("wrote %d %s samples to %s", num_clips, split, out)
    return manifest


def write_scenes(
    out: Path, scenes: Iterable[Scene], *, total: int | None = None, desc: str = "toy samples"
) -> Path:
    """Write ``scenes`` (sample i: ``clips/{i:06d}.mp4`` ...) and their two JSONL files; returns the manifest.

    A sample whose files exist is kept as it is (resuming), so rerun into the same folder only with the
    same scenes, as a seeded source gives.
    """
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "references").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    entries, written = [], []
    for index, scene in enumerate(tqdm(scenes, total=total, desc=desc, unit="clip")):
        entries.append(_write_sample(out, index, scene))
        written.append(scene.to_dict())
    if not entries:
        raise ValueError("no scenes to write")
    atomic_write_text(out / "scenes.jsonl", "".join(json.dumps(s) + "\n" for s in written))
    manifest = out / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(e) + "\n" for e in entries))
    return manifest


def read_scenes(path: Path) -> list[Scene]:
    """The scenes of a ``scenes.jsonl`` file, in order."""
    with Path(path).open(encoding="utf-8") as lines:
        return [Scene.from_dict(json.loads(line)) for line in lines if line.strip()]


def run_toy_data(config: ToyDataConfig) -> Path:
    manifest = write_toy_dataset(config.out, config.num_clips, split=config.split, seed=config.seed)
    print(f"manifest: {manifest.resolve()}")
    return manifest
