"""``bindweave toy base``: train the toy VAE, then save the untrained toy pipeline around it.

The VAE is the only component trained before the DiT (a random one decodes nothing). It learns to
reconstruct toy clips rendered on the fly from the training split, and letterboxed reference canvases,
as BindWeave encodes them, in two phases (:func:`vae_phases`):

1. windows of ``1 + 2 t`` frames (9 at the default 4x temporal compression ``t``): the first frame alone
   and two t-frame chunks. The causal Wan VAE runs its convolutions differently on each of the three
   (zero history, a one-frame history, a full chunk's history) and every later chunk of a 17-frame clip
   runs like the third, so all three must be trained;
2. whole 17-frame clips, as the VAE is used, at a quarter of the learning rate.

Both train on random square crops (the VAE is convolutional apart from its mid-block attention, so it
runs on whole frames), which makes a step several times cheaper. Loss: L1 + MSE on the pixels decoded
from the posterior mode, plus a tiny KL term. The sprites cover a few percent of a clip, so a plain mean
lets the background dominate; ``subject_weight`` weighs the sprites' pixels (their masks grown by one
pixel, so edges count) ``1 + subject_weight`` times a background pixel. The per-channel latent mean / std
are then measured on whole clips and saved in the VAE config, as Wan's are, so the DiT sees unit-scale
latents.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock
from tqdm.auto import tqdm

from bindweave.conditioning.references import letterbox
from bindweave.config import to_dict
from bindweave.io.files import atomic_folder, atomic_write_json

from .config import ToyBaseConfig
from .model import build_toy_pipeline, toy_vae
from .sprites import reference_image
from .world import FRAME_SIZE, NUM_FRAMES, render_clip, sample_scene, scene_rng

logger = logging.getLogger(__name__)

__all__ = [
    "ToyBaseConfig",
    "VaePhase",
    "fit_vae",
    "initial_vae",
    "reconstruction_loss",
    "run_toy_base",
    "toy_vae_batch",
    "train_toy_vae",
    "vae_phases",
]

_KL_WEIGHT = 1e-6
_STATS_CLIPS = 64
_RECORD = "toy_base.json"  # the settings a base folder was made with
# Options added later, with the values every base folder made before them had.
_EARLIER_SETTINGS = {
    "spatial_compression": 4,
    "temporal_compression": 4,
    "vae_width": 8,
    "latent_channels": 16,
    "subject_weight": 0.0,
    "tie_reference_embedding": False,
}


def _vae_input(frames: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> ``(3, F, H, W)`` float32 in [-1, 1], the VAE's input range."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def toy_vae_batch(
    rng: np.random.Generator, batch_size: int, seed: int, crop: int = FRAME_SIZE, frames: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """A VAE training batch: clip windows and reference canvases, and where their sprites are.

    Returns ``(B, 3, frames, crop, crop)`` pixels in [-1, 1] and ``(B, 1, frames, crop, crop)`` sprite
    masks (1 on a sprite's pixels and the pixels next to them, else 0). Scenes come from the training split
    (world seed ``seed``), indices and crop corners drawn by ``rng``.
    """
    if not 4 <= crop <= FRAME_SIZE or crop % 4:
        raise ValueError(f"crop must be a multiple of 4 in [4, {FRAME_SIZE}], got {crop}")
    clips, masks = [], []
    for _ in range(batch_size):
        scene = sample_scene(scene_rng(seed, "train", int(rng.integers(1 << 30))))
        if rng.uniform() < 0.25:  # a reference canvas, repeated: what the reference slots encode
            image, sprite_mask = reference_image(scene.subjects[0].sprite)
            canvas = letterbox(image, FRAME_SIZE, FRAME_SIZE)  # (3, H, W) in [0, 1], the sprite not enlarged
            left, top, width, height = canvas.box
            mask = torch.zeros(FRAME_SIZE, FRAME_SIZE)
            mask[top : top + height, left : left + width] = torch.from_numpy(
                np.asarray(sprite_mask) > 0
            ).float()
            clips.append(canvas.canvas[:, None].expand(3, frames, FRAME_SIZE, FRAME_SIZE) * 2 - 1)
            masks.append(mask.expand(frames, FRAME_SIZE, FRAME_SIZE))
            continue
        start = int(rng.integers(NUM_FRAMES - frames + 1))
        window = render_clip(scene, num_frames=start + frames)[start:]  # (frames, H, W, 3) uint8
        clips.append(_vae_input(window))
        masks.append(torch.from_numpy((window != np.array(scene.background_rgb, np.uint8)).any(-1)).float())
    # Grown by one pixel on the whole frame, then cropped: a crop's mask is a window of the frame's.
    grown = F.max_pool3d(torch.stack(masks)[:, None], (1, 3, 3), stride=1, padding=(0, 1, 1))
    top, left = rng.integers(FRAME_SIZE - crop + 1, size=(2, batch_size))
    corners = list(zip(top, left, strict=True))
    pixels = torch.stack(
        [c[..., t : t + crop, x : x + crop] for c, (t, x) in zip(clips, corners, strict=True)]
    )
    mask = torch.stack([m[..., t : t + crop, x : x + crop] for m, (t, x) in zip(grown, corners, strict=True)])
    return pixels, mask


def _cosine(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))


@dataclass(frozen=True)
class VaePhase:
    """One phase of VAE training: ``steps`` AdamW steps on ``frames``-frame windows, cosine from ``lr``."""

    name: str
    frames: int
    steps: int
    batch_size: int
    lr: float
    stream: int  # which random stream of the seed draws the phase's clips


def vae_phases(config: ToyBaseConfig) -> list[VaePhase]:
    """Short windows first (cheap, every cache path), then whole clips, as the VAE is used."""
    window = 1 + 2 * config.temporal_compression  # the first frame and two chunks
    return [
        VaePhase("windows", window, config.steps, config.batch_size, config.lr, stream=1),
        VaePhase(
            "clips", NUM_FRAMES, config.clip_steps, max(1, config.batch_size // 2), config.lr / 4, stream=2
        ),
    ]


def initial_vae(config: ToyBaseConfig) -> AutoencoderKLWan:
    """The untrained toy VAE, every residual block starting as the identity (its last conv zeroed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = toy_vae(
            spatial_compression=config.spatial_compression,
            temporal_compression=config.temporal_compression,
            width=config.vae_width,
            latent_channels=config.latent_channels,
        )
    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            torch.nn.init.zeros_(module.conv2.weight)
            torch.nn.init.zeros_(module.conv2.bias)
    return vae


def reconstruction_loss(
    recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, subject_weight: float
) -> torch.Tensor:
    """L1 + MSE per pixel, weighted ``1 + subject_weight`` on ``mask`` (broadcast over channels) and
    normalised by the weights; at ``subject_weight`` 0 the plain mean, computed as before the option (so
    the recipe's default VAE trains on the same float32 values)."""
    error = recon - target
    if subject_weight == 0:
        return error.abs().mean() + error.pow(2).mean()
    weight = (1 + subject_weight * mask).expand_as(error)
    return (weight * (error.abs() + error.pow(2))).sum() / weight.sum()


def fit_vae(
    vae: AutoencoderKLWan, phase: VaePhase, *, crop: int, seed: int, subject_weight: float = 0.0
) -> None:
    """Run one training phase on ``vae`` in place (a fresh optimizer per phase)."""
    if phase.steps == 0:
        return
    optimizer = torch.optim.AdamW(vae.parameters(), lr=phase.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, phase.steps))
    rng = np.random.default_rng([seed, phase.stream])
    # The loss is on the decoder's raw output: AutoencoderKLWan.decode clamps to [-1, 1], and a clamped
    # pixel has no gradient, so a pixel pushed past the range would stay there.
    raw: list[torch.Tensor] = []
    hook = vae.decoder.register_forward_hook(lambda _module, _args, out: raw.append(out))
    vae.train()
    progress = tqdm(range(phase.steps), desc=f"toy VAE ({phase.name})", unit="step")
    try:
        for _ in progress:
            x, mask = toy_vae_batch(rng, phase.batch_size, seed, crop, frames=phase.frames)
            posterior = vae.encode(x).latent_dist
            raw.clear()
            vae.decode(posterior.mode())
            recon = torch.cat(raw, dim=2)  # (B, 3, frames, crop, crop), one decoder call per latent frame
            loss = reconstruction_loss(recon, x, mask, subject_weight) + _KL_WEIGHT * posterior.kl().mean()
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    finally:
        hook.remove()
        vae.eval()


def train_toy_vae(config: ToyBaseConfig) -> AutoencoderKLWan:
    """Train the toy VAE through :func:`vae_phases` and set its latent mean / std; returns it in eval mode."""
    vae = initial_vae(config)
    for phase in vae_phases(config):
        fit_vae(vae, phase, crop=config.crop, seed=config.seed, subject_weight=config.subject_weight)
    mean, std = latent_statistics(vae, config.seed)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return vae


@torch.no_grad()
def reconstruct_clip(vae: AutoencoderKLWan, frames: np.ndarray) -> np.ndarray:
    """A clip ``(F, H, W, 3)`` uint8 encoded (posterior mode) and decoded: ``(F, H, W, 3)`` floats in [0, 1].

    What the DiT's latents can show at best: ``toy-eval``'s ``vae-recon`` ceiling.
    """
    param = next(vae.parameters())
    video = _vae_input(frames)[None].to(param.device, param.dtype)  # (1, 3, F, H, W) in [-1, 1]
    decoded = vae.decode(vae.encode(video).latent_dist.mode(), return_dict=False)[0]  # (1, 3, F, H, W)
    return ((decoded[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mode over whole training clips."""
    latents = []
    for i in range(_STATS_CLIPS):
        frames = render_clip(sample_scene(scene_rng(seed, "train", i)))
        video = _vae_input(frames)[None]
        latents.append(vae.encode(video).latent_dist.mode())
    z = torch.cat(latents).transpose(0, 1).flatten(1)  # (z_dim, everything)
    return [round(v, 5) for v in z.mean(1).tolist()], [round(v, 5) for v in z.std(1).tolist()]


def _settings(config: ToyBaseConfig) -> dict:
    return {k: v for k, v in to_dict(config).items() if k not in ("out", "threads")}


def run_toy_base(config: ToyBaseConfig) -> Path:
    """Train the VAE and write the base pipeline folder atomically (renamed into place when complete).

    A folder already made with the same settings is kept (so the recipe can be rerun); one made with other
    settings is an error.
    """
    config.validate()
    out = Path(config.out)
    record = out / _RECORD
    if record.is_file():
        made_with = {**_EARLIER_SETTINGS, **json.loads(record.read_text())}
        if made_with != _settings(config):
            raise FileExistsError(
                f"{out} was made with other settings ({record}: {made_with}); choose another --out"
            )
        print(f"base pipeline (already built): {out.resolve()}")
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a toy base folder; choose another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    vae = train_toy_vae(config)
    pipe = build_toy_pipeline(vae, seed=config.seed, tie_references=config.tie_reference_embedding)
    with atomic_folder(out) as folder:  # out is absent or empty (checked above)
        pipe.save_pretrained(folder)
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)
        atomic_write_json(folder / _RECORD, _settings(config))
    print(f"base pipeline: {out.resolve()}")
    return out
