"""MLLM stream (spec 2.5): pre-scaling, the Qwen2.5-VL chat, image-token counts and post-norm states.

Oracles: hand-computed sizes, Qwen's ``smart_resize`` arithmetic re-implemented here, the chat format
written out literally, the tiny tokenizer on the expected (hand-expanded) text, and independent forwards
of the stock ``Qwen2_5_VLModel`` (``last_hidden_state``) on a tiny Qwen2.5-VL whose final-norm weight is
far from all ones, so that pre- and post-norm states cannot be mistaken for each other.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from bindweave.conditioning.mllm import (
    MLLMStateError,
    build_mllm_messages,
    encode_mllm,
    load_mllm_processor,
    load_mllm_states,
    mllm_inputs,
    mllm_size_problem,
    prescale_for_mllm,
)
from bindweave.testing import ReleaseFolders
from bindweave.testing.release import TINY_MLLM_DIM

PROMPT = "A man wearing glasses walks his dog along the beach."
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"

# Qwen2.5-VL image processor defaults (spec 2.5).
PATCH, MERGE = 14, 2
FACTOR = PATCH * MERGE  # 28
MIN_PIXELS, MAX_PIXELS = 3136, 12845056


def _smart_resize(height: int, width: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: multiples of 28, area within [min_pixels, max_pixels], aspect kept."""
    h_bar = round(height / FACTOR) * FACTOR
    w_bar = round(width / FACTOR) * FACTOR
    if h_bar * w_bar > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h_bar = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w_bar = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h_bar * w_bar < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / FACTOR) * FACTOR
        w_bar = math.ceil(width * beta / FACTOR) * FACTOR
    return h_bar, w_bar


def _grid(prescaled_width: int, prescaled_height: int) -> tuple[int, int, int]:
    h_bar, w_bar = _smart_resize(prescaled_height, prescaled_width)
    return 1, h_bar // PATCH, w_bar // PATCH


def _image_tokens(prescaled_width: int, prescaled_height: int) -> int:
    t, gh, gw = _grid(prescaled_width, prescaled_height)
    return t * gh * gw // (MERGE * MERGE)


def _chat(prompt: str, num_images: int) -> str:
    return (
        SYSTEM
        + "<|im_start|>user\n"
        + prompt
        + IMAGE_SLOT * num_images
        + "<|im_end|>\n<|im_start|>assistant\n"
    )


def _random_image(width: int, height: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


# Small synthetic references (width, height) and their sizes after the x0.75 / x0.3 pre-scale, by hand.
SMALL_IMAGES = [(60, 80), (100, 50)]
SMALL_PRESCALED = [(45, 60), (75, 37)]


@pytest.fixture(scope="module")
def release(tiny_release: ReleaseFolders) -> ReleaseFolders:
    return tiny_release  # the session's tiny release (seed 0, read only)


@pytest.fixture(scope="module")
def processor(release: ReleaseFolders):
    return load_mllm_processor(release.mllm)


@pytest.fixture(scope="module")
def mllm(release: ReleaseFolders) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(release.mllm, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def small_images() -> list[PIL.Image.Image]:
    return [_random_image(w, h, seed=i) for i, (w, h) in enumerate(SMALL_IMAGES)]


# ---------------------------------------------------------------------------------------------- smart_resize


def test_hand_smart_resize_reproduces_the_worked_examples() -> None:
    # 668x834 -> x0.75 -> 501x625 -> 616x504 (h x w) -> grid (1, 44, 36) -> 1584 / 4 = 396 tokens.
    assert _smart_resize(625, 501) == (616, 504)
    assert _grid(501, 625) == (1, 44, 36)
    assert _image_tokens(501, 625) == 396
    # Too small: scaled up to at least 3136 pixels (56x56).
    assert _smart_resize(10, 10) == (56, 56)


# ---------------------------------------------------------------------------------------------- prescale


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((668, 834), (501, 625)),  # 557112 px <= 921600: x0.75, int() of each side (625.5 -> 625)
        ((1920, 1080), (576, 324)),  # 2073600 px > 921600: x0.3
        ((1280, 720), (960, 540)),  # exactly 720*1280 is not "above": x0.75
        ((720, 1280), (540, 960)),
        ((1281, 720), (384, 216)),  # just above: x0.3 (384.3 -> 384)
        ((3, 5), (2, 3)),
    ],
)
def test_prescale_for_mllm_sizes(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert prescale_for_mllm(PIL.Image.new("RGB", size)).size == expected


# (width, height): too small or too long for the MLLM, and the smallest / longest it reads. By hand:
# x0.75 leaves a 0 side below 2 px (x0.3 above 720x1280 pixels: below 4 px); 267x2 -> 200x1 is Qwen's
# longest aspect ratio (200:1), 268x2 -> 201x1 is past it.
SIZE_LIMITS = [
    ((1, 1), False),
    ((400, 1), False),
    ((1, 3), False),
    ((2, 2), True),
    ((267, 2), True),
    ((268, 2), False),
    ((2, 267), True),
    ((307201, 3), False),  # 921603 px: x0.3 -> 92160x0
    ((1300, 720), True),
]


@pytest.mark.parametrize(("size", "readable"), SIZE_LIMITS)
def test_mllm_size_problem_agrees_with_the_processor(size, readable, processor) -> None:
    """Readable exactly when the release's pre-scale (a PIL resize) works and the stock processor takes it."""
    factor = 0.3 if size[0] * size[1] > 720 * 1280 else 0.75
    scaled = (int(size[0] * factor), int(size[1] * factor))
    try:
        prescaled = PIL.Image.new("RGB", size).resize(scaled)
        processor.image_processor(images=[prescaled], return_tensors="pt")
        processed = True
    except ValueError:  # PIL: "height and width must be > 0"; Qwen: "absolute aspect ratio must be smaller"
        processed = False
    assert processed == readable
    assert (mllm_size_problem(*size) is None) == readable


def test_prescale_for_mllm_names_a_size_it_cannot_scale() -> None:
    with pytest.raises(
        ValueError,
        match=r"^a 400x1 image cannot be a reference: .* leaves 300x0; each side must be at least 2 pixels$",
    ):
        prescale_for_mllm(PIL.Image.new("RGB", (400, 1)))
    with pytest.raises(ValueError, match=r"aspect ratio of 201:1; Qwen2.5-VL reads at most 200:1$"):
        prescale_for_mllm(PIL.Image.new("RGB", (268, 2)))


def test_prescale_for_mllm_pixels_match_the_release_pil_resize() -> None:
    # The release calls ``image.resize(new_size)``: PIL's default filter for RGB (bicubic).
    image = _random_image(90, 70, seed=3)
    expected = image.resize((67, 52))
    np.testing.assert_array_equal(np.asarray(prescale_for_mllm(image)), np.asarray(expected))


# ---------------------------------------------------------------------------------------------- chat


def test_build_mllm_messages_text_first_then_one_image_per_reference() -> None:
    assert build_mllm_messages("hello", 3) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image"},
                {"type": "image"},
                {"type": "image"},
            ],
        }
    ]
    assert build_mllm_messages("hi", 1)[0]["content"] == [{"type": "text", "text": "hi"}, {"type": "image"}]


def test_processor_has_the_qwen_default_pixel_limits(processor) -> None:
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (MIN_PIXELS, MAX_PIXELS)
    assert processor.image_processor.patch_size == PATCH and processor.image_processor.merge_size == MERGE


@pytest.fixture
def requested_backends(monkeypatch) -> list[str | None]:
    """The ``backend`` every ``AutoImageProcessor.from_pretrained`` call asks for, in order."""
    from transformers import AutoImageProcessor

    requested: list[str | None] = []
    original = AutoImageProcessor.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        requested.append(kwargs.get("backend"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", classmethod(spy))
    return requested


def test_processor_asks_for_the_pil_image_backend(release: ReleaseFolders, requested_backends) -> None:
    """Whether or not torchvision is installed, the image processor is the PIL one (spec 2.5)."""
    from transformers import Qwen2VLImageProcessorPil

    processor = load_mllm_processor(release.mllm)
    assert requested_backends == ["pil"]
    assert type(processor.image_processor) is Qwen2VLImageProcessorPil


def test_saved_processor_reloads_with_the_pil_image_backend(
    tmp_path: Path, processor, requested_backends
) -> None:
    """diffusers loads a pipeline's ``mllm_processor`` through the class's own ``from_pretrained``."""
    from transformers import Qwen2VLImageProcessorPil

    from bindweave.conditioning.mllm import QwenVLImageProcessor

    processor.save_pretrained(tmp_path)
    reloaded = QwenVLImageProcessor.from_pretrained(tmp_path)
    assert requested_backends == ["pil"]
    assert type(reloaded.image_processor) is Qwen2VLImageProcessorPil
    assert reloaded.tokenizer("a cat").input_ids == processor.tokenizer("a cat").input_ids


@pytest.mark.parametrize("num_images", [1, 2])
def test_chat_renders_the_qwen2_5_vl_format(processor, num_images: int) -> None:
    text = processor.apply_chat_template(
        build_mllm_messages(PROMPT, num_images), tokenize=False, add_generation_prompt=True
    )
    assert text == _chat(PROMPT, num_images)


def test_mllm_inputs_token_ids_equal_the_hand_expanded_chat(processor, small_images) -> None:
    counts = [_image_tokens(w, h) for w, h in SMALL_PRESCALED]
    assert counts == [4, 6]  # 45x60 -> 56x56 -> (1,4,4); 75x37 -> 84x56 (min-pixels branch) -> (1,4,6)

    inputs = mllm_inputs(processor, PROMPT, small_images)

    expanded = _chat(PROMPT, 0).replace(
        "<|im_end|>\n<|im_start|>assistant",
        "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in counts)
        + "<|im_end|>\n<|im_start|>assistant",
    )
    expected_ids = processor.tokenizer(expanded, return_tensors="pt").input_ids
    assert torch.equal(inputs["input_ids"], expected_ids)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(expected_ids))
    assert inputs["image_grid_thw"].tolist() == [list(_grid(w, h)) for w, h in SMALL_PRESCALED]


def test_mllm_inputs_mm_token_type_ids_mark_exactly_the_image_tokens(processor, small_images) -> None:
    inputs = mllm_inputs(processor, PROMPT, small_images)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    is_image = inputs["input_ids"] == image_pad
    assert int(is_image.sum()) == sum(_image_tokens(w, h) for w, h in SMALL_PRESCALED)
    assert torch.equal(inputs["mm_token_type_ids"] == 1, is_image)
    assert torch.equal(inputs["mm_token_type_ids"] == 0, ~is_image)


def test_mllm_inputs_pixels_come_from_the_prescaled_images(processor, small_images) -> None:
    inputs = mllm_inputs(processor, PROMPT, small_images)
    by_hand = [img.resize(size) for img, size in zip(small_images, SMALL_PRESCALED, strict=True)]
    direct = processor.image_processor(images=by_hand, return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], direct["pixel_values"], rtol=0, atol=0)


def test_mllm_inputs_large_image_uses_the_0_3_prescale(processor) -> None:
    image = PIL.Image.new("RGB", (1300, 720), (128, 64, 32))  # 936000 px > 921600 -> 390x216
    inputs = mllm_inputs(processor, PROMPT, [image])
    assert inputs["image_grid_thw"].tolist() == [list(_grid(390, 216))] == [[1, 16, 28]]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == 112


def test_man_png_gives_396_image_tokens(processor, fixtures_dir: Path) -> None:
    with PIL.Image.open(fixtures_dir / "Images" / "man.png") as raw:
        image = raw.convert("RGB")
    assert image.size == (668, 834)

    inputs = mllm_inputs(processor, PROMPT, [image])

    assert inputs["image_grid_thw"].tolist() == [[1, 44, 36]]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == 396


# ---------------------------------------------------------------------------------------------- encode


def _independent_inputs(processor, images: list[PIL.Image.Image]) -> dict[str, torch.Tensor]:
    """Processor inputs built without ``mllm_inputs``: literal chat text, images pre-scaled here."""
    scaled = [img.resize(size) for img, size in zip(images, SMALL_PRESCALED, strict=True)]
    return dict(processor(text=[_chat(PROMPT, len(images))], images=scaled, return_tensors="pt"))


@pytest.fixture(scope="module")
def mllm_scaled_norm(mllm) -> Qwen2_5_VLForConditionalGeneration:
    """The tiny MLLM with a final-norm weight in [0.2, 5]: a trained model's is far from all ones."""
    scaled = copy.deepcopy(mllm)
    g = torch.Generator().manual_seed(7)
    weight = scaled.model.language_model.norm.weight
    with torch.no_grad():
        weight.copy_(torch.exp(torch.empty_like(weight).uniform_(-1.6, 1.6, generator=g)))
    return scaled


def test_encode_mllm_returns_the_stock_post_norm_last_hidden_state(
    processor, mllm_scaled_norm, small_images
) -> None:
    states = encode_mllm(mllm_scaled_norm, processor, PROMPT, small_images)

    inputs = _independent_inputs(processor, small_images)
    with torch.no_grad():
        expected = mllm_scaled_norm.model(**inputs).last_hidden_state  # after the final RMSNorm, no LM head
        with_head = mllm_scaled_norm(**inputs, output_hidden_states=True)
    length = inputs["input_ids"].shape[1]
    assert states.shape == (1, length, TINY_MLLM_DIM)
    assert states.dtype == torch.float32
    torch.testing.assert_close(states, expected)
    # In transformers 5, hidden_states[-1] of the full model is the same tensor (spec 2.5).
    torch.testing.assert_close(states, with_head.hidden_states[-1])


def test_encode_mllm_states_are_not_the_pre_norm_states(processor, mllm_scaled_norm, small_images) -> None:
    """The test above can fail: the pre-norm states (the norm replaced by Identity) are far from them."""
    states = encode_mllm(mllm_scaled_norm, processor, PROMPT, small_images)

    no_norm = copy.deepcopy(mllm_scaled_norm)
    no_norm.model.language_model.norm = torch.nn.Identity()
    with torch.no_grad():
        pre_norm = no_norm.model(**_independent_inputs(processor, small_images)).last_hidden_state
        renormed = mllm_scaled_norm.model.language_model.norm(pre_norm)
    assert (states - pre_norm).abs().max() > 0.1 * pre_norm.abs().max()
    torch.testing.assert_close(states, renormed)  # post-norm = norm(pre-norm), token by token


def test_encode_mllm_depends_on_the_images(processor, mllm, small_images) -> None:
    a = encode_mllm(mllm, processor, PROMPT, small_images)
    b = encode_mllm(mllm, processor, PROMPT, [small_images[0], _random_image(100, 50, seed=99)])
    assert a.shape == b.shape
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------- load states


def test_load_mllm_states_reads_the_released_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hidden_states" / "singleface_hidden_states.pt"
    states = load_mllm_states(path, mllm_dim=3584)
    assert states.shape == (1, 526, 3584)
    assert states.dtype == torch.bfloat16


def test_released_states_are_post_norm(fixtures_dir: Path) -> None:
    """The released 7B files: every token's RMS is 2.5-6.3, token 0 included (pre-norm Qwen2.5 states have a
    first token of massive activations), so they are the final norm's output (spec 2.5)."""
    for name in ("singleface_hidden_states.pt", "singleface_hidden_states_negative.pt"):
        states = load_mllm_states(fixtures_dir / "hidden_states" / name, mllm_dim=3584).float()
        rms = states.pow(2).mean(-1).sqrt()[0]  # (L,)
        assert 2.5 < rms.min() and rms.max() < 6.4, (name, rms.min(), rms.max())
        assert rms[0] < 2 * rms.median(), name


def test_load_mllm_states_fixture_with_wrong_dim_names_file_and_dims(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hidden_states" / "singleface_hidden_states.pt"
    with pytest.raises(MLLMStateError) as info:
        load_mllm_states(path, mllm_dim=32)
    message = str(info.value)
    assert str(path) in message and "3584" in message and "32" in message


def test_load_mllm_states_accepts_tensors_and_saved_files(tmp_path: Path) -> None:
    states = torch.randn(1, 7, 8, dtype=torch.bfloat16)
    assert torch.equal(load_mllm_states(states, mllm_dim=8), states)

    path = tmp_path / "states.pt"
    torch.save(states, path)
    loaded = load_mllm_states(path, mllm_dim=8)
    assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, states)
    assert torch.equal(load_mllm_states(str(path), mllm_dim=8), states)


def test_load_mllm_states_accepts_2d_as_batch_of_one() -> None:
    states = torch.randn(7, 8)
    loaded = load_mllm_states(states, mllm_dim=8)
    assert loaded.shape == (1, 7, 8)
    assert torch.equal(loaded[0], states)


@pytest.mark.parametrize(
    "bad",
    [
        torch.randn(8),  # 1-D
        torch.randn(1, 1, 7, 8),  # 4-D
        torch.randn(2, 7, 8),  # batch > 1
        torch.randn(1, 7, 9),  # wrong width
        torch.ones(1, 7, 8, dtype=torch.int64),  # integer dtype
    ],
    ids=["1d", "4d", "batch2", "dim9", "int64"],
)
def test_load_mllm_states_rejects_bad_tensors(bad: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(MLLMStateError, match=r"\(1, L, 8\)"):
        load_mllm_states(bad, mllm_dim=8)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(MLLMStateError) as info:
        load_mllm_states(path, mllm_dim=8)
    assert str(path) in str(info.value)


def test_load_mllm_states_rejects_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent_hidden_states.pt"
    with pytest.raises(MLLMStateError) as info:
        load_mllm_states(path, mllm_dim=8)
    assert str(path) in str(info.value)


def test_load_mllm_states_rejects_a_dict_file(tmp_path: Path) -> None:
    path = tmp_path / "dict.pt"
    torch.save({"hidden_states": torch.randn(1, 7, 8)}, path)
    with pytest.raises(MLLMStateError) as info:
        load_mllm_states(path, mllm_dim=8)
    assert str(path) in str(info.value) and "dict" in str(info.value)


def test_load_mllm_states_rejects_a_non_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "text.pt"
    path.write_text("not a torch file")
    with pytest.raises(MLLMStateError) as info:
        load_mllm_states(path, mllm_dim=8)
    assert str(path) in str(info.value)
