"""The shipped toy model: the package's default, loaded from its folder, and better than a random DiT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bindweave.default_model import (
    SHIPPED_MODEL,
    default_model_notice,
    default_model_path,
    demo_prompt,
    demo_references,
)
from bindweave.generate import WeightsConfig
from bindweave.pipeline import BindWeavePipeline
from bindweave.toy.evaluate import ToyEvalConfig, toy_eval
from bindweave.toy.land import MAX_SHIPPED_BYTES
from bindweave.toy.model import TOY_GUIDANCE, TOY_SIZE, TOY_STEPS


@pytest.fixture(scope="module")
def shipped():
    return BindWeavePipeline.from_pretrained(default_model_path(), dtype=torch.float32)


def test_the_shipped_model_is_a_small_safetensors_pipeline_folder():
    files = [p for p in SHIPPED_MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert {p.parent.name for p in weights} == {"transformer", "vae", "text_encoder", "image_encoder", "mllm"}
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES  # 20 MiB; it is 8.2
    assert (SHIPPED_MODEL / "model_index.json").is_file()


def test_the_shipped_model_loads_at_the_toy_size(shipped):
    assert {k: shipped.config[f"default_{k}"] for k in TOY_SIZE} == TOY_SIZE
    assert shipped.config.default_guidance_scale >= TOY_GUIDANCE  # 1.0, or the scale `toy land` chose
    assert shipped.config.default_num_inference_steps == TOY_STEPS == 20
    # the long run's VAE (make toy-long): 2x space, no time compression, 4 channels
    assert (shipped.vae.config.scale_factor_spatial, shipped.vae.config.scale_factor_temporal) == (2, 1)
    assert shipped.vae.config.z_dim == 4
    assert not any(p.isnan().any() for p in shipped.transformer.parameters())


def test_the_demo_scene_is_from_the_generators_demo_split():
    references = demo_references()
    assert len(references) == 2 and all(r.mode == "RGB" for r in references)
    assert demo_prompt().startswith("On a ") and "image 1" in demo_prompt()


def test_the_shipped_model_beats_a_random_dit(shipped, tmp_path):
    """On held-out scenes, trained vs a freshly initialised DiT in the same pipeline, same noise, at the
    model's own guidance.

    Measured on these 8 samples with 10 steps: fidelity 0.360 vs 0.202, direction accuracy 0.479 vs 0.229,
    PSNR 19.6 vs 11.4 dB (on 32 samples with 15 steps, paired: fidelity +0.180 +- 0.018, direction accuracy
    +0.266 +- 0.087). The samples and their noise are fixed, so the margins below are not a coin flip.
    """
    config = ToyEvalConfig(
        model=default_model_path(), variants=["trained", "random-init"], num_samples=8, steps=10, out=tmp_path
    )
    results = toy_eval(shipped, config)

    def mean(variant, metric):
        return np.mean([getattr(s, metric) for s in results[variant]])

    assert mean("trained", "fidelity") > mean("random-init", "fidelity") + 0.08
    assert mean("trained", "direction_accuracy") > mean("random-init", "direction_accuracy") + 0.1
    assert mean("trained", "psnr") > mean("random-init", "psnr") + 3.0


def test_the_default_model_is_announced_only_when_no_weights_are_named(tmp_path):
    assert WeightsConfig().uses_default_model
    assert not WeightsConfig(model=tmp_path).uses_default_model
    assert not WeightsConfig(wan=tmp_path, transformer=tmp_path).uses_default_model
    assert str(SHIPPED_MODEL) in default_model_notice()
