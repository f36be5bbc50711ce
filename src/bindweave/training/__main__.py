"""``python -m bindweave.training CONFIG``: train from a YAML/JSON config.

The same as ``bindweave train CONFIG``, and the form ``torchrun`` launches::

    torchrun --nnodes 64 --nproc_per_node 8 ... -m bindweave.training configs/paper_14b.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_train_config
from .trainer import run_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bindweave.training", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="training config (YAML or JSON)")
    args = parser.parse_args(argv)
    run_train(load_train_config(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
