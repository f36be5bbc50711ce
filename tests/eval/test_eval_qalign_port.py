"""The native Q-Align (mPLUG-Owl2) port against the benchmark's own code (cross-version fixture).

``fixtures/qalign_tiny`` was made by ``fixtures/make_qalign_fixture.py``: a tiny random mPLUG-Owl2 in the
one-align folder layout, built and saved by the ``q_align`` package under transformers 4.36.1 (its pin),
and what the benchmark's ``QAlignVideoScorer`` computed from it in fp16 on a 7-frame video: the prompt
ids, the level-word ids, the 3-frame windows, the five level logits per window, the window scores and the
video's MotionSmoothness. The fixture ran **eager** attention (its script forces it; see its docstring
for which code it ran), so those tests run our port with ``attn_implementation="eager"``.

OpenS2V-Eval v1.1's own environment runs the bundled Q-Align's **SDPA** attention (see
:mod:`bindweave.eval.scorers.qalign`), our default. That path is checked against a reference written out
below from the bundled code's arithmetic, on the fixture's weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bindweave.eval.scorers.base import VideoSample
from bindweave.eval.scorers.mplug_owl2_vision import sincos_1d, sincos_2d
from bindweave.eval.scorers.qalign import QALIGN_ATTENTION, MplugOwl2QualityModel
from bindweave.eval.scorers.smoothness import MotionSmoothnessScorer, QAlignQualityModel, sliding_windows

FIXTURE = Path(__file__).parent / "fixtures" / "qalign_tiny"
# fp16 logits of magnitude < 4: one ulp is 0.002 (measured: bit-identical on this machine).
LOGIT_ATOL = 4e-3


@pytest.fixture(autouse=True)
def fixture_fp16_kernels(monkeypatch):
    """Run the fixture's fp16 arithmetic with torch's own CPU kernels, as it was made.

    oneDNN computes fp16 matmuls differently on a CPU with AVX512-FP16 (measured on one: the window logits
    up to 0.0205, ~10 fp16 ulps, from the fixture's; with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE`` or oneDNN off,
    bit for bit equal), so the comparison would measure the CPU instead of the port.
    """
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    tensors = load_file(FIXTURE / "expected.safetensors")
    return tensors, json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def qalign():
    return QAlignQualityModel(FIXTURE / "model", device="cpu", attn_implementation="eager")  # as the fixture


@pytest.fixture(scope="module")
def qalign_sdpa():
    return QAlignQualityModel(FIXTURE / "model", device="cpu")  # the default: the benchmark's SDPA


def test_prompt_and_level_ids_are_the_benchmarks(qalign, expected):
    tensors, _ = expected
    assert qalign.input_ids.tolist() == tensors["input_ids"].tolist()
    assert -200 in qalign.input_ids.tolist()
    assert qalign.level_ids == tensors["preferential_ids"].tolist()
    assert len(set(qalign.level_ids)) == 5  # the fixture's words are distinguishable


def test_window_logits_and_scores_equal_the_benchmark_code(qalign, expected):
    tensors, meta = expected
    frames = tensors["frames"].numpy()
    assert sliding_windows(len(frames), 3) == meta["window_indices"]
    windows = [[Image.fromarray(frames[i]) for i in w] for w in meta["window_indices"]]
    logits = qalign.level_logits(windows)
    assert logits.dtype == torch.float16  # the benchmark's precision
    torch.testing.assert_close(logits, tensors["logits"], rtol=0, atol=LOGIT_ATOL)
    assert qalign(windows) == pytest.approx(meta["scores"], abs=2e-3)


def test_video_motion_smoothness_equals_the_benchmark(qalign, expected):
    tensors, meta = expected
    sample = VideoSample.from_frames("singleobj_1", tensors["frames"].numpy())
    value = MotionSmoothnessScorer(qalign)(sample)
    assert value == pytest.approx(meta["motion_smoothness"]) == pytest.approx(1 - 4 / 7)


def test_abstractor_positions_are_the_stored_ones(expected):
    """Our sin-cos formulas reproduce the position buffers q_align saved in the checkpoint."""
    from safetensors.torch import load_file

    state = load_file(FIXTURE / "model" / "model.safetensors")
    prefix = "model.visual_abstractor.encoder.layers.0.crossattention.attention."
    q = torch.from_numpy(sincos_1d(32, np.arange(4))).float()
    k = torch.from_numpy(sincos_2d(32, 4)).float()
    torch.testing.assert_close(q, state[prefix + "q_pos_embed"], rtol=0, atol=1e-6)
    torch.testing.assert_close(k, state[prefix + "k_pos_embed"], rtol=0, atol=1e-6)


def test_a_checkpoint_of_another_layout_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "one-align"
    folder.mkdir()
    for f in (FIXTURE / "model").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    state = load_file(folder / "model.safetensors")
    state.pop("model.layers.0.self_attn.k_proj.multiway.1.weight")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(KeyError, match="k_proj.multiway.1.weight"):
        MplugOwl2QualityModel.from_folder(folder)


# ------------------------------------------------------------------------ the benchmark's SDPA path
#
# The reference below is the language-model forward of OpenS2V-Eval v1.1's bundled Q-Align, written out
# from PKU-YuanGroup/OpenS2V-Nexus @ 8cb7427ed56b0fab474f7989859cbc35fd4c2420,
# eval/utils/Q-Align/q_align/model/modeling_llama2.py (MultiwayNetwork, LlamaSdpaAttention,
# LlamaDecoderLayer, model_forward) and the pieces it takes from transformers 4.36.1's modeling_llama.py
# (LlamaRMSNorm, LlamaRotaryEmbedding with its fp16 cos/sin cache, rotate_half/apply_rotary_pos_emb,
# LlamaMLP). The scorer passes no attention mask; model_forward's all-ones mask is turned into ``None`` by
# ``_prepare_4d_causal_attention_mask_for_sdpa`` (no padding, query length == key length), so
# ``scaled_dot_product_attention`` runs with ``attn_mask=None, is_causal=True``.


def _bundled_rms_norm(weight: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _bundled_multiway(fn, weights, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """MultiwayNetwork.forward: the rows of modality ``k`` through ``fn(rows, weights[k])``, scattered back."""
    out = torch.empty_like(x)
    for idx, weight in enumerate(weights):
        rows = modality.eq(idx).nonzero(as_tuple=True)
        hidden = x[rows].unsqueeze(1).contiguous()
        if hidden.numel():
            out[rows] = fn(hidden, weight).squeeze(1)
    return out.contiguous()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    return torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)


def _bundled_decode(state, config, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, V)`` at the last position of the bundled Q-Align's SDPA language model for ``x``."""
    linear = torch.nn.functional.linear
    b, q_len, dim = x.shape
    heads = config["num_attention_heads"]
    head_dim = dim // heads
    eps = config["rms_norm_eps"]

    def rms(t, weight):
        return _bundled_rms_norm(weight, t, eps)

    # LlamaRotaryEmbedding: fp32 angles, cached in the default dtype (fp16 under from_pretrained(fp16)).
    inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(config["max_position_embeddings"], dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    position_ids = torch.arange(q_len)[None]
    cos = emb.cos().to(x.dtype)[:q_len][position_ids].unsqueeze(1)
    sin = emb.sin().to(x.dtype)[:q_len][position_ids].unsqueeze(1)
    h = x
    for i in range(config["num_hidden_layers"]):
        w = {
            k[len(f"model.layers.{i}.") :]: v for k, v in state.items() if k.startswith(f"model.layers.{i}.")
        }

        def pair(name, w=w):
            return [w[f"{name}.multiway.0.weight"], w[f"{name}.multiway.1.weight"]]

        normed = _bundled_multiway(rms, pair("input_layernorm"), h, modality)
        q = linear(normed, w["self_attn.q_proj.weight"])
        k = _bundled_multiway(linear, pair("self_attn.k_proj"), normed, modality)
        v = _bundled_multiway(linear, pair("self_attn.v_proj"), normed, modality)
        q, k, v = (t.view(b, q_len, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True)
        h = h + linear(out.transpose(1, 2).contiguous().reshape(b, q_len, dim), w["self_attn.o_proj.weight"])
        normed = _bundled_multiway(rms, pair("post_attention_layernorm"), h, modality)
        gate = torch.nn.functional.silu(linear(normed, w["mlp.gate_proj.weight"]))
        h = h + linear(gate * linear(normed, w["mlp.up_proj.weight"]), w["mlp.down_proj.weight"])
    return linear(rms(h, state["model.norm.weight"]), state["lm_head.weight"])[:, -1]


@pytest.fixture(scope="module")
def bundled_state():
    from safetensors.torch import load_file

    config = json.loads((FIXTURE / "model" / "config.json").read_text())
    state = {k: v.to(torch.float16) for k, v in load_file(FIXTURE / "model" / "model.safetensors").items()}
    return state, config


def test_the_default_attention_is_the_benchmarks_sdpa(qalign_sdpa):
    assert QALIGN_ATTENTION == "sdpa"
    assert qalign_sdpa.model.attn_implementation == "sdpa"
    assert {layer.self_attn.attn_implementation for layer in qalign_sdpa.model.model.layers} == {"sdpa"}


def test_sdpa_logits_equal_the_bundled_qalign_arithmetic(qalign_sdpa, qalign, bundled_state, expected):
    state, config = bundled_state
    tensors, meta = expected
    frames = tensors["frames"].numpy()
    windows = [[Image.fromarray(frames[i]) for i in w] for w in meta["window_indices"]]
    x, image_mask = qalign_sdpa.model.inputs_embeds(
        qalign_sdpa.input_ids, [qalign_sdpa.pixels(w) for w in windows]
    )
    assert (
        x.dtype == torch.float16 and int(image_mask[0].sum()) == 3 * qalign_sdpa.model.image_tokens_per_frame
    )
    ours = qalign_sdpa.model.decode(x, image_mask)
    reference = _bundled_decode(state, config, x, image_mask.long())
    # Same fp16 inputs and the same SDPA call: what may differ is GEMM blocking (our multiway runs both
    # copies on every row, the bundled code each copy on its own rows), i.e. a rounding of the fp16 logits
    # to a neighbouring value. Allowed: 2 ulps at the logits' scale (measured: bit-identical on CPU).
    ulp = _fp16_ulp(float(reference.abs().max()))  # 2**-7 for |logits| in [4, 8), 2**-6 in [8, 16)
    torch.testing.assert_close(ours, reference, rtol=0, atol=2 * ulp)
    # ... and the check tells the attentions apart: the eager port on the same inputs is further away
    # (0.0498 on this fixture, 6 ulps).
    eager = qalign.model.decode(x, image_mask)
    assert float((eager.float() - reference.float()).abs().max()) > 2 * ulp


def _fp16_ulp(scale: float) -> float:
    """Spacing of fp16 numbers at magnitude ``scale``: 2**(exponent - 10), 10 mantissa bits."""
    return 2.0 ** (math.floor(math.log2(scale)) - 10)


def test_fp16_ulp_helper():
    assert _fp16_ulp(1.0) == 2.0**-10 == float(torch.finfo(torch.float16).eps)
    assert _fp16_ulp(8.375) == 2.0**-7
    x = torch.tensor(8.375, dtype=torch.float16)
    assert float(torch.nextafter(x, torch.tensor(100.0, dtype=torch.float16)) - x) == _fp16_ulp(8.375)
