"""An exponential moving average of the trainable weights, for sampling (the config's ``ema`` section).

diffusers' :class:`~diffusers.training_utils.EMAModel` does the averaging. What this adds is what a
resumable, sharded run needs: the average keyed by parameter name, so torch.distributed.checkpoint saves
each rank's shard beside the weights it averages, and a context that puts the average into the model
while a checkpoint's inference weights are written or validation videos are made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel

__all__ = ["EMAWeights"]


class EMAWeights:
    """``average <- decay * average + (1 - decay) * weight`` after every optimizer step.

    As diffusers' EMAModel does, the first update takes the weights as they are. With ``warmup`` the
    decay then ramps as ``min(decay, (1 + k) / (10 + k))`` (``k``: updates before this one), so a run
    from random weights does not keep its first steps in the average for long; without it the decay is
    ``decay`` from the second update on, for an average started from trained weights. The average lives
    beside the weights (same device, dtype and sharding).
    """

    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], decay: float, warmup: bool):
        self.names = [name for name, _ in named_parameters]
        self.params = [param for _, param in named_parameters]
        # min_decay = decay turns the ramp off (EMAModel clamps its ramped decay from below). Not foreach:
        # FSDP2's DTensors have no sharding rule for _foreach_copy_.
        self._ema = EMAModel(self.params, decay=decay, min_decay=0.0 if warmup else decay, foreach=False)

    @property
    def decay(self) -> float:
        return self._ema.decay

    @property
    def updates(self) -> int:
        """Optimizer steps averaged in since the average started."""
        return self._ema.optimization_step

    def update(self) -> None:
        self._ema.step(self.params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average by parameter name (references, so loading into it fills it in place)."""
        return dict(zip(self.names, self._ema.shadow_params, strict=True))

    def set_updates(self, updates: int) -> None:
        self._ema.optimization_step = updates

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block and its own weights again after it."""
        self._ema.store(self.params)
        self._ema.copy_to(self.params)
        try:
            yield
        finally:
            self._ema.restore(self.params)
