"""A LoRA trained with `bindweave train` exports to ComfyUI's format and loads back to the adapter's output."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from bindweave import cli
from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.training.trainer import run_train

from .conftest import build_config, tiny_config_dict

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def test_a_trained_lora_exports_and_reimports_to_the_same_video(
    tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path
):
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "text_projector.linear_1"]
    config = tiny_config_dict(
        tmp_path / "run", tiny_pipeline_dir, tiny_cache, trainable="lora",
        lora={"rank": 4, "alpha": 8, "target_modules": targets},
        stages=[{"name": "lora", "steps": 2, "cache": str(tiny_cache), "lr": 1e-2}],
    )  # fmt: skip
    checkpoint = run_train(build_config(config)).checkpoints[-1]
    out = tmp_path / "bindweave_lora_comfyui.safetensors"
    assert cli.main(["export-lora", str(checkpoint), "--out", str(out)]) == 0

    exported = load_file(out)
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight" in exported
    assert "diffusion_model.text_projection.0.lora_up.weight" in exported
    assert {t.item() for k, t in exported.items() if k.endswith(".alpha")} == {8.0}

    def generate(pipe) -> torch.Tensor:
        return pipe(
            "a red square slides", [str(tiny_dataset / "subjects" / "subject0.png")], height=32, width=32,
            num_frames=9, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent",
        ).frames  # fmt: skip

    adapter = BindWeavePipeline.from_pretrained(checkpoint, dtype=torch.float32)
    base = generate(adapter)
    adapter.transformer.load_lora_adapter(checkpoint / "lora", weight_name=LORA_WEIGHTS, prefix=None)
    expected = generate(adapter)
    assert not torch.allclose(expected, base, atol=1e-4)  # the trained adapter changes the video

    comfy = BindWeavePipeline.from_pretrained(checkpoint, dtype=torch.float32)
    comfy.load_lora_weights(str(out))
    # Up to rounding: on re-import diffusers folds alpha / rank into lora_A, where PEFT scaled the product.
    assert_close_to_float32_rounding(generate(comfy), expected)
