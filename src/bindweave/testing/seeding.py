"""Seeded initialisation of the tiny components: one seed gives byte-identical weights for every component."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Each component draws from its own stream, so changing one never changes another's weights.
SEED_OFFSETS = {"text_encoder": 1, "image_encoder": 2, "vae": 3, "transformer": 4, "connector": 5, "mllm": 6}


@contextmanager
def seeded(seed: int, component: str) -> Iterator[None]:
    """Seed torch for one component's initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + SEED_OFFSETS[component])
        yield
