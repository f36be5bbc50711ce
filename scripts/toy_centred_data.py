"""Toy scenes whose first subject stays still in the centre: its reference lines up with it in every frame.

An experiment for docs/toy-world.md ("The long run"): the long run's DiT reads its prompt but ignores its
references. A reference is letterboxed into the centre of its slot, while the world's subjects start in the
grid's cells and move, so copying one means looking up a sprite at another place. A subject that stays
still in the centre cell sits where its reference does (the same latent tokens, 4 to 20 frames later), the
easiest copy there is; the world has few of them (only still subjects may start there, 1 in ~70 subjects).
These scenes are the world's own (``sample_scene``), with the first subject's cell and motion replaced and
the prompt drawn again; a scene whose centre another subject holds is skipped.

    .venv/bin/python scripts/toy_centred_data.py --out runs/toy-centred/data --num-clips 600
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bindweave.toy.dataset import write_scenes
from bindweave.toy.world import Scene, sample_scene, scene_prompt

CENTRE = (1, 1)


def centred_scenes(seed: int, count: int) -> Iterator[Scene]:
    """``count`` scenes, each with subject 0 still in the centre cell; deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 7919])  # a stream of its own, apart from the world's splits
    made = 0
    while made < count:
        scene = sample_scene(rng)
        if any(subject.cell == CENTRE for subject in scene.subjects[1:]):
            continue
        first = dataclasses.replace(scene.subjects[0], cell=CENTRE, direction="still")
        subjects = (first, *scene.subjects[1:])
        yield Scene(scene.background, subjects, scene_prompt(scene.background, subjects, rng))
        made += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (as `bindweave toy data` writes)"
    )
    parser.add_argument("--num-clips", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = write_scenes(args.out, centred_scenes(args.seed, args.num_clips), total=args.num_clips)
    print(f"manifest: {manifest.resolve()}")


if __name__ == "__main__":
    main()
