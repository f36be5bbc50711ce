"""The loader's "ComfyUI model files" source: a pipeline assembled from single files in ComfyUI's layouts (the DiT
as Kijai's fp8_scaled file or plain, umT5, CLIP, the Wan 2.1 VAE, Qwen2.5-VL) generates the video of the
pipeline loaded from the diffusers / transformers folders the files were written from."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from transformers import CLIPVisionModel, Qwen2_5_VLForConditionalGeneration, UMT5EncoderModel

from bindweave.comfyui import NODE_CLASS_MAPPINGS
from bindweave.comfyui.assemble import pipeline_from_files
from bindweave.comfyui.loading import ComfyFiles
from bindweave.models import BindWeaveTransformer3DModel
from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import assert_close_to_float32_rounding, tiny_transformer_kwargs
from bindweave.testing.comfy_components import (
    comfy_clip_vision_name,
    comfy_qwen_vl_name,
    comfy_umt5_name,
    comfy_wan_vae_name,
    write_component_file,
)
from bindweave.testing.comfyui import write_single_file

#: The tiny models' heads, which their widths do not say; the released files need no such values.
TINY_HEADS = dict(
    transformer_config={
        k: tiny_transformer_kwargs()[k] for k in ("num_attention_heads", "attention_head_dim")
    },
    clip_attention_heads=4,
)


@pytest.fixture(scope="module")
def folders(tiny_release, tmp_path_factory):
    """The tiny release with a VAE of Wan 2.1's architecture (the tiny release's has 1 residual block, and
    ComfyUI's Wan 2.1 VAE layout has 2)."""
    root = tmp_path_factory.mktemp("release")
    wan = root / "wan"
    shutil.copytree(tiny_release.wan, wan)
    shutil.rmtree(wan / "vae")
    torch.manual_seed(3)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           temperal_downsample=[False, True, True])  # fmt: skip
    vae.save_pretrained(wan / "vae")
    return wan, tiny_release.transformer, tiny_release.mllm


@pytest.fixture(scope="module")
def comfy_files(folders, tmp_path_factory):
    """The folders' components written as ComfyUI single files (the DiT as Kijai's fp8_scaled file)."""
    wan, transformer, mllm = folders
    out = tmp_path_factory.mktemp("comfyui-models")
    dit = BindWeaveTransformer3DModel.from_pretrained(transformer, **tiny_transformer_kwargs())
    write_single_file(dit.state_dict(), out / "bindweave_fp8_scaled.safetensors", "fp8_scaled",
                      prefix="model.diffusion_model.")  # fmt: skip
    write_single_file(dit.state_dict(), out / "bindweave.safetensors", "plain", dtype=torch.float32)
    umt5 = UMT5EncoderModel.from_pretrained(wan / "text_encoder")
    write_component_file(umt5.state_dict(), out / "umt5.safetensors", comfy_umt5_name, dtype=torch.float32)
    clip = CLIPVisionModel.from_pretrained(wan / "image_encoder")
    assert clip.config.num_attention_heads == TINY_HEADS["clip_attention_heads"]
    write_component_file(
        clip.state_dict(), out / "clip.safetensors", comfy_clip_vision_name, dtype=torch.float32
    )
    vae = AutoencoderKLWan.from_pretrained(wan / "vae")
    write_component_file(vae.state_dict(), out / "vae.safetensors", comfy_wan_vae_name, dtype=torch.float32)
    qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(mllm)
    write_component_file(qwen.state_dict(), out / "qwen.safetensors", comfy_qwen_vl_name, dtype=torch.float32)
    return out


def _files(root, dit: str = "bindweave.safetensors", **folders: str) -> ComfyFiles:
    """Outside ComfyUI the loader takes the file inputs as paths."""
    return ComfyFiles(
        diffusion_model=str(root / dit),
        text_encoder=str(root / "umt5.safetensors"),
        clip_vision=str(root / "clip.safetensors"),
        vae=str(root / "vae.safetensors"),
        mllm=str(root / "qwen.safetensors"),
        **folders,
    )


def _video(pipe: BindWeavePipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    references = [
        rng.integers(0, 255, (40, 30, 3), dtype=np.uint8),
        rng.integers(0, 255, (24, 48, 3), dtype=np.uint8),
    ]
    return pipe("a cat and a dog", references, height=32, width=48, num_frames=5, num_inference_steps=2,
                guidance_scale=2.0, generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip


def test_files_generate_the_folders_video(folders, comfy_files):
    wan, transformer, mllm = folders
    reference = BindWeavePipeline.from_released(wan, transformer, mllm, torch_dtype=torch.float32,
                                                **tiny_transformer_kwargs())  # fmt: skip
    files = _files(comfy_files, umt5_tokenizer=str(wan / "tokenizer"), mllm_processor=str(mllm))
    assembled = pipeline_from_files(files, torch.float32, **TINY_HEADS)
    assert assembled.image_processor.image_mean == reference.image_processor.image_mean
    assert assembled.image_processor.image_std == reference.image_processor.image_std
    assert_close_to_float32_rounding(_video(assembled), _video(reference))


def test_kijai_fp8_scaled_dit_file_assembles(folders, comfy_files):
    wan, _, mllm = folders
    files = _files(comfy_files, "bindweave_fp8_scaled.safetensors", umt5_tokenizer=str(wan / "tokenizer"),
                   mllm_processor=str(mllm))  # fmt: skip
    pipe = pipeline_from_files(files, torch.float32, **TINY_HEADS)
    video = _video(pipe)
    assert video.shape == (5, 32, 48, 3) and np.isfinite(video).all()


def test_loader_node_says_which_files_and_folders_are_missing(comfy_files):
    load = NODE_CLASS_MAPPINGS["BindWeaveLoader"]().load
    with pytest.raises(
        ValueError, match=r"needs clip_vision \(models/clip_vision: clip_vision_h\); vae \(models/vae"
    ):
        load("ComfyUI model files", "none", False, "float32", "float32",
             diffusion_model=str(comfy_files / "bindweave.safetensors"),
             text_encoder=str(comfy_files / "umt5.safetensors"))  # fmt: skip
    files = {
        name: path
        for name, path in vars(_files(comfy_files)).items()
        if name in ("diffusion_model", "text_encoder", "clip_vision", "vae")
    }
    with pytest.raises(
        ValueError, match="umt5_tokenizer is empty: .* tokenizer/ folder of Wan2.1-I2V-14B-720P-Diffusers"
    ):
        load("ComfyUI model files", "none", False, "float32", "float32", **files)
