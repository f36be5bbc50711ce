"""A pipeline folder with a training checkpoint's own weights, where its ``transformer/`` holds their EMA.

A run with ``ema.decay`` set saves the average as the checkpoint's inference weights and keeps the weights
themselves in ``training_state/dcp`` (docs/training.md, the ``ema`` option). This writes a copy of the
checkpoint (its linked components resolved) whose ``transformer/`` is those weights, in float32, e.g. to
compare the two with ``bindweave toy-eval``. Full-DiT runs only (a LoRA run's average is its adapters).

    .venv/bin/python scripts/raw_weights.py runs/toy-long/train/checkpoint-004000 runs/toy-long/raw/s4000
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from bindweave.io.files import atomic_folder
from bindweave.models.transformer import BindWeaveTransformer3DModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint-* folder of a full-DiT run")
    parser.add_argument("out", type=Path, help="the pipeline folder to write (must not exist)")
    args = parser.parse_args()
    state = args.checkpoint / "training_state"
    info = json.loads((state / "state.json").read_text(encoding="utf-8"))
    if info.get("ema") is None:
        raise SystemExit(
            f"{args.checkpoint}: saved without an EMA, its transformer/ holds the weights already"
        )
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; give a new folder")

    transformer = BindWeaveTransformer3DModel.from_pretrained(
        args.checkpoint / "transformer", torch_dtype=torch.float32
    )
    weights = {"model": transformer.state_dict()}  # references: the load fills the model in place
    dcp.load(weights, checkpoint_id=state / "dcp", no_dist=True)
    with atomic_folder(args.out) as staged:
        shutil.copytree(args.checkpoint, staged, symlinks=False, dirs_exist_ok=True, ignore=_skip_state)
        shutil.rmtree(staged / "transformer")
        transformer.save_pretrained(staged / "transformer")
    print(f"wrote {args.out} (step {info['step']}'s weights; the EMA's were {info['ema']})")


def _skip_state(folder: str, names: list[str]) -> list[str]:
    return ["training_state"] if "training_state" in names else []


if __name__ == "__main__":
    main()
