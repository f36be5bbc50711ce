"""``python -m bindweave.training CONFIG``: the same as ``bindweave train CONFIG``.

It is the form ``torchrun`` launches::

    torchrun --nnodes 64 --nproc_per_node 8 ... -m bindweave.training configs/paper_14b.yaml
"""

import sys

from bindweave.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
