"""Join finished feature caches into one that lists all their clips (the files stay where they are).

An experiment helper (docs/toy-world.md, "The long run"): train on the long run's cache plus a cache of
other toy clips without encoding anything again. The caches must have been made with the same settings
and VAE; the joined index refers to their clip files by relative path, and cache ``k``'s manifest line
``n`` becomes line ``k * 1_000_000 + n``.

    .venv/bin/python scripts/toy_mix_caches.py --out runs/toy-mixed/cache runs/toy-long/cache runs/toy-centred/cache

``--num-references N`` keeps only the clips with N references (one cache filtered: the one-subject run of the
eighth part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch

from bindweave.io.files import atomic_write_json
from bindweave.training.cache import INDEX_NAME, SETTINGS_NAME, SHARED_VIDEO_CONDITION

LINES_PER_CACHE = 1_000_000


def mix_caches(out: Path, caches: list[Path], num_references: int | None = None) -> dict:
    """Write ``out``'s settings, shared condition and index over ``caches`` (only their clips with
    ``num_references`` references, if given); returns the index."""
    indexes = [json.loads((cache / INDEX_NAME).read_text(encoding="utf-8")) for cache in caches]
    for cache, index in zip(caches[1:], indexes[1:], strict=True):
        if index["settings"] != indexes[0]["settings"]:
            raise SystemExit(f"{cache}: made with other settings than {caches[0]}")
    shared = [cache / SHARED_VIDEO_CONDITION for cache in caches]
    conditions = [safetensors.torch.load_file(p)["video_condition"] for p in shared if p.is_file()]
    if any(not torch.equal(c, conditions[0]) for c in conditions[1:]):
        raise SystemExit("the caches' grey-video conditions differ: made with different VAEs")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(caches[0] / SETTINGS_NAME, out / SETTINGS_NAME)
    if conditions:
        shutil.copyfile(shared[0], out / SHARED_VIDEO_CONDITION)
    clips, skipped = [], []
    for k, (cache, index) in enumerate(zip(caches, indexes, strict=True)):
        for clip in index["clips"]:
            if num_references is not None and clip["num_references"] != num_references:
                continue
            file = os.path.relpath((cache / clip["file"]).resolve(), out.resolve())
            clips.append({**clip, "line": k * LINES_PER_CACHE + clip["line"], "file": file})
        skipped += [{**skip, "line": k * LINES_PER_CACHE + skip["line"]} for skip in index["skipped"]]
    manifests = [index["manifest"] for index in indexes]
    mixed = {**indexes[0], "manifest": manifests, "clips": clips, "skipped": skipped}
    atomic_write_json(out / INDEX_NAME, mixed)
    return mixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the joined cache's folder")
    parser.add_argument("caches", type=Path, nargs="+", help="finished caches (bindweave precompute)")
    parser.add_argument("--num-references", type=int, help="keep only the clips with this many references")
    args = parser.parse_args()
    index = mix_caches(args.out, args.caches, args.num_references)
    print(f"{len(index['clips'])} clips from {len(args.caches)} caches in {args.out}")


if __name__ == "__main__":
    main()
