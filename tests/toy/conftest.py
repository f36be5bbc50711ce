"""The toy tests' pipeline: the untrained toy BindWeave (toy VAE, toy tokenizers), built once and only read."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def toy_pipe():
    from bindweave.toy.model import build_toy_pipeline, toy_vae

    return build_toy_pipeline(toy_vae(), seed=0)
