"""``python -m bindweave``: the ``bindweave`` command, where no console script is installed (a source tree
on ``PYTHONPATH``, as ``make gpu-check`` runs it on a GPU node)."""

import sys

from bindweave.cli import main

sys.exit(main())
