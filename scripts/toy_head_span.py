"""How much of a sample can a toy DiT's output head draw? (docs/toy-world.md, "The long run")

Every velocity the DiT predicts is ``proj_out.weight @ h + bias``, so sampling never removes the starting
noise outside the weight's span. For a few held-out clips this prints the share of the clip latents' energy
inside that span, the share of a noise draw left outside it, and the PSNR of the clip decoded from its true
latents, clean and with that leftover noise added; it saves one middle frame of each case to ``--png``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/toy_head_span.py runs/toy-long/train/checkpoint-002000 \\
        --base runs/toy-long/base
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from PIL import Image

from bindweave.conditioning.latents import denormalize_latents, encode_video
from bindweave.models.transformer import BindWeaveTransformer3DModel
from bindweave.toy.world import render_clip, sample_scene, scene_rng


def to_tokens(z: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """``(c, F, H, W)`` -> ``(tokens, pt * ph * pw * c)``, each row ordered as ``proj_out``'s outputs."""
    (c, f, h, w), (pt, ph, pw) = z.shape, patch
    z = z.reshape(c, f // pt, pt, h // ph, ph, w // pw, pw).permute(1, 3, 5, 2, 4, 6, 0)
    return z.reshape(-1, pt * ph * pw * c)


def from_tokens(t: torch.Tensor, shape: tuple[int, ...], patch: tuple[int, int, int]) -> torch.Tensor:
    (c, f, h, w), (pt, ph, pw) = shape, patch
    return t.reshape(f // pt, h // ph, w // pw, pt, ph, pw, c).permute(6, 0, 3, 1, 4, 2, 5).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint or pipeline folder (its transformer/)")
    parser.add_argument(
        "--base", type=Path, required=True, help="the pipeline folder whose vae/ it was trained on"
    )
    parser.add_argument("--clips", type=int, default=4, help="held-out clips")
    parser.add_argument(
        "--png", type=Path, default=Path("head_span.png"), help="frames: true / clean / + noise"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    dit = BindWeaveTransformer3DModel.from_pretrained(args.checkpoint / "transformer")
    vae = AutoencoderKLWan.from_pretrained(args.base / "vae").eval()
    patch = tuple(dit.config.patch_size)
    weight = dit.proj_out.weight.detach().double()  # (values a token, width)
    basis = torch.linalg.qr(weight).Q  # an orthonormal basis of the span
    print(f"proj_out {tuple(weight.shape)}, rank {torch.linalg.matrix_rank(weight).item()}")

    def decode(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            video = vae.decode(denormalize_latents(z[None].float(), vae), return_dict=False)[0][0]
        return ((video.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).numpy()  # (F, H, W, 3)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return float(10 * np.log10(255**2 / ((a - b) ** 2).mean()))

    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(args.clips):
        frames = render_clip(sample_scene(scene_rng(0, "heldout", i)))  # (F, H, W, 3) uint8
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float()[None] / 127.5 - 1
        with torch.no_grad():
            z = encode_video(vae, video)[0].double()  # (z, F, h, w), normalised
        tokens = to_tokens(z, patch)
        noise = torch.randn(tokens.shape, generator=generator, dtype=torch.float64)
        left = noise - noise @ basis @ basis.T
        inside = (tokens @ basis).pow(2).sum() / tokens.pow(2).sum()
        clean, noisy = decode(z), decode(z + from_tokens(left, tuple(z.shape), patch))
        print(
            f"clip {i}: latents inside the span {inside:.3f}; noise left outside {left.pow(2).sum() / noise.pow(2).sum():.3f}; "
            f"PSNR decoded {psnr(clean, frames):.1f} dB, with the leftover noise {psnr(noisy, frames):.1f} dB"
        )
        middle = len(frames) // 2
        rows.append(np.concatenate([frames[middle], clean[middle], noisy[middle]], axis=1).astype(np.uint8))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.png)
    print(f"frames: {args.png}")


if __name__ == "__main__":
    main()
