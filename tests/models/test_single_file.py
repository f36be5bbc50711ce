"""Single-file checkpoints in the original Wan / ComfyUI layouts load as the diffusers-layout folder does.

Each file is written by the test from a tiny BindWeave DiT (``bindweave.testing.comfyui``, its own table of
the original names) and loaded with ``from_single_file`` (diffusers' renaming); the oracle is
``from_pretrained`` of a diffusers-layout folder holding the same values.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bindweave.models import BindWeaveTransformer3DModel
from bindweave.models.checkpoint import CheckpointError
from bindweave.models.single_file import infer_single_file_config, single_file_shapes
from bindweave.testing import tiny_transformer_kwargs
from bindweave.testing.comfyui import original_wan_name, write_single_file


@pytest.fixture(scope="module")
def model() -> BindWeaveTransformer3DModel:
    torch.manual_seed(0)
    return BindWeaveTransformer3DModel(**tiny_transformer_kwargs()).eval()


def _folder_with(model, values: dict[str, torch.Tensor], folder, dtype: torch.dtype):
    """A diffusers-layout folder of ``model``'s config holding ``values``, saved in ``dtype``."""
    copy = BindWeaveTransformer3DModel.from_config(model.config)
    copy.load_state_dict(values, strict=True)
    copy.to(dtype).save_pretrained(folder)
    return folder


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bitwise: parameters, not outputs. Both sides are the same stored values, cast (or multiplied by their
    scale, one rounding per element whatever the storage) and copied: no reduction whose rounding depends
    on where the tensors lie."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(
    ("dtype", "prefix"),
    [(torch.float32, ""), (torch.bfloat16, "model.diffusion_model."), (torch.float16, "diffusion_model.")],
)
def test_a_wide_single_file_loads_as_the_folder(model, tmp_path, dtype, prefix):
    """fp32 / bf16 / fp16, bare or prefixed: the same parameters and dtypes as ``from_pretrained`` (the
    float32-kept modules included)."""
    path = tmp_path / "bindweave.safetensors"
    write_single_file(model.state_dict(), path, "plain", prefix=prefix, dtype=dtype)
    with safe_open(path, "pt") as f:  # the connector under its ComfyUI name, the rest under Wan's
        keys = set(f.keys())
    assert {prefix + "text_projection.0.weight", prefix + "text_projection.2.bias"} <= keys
    assert prefix + "blocks.1.cross_attn.k_img.weight" in keys and prefix + "head.modulation" in keys

    folder = _folder_with(model, model.state_dict(), tmp_path / "folder", dtype)
    expected = BindWeaveTransformer3DModel.from_pretrained(folder, torch_dtype=dtype)
    loaded = BindWeaveTransformer3DModel.from_single_file(path, config=folder, dtype=dtype)
    _assert_same_parameters(loaded, expected)
    assert loaded.scale_shift_table.dtype == torch.float32  # kept float32, as from_pretrained keeps it


@pytest.mark.parametrize("layout", ["fp8", "fp8_scaled", "comfy_quant"])
def test_a_float8_single_file_is_dequantised(model, tmp_path, layout):
    """Plain float8, ComfyUI's fp8_scaled (``scale_weight``) and its comfy_quant layout (``weight_scale``):
    each float8 weight becomes ``w_fp8 * scale`` in the load dtype, the rest loads as stored."""
    path = tmp_path / f"{layout}.safetensors"
    expected_values = write_single_file(model.state_dict(), path, layout)
    stored = load_file(path)
    assert stored["blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn
    assert ("blocks.0.self_attn.q.scale_weight" in stored) == (layout == "fp8_scaled")
    assert ("blocks.0.self_attn.q.weight_scale" in stored) == (layout == "comfy_quant")

    folder = _folder_with(model, expected_values, tmp_path / "folder", torch.float32)
    expected = BindWeaveTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32)
    loaded = BindWeaveTransformer3DModel.from_single_file(path, config=folder, dtype=torch.float32)
    _assert_same_parameters(loaded, expected)
    # Dequantised, not merely upcast: the scaled weights are close to the originals.
    q = loaded.blocks[0].attn1.to_q.weight
    assert torch.allclose(q, model.blocks[0].attn1.to_q.weight, atol=0.1 * q.abs().max().item())
    if layout != "fp8":
        assert not torch.equal(q, stored["blocks.0.self_attn.q.weight"].float())


def _config(model) -> dict:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")
    }


def test_the_config_comes_from_the_shapes(tmp_path):
    """Without a config, every size is read from the file, the heads by Wan's rule of 128 channels each;
    the rest is the released config."""
    kwargs = {**tiny_transformer_kwargs(), "num_attention_heads": 2, "attention_head_dim": 128}
    kwargs |= {"added_kv_proj_dim": 256, "image_context_tokens": 257}
    torch.manual_seed(1)
    wan_width = BindWeaveTransformer3DModel(**kwargs)
    path = tmp_path / "m.safetensors"
    write_single_file(wan_width.state_dict(), path, dtype=torch.float32)
    inferred = infer_single_file_config(single_file_shapes(path))
    assert inferred == {k: kwargs[k] for k in inferred} and len(inferred) == 12
    folder = _folder_with(wan_width, wan_width.state_dict(), tmp_path / "folder", torch.float32)
    expected = BindWeaveTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32)
    loaded = BindWeaveTransformer3DModel.from_single_file(path)
    _assert_same_parameters(loaded, expected)
    assert _config(loaded) == _config(expected)


def test_a_width_that_is_no_multiple_of_128_gets_one_head(model, tmp_path):
    path = tmp_path / "m.safetensors"
    write_single_file(model.state_dict(), path)
    inferred = infer_single_file_config(single_file_shapes(path))
    assert (inferred["num_attention_heads"], inferred["attention_head_dim"]) == (1, 16)  # really 2 x 8
    loaded = BindWeaveTransformer3DModel.from_single_file(path, num_attention_heads=2, attention_head_dim=8)
    assert (loaded.config.num_attention_heads, loaded.config.attention_head_dim) == (2, 8)


def test_every_unknown_missing_or_misshaped_key_is_named(model, tmp_path):
    path = tmp_path / "bad.safetensors"
    write_single_file(model.state_dict(), path)
    tensors = load_file(path)
    del tensors["blocks.1.ffn.2.weight"]
    tensors["blocks.0.cross_attn.extra.weight"] = torch.zeros(2)
    tensors["text_projection.0.weight"] = torch.zeros(32, 64)  # a 64-wide MLLM
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as err:
        BindWeaveTransformer3DModel.from_single_file(path, config=dict(model.config))
    message = str(err.value)
    assert message.startswith(f"{path} does not match BindWeaveTransformer3DModel: ")
    assert "missing (1): blocks.1.ffn.net.2.weight" in message
    assert "unexpected (1): blocks.0.attn2.extra.weight" in message
    assert (
        "mismatched (1): condition_embedder.text_projector.linear_1.weight: checkpoint [32, 64] vs model [32, 32]"
        in message
    )
    assert err.value.report.missing == ["blocks.1.ffn.net.2.weight"]


def test_a_quantisation_it_cannot_dequantise_is_named(model, tmp_path):
    path = tmp_path / "nvfp4.safetensors"
    write_single_file(model.state_dict(), path, "comfy_quant")
    tensors = load_file(path)
    record = json.dumps({"format": "nvfp4"}).encode()
    tensors["blocks.1.ffn.0.comfy_quant"] = torch.tensor(list(record), dtype=torch.uint8)
    # As ComfyUI stores nvfp4: two 4-bit values a byte (half the input width), a block scale per 16 values.
    out_features, in_features = tensors["blocks.1.ffn.0.weight"].shape
    tensors["blocks.1.ffn.0.weight"] = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
    tensors["blocks.1.ffn.0.weight_scale"] = torch.ones(out_features, in_features // 16)
    save_file(tensors, path)
    for config in (dict(model.config), None):  # with a config (the shape check) and without (the inference)
        with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.0\.weight is stored as 'nvfp4'"):
            BindWeaveTransformer3DModel.from_single_file(path, config=config)


@pytest.mark.parametrize(
    ("scale_shape", "expected_axis"),
    [((), None), ((16,), 0), ((16, 1), 0), ((1, 16), "refused"), ((4, 4), "refused")],
)
def test_a_scale_is_applied_along_the_axis_its_shape_names(model, tmp_path, scale_shape, expected_axis):
    """A per-row scale ``(out,)`` / ``(out, 1)`` scales the rows; ``(1, out)`` on an ``out x out`` weight fits
    the element count of a per-row scale but names the other axis, so it is refused, not guessed."""
    path = tmp_path / "scaled.safetensors"
    write_single_file(model.state_dict(), path, "fp8_scaled")
    tensors = load_file(path)
    name = "blocks.0.self_attn.q"  # 16 x 16 in the tiny DiT
    scale = torch.linspace(0.5, 2.0, 16).reshape(scale_shape) if scale_shape else torch.tensor(0.25)
    tensors[f"{name}.scale_weight"] = scale
    save_file(tensors, path)
    if expected_axis == "refused":
        with pytest.raises(
            CheckpointError, match=rf"{name}\.scale_weight has shape {list(scale_shape)}".replace("[", r"\[")
        ):
            BindWeaveTransformer3DModel.from_single_file(path, config=dict(model.config))
        return
    loaded = BindWeaveTransformer3DModel.from_single_file(path, config=dict(model.config))
    stored = tensors[f"{name}.weight"].float()
    expected = stored * (scale if expected_axis is None else scale.reshape(16, 1))
    assert torch.equal(loaded.state_dict()["blocks.0.attn1.to_q.weight"], expected)


def test_original_names_cover_the_whole_model(model):
    names = [original_wan_name(k) for k in model.state_dict()]
    assert len(set(names)) == len(names)
    assert "blocks.0.norm3.weight" in names and "blocks.0.norm2.weight" not in names


def test_the_released_pipeline_and_the_cli_take_a_single_file(tiny_release, tmp_path):
    """``--wan W --transformer FILE``: the options accept the file, the preflight reads the MLLM width from
    its header, and ``from_released`` loads it (here fp8_scaled) as ``from_single_file`` dequantises it."""
    from bindweave.generate_config import WeightsConfig
    from bindweave.pipeline import BindWeavePipeline
    from bindweave.preflight import saved_model

    kwargs = tiny_transformer_kwargs()
    released = BindWeaveTransformer3DModel.from_pretrained(tiny_release.transformer, **kwargs)
    path = tmp_path / "bindweave_fp8_scaled.safetensors"
    expected = write_single_file(released.state_dict(), path, "fp8_scaled")

    WeightsConfig(wan=tiny_release.wan, transformer=path).check_folders()
    with pytest.raises(FileNotFoundError, match=r"--transformer .*missing\.safetensors: no such file"):
        WeightsConfig(wan=tiny_release.wan, transformer=tmp_path / "missing.safetensors").check_folders()
    assert saved_model(None, tiny_release.wan, path, tiny_release.mllm).mllm_dim == kwargs["mllm_dim"]

    pipe = BindWeavePipeline.from_released(
        tiny_release.wan, path, tiny_release.mllm, torch_dtype=torch.float32, **kwargs
    )
    state = pipe.transformer.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():  # bitwise: the same elementwise dequantisation of the same values
        assert torch.equal(state[key], value.float()), key
