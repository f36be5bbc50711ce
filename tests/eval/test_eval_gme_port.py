"""The native GME embedder against the benchmark's own GME code (cross-version fixture).

``fixtures/gme_qwen2vl_tiny`` was made by ``fixtures/make_gme_fixture.py``: a tiny random Qwen2-VL in the
GME folder layout, saved by transformers 4.51.3 (the benchmark's pin), and the fp16 embeddings that the
benchmark's ``GmeQwen2VL`` computed from it (right padding as GmeScore runs it, left as NexusScore does).
Here our embedder runs on transformers 5 and must give the same values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bindweave.eval.scorers.base import MissingModelFileError, VideoSample
from bindweave.eval.scorers.gme import (
    GME_DEFAULT_INSTRUCTION,
    GME_MAX_PIXELS,
    GME_MIN_PIXELS,
    GME_TEXT_INSTRUCTION,
    GmeQwen2VLEmbedder,
    GmeScorer,
    gme_fetch_image,
    gme_prompt,
    gme_smart_resize,
)

FIXTURE = Path(__file__).parent / "fixtures" / "gme_qwen2vl_tiny"
# fp16 outputs: the texts come out bit-identical; the images differ by at most 4.9e-4 (a few fp16 ulps
# at |x| ~ 0.2: the vision tower's kernels differ between the two transformers versions).
ATOL = 1e-3


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    return load_file(FIXTURE / "expected.safetensors")


@pytest.fixture(scope="module")
def inputs():
    meta = json.loads((FIXTURE / "inputs" / "texts.json").read_text())
    images = [Image.open(FIXTURE / "inputs" / f"image_{i}.png").convert("RGB") for i in range(3)]
    return meta, images


@pytest.fixture(scope="module")
def left_padded():
    return GmeQwen2VLEmbedder(FIXTURE / "model", device="cpu")  # the default, as NexusScore runs it


@pytest.mark.parametrize("side", ["left", "right"])
def test_embeddings_equal_the_benchmark_code(side, expected, inputs, left_padded):
    meta, images = inputs
    assert meta["instruction"] == GME_TEXT_INSTRUCTION
    gme = (
        left_padded
        if side == "left"
        else GmeQwen2VLEmbedder(FIXTURE / "model", device="cpu", padding_side=side)
    )
    texts = gme.embed_texts(meta["texts"], meta["instruction"])
    corpus = gme.embed_images(images)
    assert texts.dtype == corpus.dtype == torch.float16  # as the benchmark loads GME
    assert texts.shape == expected[f"text_{side}"].shape == (3, 32)
    torch.testing.assert_close(texts, expected[f"text_{side}"], rtol=0, atol=ATOL)
    torch.testing.assert_close(corpus, expected[f"image_{side}"], rtol=0, atol=ATOL)
    # The fixture is not degenerate: different inputs embed differently.
    assert (expected[f"image_{side}"][0] - expected[f"image_{side}"][1]).abs().max() > 50 * ATOL


def test_image_preprocessing_gives_the_benchmark_grids(expected, inputs, left_padded):
    _, images = inputs
    gme = left_padded
    grids = gme.image_processor(
        images=[gme_fetch_image(i) for i in images],
        size={"shortest_edge": GME_MIN_PIXELS, "longest_edge": GME_MAX_PIXELS},
        return_tensors="pt",
    )["image_grid_thw"]
    assert grids.tolist() == expected["image_grid_thw"].tolist() == [[1, 32, 32], [1, 26, 44], [1, 64, 16]]


def test_gme_prompt_and_resize_rules():
    assert gme_prompt(GME_TEXT_INSTRUCTION, text="a cat") == (
        "<|im_start|>system\nFind an image that matches the given text.<|im_end|>\n"
        "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
    )
    assert (
        gme_prompt(GME_DEFAULT_INSTRUCTION, image=True).count("<|vision_start|><|image_pad|><|vision_end|>")
        == 1
    )
    assert gme_smart_resize(720, 1280) == (728, 1288)  # nearest multiples of 28
    assert gme_smart_resize(10, 10) == (56, 56)  # at least 4 tiles of 28x28
    h, w = gme_smart_resize(10, 8000)  # aspect 286 > 200: clamped, not refused
    assert h == 28 and w == 28 * 200


def test_gme_score_on_the_tiny_model_is_the_mean_fp16_dot_product(inputs, left_padded):
    _, images = inputs
    gme = left_padded
    frames = np.stack([np.asarray(images[0])] * 2)
    sample = VideoSample.from_frames("singleobj_1", frames, prompt="A red car")
    value = GmeScorer(gme, num_frames=2)(sample)
    query = gme.embed_texts(["A red car"], GME_TEXT_INSTRUCTION)
    corpus = gme.embed_images([images[0]])
    assert value == pytest.approx(float((query * corpus).sum(-1)), abs=1e-3)


def test_missing_gme_folder_is_named(tmp_path):
    with pytest.raises(MissingModelFileError, match="gme-Qwen2-VL-7B-Instruct"):
        GmeQwen2VLEmbedder(tmp_path / "gme-Qwen2-VL-7B-Instruct", device="cpu")
