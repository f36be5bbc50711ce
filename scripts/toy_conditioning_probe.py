"""Does a toy checkpoint's DiT read its prompt and its references? (docs/toy-world.md, "The long run")

For a few cached training clips and a ladder of noise levels, prints the DiT's x0 error as a fraction of the
clip latents' energy: with the clip's own conditioning, with the next clip's references (VAE slots and CLIP
tokens) and with the next clip's prompt (umT5 and MLLM states); the identity ``x0 = x_t`` for scale. A model
that uses a stream loses accuracy when it is swapped. The last two columns are how far each swap moves the
prediction itself (the same fraction): a stream read but not yet useful moves it without costing accuracy,
and the sprites are too small a part of the latents for their error to show early. ``--window N`` counts
only the central N x N latent pixels of every frame (where scripts/toy_centred_data.py puts a still subject),
and ``--cache`` probes another cache made with the same settings.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/toy_conditioning_probe.py runs/toy-long/train/checkpoint-002000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bindweave.denoiser import Conditioning, predict_velocity
from bindweave.flow import add_noise
from bindweave.models.transformer import BindWeaveTransformer3DModel
from bindweave.training.cache import FeatureCache, feature_settings
from bindweave.training.config import load_train_config

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint or pipeline folder (its transformer/)")
    parser.add_argument("--config", type=Path, default=Path("configs/toy-long.yaml"), help="the run's config")
    parser.add_argument("--clips", type=int, default=8, help="cached clips probed (every 37th)")
    parser.add_argument(
        "--cache", type=Path, help="the feature cache probed (default: the config's first stage's)"
    )
    parser.add_argument("--window", type=int, help="count only the central N x N latent pixels of each frame")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = load_train_config(args.config)
    cache = FeatureCache(args.cache or config.stages[0].cache, feature_settings(config.data, config.seed))
    clips = [cache.load(cache.clips[i * 37 % len(cache.clips)]) for i in range(args.clips)]
    transformer = BindWeaveTransformer3DModel.from_pretrained(args.checkpoint / "transformer").eval()
    generator = torch.Generator().manual_seed(0)
    print("sigma  own      identity  refs-swapped  prompt-swapped | moved by refs  by prompt   (/ |x0|^2)")
    for sigma in SIGMAS:
        errors = torch.zeros(6)
        for k, clip in enumerate(clips):
            other = clips[(k + 1) % len(clips)]
            own = clip.conditioning()
            slots = own.condition.shape[2] - clip.latents.shape[1]
            refs = torch.cat([other.condition[None, :, :slots], own.condition[:, :, slots:]], dim=2)
            variants = [
                own,
                Conditioning(own.text, other.image[None], own.mllm, refs),
                Conditioning(other.text[None], own.image, other.mllm[None], own.condition),
            ]
            x0 = clip.latents[None]
            s = torch.tensor([sigma])
            x_t = add_noise(x0, torch.randn(x0.shape, generator=generator), s)
            with torch.no_grad():
                predictions = [
                    x_t - sigma * predict_velocity(transformer, x_t, s * 1000, c).float() for c in variants
                ]
            if args.window:
                x0, x_t, *predictions = (_centre(x, args.window) for x in (x0, x_t, *predictions))
            energy = x0.pow(2).sum()
            for i, x0_hat in zip((0, 2, 3), predictions, strict=True):
                errors[i] += (x0_hat - x0).pow(2).sum() / energy
            errors[1] += (x_t - x0).pow(2).sum() / energy
            for i, x0_hat in zip((4, 5), predictions[1:], strict=True):
                errors[i] += (x0_hat - predictions[0]).pow(2).sum() / energy
        e = errors / len(clips)
        print(
            f"{sigma:.2f}   {e[0]:.4f}   {e[1]:.4f}    {e[2]:.4f}        {e[3]:.4f}         | "
            f"{e[4]:.4f}         {e[5]:.4f}"
        )


def _centre(latents: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` latent pixels of every frame of ``(B, C, F, H, W)`` latents."""
    top, left = (latents.shape[-2] - size) // 2, (latents.shape[-1] - size) // 2
    return latents[..., top : top + size, left : left + size]


if __name__ == "__main__":
    main()
