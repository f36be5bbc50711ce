"""Tiny pretrained components and a tiny clip dataset, built once per test session.

The dataset: short mp4 clips of a coloured square moving over a grey background (20 frames of 48x64 at
32 fps, so sampling 9 frames at 16 fps exercises the frame-rate conversion, the resize and the centre
crop), each with reference images of its subject (a masked cut-out and a plain image).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.io.video import write_video
from bindweave.training.config import TrainConfig, from_mapping

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 200, 30)]


@pytest.fixture(scope="session")
def tiny_release_with_config(tmp_path_factory: pytest.TempPathFactory):
    """A tiny release whose DiT folder keeps its ``config.json`` (the session's ``tiny_release`` has none)."""
    from bindweave.testing import build_tiny_release

    return build_tiny_release(tmp_path_factory.mktemp("release"), with_transformer_config=True)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_release_with_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny release saved as one BindWeavePipeline folder (what ``model.pipeline`` points at)."""
    from bindweave.pipeline import BindWeavePipeline

    folder = tmp_path_factory.mktemp("pipeline") / "tiny-bindweave"
    release = tiny_release_with_config
    pipe = BindWeavePipeline.from_released(
        release.wan, release.transformer, release.mllm, torch_dtype=torch.float32
    )
    pipe.save_pretrained(folder)
    return folder


def moving_square_video(colour: tuple[int, int, int], frames: int = 20, height: int = 48, width: int = 64):
    video = np.full((frames, height, width, 3), 128, dtype=np.uint8)
    for t in range(frames):
        left = 4 + 2 * t
        video[t, 14:30, left : left + 16] = colour
    return video


def write_subject(folder: Path, name: str, colour: tuple[int, int, int]) -> tuple[Path, Path]:
    """A 40x30 reference: the square subject on a noisy background, and its mask."""
    rng = np.random.default_rng(len(name))
    image = rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8)
    image[8:22, 10:28] = colour
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[8:22, 10:28] = 255
    image_path, mask_path = folder / f"{name}.png", folder / f"{name}_mask.png"
    PIL.Image.fromarray(image).save(image_path)
    PIL.Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def manifest_line(video: str, prompt: str, references: list[dict[str, Any]]) -> str:
    return json.dumps({"video": video, "prompt": prompt, "references": references})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``manifest.jsonl`` (4 clips, 1-2 references each) and the files it names."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "clips").mkdir()
    (root / "subjects").mkdir()
    lines = []
    for i, colour in enumerate(COLOURS):
        write_video(moving_square_video(colour), root / "clips" / f"{i}.mp4", fps=32)
        image, mask = write_subject(root / "subjects", f"subject{i}", colour)
        refs = [{"image": f"subjects/{image.name}", "mask": f"subjects/{mask.name}"}]
        if i % 2:
            refs.append({"image": f"subjects/{image.name}", "mask": None})
        lines.append(manifest_line(f"clips/{i}.mp4", f"A square number {i} slides to the right.", refs))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_config_dict(
    output_dir: Path, pipeline_dir: Path, manifest: Path, **overrides: Any
) -> dict[str, Any]:
    """A tiny CPU training config as plain data (what a YAML file would hold); ``overrides`` replace keys."""
    config: dict[str, Any] = {
        "output_dir": str(output_dir),
        "model": {"pipeline": str(pipeline_dir), "encoder_dtype": "float32"},
        "data": {
            "height": 32,
            "width": 32,
            "num_frames": 9,
            "fps": 16.0,
            "feature_dtype": "float32",
            "num_workers": 0,
        },
        "stages": [{"name": "main", "steps": 3, "manifest": str(manifest), "lr": 1e-4}],
        "precision": "fp32",
        "gradient_checkpointing": False,
        "logging": {"every_steps": 1, "tensorboard": False},
        "checkpoint": {"every_steps": 1000, "keep_last": 2, "save_dtype": "float32"},
    }
    config.update(overrides)
    return config


def build_config(data: dict[str, Any]) -> TrainConfig:
    config = from_mapping(TrainConfig, data, where="test config")
    config.validate()
    return config


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_cache(tiny_pipeline_dir: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny dataset's features, precomputed once (training tests read them instead of re-encoding)."""
    from bindweave.training.config import PrecomputeConfig
    from bindweave.training.precompute import run_precompute

    root = tmp_path_factory.mktemp("cache")
    config_file = write_config(
        root / "train.json",
        tiny_config_dict(root / "unused", tiny_pipeline_dir, tiny_dataset / "manifest.jsonl"),
    )
    summary = run_precompute(
        PrecomputeConfig(
            config=config_file, manifest=tiny_dataset / "manifest.jsonl", output_dir=root / "features"
        )
    )
    assert summary.clips == len(COLOURS) and summary.encoded == len(COLOURS)
    return root / "features"
