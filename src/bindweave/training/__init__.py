"""BindWeave training: data, feature precomputation and the FSDP2 trainer (spec 4).

Entry points (what ``bindweave precompute`` and ``bindweave train CONFIG`` call):

- :class:`PrecomputeConfig` + :func:`run_precompute`: encode a manifest's clips once into a feature cache;
- :func:`load_train_config` -> :class:`TrainConfig` + :func:`run_train`: train.

Names are imported lazily so that ``import bindweave.training`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bindweave._lazy import lazy_getattr

if TYPE_CHECKING:
    from bindweave.training.config import ConfigError, PrecomputeConfig, TrainConfig, load_train_config
    from bindweave.training.precompute import PrecomputeSummary, run_precompute
    from bindweave.training.trainer import TrainSummary, run_train

_EXPORTS = {
    "ConfigError": "config",
    "PrecomputeConfig": "config",
    "TrainConfig": "config",
    "load_train_config": "config",
    "PrecomputeSummary": "precompute",
    "run_precompute": "precompute",
    "TrainSummary": "trainer",
    "run_train": "trainer",
}

__all__ = [
    "ConfigError",
    "PrecomputeConfig",
    "PrecomputeSummary",
    "TrainConfig",
    "TrainSummary",
    "load_train_config",
    "run_precompute",
    "run_train",
]


__getattr__ = lazy_getattr(__name__, _EXPORTS)
