"""LoRAs in: every format diffusers converts for Wan, plus BindWeave's connector, fuse to the manual merge.

Each test writes a tiny LoRA in one format and loads it through ``BindWeavePipeline.load_lora_weights``;
the oracle is the merge computed here from the written tensors, ``W + scale * (alpha / rank) * up @ down``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

from bindweave.lora.apply import apply_loras
from bindweave.lora.config import LoraSpec
from bindweave.lora.keys import LoraError
from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import assert_close_to_float32_rounding

RANK = 4
# Original Wan layer -> (diffusers layer, in features, out features) of the tiny DiT (dim 16, ffn 32, text
# 32, CLIP 32, MLLM 32).
ORIGINAL = {
    "blocks.{i}.self_attn.q": ("blocks.{i}.attn1.to_q", 16, 16),
    "blocks.{i}.self_attn.o": ("blocks.{i}.attn1.to_out.0", 16, 16),
    "blocks.{i}.cross_attn.k": ("blocks.{i}.attn2.to_k", 16, 16),
    "blocks.{i}.cross_attn.k_img": ("blocks.{i}.attn2.add_k_proj", 16, 16),
    "blocks.{i}.cross_attn.v_img": ("blocks.{i}.attn2.add_v_proj", 16, 16),
    "blocks.{i}.ffn.0": ("blocks.{i}.ffn.net.0.proj", 16, 32),
    "blocks.{i}.ffn.2": ("blocks.{i}.ffn.net.2", 32, 16),
}
CONNECTOR = {
    "text_projection.0": ("condition_embedder.text_projector.linear_1", 32, 32),
    "text_projection.2": ("condition_embedder.text_projector.linear_2", 32, 32),
}


@pytest.fixture
def pipe(base) -> BindWeavePipeline:
    """A pipeline with its own copy of the DiT: a test's adapters and merges stay in it."""
    components = {**base.components, "transformer": copy.deepcopy(base.transformer)}
    defaults = {k: v for k, v in base.config.items() if k.startswith("default_")}
    return BindWeavePipeline(**components, **defaults)


def layers(blocks=(0, 1), connector=True) -> dict[str, tuple[str, int, int]]:
    table = {k.format(i=i): (v[0].format(i=i), v[1], v[2]) for i in blocks for k, v in ORIGINAL.items()}
    return {**table, **(CONNECTOR if connector else {})}


def random_lora(seed: int, table: dict[str, tuple[str, int, int]], alpha: float | None):
    """``{original layer: (down (r, in), up (out, r), alpha)}`` with seeded values."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: (torch.randn(RANK, fan_in, generator=g), torch.randn(fan_out, RANK, generator=g) / 4, alpha)
        for name, (_, fan_in, fan_out) in table.items()
    }


def write_original(path, lora, down="lora_down", up="lora_up"):
    tensors = {}
    for name, (a, b, alpha) in lora.items():
        tensors[f"diffusion_model.{name}.{down}.weight"] = a
        tensors[f"diffusion_model.{name}.{up}.weight"] = b
        if alpha is not None:
            tensors[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


def write_diffusers(path, lora, table, prefix="transformer.", metadata_alpha: float | None = None):
    """diffusers / PEFT keys; with ``metadata_alpha``, the PEFT config in the metadata as save_lora_adapter writes it."""
    tensors = {}
    for name, (a, b, _) in lora.items():
        ours = table[name][0]
        tensors[f"{prefix}{ours}.lora_A.weight"] = a
        tensors[f"{prefix}{ours}.lora_B.weight"] = b
    metadata = {"format": "pt"}
    if metadata_alpha is not None:
        targets = sorted({table[n][0] for n in lora})
        config = {"r": RANK, "lora_alpha": metadata_alpha, "target_modules": targets, "use_dora": False}
        metadata["lora_adapter_metadata"] = json.dumps(config)
    save_file(tensors, path, metadata=metadata)
    return path


def manual_merge(weights, loras_and_scales, table):
    """``W + sum scale * (alpha / rank) * up @ down`` over the given LoRAs (alpha None: alpha = rank)."""
    merged = {k: v.clone() for k, v in weights.items()}
    for lora, scale in loras_and_scales:
        for name, (a, b, alpha) in lora.items():
            key = table[name][0] + ".weight"
            merged[key] += scale * ((alpha or RANK) / RANK) * (b @ a)
    return merged


def assert_merged(transformer, expected, base_weights):
    """The LoRA's layers hold the manual merge (up to float32 rounding), and every other weight is untouched.

    PEFT merges in another order than ``manual_merge`` (``alpha / rank`` folded into ``down`` by diffusers'
    converter, the scale applied to the product), so the merged weights match to rounding, at the scale of
    the merged values. The other weights are the copied tensors themselves, never written: bitwise.
    """
    state = transformer.state_dict()
    assert state.keys() == base_weights.keys()  # plain layers: no adapter left
    lora_layers = {k for k, v in expected.items() if not torch.equal(v, base_weights[k])}
    assert lora_layers  # the LoRA changes some layer
    assert {k for k, v in state.items() if not torch.equal(v, base_weights[k])} == lora_layers
    for key in sorted(lora_layers):
        assert_close_to_float32_rounding(state[key], expected[key])


FORMATS = ["original", "original_lora_A_B", "original_no_alpha", "diffusers", "peft_unprefixed"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_fuses_to_the_manual_merge(pipe, tmp_path, fmt):
    table = layers()
    alpha = None if fmt in ("original_no_alpha", "diffusers") else 2.0
    if fmt == "peft_unprefixed":
        alpha = 8.0  # in the PEFT config (metadata), not in the tensors
    lora = random_lora(0, table, alpha)
    path = tmp_path / "lora.safetensors"
    if fmt.startswith("original"):
        names = ("lora_A", "lora_B") if fmt == "original_lora_A_B" else ("lora_down", "lora_up")
        write_original(path, lora, *names)
    else:
        prefix = "transformer." if fmt == "diffusers" else ""
        write_diffusers(path, lora, table, prefix=prefix, metadata_alpha=alpha)
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}

    pipe.load_lora_weights(str(path), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.7])
    pipe.fuse_lora(components=["transformer"], adapter_names=["style"])
    pipe.unload_lora_weights()
    assert_merged(pipe.transformer, manual_merge(base_weights, [(lora, 0.7)], table), base_weights)


def test_musubi_tuner_keys_fuse_to_the_manual_merge(pipe, tmp_path):
    """musubi-tuner's ``lora_unet_blocks_0_self_attn_q`` names (every projection of every block, with alpha)."""
    full = {
        **{f"blocks.{{i}}.{kind}_attn.{o}": (f"blocks.{{i}}.attn{n}.{c}", 16, 16)
           for kind, n in (("self", 1), ("cross", 2))
           for o, c in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
        "blocks.{i}.cross_attn.k_img": ("blocks.{i}.attn2.add_k_proj", 16, 16),
        "blocks.{i}.cross_attn.v_img": ("blocks.{i}.attn2.add_v_proj", 16, 16),
        "blocks.{i}.ffn.0": ("blocks.{i}.ffn.net.0.proj", 16, 32),
        "blocks.{i}.ffn.2": ("blocks.{i}.ffn.net.2", 32, 16),
    }  # fmt: skip
    table = {k.format(i=i): (v[0].format(i=i), v[1], v[2]) for i in (0, 1) for k, v in full.items()}
    lora = random_lora(6, table, 8.0)
    tensors = {}
    for name, (a, b, alpha) in lora.items():
        musubi = "lora_unet_" + name.replace(".", "_")
        tensors |= {
            f"{musubi}.lora_down.weight": a,
            f"{musubi}.lora_up.weight": b,
            f"{musubi}.alpha": torch.tensor(alpha),
        }
    save_file(tensors, tmp_path / "musubi.safetensors")
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(str(tmp_path / "musubi.safetensors"), adapter_name="m")
    pipe.fuse_lora(components=["transformer"], adapter_names=["m"])
    pipe.unload_lora_weights()
    assert_merged(pipe.transformer, manual_merge(base_weights, [(lora, 1.0)], table), base_weights)


def test_several_adapters_with_weights_and_unfuse(pipe, tmp_path):
    """Two LoRAs in two formats, weighted 0.5 and -1.5: fused they add up; unfused the weights come back."""
    table = layers()
    first, second = random_lora(1, table, 2.0), random_lora(2, layers(blocks=(1,), connector=False), None)
    write_original(tmp_path / "a.safetensors", first)
    write_diffusers(tmp_path / "b.safetensors", second, table)
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}

    pipe.load_lora_weights(str(tmp_path / "a.safetensors"), adapter_name="a")
    pipe.load_lora_weights(str(tmp_path / "b.safetensors"), adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, -1.5])
    pipe.fuse_lora(components=["transformer"], adapter_names=["a", "b"])
    expected = manual_merge(base_weights, [(first, 0.5), (second, -1.5)], table)
    fused = {
        k.replace(".base_layer", ""): v for k, v in pipe.transformer.state_dict().items() if "lora_" not in k
    }
    lora_layers = {k for k, v in expected.items() if not torch.equal(v, base_weights[k])}
    for key in lora_layers:
        assert_close_to_float32_rounding(fused[key], expected[key])

    pipe.unfuse_lora(components=["transformer"])
    pipe.unload_lora_weights()
    for key, value in pipe.transformer.state_dict().items():
        if key in lora_layers:  # (W + d) - d: rounded at the scale of the fused weights, not of W
            assert_close_to_float32_rounding(value, base_weights[key], scale=fused[key].abs().max().item())
        else:  # never written: the copied tensor itself
            assert torch.equal(value, base_weights[key]), key


def test_an_unfused_adapter_gives_the_fused_output(pipe, tmp_path):
    """The LoRA as a separate branch (PEFT) and merged into the weights give the same video latents."""
    path = write_original(tmp_path / "lora.safetensors", random_lora(3, layers(), 2.0))
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))

    def latents():
        return pipe(
            "a red thing moves left", [image], height=32, width=48, num_frames=5, num_inference_steps=2,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        ).frames  # fmt: skip

    before = latents()
    pipe.load_lora_weights(str(path), adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.8])
    unfused = latents()
    pipe.fuse_lora(components=["transformer"], adapter_names=["a"])
    fused = latents()
    assert not torch.allclose(unfused, before, atol=1e-3)
    # W x + s B A x against (W + s B A) x: the same model up to the rounding of the merged weights.
    assert_close_to_float32_rounding(fused, unfused)


def test_apply_loras_fuses_them_and_leaves_plain_linear_layers(pipe, tmp_path):
    table = layers()
    first, second = random_lora(4, table, 1.0), random_lora(5, table, None)
    write_original(tmp_path / "a.safetensors", first)
    folder = tmp_path / "checkpoint-000010" / "lora"  # a `bindweave train` checkpoint
    folder.mkdir(parents=True)
    write_diffusers(
        folder / "pytorch_lora_weights.safetensors", second, table, prefix="", metadata_alpha=RANK
    )
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}

    skipped = apply_loras(pipe, [LoraSpec(tmp_path / "a.safetensors", 1.2), LoraSpec(folder.parent, 0.4)])
    assert skipped == {}
    assert not any("lora" in type(m).__name__.lower() for m in pipe.transformer.modules())
    expected = manual_merge(base_weights, [(first, 1.2), (second, 0.4)], table)
    assert_merged(pipe.transformer, expected, base_weights)


# ---------------------------------------------------------------------------------------------- errors


def _unchanged(pipe, base_weights) -> bool:
    """Bitwise: a refused LoRA must not write any weight (no arithmetic ran on them)."""
    state = pipe.transformer.state_dict()
    return state.keys() == base_weights.keys() and all(
        torch.equal(state[k], v) for k, v in base_weights.items()
    )


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (  # an SD-style kohya LoRA: keys of another model
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(RANK, 8),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, RANK),
            },
            r"2 keys are no LoRA part of a Wan DiT layer .*: lora_unet_down_blocks_0_attentions_0_proj_in\.lora_down"
            r"\.weight, lora_unet_down_blocks_0_attentions_0_proj_in\.lora_up\.weight",
        ),
        (  # a Wan LoRA for a 40-block model: blocks the tiny DiT does not have
            {
                "transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(RANK, 16),
                "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(16, RANK),
            },
            r"2 keys match no parameter of the DiT: transformer\.blocks\.7\.attn1\.to_q\.lora_A\.weight, "
            r"transformer\.blocks\.7\.attn1\.to_q\.lora_B\.weight",
        ),
        (  # a 14B LoRA on a smaller DiT: widths differ
            {
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, 5120),
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, RANK),
            },
            r"2 shapes differ from the DiT's: blocks\.0\.attn1\.to_q\.lora_A\.weight \(from diffusion_model\.blocks\.0"
            r"\.self_attn\.q\.lora_down\.weight\): LoRA \[4, 5120\] vs DiT \[4, 16\], .*LoRA \[5120, 4\] vs DiT \[16, 4\]",
        ),
        (  # a full checkpoint given as a LoRA
            {"blocks.0.attn1.to_q.weight": torch.zeros(16, 16), "blocks.0.attn1.to_q.bias": torch.zeros(16)},
            r"2 keys are no LoRA part of a Wan DiT layer .*: blocks\.0\.attn1\.to_q\.bias, "
            r"blocks\.0\.attn1\.to_q\.weight",
        ),
        (  # a connector key that is no LoRA layer of it
            {"diffusion_model.text_projection.1.lora_down.weight": torch.zeros(RANK, 32)},
            r"1 keys are no LoRA part of a Wan DiT layer .*: diffusion_model\.text_projection\.1\.lora_down\.weight",
        ),
    ],
    ids=["other-model", "missing-blocks", "other-width", "not-a-lora", "connector"],
)
def test_a_lora_that_does_not_fit_is_an_error_naming_its_keys(pipe, tmp_path, tensors, message):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path)
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(LoraError, match=f"^LoRA {path}: {message}"):
        pipe.load_lora_weights(str(path), adapter_name="bad")
    assert _unchanged(pipe, base_weights) and not getattr(pipe.transformer, "peft_config", None)
