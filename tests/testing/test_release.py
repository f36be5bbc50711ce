"""The offline fixtures of ``bindweave.testing``: tiny tokenizers and the tiny release folders.

The release is the session's (tests/conftest.py); every check reloads it through the real ``from_pretrained`` paths.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessorPil,
    T5TokenizerFast,
)

from bindweave.testing import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    ReleaseFolders,
    build_qwen2_tokenizer,
    build_tiny_release,
    build_umt5_tokenizer,
    tiny_transformer_kwargs,
)
from bindweave.testing.release import TINY_CLIP_TOKENS

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Offsets from <|endoftext|> in the real Qwen2.5 vocabulary (151643 + offset).
QWEN_SPECIAL_OFFSETS = [0, 1, 2, 9, 10, 11, 12, 13]


@pytest.fixture(scope="module")
def release(tiny_release: ReleaseFolders) -> ReleaseFolders:
    return tiny_release  # the session's build (seed 0), read only


@pytest.fixture(scope="module")
def release_again(tmp_path_factory: pytest.TempPathFactory) -> ReleaseFolders:
    """Same seed, but with the DiT's config.json kept."""
    return build_tiny_release(tmp_path_factory.mktemp("release_again"), seed=0, with_transformer_config=True)


def _tokenizer_digests() -> tuple[str, str]:
    return tuple(
        hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
        for tok in (build_umt5_tokenizer(), build_qwen2_tokenizer())
    )


# ---------------------------------------------------------------------------------------------- tokenizers


def test_umt5_tokenizer_has_umt5_special_ids_and_appends_eos() -> None:
    tok = build_umt5_tokenizer()
    assert isinstance(tok, T5TokenizerFast)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert 200 <= len(tok) <= 1000
    ids = tok("A woman walks her dog on the beach.").input_ids
    assert ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "A woman walks her dog on the beach."


def test_qwen2_tokenizer_special_tokens_follow_the_vocabulary_in_real_order() -> None:
    tok = build_qwen2_tokenizer()
    assert isinstance(tok, Qwen2TokenizerFast)
    base = tok.convert_tokens_to_ids("<|endoftext|>")
    assert base == len(tok.backend_tokenizer.get_vocab(with_added_tokens=False))
    assert [tok.convert_tokens_to_ids(t) - base for t in QWEN_SPECIALS] == QWEN_SPECIAL_OFFSETS
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|endoftext|>", "<|im_end|>", None)
    # Special tokens are never split, and byte-level BPE round-trips any text.
    text = "Hello <|image_pad|> wörld\n"
    ids = tok(text).input_ids
    assert tok.convert_tokens_to_ids("<|image_pad|>") in ids
    assert tok.decode(ids) == text


def test_tokenizers_are_deterministic_within_and_across_processes() -> None:
    assert build_umt5_tokenizer().get_vocab() == build_umt5_tokenizer().get_vocab()
    assert build_qwen2_tokenizer().get_vocab() == build_qwen2_tokenizer().get_vocab()
    script = (
        "import hashlib\n"
        "from bindweave.testing import build_qwen2_tokenizer, build_umt5_tokenizer\n"
        "for tok in (build_umt5_tokenizer(), build_qwen2_tokenizer()):\n"
        "    print(hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert tuple(result.stdout.split()) == _tokenizer_digests()


def test_chat_template_renders_the_qwen2_5_vl_format() -> None:
    tok = build_qwen2_tokenizer()
    assert tok.chat_template == QWEN2_5_VL_CHAT_TEMPLATE
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "A man walks his dog."},
                {"type": "image", "image": "ref0.png"},
                {"type": "image", "image": "ref1.png"},
            ],
        }
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nA man walks his dog."
        "<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


@pytest.mark.parametrize("build", [build_umt5_tokenizer, build_qwen2_tokenizer])
def test_tokenizers_round_trip_through_save_pretrained(build, tmp_path: Path) -> None:
    tok = build()
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is type(tok)
    assert reloaded.get_vocab() == tok.get_vocab()
    assert reloaded.all_special_tokens == tok.all_special_tokens
    assert reloaded.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert reloaded.chat_template == tok.chat_template
    text = "Two friends laugh while cooking pasta, then wave at the camera!"
    assert reloaded(text).input_ids == tok(text).input_ids


# ---------------------------------------------------------------------------------------------- Wan I2V


def test_wan_folder_reloads_as_an_i2v_pipeline(release: ReleaseFolders) -> None:
    from diffusers import WanImageToVideoPipeline

    index = json.loads((release.wan / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    assert index["image_processor"] == ["transformers", "CLIPImageProcessor"]
    pipe = WanImageToVideoPipeline.from_pretrained(release.wan)

    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.tokenizer("a dog").input_ids[-1] == 1

    pixels = torch.rand(1, 3, 32, 32)
    states = pipe.image_encoder(pixels, output_hidden_states=True).hidden_states
    assert len(states) == 3 and states[-2].shape == (1, TINY_CLIP_TOKENS, 32)
    assert pipe.image_processor.crop_size == {"height": 32, "width": 32}

    vae = pipe.vae
    mean, std = vae.config.latents_mean, vae.config.latents_std
    assert len(mean) == len(std) == 16 and min(std) >= 0.5 and max(std) <= 2.0 and len(set(std)) == 16
    with torch.no_grad():
        latents = vae.encode(torch.rand(1, 3, 5, 32, 32) * 2 - 1).latent_dist.mode()
    assert latents.shape == (1, 16, 2, 4, 4)

    scheduler = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert (scheduler.prediction_type, scheduler.use_flow_sigmas, scheduler.flow_shift) == (
        "flow_prediction",
        True,
        5.0,
    )
    transformer = pipe.transformer.config
    assert (transformer.in_channels, transformer.out_channels, transformer.image_dim) == (36, 16, 32)
    assert transformer.added_kv_proj_dim == transformer.num_attention_heads * transformer.attention_head_dim


# ---------------------------------------------------------------------------------------------- BindWeave DiT


def test_bindweave_transformer_has_the_released_layout(
    release: ReleaseFolders, release_again: ReleaseFolders
) -> None:
    folder = release.transformer
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) >= 2
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert not (folder / "config.json").exists()
    assert not (folder / "diffusion_pytorch_model.safetensors").exists()
    assert (release_again.transformer / "config.json").is_file()

    keys = set(index["weight_map"])
    connector = {k for k in keys if k.startswith("condition_embedder.text_projector.")}
    assert connector == {
        f"condition_embedder.text_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    }
    wan_keys = set(load_file(release.wan / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert keys - connector == wan_keys


def test_bindweave_transformer_reloads_with_and_without_config(
    release: ReleaseFolders, release_again: ReleaseFolders
) -> None:
    from bindweave.models import BindWeaveTransformer3DModel

    kwargs = tiny_transformer_kwargs()
    with_config = BindWeaveTransformer3DModel.from_pretrained(release_again.transformer)
    assert with_config.config.mllm_dim == kwargs["mllm_dim"]
    assert with_config.config.image_context_tokens == TINY_CLIP_TOKENS
    without_config = BindWeaveTransformer3DModel.from_pretrained(release.transformer, **kwargs)
    reference = with_config.state_dict()
    for key, tensor in without_config.state_dict().items():
        torch.testing.assert_close(tensor, reference[key], rtol=0, atol=0)

    # The DiT starts from the stock Wan I2V weights.
    wan = load_file(release.wan / "transformer" / "diffusion_pytorch_model.safetensors")
    for key, tensor in wan.items():
        torch.testing.assert_close(reference[key], tensor, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- Qwen2.5-VL


def test_qwen_folder_reloads_and_runs_a_chat_with_one_image(release: ReleaseFolders) -> None:
    tok = AutoTokenizer.from_pretrained(release.mllm)
    processor = Qwen2VLImageProcessorPil.from_pretrained(release.mllm)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(release.mllm).eval()
    assert (release.mllm / "chat_template.jinja").read_text() == QWEN2_5_VL_CHAT_TEMPLATE
    assert processor.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (14, 2, 2)
    config = model.config
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.vocab_size == len(tok)
    head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
    assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    vision = processor(images=[image], return_tensors="pt")
    messages = [{"role": "user", "content": [{"type": "text", "text": "A dog."}, {"type": "image"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n_image_tokens = int(vision["image_grid_thw"][0].prod()) // processor.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n_image_tokens)
    inputs = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, **vision, output_hidden_states=True)
    length = inputs.input_ids.shape[1]
    assert out.hidden_states[-1].shape == (1, length, config.text_config.hidden_size)
    assert torch.isfinite(out.logits).all()


# ---------------------------------------------------------------------------------------------- determinism


def _safetensors(folders: ReleaseFolders) -> dict[str, bytes]:
    root = folders.wan.parent
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.safetensors"))}


def test_same_seed_gives_identical_weights(release: ReleaseFolders, release_again: ReleaseFolders) -> None:
    first, second = _safetensors(release), _safetensors(release_again)
    assert len(first) >= 7 and first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_another_seed_gives_other_weights(release: ReleaseFolders, tmp_path: Path) -> None:
    other = build_tiny_release(tmp_path, seed=1)
    first, second = _safetensors(release), _safetensors(other)
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)
    vae_config = json.loads((release.wan / "vae" / "config.json").read_text())
    other_vae_config = json.loads((other.wan / "vae" / "config.json").read_text())
    assert vae_config["latents_mean"] != other_vae_config["latents_mean"]
