"""Does a toy checkpoint's DiT read the motion or the place words of its prompt? (docs/toy-world.md)

For a few training clips and a ladder of noise levels, prints the DiT's x0 error on the subjects' latent
elements (the clip's subject mask), as a fraction of their energy: with the clip's own prompt, and with the
same prompt whose words of one kind are swapped, everything else equal (references, background, the other
words). ``--swap motion`` replaces every motion phrase by the opposite direction's ("moves to the left" ->
"moves to the right", "rises" -> "falls", ...; a still subject keeps its words); ``--swap cells`` mirrors
every start cell left-right ("in the top left corner" -> "in the top right corner"; the middle column
keeps its words). A clip with nothing to swap is passed over. Then what the swap costs (the difference of
the two errors), how far it moves the prediction itself on those elements, and for scale how far the next
probed clip's whole prompt (umT5 and MLLM states) moves it. A DiT that places and moves its subjects as told
loses accuracy under the swap (a positive cost); one that ignores those words predicts the same either way.
A small move can cost much: the cost is bounded by twice the root of (move x own error). Both prompts are encoded here with the run's frozen encoders.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/toy_prompt_probe.py runs/toy-long/train/checkpoint-006500 --swap cells
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import torch

from bindweave.denoiser import Conditioning, predict_velocity
from bindweave.flow import add_noise
from bindweave.models.transformer import BindWeaveTransformer3DModel
from bindweave.toy.world import CELL_NAMES, MOTION_PHRASES
from bindweave.training.config import load_train_config
from bindweave.training.data import ClipDataset
from bindweave.training.features import FeatureEncoder
from bindweave.training.manifest import read_clip_manifest
from bindweave.training.model import load_pipeline

SIGMAS = (0.2, 0.5, 0.7, 0.85, 0.95, 0.99)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swaps(kind: str) -> dict[str, str]:
    """Each phrase of ``kind`` (``motion`` or ``cells``) and the phrase it is swapped for."""
    if kind == "motion":
        return {
            phrase: MOTION_PHRASES[OPPOSITE[direction]][i]
            for direction in OPPOSITE
            for i, phrase in enumerate(MOTION_PHRASES[direction])
        }
    return {name: CELL_NAMES[row, 2 - col] for (row, col), name in CELL_NAMES.items() if col != 1}


def swap_words(prompt: str, table: dict[str, str]) -> str:
    """``prompt`` with every phrase of ``table`` replaced at once (longest first); ValueError if none."""
    pattern = re.compile("|".join(rf"\b{re.escape(p)}\b" for p in sorted(table, key=len, reverse=True)))
    swapped = pattern.sub(lambda m: table[m.group(0)], prompt)
    if swapped == prompt:
        raise ValueError(f"nothing to swap in {prompt!r}")
    return swapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint or pipeline folder (its transformer/)")
    parser.add_argument("--config", type=Path, default=Path("configs/toy-long.yaml"), help="the run's config")
    parser.add_argument("--manifest", type=Path, default=Path("runs/toy-long/data/manifest.jsonl"))
    parser.add_argument("--swap", choices=("motion", "cells"), default="motion", help="the words swapped")
    parser.add_argument(
        "--clips", type=int, default=16, help="training clips probed (every 37th of the manifest)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = load_train_config(args.config)
    pipe = load_pipeline(config.model, torch.float32, load_transformer=False)
    encoder = FeatureEncoder(pipe, config.data, torch.device("cpu"))
    dataset = ClipDataset(read_clip_manifest(args.manifest), config.data, config.seed)
    transformer = BindWeaveTransformer3DModel.from_pretrained(args.checkpoint / "transformer").eval()

    table, pairs, index = swaps(args.swap), [], 0
    while len(pairs) < args.clips:
        clip = dataset.load(index * 37 % len(dataset), epoch=0)
        index += 1
        try:
            swapped = dataclasses.replace(clip, prompt=swap_words(clip.prompt, table))
        except ValueError:  # nothing of this kind to swap in this clip's prompt
            continue
        pairs.append((encoder.encode(clip), encoder.encode(swapped)))

    generator = torch.Generator().manual_seed(0)
    print(f"{'sigma':>5} {'own':>7} {'swapped':>7} {'cost':>9} {'moved':>9} {'by another prompt':>17}")
    print(f"      (errors and moves on the subject elements, / |x0|^2 there; swap: {args.swap})")
    for sigma in SIGMAS:
        errors = torch.zeros(4)
        for k, (own, swapped) in enumerate(pairs):
            other = pairs[(k + 1) % len(pairs)][0]
            prompted = Conditioning(other.text[None], own.image[None], other.mllm[None], own.condition[None])
            x0 = own.latents[None]
            mask = own.subject_mask[None, None].expand_as(x0)  # (1, z, F', h, w)
            s = torch.tensor([sigma])
            x_t = add_noise(x0, torch.randn(x0.shape, generator=generator), s)
            with torch.no_grad():
                own_hat, swapped_hat, prompted_hat = (
                    x_t - sigma * predict_velocity(transformer, x_t, s * 1000, c).float()
                    for c in (own.conditioning(), swapped.conditioning(), prompted)
                )
            energy = (x0.pow(2) * mask).sum()
            errors[0] += ((own_hat - x0).pow(2) * mask).sum() / energy
            errors[1] += ((swapped_hat - x0).pow(2) * mask).sum() / energy
            errors[2] += ((swapped_hat - own_hat).pow(2) * mask).sum() / energy
            errors[3] += ((prompted_hat - own_hat).pow(2) * mask).sum() / energy
        e = errors / len(pairs)
        print(f"{sigma:5.2f} {e[0]:7.4f} {e[1]:7.4f} {e[1] - e[0]:+9.5f} {e[2]:9.5f} {e[3]:17.4f}")


if __name__ == "__main__":
    main()
