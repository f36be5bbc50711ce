"""The web app's sampler choice and the LoRAs it runs with, without a browser."""

from __future__ import annotations

import dataclasses

import pytest

from bindweave.ui.loader import PipelineLoader

gr = pytest.importorskip("gradio", reason="the web app needs the 'ui' extra: pip install 'bindweave[ui]'")
from bindweave.ui.app import build_app  # noqa: E402 - needs gradio


def test_the_sampler_choice_sets_its_steps_and_guidance_and_the_loras_are_named(pipe_loader, tmp_path):
    config = dataclasses.replace(pipe_loader.config, loras=["styles/a.safetensors:0.8", "b.safetensors"])
    loader = PipelineLoader(config, load=lambda _config: pipe_loader())  # the LoRAs themselves are not loaded
    app = build_app(loader, tmp_path)
    blocks = list(app.blocks.values())
    (sampler,) = [b for b in blocks if getattr(b, "elem_id", None) == "sampler"]
    assert [c[0] for c in sampler.choices] == ["unipc", "euler", "lightx2v", "lightx2v-lcm"]
    assert sampler.value == "unipc"
    header = next(b.value for b in blocks if isinstance(b, gr.Markdown) and "# BindWeave" in (b.value or ""))
    assert "LoRAs fused in: `styles/a.safetensors` (scale 0.8), `b.safetensors` (scale 1)" in header
    (on_sampler,) = [fn.fn for fn in app.fns.values() if fn.name == "on_sampler"]
    assert on_sampler("lightx2v") == (4, 1.0) and on_sampler("lightx2v-lcm") == (4, 1.0)
    assert on_sampler("unipc") == (50, 5.0) == on_sampler("euler")  # the tiny model's saved defaults
