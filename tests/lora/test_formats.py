"""Wan LoRA files as the tools people use write them: every key applied, fused as ComfyUI / LightX2V fuse them.

Each case writes a tiny file in one tool's key layout (the layouts, with where they come from):

- ComfyUI ``LoraSave`` (``comfy_extras/nodes_lora_extract.py``): ``diffusion_model.<layer>.lora_up`` /
  ``lora_down`` for the linear weights, ``.diff`` for 1-D weights (norms), ``.diff_b`` for biases, no alpha;
  with ``lora_type=full_diff`` every weight as ``.diff`` and every bias as ``.diff_b``;
- LightX2V's ``lora_extractor.py`` and its step-distillation LoRAs (the Wan2.1 I2V 14B ``cfg_step_distill``
  files): ``lora_down`` / ``lora_up`` / ``alpha``, ``blocks.N.diff_m`` and ``head.diff_m`` (added to the
  ``modulation`` tables, as LightX2V's ``lora_loader`` and ComfyUI-WanVideoWrapper apply them),
  ``patch_embedding.diff``, ``norm_k_img.diff``, ``diff_b``;
- musubi-tuner (``lora_unet_blocks_0_self_attn_q``), here training the attention only; Wan-Fun
  (``lora_unet__``, ComfyUI's ``convert_lora_wan_fun``); DiffSynth (bare ``blocks.0.self_attn.q.lora_A``,
  as ComfyUI-WanVideoWrapper's ``standardize_lora_key_format`` maps them);
- top-level layers with their own ``alpha``; ``head.head.diff`` alone; ``cross_attn.k_img`` without
  ``v_img``; a T2V LoRA (no image-branch keys).

The oracle is ComfyUI's rule, computed here from the tensors written, in the original Wan names, and mapped
to the DiT's names with ``bindweave.testing.comfyui``'s own table (not the loader's renaming):
``W + s * (alpha / rank) * up @ down`` (alpha defaulting to the rank), ``W += s * diff``,
``bias += s * diff_b``, ``modulation += s * diff_m``. Every DiT tensor is compared, up to float32 rounding;
the untouched ones bitwise.
"""

from __future__ import annotations

import copy
import logging

import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

from bindweave.lora.apply import apply_loras
from bindweave.lora.config import LoraSpec
from bindweave.lora.keys import LoraError
from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.testing.comfyui import original_wan_name

RANK = 4
SCALE = 0.7


@pytest.fixture
def pipe(base) -> BindWeavePipeline:
    components = {**base.components, "transformer": copy.deepcopy(base.transformer)}
    defaults = {k: v for k, v in base.config.items() if k.startswith("default_")}
    return BindWeavePipeline(**components, **defaults)


@pytest.fixture
def original(base) -> dict[str, torch.Tensor]:
    """The DiT's parameters under their original Wan names."""
    return {original_wan_name(n): t for n, t in base.transformer.state_dict().items()}


class Lora:
    """A file being written: its tensors, and each parameter's change by ComfyUI's rule (strength 1)."""

    def __init__(self, seed: int):
        self.stored: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self.g = torch.Generator().manual_seed(seed)

    def low_rank(self, key: str, layer: str, shape: torch.Size, alpha: float | None = None, up="lora_up",
                 down="lora_down") -> None:  # fmt: skip
        d = torch.randn(RANK, shape[1], generator=self.g)
        u = torch.randn(shape[0], RANK, generator=self.g) / 4
        self.stored[f"{key}.{down}.weight"], self.stored[f"{key}.{up}.weight"] = d, u
        if alpha is not None:
            self.stored[f"{key}.alpha"] = torch.tensor(alpha)
        self._add(f"{layer}.weight", ((alpha if alpha is not None else RANK) / RANK) * (u @ d))

    def diff(self, key: str, parameter: str, shape: torch.Size) -> None:
        tensor = torch.randn(shape, generator=self.g) / 10
        self.stored[key] = tensor
        self._add(parameter, tensor)

    def _add(self, parameter: str, delta: torch.Tensor) -> None:
        self.deltas[parameter] = self.deltas.get(parameter, 0) + delta

    def save(self, path):
        save_file({k: v.contiguous() for k, v in self.stored.items()}, path)
        return path


def _linears(original, blocks_only=False):
    return {n.removesuffix(".weight"): t.shape for n, t in original.items()
            if n.endswith(".weight") and t.ndim == 2 and (n.startswith("blocks.") or not blocks_only)}  # fmt: skip


def comfyui_extract(original, full_diff=False) -> Lora:
    lora = Lora(1)
    for name, tensor in original.items():
        key = "diffusion_model." + name
        if name.endswith(".weight") and tensor.ndim == 2 and not full_diff:
            lora.low_rank(key.removesuffix(".weight"), name.removesuffix(".weight"), tensor.shape)
        elif name.endswith(".weight"):
            lora.diff(key.removesuffix(".weight") + ".diff", name, tensor.shape)
        elif name.endswith(".bias"):
            lora.diff(key.removesuffix(".bias") + ".diff_b", name, tensor.shape)
    return lora


def lightx2v(original) -> Lora:
    lora = Lora(2)
    for layer, shape in _linears(original).items():
        lora.low_rank(f"diffusion_model.{layer}", layer, shape, alpha=8.0)
        lora.diff(f"diffusion_model.{layer}.diff_b", f"{layer}.bias", (shape[0],))
    for name, tensor in original.items():
        if name.endswith("modulation"):  # blocks.N.modulation, head.modulation
            lora.diff(f"diffusion_model.{name.removesuffix('.modulation')}.diff_m", name, tensor.shape)
        elif name in ("patch_embedding.weight",) or name.endswith("norm_k_img.weight"):
            lora.diff(f"diffusion_model.{name.removesuffix('.weight')}.diff", name, tensor.shape)
    return lora


def top_level_alpha(original) -> Lora:
    lora = Lora(3)
    for layer, shape in _linears(original).items():
        if not layer.startswith("blocks.") or layer == "blocks.0.self_attn.q":
            lora.low_rank(f"diffusion_model.{layer}", layer, shape, alpha=2.0)
    return lora


def musubi_attention_only(original, prefix="lora_unet_") -> Lora:
    lora = Lora(4)
    for layer, shape in _linears(original, blocks_only=True).items():
        if ".self_attn." in layer or (prefix == "lora_unet__" and ".cross_attn." in layer):
            lora.low_rank(prefix + layer.replace(".", "_"), layer, shape, alpha=1.0)
    return lora


def diffsynth(original) -> Lora:
    lora = Lora(5)
    for layer, shape in _linears(original, blocks_only=True).items():
        lora.low_rank(layer, layer, shape, up="lora_B", down="lora_A")
    return lora


def head_diff_alone(original) -> Lora:
    lora = Lora(6)
    lora.diff("diffusion_model.head.head.diff", "head.head.weight", original["head.head.weight"].shape)
    return lora


def k_img_without_v_img(original) -> Lora:
    lora = Lora(7)
    for layer, shape in _linears(original, blocks_only=True).items():
        if layer.endswith(("cross_attn.k_img", "cross_attn.q")):
            lora.low_rank(f"diffusion_model.{layer}", layer, shape, alpha=4.0)
    return lora


def t2v(original) -> Lora:
    lora = Lora(8)
    for layer, shape in _linears(original, blocks_only=True).items():
        if "_img" not in layer:
            lora.low_rank(f"diffusion_model.{layer}", layer, shape, alpha=16.0)
    return lora


CASES = {
    "comfyui-extract": comfyui_extract,
    "comfyui-full-diff": lambda o: comfyui_extract(o, full_diff=True),
    "lightx2v": lightx2v,
    "top-level-alpha": top_level_alpha,
    "musubi-attention-only": musubi_attention_only,
    "wan-fun": lambda o: musubi_attention_only(o, prefix="lora_unet__"),
    "diffsynth": diffsynth,
    "head-diff-alone": head_diff_alone,
    "k_img-without-v_img": k_img_without_v_img,
    "t2v": t2v,
}


def expected_weights(
    base_weights: dict[str, torch.Tensor], lora: Lora, scale: float
) -> dict[str, torch.Tensor]:
    """ComfyUI's fused weights, by DiT name: ``W + scale * delta`` in float32."""
    ours = {original_wan_name(n): n for n in base_weights}
    expected = dict(base_weights)
    for parameter, delta in lora.deltas.items():
        name = ours[parameter]
        expected[name] = base_weights[name] + scale * delta
    return expected


def assert_fused(transformer, expected, base_weights):
    state = transformer.state_dict()
    assert state.keys() == base_weights.keys()  # plain layers: no adapter left
    for key, value in state.items():
        if expected[key] is base_weights[key]:
            assert torch.equal(value, base_weights[key]), key  # never written
        else:
            assert not torch.equal(value, base_weights[key]), key  # applied
            assert_close_to_float32_rounding(value, expected[key])


@pytest.mark.parametrize("case", list(CASES))
def test_every_key_of_each_tools_layout_is_applied_as_comfyui_applies_it(pipe, original, tmp_path, case):
    lora = CASES[case](original)
    path = lora.save(tmp_path / f"{case}.safetensors")
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    skipped = apply_loras(pipe, [LoraSpec(path, SCALE)])
    assert skipped == {}
    assert_fused(pipe.transformer, expected_weights(base_weights, lora, SCALE), base_weights)


def test_a_mixed_pair_of_files_adds_up(pipe, original, tmp_path):
    """A LightX2V distillation file and a full-diff file on the same weights: both changes, each scaled."""
    first, second = lightx2v(original), comfyui_extract(original, full_diff=True)
    paths = first.save(tmp_path / "a.safetensors"), second.save(tmp_path / "b.safetensors")
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    apply_loras(pipe, [LoraSpec(paths[0], 1.0), LoraSpec(paths[1], 0.5)])
    expected = expected_weights(expected_weights(base_weights, first, 1.0), second, 0.5)
    expected = {k: base_weights[k] if torch.equal(v, base_weights[k]) else v for k, v in expected.items()}
    assert_fused(pipe.transformer, expected, base_weights)


def test_deltas_follow_set_adapters_and_an_unfused_run_sees_them(pipe, original, tmp_path):
    lora = lightx2v(original)
    path = lora.save(tmp_path / "l.safetensors")
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(str(path), adapter_name="fast")
    modulation = "blocks.0.scale_shift_table"
    assert torch.equal(pipe.transformer.get_parameter(modulation), base_weights[modulation])  # not yet
    pipe.set_adapters(["fast"], adapter_weights=[0.5])
    pipe.transformer.get_parameter(modulation).data.copy_(base_weights[modulation])  # undone by hand...
    pipe.set_adapters(["fast"], adapter_weights=[0.5])  # ...and a repeated weight changes nothing
    assert torch.equal(pipe.transformer.get_parameter(modulation), base_weights[modulation])
    pipe.set_adapters(["fast"], adapter_weights=[0.25])
    pipe.transformer.get_parameter(modulation).data.copy_(
        base_weights[modulation] + 0.25 * lora.deltas["blocks.0.modulation"]
    )
    pipe.set_adapters(["fast"], adapter_weights=[0.5])
    pipe.fuse_lora(components=["transformer"], adapter_names=["fast"])
    pipe.unload_lora_weights()
    assert_fused(pipe.transformer, expected_weights(base_weights, lora, 0.5), base_weights)


def test_an_unfused_run_applies_the_deltas_before_the_first_forward(pipe, original, tmp_path):
    """Loaded and not fused, the deltas are in the weights when the DiT runs (at weight 1, as PEFT's adapters)."""
    lora = lightx2v(original)
    path = lora.save(tmp_path / "l.safetensors")
    base = pipe.transformer.get_parameter("scale_shift_table").detach().clone()
    seen = []
    pipe.transformer.register_forward_hook(
        lambda m, a, o: seen.append(m.get_parameter("scale_shift_table").detach().clone())
    )
    pipe.load_lora_weights(str(path), adapter_name="fast")
    image = PIL.Image.new("RGB", (32, 32), (200, 30, 30))
    pipe.set_progress_bar_config(disable=True)
    pipe("a red thing", [image], height=32, width=32, num_frames=5, num_inference_steps=1, guidance_scale=1.0,
         output_type="latent", generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert seen and torch.equal(seen[0], base + lora.deltas["head.modulation"])


# ---------------------------------------------------------------------------------------------- refusing


def test_a_key_that_fits_nothing_is_an_error_naming_the_file_and_key(pipe, original, tmp_path):
    lora = lightx2v(original)
    lora.stored["diffusion_model.blocks.9.diff_m"] = torch.zeros(1, 6, 16)  # a block the DiT lacks
    lora.stored["diffusion_model.blocks.0.norm3.diff"] = torch.zeros(5)  # a wrong shape
    path = lora.save(tmp_path / "bad.safetensors")
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(LoraError, match=rf"^LoRA {path}: 1 keys match no parameter of the DiT: "
                       r"diffusion_model\.blocks\.9\.diff_m; 1 shapes differ .*diffusion_model\.blocks\.0\.norm3\.diff: "
                       r"LoRA \[5\] vs DiT \[16\]"):  # fmt: skip
        pipe.load_lora_weights(str(path), adapter_name="bad")
    assert all(torch.equal(v, base_weights[k]) for k, v in pipe.transformer.state_dict().items())


def test_skip_unknown_keys_loads_the_rest_and_names_every_skipped_key(pipe, original, tmp_path, caplog):
    lora = lightx2v(original)
    extra = {
        "diffusion_model.blocks.9.diff_m": torch.zeros(1, 6, 16),
        "diffusion_model.vace_blocks.0.proj.lora_down.weight": torch.zeros(RANK, 16),
        "diffusion_model.vace_blocks.0.proj.lora_up.weight": torch.zeros(16, RANK),
        "something_else": torch.zeros(3),
    }
    lora.stored.update(extra)
    path = lora.save(tmp_path / "partial.safetensors")
    base_weights = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        skipped = apply_loras(pipe, [LoraSpec(path, SCALE)], skip_unknown_keys=True)
    assert skipped == {str(path): sorted(extra)}
    assert all(key in caplog.text for key in extra) and "4 keys skipped" in caplog.text
    assert_fused(pipe.transformer, expected_weights(base_weights, lora, SCALE), base_weights)
