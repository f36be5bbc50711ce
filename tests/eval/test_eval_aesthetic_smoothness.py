"""Aesthetic (tiny CLIP through the real loader) and MotionSmoothness (stand-in quality model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bindweave.eval.scorers.aesthetic import AestheticMLP, AestheticScorer, load_aesthetic_scorer
from bindweave.eval.scorers.base import MissingModelFileError, VideoSample
from bindweave.eval.scorers.smoothness import (
    MotionSmoothnessScorer,
    artifact_frames,
    expand_to_square,
    quality_from_logits,
    sliding_windows,
    smoothness_from_scores,
)


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture
def aesthetic_files(tmp_path):
    """A tiny CLIP vision tower with a 768-d projection (as ViT-L/14) and a random LAION MLP, on disk."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=768,
    )
    clip_dir = tmp_path / "clip-vit-large-patch14"
    CLIPVisionModelWithProjection(config).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        clip_dir
    )
    mlp_path = tmp_path / "aesthetic-model.pth"
    torch.save(AestheticMLP().state_dict(), mlp_path)
    return clip_dir, mlp_path


def test_mlp_matches_the_released_state_dict_layout():
    keys = set(AestheticMLP().state_dict())
    expected = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert keys == expected
    shapes = [tuple(AestheticMLP().state_dict()[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)]
    assert shapes == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]


def test_aesthetic_scorer_pipeline(aesthetic_files):
    clip_dir, mlp_path = aesthetic_files
    scorer = load_aesthetic_scorer(clip_dir, mlp_path, num_frames=4)
    frames = _frames(9)
    sample = VideoSample.from_frames("singleobj_1", frames)

    # Independent computation: the 4 frames at linspace(0, 8, 4) = 0, 2.67, 5.33, 8 truncated as the
    # benchmark does (0, 2, 5, 8), processor -> CLIP image_embeds -> L2 normalise -> MLP -> mean.
    images = [Image.fromarray(frames[i]) for i in (0, 2, 5, 8)]
    with torch.no_grad():
        pixels = scorer.processor(images=images, return_tensors="pt")["pixel_values"]
        embeds = scorer.clip(pixel_values=pixels).image_embeds
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        expected = scorer.mlp(embeds).squeeze(-1).mean().item()
    assert scorer(sample) == pytest.approx(expected, rel=1e-5)
    assert torch.linalg.vector_norm(scorer.embed(images), dim=-1) == pytest.approx(torch.ones(4))


def test_aesthetic_scorer_accepts_in_memory_modules(aesthetic_files):
    clip_dir, mlp_path = aesthetic_files
    loaded = load_aesthetic_scorer(clip_dir, mlp_path)
    direct = AestheticScorer(loaded.clip, loaded.processor, loaded.mlp, num_frames=32)
    sample = VideoSample.from_frames("x_1", _frames(3))
    assert direct(sample) == pytest.approx(loaded(sample))


def test_aesthetic_missing_files_are_named(aesthetic_files):
    clip_dir, mlp_path = aesthetic_files
    mlp_path.unlink()
    with pytest.raises(MissingModelFileError, match=r"aesthetic-model\.pth.*OpenS2V-Weight"):
        load_aesthetic_scorer(clip_dir, mlp_path)
    with pytest.raises(MissingModelFileError, match=r"openai/clip-vit-large-patch14"):
        load_aesthetic_scorer(clip_dir.parent / "nowhere", mlp_path)


# ------------------------------------------------------------------------------------- MotionSmoothness


def test_sliding_windows_follow_released_padding():
    assert sliding_windows(5) == [[0, 0, 0], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 3, 4]]
    assert sliding_windows(1) == [[0, 0, 0]]


def test_quality_from_logits():
    sure_excellent = torch.tensor([[20.0, 0, 0, 0, 0]])
    sure_bad = torch.tensor([[0, 0, 0, 0, 20.0]])
    uniform = torch.zeros(1, 5)
    out = quality_from_logits(torch.cat([sure_excellent, sure_bad, uniform]))
    assert out.tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-6)


def test_artifacts_mark_both_sides_of_a_jump():
    scores = [0.50, 0.50, 0.60, 0.60, 0.61, 0.61]
    assert artifact_frames(scores).tolist() == [1, 2]  # the 0.01 step stays under 0.025
    assert smoothness_from_scores(scores) == pytest.approx(1 - 2 / 6)
    assert smoothness_from_scores([0.7] * 4) == 1.0


def test_expand_to_square_centres_content():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand_to_square(image, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (1, 2, 3)
    assert square.getpixel((20, 20)) == (255, 0, 0)
    assert square.getpixel((20, 9)) == (1, 2, 3) and square.getpixel((20, 10)) == (255, 0, 0)


class BrightnessQuality:
    """Stand-in for Q-Align: a window's quality is its mean brightness in [0, 1]."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, windows):
        self.calls.append(len(windows))
        return [float(np.mean([np.asarray(f) for f in w])) / 255 for w in windows]


def test_motion_smoothness_flags_a_flash_frame():
    frames = np.full((10, 16, 16, 3), 100, np.uint8)
    frames[5] = 200
    quality = BrightnessQuality()
    scorer = MotionSmoothnessScorer(quality, batch_size=4)
    # Windows around frames 4, 5, 6 contain the flash once -> equal scores; the steps 3->4 and 6->7
    # are jumps, so frames 3, 4, 6, 7 are artifacts: 1 - 4/10.
    assert scorer(VideoSample.from_frames("singleobj_2", frames)) == pytest.approx(0.6)
    assert quality.calls == [4, 4, 2]  # all 10 frames (released default), batched
    assert scorer(VideoSample.from_frames("singleobj_3", np.full((6, 8, 8, 3), 90, np.uint8))) == 1.0


def test_motion_smoothness_can_sample_frames():
    quality = BrightnessQuality()
    scorer = MotionSmoothnessScorer(quality, num_frames=5)
    scorer(VideoSample.from_frames("a_1", np.full((20, 8, 8, 3), 90, np.uint8)))
    assert sum(quality.calls) == 5


def test_quality_model_must_score_every_window():
    scorer = MotionSmoothnessScorer(lambda windows: [0.5])
    with pytest.raises(ValueError, match="1 scores for 3 windows"):
        scorer(VideoSample.from_frames("a_1", np.zeros((3, 8, 8, 3), np.uint8)))
