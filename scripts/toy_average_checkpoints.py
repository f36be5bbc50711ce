"""Average the DiT weights of several checkpoints of one run into a pipeline folder (docs/toy-world.md).

At a constant learning rate the newest checkpoint carries the optimizer's step noise; the mean of the last
few (stochastic weight averaging) is meant to remove some of it without training (on the toy's long run it
did not help the subjects: docs/toy-world.md). The output is a pipeline folder that ``bindweave toy-eval``
reads: every component but the DiT is a link to those of ``--pipeline`` (default: the first checkpoint),
resolved, so the folder stays valid when that checkpoint is rotated away, as long as the run's ``frozen/``
folder stays.

    .venv/bin/python scripts/toy_average_checkpoints.py --out runs/toy-long/avg-2500 \\
        runs/toy-long/train/checkpoint-002500 runs/toy-long/history/checkpoint-002250 ...

A checkpoint is a checkpoint folder (with ``transformer/``) or a bare ``transformer/`` copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"


def transformer_dir(path: Path) -> Path:
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    if not (folder / WEIGHTS).is_file():
        raise SystemExit(f"{path}: no {WEIGHTS} in it or in its transformer/ folder")
    return folder


def average(folders: list[Path]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        weights = load_file(folder / WEIGHTS)
        if total and weights.keys() != total.keys():
            raise SystemExit(f"{folder}: its weights have other names than {folders[0]}'s")
        for name, value in weights.items():
            total[name] = total.get(name, 0) + value.double()
    return {name: (value / len(folders)).float().contiguous() for name, value in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--pipeline", type=Path, help="where the other components come from (default: the first checkpoint)"
    )
    args = parser.parse_args()
    folders = [transformer_dir(c) for c in args.checkpoints]
    pipeline = args.pipeline or args.checkpoints[0]
    if not (pipeline / "model_index.json").is_file():
        raise SystemExit(f"{pipeline}: not a pipeline folder (no model_index.json); pass --pipeline")
    tmp = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "transformer").mkdir(parents=True)
    for entry in pipeline.iterdir():
        if entry.name in ("transformer", "training_state"):
            continue
        if entry.is_dir():
            os.symlink(entry.resolve(), tmp / entry.name)
        else:
            shutil.copy(entry, tmp / entry.name)
    save_file(average(folders), tmp / "transformer" / WEIGHTS)
    shutil.copy(folders[0] / "config.json", tmp / "transformer" / "config.json")
    (tmp / "averaged_from.json").write_text(json.dumps([str(f) for f in folders], indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"{args.out}: the mean of {len(folders)} checkpoints' DiT weights")


if __name__ == "__main__":
    main()
