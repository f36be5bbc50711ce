"""Aesthetic: the LAION improved aesthetic predictor on CLIP ViT-L/14 image embeddings.

Per frame: CLIP image processor -> ``CLIPVisionModelWithProjection`` -> ``image_embeds`` (768-d) ->
L2-normalised -> MLP 768-1024-128-64-16-1. The video score is the mean over 32 uniformly sampled frames;
aggregation later clips it to [4, 7] (see :mod:`bindweave.eval.scores`).

Files (under ``models_dir``): ``clip-vit-large-patch14/`` (``openai/clip-vit-large-patch14``) and
``aesthetic-model.pth`` (the LAION ``sac+logos+ava1-l14-linearMSE`` MLP, distributed by OpenS2V as
``BestWishYsh/OpenS2V-Weight/aesthetic-model.pth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from bindweave.eval.scorers.base import DEFAULT_NUM_FRAMES, VideoSample, require_files, require_weights

__all__ = ["AestheticMLP", "AestheticScorer", "load_aesthetic_scorer", "CLIP_SOURCE", "MLP_SOURCE"]

CLIP_SOURCE = "openai/clip-vit-large-patch14"
MLP_SOURCE = "BestWishYsh/OpenS2V-Weight/aesthetic-model.pth (LAION sac+logos+ava1-l14-linearMSE.pth)"
CLIP_DIRNAME = "clip-vit-large-patch14"
MLP_FILENAME = "aesthetic-model.pth"


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head.

    The dropout layers do nothing at inference but are kept so the module indices (``layers.0``,
    ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``) match the released state dict.
    """

    def __init__(self, input_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class AestheticScorer:
    """Mean LAION aesthetic score over uniformly sampled frames (raw, about 1-10)."""

    name = "aesthetic"

    def __init__(
        self,
        clip: nn.Module,
        processor,
        mlp: AestheticMLP,
        num_frames: int = DEFAULT_NUM_FRAMES,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.clip = clip.eval().to(device)
        self.processor = processor
        self.mlp = mlp.eval().to(device)
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings ``(N, D)`` (float32)."""
        out = []
        dtype = next(self.clip.parameters()).dtype
        for start in range(0, len(images), self.batch_size):
            batch = self.processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device, dtype)
            embeds = self.clip(pixel_values=pixels).image_embeds.float()
            out.append(embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True))
        return torch.cat(out)

    @torch.no_grad()
    def score_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One aesthetic score per image, ``(N,)``."""
        embeds = self.embed(images)
        mlp_dtype = next(self.mlp.parameters()).dtype
        return self.mlp(embeds.to(mlp_dtype)).float().squeeze(-1)

    def __call__(self, sample: VideoSample) -> float:
        return float(self.score_images(sample.sampled_images(self.num_frames)).mean())


def load_aesthetic_scorer(
    clip_path: str | Path,
    mlp_path: str | Path,
    device: str | torch.device = "cpu",
    num_frames: int = DEFAULT_NUM_FRAMES,
) -> AestheticScorer:
    """Load CLIP ViT-L/14 (a transformers folder) and the LAION MLP state dict; files checked first."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    clip_path, mlp_path = Path(clip_path), Path(mlp_path)
    require_files("aesthetic", [(clip_path, CLIP_SOURCE), (mlp_path, MLP_SOURCE)])
    require_files("aesthetic", [(clip_path / "preprocessor_config.json", CLIP_SOURCE)])
    require_weights("aesthetic", clip_path, CLIP_SOURCE)
    clip = CLIPVisionModelWithProjection.from_pretrained(clip_path, torch_dtype=torch.float32)
    processor = CLIPImageProcessor.from_pretrained(clip_path)
    mlp = AestheticMLP(input_dim=clip.config.projection_dim)
    state = torch.load(mlp_path, map_location="cpu", weights_only=True)
    try:
        mlp.load_state_dict(state)
    except RuntimeError as exc:
        raise RuntimeError(f"aesthetic: {mlp_path} is not a LAION aesthetic MLP state dict: {exc}") from exc
    return AestheticScorer(clip, processor, mlp, num_frames=num_frames, device=device)
