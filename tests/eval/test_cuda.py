"""The evaluation scorers' forward passes on CUDA, in the precision and attention the benchmark runs them.

Run by ``bindweave gpu-check`` on a GPU node; here with ``BINDWEAVE_GPU_TEST_DEVICE=cpu`` (the same code
on the CPU: fp16 matmuls and SDPA have CPU kernels, flash-attn has none and is then not chosen). Each
test runs a tiny random model on the device as OpenS2V-Eval v1.1 does and compares it with a float32
reference computed on the CPU:

* GME (GmeScore, and the embeddings NexusScore multiplies): fp16, left padding, ``flash_attention_2``
  where the ``flash_attn`` package is installed (what v1.1's ``get_gmescore.py`` / ``get_nexusscore.py``
  pass), else ``sdpa``; the implementation that ran is recorded (``record_property``) and named in
  every failure message;
* Q-Align (MotionSmoothness): fp16, SDPA (v1.1's environment, see :mod:`bindweave.eval.scorers.qalign`);
* CurricularFace (FaceSim-Cur): the benchmark runs it in **float32**, not fp16 (``get_facesim.py`` feeds
  ``.float()`` inputs to the model as loaded), with PyTorch's defaults, under which cuDNN convolutions
  use TF32 (10-bit mantissa) on Ampere and later: that is what is run and what the tolerance allows.

Tolerances are bounds from the unit roundoff ``u`` of the precision used (2**-11 for fp16 and for TF32's
10 stored mantissa bits) at the output's scale, times a factor for the depth, derived next to each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from bindweave.eval.scorers.curricularface import IRBackbone
from bindweave.eval.scorers.gme import GME_TEXT_INSTRUCTION, GmeQwen2VLEmbedder, gme_attn_implementation
from bindweave.eval.scorers.smoothness import QAlignQualityModel, quality_from_logits

pytestmark = pytest.mark.gpu

FIXTURES = Path(__file__).parent / "fixtures"
GME_MODEL = FIXTURES / "gme_qwen2vl_tiny" / "model"
QALIGN = FIXTURES / "qalign_tiny"
U = 2.0**-11  # unit roundoff of fp16 (10 stored mantissa bits) and of TF32 (the same 10 bits)

# GME: a unit-norm embedding computed in fp16 is the exact one plus the last fp16 roundings on its way out
# (final residual add, final RMSNorm, L2 normalisation), each at most u at the vector's scale (1): 3u per
# element (the derivation and measurements of tests/eval/test_eval_gme_port.py: the benchmark's own fp16
# code is 1.6u from fp32 there).
GME_ATOL = 3 * U


def _gme_similarity_atol(dim: int) -> float:
    """Bound on an fp16 dot product of two unit vectors each within ``GME_ATOL`` per element of the exact:
    ``|da . b| + |a . db| <= 2 sqrt(dim) GME_ATOL`` (Cauchy-Schwarz), plus the products' and the sum's
    roundings, at most u each relative to ``sum |a_i b_i| <= 1``."""
    return 2 * math.sqrt(dim) * GME_ATOL + 2 * U


# ------------------------------------------------------------------------------------------------ GME


@pytest.fixture(scope="module")
def gme_inputs() -> tuple[list[str], list[Image.Image]]:
    meta = json.loads((FIXTURES / "gme_qwen2vl_tiny" / "inputs" / "texts.json").read_text())
    images = [
        Image.open(FIXTURES / "gme_qwen2vl_tiny" / "inputs" / f"image_{i}.png").convert("RGB")
        for i in range(3)
    ]
    return meta["texts"], images


@pytest.fixture(scope="module")
def gme_reference() -> GmeQwen2VLEmbedder:
    return GmeQwen2VLEmbedder(GME_MODEL, device="cpu", dtype=torch.float32, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def gme_on_device(gpu_device) -> GmeQwen2VLEmbedder:
    return GmeQwen2VLEmbedder(GME_MODEL, device=gpu_device)  # fp16, left padding, the default attention


def test_gme_attention_is_the_benchmarks_where_possible(gme_on_device, gpu_device, record_property):
    import importlib.util

    record_property("gme_attn_implementation", gme_on_device.attn_implementation)
    has_flash = importlib.util.find_spec("flash_attn") is not None
    expected = "flash_attention_2" if gpu_device.type == "cuda" and has_flash else "sdpa"
    assert gme_on_device.attn_implementation == gme_attn_implementation(gpu_device) == expected
    assert gme_on_device.model.config._attn_implementation == expected
    assert gme_on_device.tokenizer.padding_side == "left"  # what v1.1's flash_attention_2 selects


def test_gme_fp16_embeddings_on_the_device(gme_on_device, gme_reference, gme_inputs, record_property):
    texts, images = gme_inputs
    attn = gme_on_device.attn_implementation
    record_property("gme_attn_implementation", attn)
    got_t = gme_on_device.embed_texts(texts, GME_TEXT_INSTRUCTION)
    got_i = gme_on_device.embed_images(images)
    assert got_t.dtype == got_i.dtype == torch.float16
    want_t = gme_reference.embed_texts(texts, GME_TEXT_INSTRUCTION)
    want_i = gme_reference.embed_images(images)
    for got, want, what in ((got_t, want_t, "texts"), (got_i, want_i, "images")):
        err = float((got.float() - want).abs().max())
        assert err <= GME_ATOL, (
            f"GME {what} fp16 on {gme_on_device.device} with {attn}: {err:.3g} > {GME_ATOL:.3g}"
        )
    # Not a vacuous comparison: the inputs embed far apart (the texts too, in any order).
    assert float((want_i[0] - want_i[1]).abs().max()) > 20 * GME_ATOL


def test_gme_similarities_nexus_multiplies_on_the_device(
    gme_on_device, gme_reference, gme_inputs, record_property
):
    """NexusScore's GME products: crops of several sizes (an image batch of different grids) against their
    reference images and short labels, in fp16 as the benchmark multiplies them."""
    _, images = gme_inputs
    attn = gme_on_device.attn_implementation
    record_property("gme_attn_implementation", attn)
    crops = [
        images[1].crop((0, 0, 120, 100)),
        images[1].crop((60, 10, 200, 120)),
        images[2].crop((0, 30, 40, 110)),
    ]
    refs = [images[1], images[2]]
    subject_of_crop = torch.tensor([0, 0, 1])
    labels = ["a red car", "dog"]

    def similarities(gme: GmeQwen2VLEmbedder) -> tuple[torch.Tensor, torch.Tensor, int]:
        """As NexusScorer.score multiplies them, and the embeddings' dimension."""
        crop_emb = gme.embed_images(crops)
        ref_emb = gme.embed_images(refs).to(crop_emb.dtype)
        text_emb = gme.embed_texts(labels, GME_TEXT_INSTRUCTION).to(crop_emb.dtype)
        image_sim = (ref_emb[subject_of_crop] * crop_emb).sum(-1)
        return image_sim, (text_emb[subject_of_crop] * crop_emb).sum(-1), crop_emb.shape[1]

    got_image, got_text, dim = similarities(gme_on_device)
    want_image, want_text, _ = similarities(gme_reference)
    assert got_image.dtype == torch.float16
    atol = _gme_similarity_atol(dim)
    for got, want, what in ((got_image, want_image, "image-image"), (got_text, want_text, "text-image")):
        err = float((got.float() - want).abs().max())
        assert err <= atol, (
            f"GME {what} similarity fp16 on {gme_on_device.device} with {attn}: {err:.3g} > {atol:.3g}"
        )


# -------------------------------------------------------------------------------------------- Q-Align

# Q-Align logits: the fp16 forward's error reaches the last position through 2 layers of ~8 fp16-rounded
# stages each (norm, q/k/v, attention, o_proj, residual, norm, MLP, residual), each at most u relative to the
# values it rounds, carried to the logits at their scale S: 16 u S. The reference is the same fp16 weights
# in float32, so only the arithmetic's rounding is measured (measured on the CPU: 0.044 at S = 8.4, i.e. 10u S).
QALIGN_DEPTH = 16


@pytest.fixture(scope="module")
def qalign_windows() -> list[list[Image.Image]]:
    from safetensors.torch import load_file

    frames = load_file(QALIGN / "expected.safetensors")["frames"].numpy()
    indices = json.loads((QALIGN / "expected.json").read_text())["window_indices"]
    return [[Image.fromarray(frames[i]) for i in w] for w in indices]


def test_qalign_fp16_sdpa_on_the_device(gpu_device, qalign_windows, record_property):
    qalign = QAlignQualityModel(QALIGN / "model", device=str(gpu_device))  # fp16, SDPA: the benchmark's
    record_property("qalign_attn_implementation", qalign.model.attn_implementation)
    assert qalign.model.attn_implementation == "sdpa"
    pixels = [qalign.pixels(w) for w in qalign_windows]
    got = qalign.model.last_logits(qalign.input_ids, pixels)
    assert got.dtype == torch.float16

    reference = QAlignQualityModel(QALIGN / "model", device="cpu")  # the fp16 weights, run in float32
    reference.model.float()
    want = reference.model.last_logits(reference.input_ids.cpu(), [p.cpu().float() for p in pixels])
    scale = float(want.abs().max())
    atol = QALIGN_DEPTH * U * scale
    err = float((got.cpu().float() - want).abs().max())
    assert err <= atol, (
        f"Q-Align fp16 sdpa logits on {gpu_device}: {err:.3g} > {atol:.3g} (scale {scale:.3g})"
    )
    # The window scores: |d quality / d logit_i| = p_i |w_i - quality| sums to at most 1, so the scores move
    # by at most the largest logit error, plus their own fp16 rounding (u at a value <= 1).
    levels = qalign.level_ids
    scores = quality_from_logits(got[:, levels]).cpu().float()
    want_scores = quality_from_logits(want[:, levels])
    torch.testing.assert_close(scores, want_scores, rtol=0, atol=atol + U)


# ------------------------------------------------------------------------------------- CurricularFace

# The benchmark's FaceSim-Cur runs the IR backbone in float32; with PyTorch's defaults cuDNN convolutions
# round both operands to TF32 (u = 2**-11 relative) and accumulate in float32, so each convolution on the
# deepest path adds at most ~2u (its input's and its weight's rounding) relative to the activations' scale;
# BatchNorm/PReLU/Linear run in float32 (cuBLAS matmuls do not use TF32 by default). With ``convs`` on the
# path, the L2-normalised embedding is within 2u * convs per element.


def _tiny_ir() -> IRBackbone:
    """The tiny IR of tests/eval/test_eval_facesim.py with non-trivial BatchNorm statistics and PReLU slopes."""
    torch.manual_seed(0)
    model = IRBackbone(units=(1, 2, 1, 1), widths=(8, 16, 24, 32), embedding_dim=16).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.3)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) * 1.5 + 0.5)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.5)
    return model


def _convs_on_deepest_path(model: IRBackbone) -> int:
    """The stem's convolution plus two per residual unit (the shortcut's 1x1 convolution is shallower)."""
    return 1 + 2 * len(model.body)


def _face_embeddings(model: torch.nn.Module, faces: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        emb = model(faces).float()
    return emb / torch.linalg.vector_norm(emb, dim=-1, keepdim=True)  # as FaceSimScorer.embed


@pytest.fixture
def benchmark_tf32_defaults() -> Iterator[tuple[bool, bool]]:
    """PyTorch's defaults, under which the benchmark runs: TF32 for cuDNN convolutions, not for matmuls."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    yield torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1  # as face_tensor


def test_curricularface_float32_on_the_device(gpu_device, faces, benchmark_tf32_defaults, record_property):
    record_property("cudnn_allow_tf32", benchmark_tf32_defaults[1])
    model = _tiny_ir()
    want = _face_embeddings(model, faces)
    got = _face_embeddings(_tiny_ir().to(gpu_device), faces.to(gpu_device)).cpu()
    atol = 2 * U * _convs_on_deepest_path(model)
    err = float((got - want).abs().max())
    assert err <= atol, f"CurricularFace float32 (cuDNN TF32 allowed) on {gpu_device}: {err:.3g} > {atol:.3g}"
    # FaceSim-Cur is the cosine of two such embeddings: within 2 sqrt(dim) atol (Cauchy-Schwarz).
    cos_atol = 2 * math.sqrt(want.shape[1]) * atol
    torch.testing.assert_close(got @ got[0], want @ want[0], rtol=0, atol=cos_atol)
    # Different faces embed differently by more than the tolerance (a tiny random IR maps all inputs
    # close together: 0.027 here, computed on the CPU).
    assert float((want[0] - want[1]).abs().max()) > 2 * atol


def _round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to nearest to TF32's 10 stored mantissa bits (the 13 low bits cleared)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_curricularface_tolerance_covers_emulated_tf32(gpu_device, faces):
    """The TF32 bound, checked on any device: every convolution's input and weight rounded to TF32 first."""
    model = _tiny_ir()
    tf32 = _tiny_ir()
    with torch.no_grad():
        for module in tf32.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.copy_(_round_to_tf32(module.weight))
                module.register_forward_pre_hook(lambda _m, args: (_round_to_tf32(args[0]),))
    assert float(_round_to_tf32(torch.tensor([1 + 2.0**-11 + 2.0**-13]))[0]) == 1 + 2.0**-10  # to nearest
    want = _face_embeddings(model, faces)
    got = _face_embeddings(tf32, faces)
    err = float((got - want).abs().max())
    assert 0 < err <= 2 * U * _convs_on_deepest_path(model)
