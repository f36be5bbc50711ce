"""LoRAs out: a trained adapter exported to the ComfyUI / original-Wan format loads back to the same output."""

from __future__ import annotations

import copy
import math

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bindweave import cli
from bindweave.lora.export import export_lora
from bindweave.lora.keys import LoraError
from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.training.config import LoRAConfig
from bindweave.training.model import configure_trainable

RANK, ALPHA = 4, 8.0
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "ffn.net.0.proj",
           "text_projector.linear_1", "text_projector.linear_2"]  # fmt: skip


def with_transformer(base: BindWeavePipeline, transformer) -> BindWeavePipeline:
    defaults = {k: v for k, v in base.config.items() if k.startswith("default_")}
    return BindWeavePipeline(**{**base.components, "transformer": transformer}, **defaults)


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """A PEFT adapter as `bindweave train` (trainable: lora) makes and saves it, B moved off zero."""
    transformer = copy.deepcopy(base.transformer)
    configure_trainable(transformer, "lora", LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    checkpoint = tmp_path_factory.mktemp("run") / "checkpoint-000002"
    transformer.save_lora_adapter(checkpoint / "lora")
    return transformer, checkpoint


def latents(pipe) -> torch.Tensor:
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    return pipe(
        "a red thing moves left", [image], height=32, width=48, num_frames=5, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="latent",
    ).frames  # fmt: skip


def test_the_export_has_original_wan_keys_and_alpha(trained, tmp_path):
    transformer, checkpoint = trained
    out = tmp_path / "comfy.safetensors"
    exported = export_lora(checkpoint, out)
    assert (exported.path, exported.rank, exported.scale) == (out, RANK, ALPHA / RANK)
    tensors = load_file(out)
    adapter = load_file(checkpoint / "lora" / "pytorch_lora_weights.safetensors")
    assert exported.layers == len(adapter) // 2 == len(tensors) // 3  # down, up, alpha per layer
    pairs = {
        "blocks.1.self_attn.o": "blocks.1.attn1.to_out.0",
        "blocks.0.cross_attn.k_img": "blocks.0.attn2.add_k_proj",
        "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
        "text_projection.0": "condition_embedder.text_projector.linear_1",
        "text_projection.2": "condition_embedder.text_projector.linear_2",
    }
    for theirs, ours in pairs.items():  # bitwise: the export copies the stored matrices, no arithmetic
        assert torch.equal(
            tensors[f"diffusion_model.{theirs}.lora_down.weight"], adapter[f"{ours}.lora_A.weight"]
        )
        assert torch.equal(
            tensors[f"diffusion_model.{theirs}.lora_up.weight"], adapter[f"{ours}.lora_B.weight"]
        )
        alpha = tensors[f"diffusion_model.{theirs}.alpha"]
        assert alpha.shape == () and alpha.dtype == torch.float32 and alpha.item() == ALPHA
    with safe_open(out, "pt") as f:
        assert f.metadata()["format"] == "pt"


def test_reimporting_the_export_reproduces_the_adapters_output(base, trained, tmp_path):
    transformer, checkpoint = trained
    out = export_lora(checkpoint, tmp_path / "comfy.safetensors", dtype=None).path
    expected = latents(with_transformer(base, transformer))
    assert not torch.allclose(expected, latents(base), atol=1e-3)  # the adapter changes the output

    reimported = with_transformer(base, copy.deepcopy(base.transformer))
    reimported.load_lora_weights(str(out), adapter_name="comfy")
    # Up to rounding: on re-import diffusers folds alpha / rank into lora_A, where PEFT scaled the product.
    assert_close_to_float32_rounding(latents(reimported), expected)
    # Fused, as `--lora` applies it: the merged weights are PEFT's own merge of the adapter.
    reimported.fuse_lora(components=["transformer"], adapter_names=["comfy"])
    reimported.unload_lora_weights()
    merged = copy.deepcopy(transformer)
    merged.fuse_lora()
    merged.unload_lora()
    state = reimported.transformer.state_dict()
    assert state.keys() == merged.state_dict().keys()
    for key, value in merged.state_dict().items():
        if torch.equal(
            value, base.transformer.state_dict()[key]
        ):  # no LoRA there: both kept the copied tensor
            assert torch.equal(state[key], value), key
        else:
            assert_close_to_float32_rounding(state[key], value)


def test_export_lora_command(trained, tmp_path, capsys):
    _, checkpoint = trained
    out = tmp_path / "comfy.safetensors"
    assert cli.main(["export-lora", str(checkpoint / "lora"), "--out", str(out), "--dtype", "bfloat16"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: ") and f"rank {RANK}, alpha/rank {ALPHA / RANK:g}" in line
    tensors = load_file(out)
    assert {t.dtype for k, t in tensors.items() if not k.endswith(".alpha")} == {torch.bfloat16}
    # An existing file is kept unless --overwrite.
    assert cli.main(["export-lora", str(checkpoint), "--out", str(out)]) == 1
    assert cli.main(["export-lora", str(checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert load_file(out)["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].dtype == torch.float32


def test_rslora_and_unsupported_configs(trained, tmp_path):
    """rsLoRA scales by alpha / sqrt(r): the exported alpha keeps that scale; DoRA cannot be exported."""
    from bindweave.lora.export import comfyui_lora_state_dict

    adapter = load_file(trained[1] / "lora" / "pytorch_lora_weights.safetensors")
    tensors, scale = comfyui_lora_state_dict(adapter, {"r": RANK, "lora_alpha": ALPHA, "use_rslora": True})
    assert scale == ALPHA / math.sqrt(RANK)
    assert tensors["diffusion_model.blocks.0.self_attn.q.alpha"].item() == pytest.approx(scale * RANK)
    with pytest.raises(LoraError, match="use_dora"):
        comfyui_lora_state_dict(adapter, {"r": RANK, "lora_alpha": ALPHA, "use_dora": True})


TOP_LEVEL = ["proj_out", "time_embedder.linear_1", "time_embedder.linear_2", "text_embedder.linear_1",
             "text_embedder.linear_2", "time_proj", "image_embedder.ff.net.0.proj", "image_embedder.ff.net.2"]  # fmt: skip


@pytest.fixture(scope="module")
def biased(base, tmp_path_factory):
    """A PEFT adapter over the blocks, every top-level layer kind and the connector, with ``lora_bias`` and
    ``alpha != rank``, saved as ``save_lora_adapter`` (so ``bindweave train``) saves it."""
    from peft import LoraConfig

    transformer = copy.deepcopy(base.transformer)
    transformer.add_adapter(
        LoraConfig(r=RANK, lora_alpha=6.0, lora_bias=True, target_modules=TARGETS + TOP_LEVEL)
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    folder = tmp_path_factory.mktemp("biased") / "lora"
    transformer.save_lora_adapter(folder)
    return transformer, folder


def peft_merge(transformer) -> dict[str, torch.Tensor]:
    merged = copy.deepcopy(transformer)
    merged.fuse_lora()
    merged.unload_lora()
    return merged.state_dict()


# PEFT takes the 1-D lora_B.bias of lora_bias adapters for an unsharded FSDP tensor when saving.
@pytest.mark.filterwarnings("ignore:Adapter 'default'.*invalid shape")
def test_an_export_of_every_layer_kind_with_lora_bias_fuses_to_peft_merge(base, biased, tmp_path, caplog):
    """By ComfyUI's rule on the written tensors (W + alpha / rank * up @ down, bias + diff_b), and through
    ``--lora``, the fused DiT is PEFT's own merge of the adapter."""
    from bindweave.lora.apply import apply_loras
    from bindweave.lora.config import LoraSpec
    from bindweave.testing.comfyui import original_wan_name

    transformer, folder = biased
    with caplog.at_level("WARNING"):
        out = export_lora(folder, tmp_path / "comfy.safetensors").path
    assert "core ComfyUI has no BindWeave model" in caplog.text  # the adapter trains the connector
    tensors = load_file(out)
    assert {"diffusion_model.head.head.alpha", "diffusion_model.time_projection.1.diff_b",
            "diffusion_model.img_emb.proj.3.lora_up.weight", "diffusion_model.text_embedding.2.diff_b"} <= set(tensors)  # fmt: skip
    expected = peft_merge(transformer)
    base_state = base.transformer.state_dict()
    ours = {original_wan_name(n): n for n in base_state}
    comfyui = dict(base_state)
    for key, tensor in tensors.items():
        layer, _, part = key.removeprefix("diffusion_model.").partition(".lora_up.")
        if part:  # W + alpha / rank * up @ down
            down = tensors[f"diffusion_model.{layer}.lora_down.weight"]
            alpha = tensors[f"diffusion_model.{layer}.alpha"].item()
            name = ours[f"{layer}.weight"]
            comfyui[name] = comfyui[name] + alpha / down.shape[0] * (tensor @ down)
        elif key.endswith(".diff_b"):
            name = ours[key.removeprefix("diffusion_model.").removesuffix(".diff_b") + ".bias"]
            comfyui[name] = comfyui[name] + tensor
    pipe = with_transformer(base, copy.deepcopy(base.transformer))
    apply_loras(pipe, [LoraSpec(out, 1.0)])
    fused = pipe.transformer.state_dict()
    changed = [k for k, v in expected.items() if not torch.equal(v, base_state[k])]
    assert any(k.endswith(".bias") for k in changed) and "proj_out.weight" in changed
    for key, value in expected.items():
        if key in changed:
            assert_close_to_float32_rounding(comfyui[key], value)
            assert_close_to_float32_rounding(fused[key], value)
        else:
            assert torch.equal(fused[key], value) and torch.equal(comfyui[key], value), key
