"""ComfyUI's component files (Comfy-Org's umT5-XXL, CLIP ViT-H and Wan 2.1 VAE, a Qwen2.5-VL text-encoder file),
written in their real key layouts from tiny models (:mod:`bindweave.testing.comfy_components`), load into
the same parameters as the diffusers / transformers folders, and compute the same outputs."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import AutoencoderKLWan
from transformers import CLIPVisionModel, Qwen2_5_VLForConditionalGeneration, UMT5EncoderModel

from bindweave.default_model import SHIPPED_MODEL
from bindweave.models.checkpoint import CheckpointError
from bindweave.singlefile.clip_vision import load_clip_vision_file
from bindweave.singlefile.qwen_vl import load_qwen_vl_file
from bindweave.singlefile.umt5 import load_umt5_file
from bindweave.singlefile.wan_vae import load_wan_vae_file
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.testing.comfy_components import (
    comfy_clip_openclip_tensors,
    comfy_clip_vision_name,
    comfy_qwen_vl_name,
    comfy_umt5_name,
    comfy_wan_vae_name,
    write_component_file,
)


def _linear(key: str, tensor: torch.Tensor) -> bool:
    """The tensors these fp8_scaled test files quantise: the blocks' 2-D linear weights (the loader dequantises
    whichever tensors carry a scale, so the choice only has to be ComfyUI-like)."""
    return (
        key.endswith(".weight")
        and tensor.ndim == 2
        and (".block." in key or ".layers." in key or ".blocks." in key)
    )


def _assert_state_equals(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    for name, value in expected.items():
        assert torch.equal(loaded[name].float(), value), name


# ------------------------------------------------------------------------------------------------ umT5


@pytest.fixture(scope="module")
def umt5():
    return UMT5EncoderModel.from_pretrained(SHIPPED_MODEL / "text_encoder").eval()


def test_umt5_file_loads_the_folders_model(umt5, tmp_path):
    expected = write_component_file(
        umt5.state_dict(), tmp_path / "umt5.safetensors", comfy_umt5_name, dtype=torch.float32,
        extra={"spiece_model": torch.tensor(list(b"not a weight"), dtype=torch.uint8)},
    )  # fmt: skip
    loaded = load_umt5_file(tmp_path / "umt5.safetensors")
    _assert_state_equals(loaded, expected)
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight  # the tie ComfyUI's file leaves out
    for key in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size", "layer_norm_epsilon",
                "dense_act_fn", "is_gated_act", "relative_attention_num_buckets", "relative_attention_max_distance"):  # fmt: skip
        assert getattr(loaded.config, key) == getattr(umt5.config, key), key
    ids = torch.randint(2, umt5.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert_close_to_float32_rounding(loaded(ids).last_hidden_state, umt5(ids).last_hidden_state)


def test_umt5_fp8_scaled_file_is_dequantised(umt5, tmp_path):
    expected = write_component_file(
        umt5.state_dict(), tmp_path / "umt5_fp8_scaled.safetensors", comfy_umt5_name, layout="fp8_scaled",
        quantised=_linear,
    )  # fmt: skip
    loaded = load_umt5_file(tmp_path / "umt5_fp8_scaled.safetensors")
    _assert_state_equals(loaded, expected)
    name = (
        "encoder.block.0.layer.0.SelfAttention.q.weight"  # quantised: not the bf16 rounding of the original
    )
    assert not torch.equal(expected[name], umt5.state_dict()[name].bfloat16().float())


# ------------------------------------------------------------------------------------------------ CLIP


@pytest.fixture(scope="module")
def clip():
    return CLIPVisionModel.from_pretrained(SHIPPED_MODEL / "image_encoder").eval()


@pytest.mark.parametrize("layout", ["transformers", "openclip"])
def test_clip_vision_file_loads_the_folders_model(clip, tmp_path, layout):
    state = clip.state_dict()
    path = tmp_path / "clip_vision_h.safetensors"
    if layout == "transformers":  # with the projection head the vision tower does not use
        head = {"visual_projection.weight": torch.randn(clip.config.projection_dim, clip.config.hidden_size)}
        write_component_file(state, path, comfy_clip_vision_name, dtype=torch.float32, extra=head)
    else:
        write_component_file(comfy_clip_openclip_tensors(state), path, lambda name: name, dtype=torch.float32)
    loaded = load_clip_vision_file(path, num_attention_heads=clip.config.num_attention_heads)
    _assert_state_equals(loaded, state)
    pixels = torch.randn(2, 3, clip.config.image_size, clip.config.image_size)
    with torch.no_grad():  # the pipeline uses the penultimate states
        got = loaded(pixels, output_hidden_states=True).hidden_states[-2]
        want = clip(pixels, output_hidden_states=True).hidden_states[-2]
    assert_close_to_float32_rounding(got, want)


def test_clip_vision_file_of_unknown_width_needs_its_heads(clip, tmp_path):
    path = tmp_path / "clip.safetensors"
    write_component_file(clip.state_dict(), path, comfy_clip_vision_name, dtype=torch.float32)
    with pytest.raises(
        ValueError, match="32 wide is not one ComfyUI knows .* give its number of attention heads"
    ):
        load_clip_vision_file(path)


# ------------------------------------------------------------------------------------------------ VAE


@pytest.fixture(scope="module")
def wan_vae():
    """A tiny VAE of Wan 2.1's architecture (ComfyUI's fixed dim_mult / res blocks / temporal downsampling)."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           temperal_downsample=[False, True, True])  # fmt: skip
    return vae.eval()


def test_wan_vae_file_loads_the_folders_model(wan_vae, tmp_path):
    wan_vae.save_pretrained(tmp_path / "vae")
    folder_vae = AutoencoderKLWan.from_pretrained(tmp_path / "vae").eval()
    path = tmp_path / "wan_2.1_vae.safetensors"
    expected = write_component_file(folder_vae.state_dict(), path, comfy_wan_vae_name, dtype=torch.float32)
    loaded = load_wan_vae_file(path)
    _assert_state_equals(loaded, expected)
    assert set(loaded.state_dict()) == set(expected)
    assert loaded.config.latents_mean == folder_vae.config.latents_mean  # Wan 2.1's normalisation
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert_close_to_float32_rounding(
            loaded.encode(video).latent_dist.mean, folder_vae.encode(video).latent_dist.mean
        )


# ------------------------------------------------------------------------------------------------ Qwen2.5-VL


@pytest.fixture(scope="module")
def qwen():
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(SHIPPED_MODEL / "mllm").eval()


@pytest.fixture
def qwen_folder(tmp_path):
    """What a user puts beside the single file: the config and the processor files, no weights."""
    folder = tmp_path / "qwen_processor"
    shutil.copytree(SHIPPED_MODEL / "mllm_processor", folder)
    shutil.copy(SHIPPED_MODEL / "mllm" / "config.json", folder)
    return folder


@pytest.mark.parametrize("layout", ["plain", "fp8_scaled", "no_lm_head"])
def test_qwen_vl_file_loads_the_folders_model(qwen, qwen_folder, tmp_path, layout):
    path = tmp_path / "qwen_2.5_vl_7b.safetensors"
    expected = write_component_file(
        qwen.state_dict(), path, lambda name: comfy_qwen_vl_name(name, lm_head=layout != "no_lm_head"),
        layout="fp8_scaled" if layout == "fp8_scaled" else "plain", dtype=torch.float32, quantised=_linear,
    )  # fmt: skip
    loaded = load_qwen_vl_file(path, qwen_folder)
    _assert_state_equals(loaded, expected)
    if layout == "no_lm_head":
        assert not loaded.lm_head.weight.any()
    if layout != "fp8_scaled":  # the same weights compute the same hidden states
        ids = torch.randint(0, 700, (1, 9))
        with torch.no_grad():
            got = loaded.model(input_ids=ids).last_hidden_state
            want = qwen.model(input_ids=ids).last_hidden_state
        assert_close_to_float32_rounding(got, want)


def test_qwen_vl_file_says_what_the_folder_lacks(qwen, qwen_folder, tmp_path):
    path = tmp_path / "qwen.safetensors"
    write_component_file(qwen.state_dict(), path, comfy_qwen_vl_name, dtype=torch.float32)
    (qwen_folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks config.json: copy them from Qwen2.5-VL-7B-Instruct"):
        load_qwen_vl_file(path, qwen_folder)


# ------------------------------------------------------------------------------------------------ key checks


def test_a_file_that_does_not_fit_names_every_offending_key(umt5, tmp_path):
    state = dict(umt5.state_dict())
    state.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight")
    state["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(2, 2)
    path = tmp_path / "broken.safetensors"

    def name_of(name: str) -> str | None:
        return name if "extra" in name else comfy_umt5_name(name)

    write_component_file(state, path, name_of, dtype=torch.float32)
    with pytest.raises(CheckpointError) as error:
        load_umt5_file(path)
    message = str(error.value)
    assert "1 missing tensors: encoder.block.1.layer.1.DenseReluDense.wo.weight" in message
    assert "1 unexpected tensors: encoder.block.0.layer.0.SelfAttention.extra.weight" in message
