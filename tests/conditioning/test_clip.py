"""CLIP stream (spec 2.2): squash the whole canvas to a square, normalise, penultimate ViT states, 4 slots.

Oracles: hand-computed normalisation, PIL's BILINEAR resize (antialiased when downscaling) on float
images, and a direct call of the stock ``CLIPVisionModel`` loaded from the tiny Wan folder.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPVisionModel

from bindweave.conditioning.clip import clip_pixel_values, encode_clip, pack_clip_tokens
from bindweave.conditioning.references import letterbox
from bindweave.testing import ReleaseFolders
from bindweave.testing.release import TINY_CLIP_DIM, TINY_CLIP_IMAGE_SIZE, TINY_CLIP_TOKENS

# Spec 2.2, written out independently of the module under test.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def release(tiny_release: ReleaseFolders) -> ReleaseFolders:
    return tiny_release  # the session's tiny release (seed 0, read only)


@pytest.fixture(scope="module")
def image_encoder(release: ReleaseFolders) -> CLIPVisionModel:
    return CLIPVisionModel.from_pretrained(release.wan, subfolder="image_encoder").eval()


def _denormalise(pixel_values: torch.Tensor) -> torch.Tensor:
    return pixel_values * STD.view(1, 3, 1, 1) + MEAN.view(1, 3, 1, 1)


def _pil_bilinear(canvas: torch.Tensor, size: int) -> np.ndarray:
    """``(3, H, W)`` float canvas -> ``(3, size, size)`` with PIL BILINEAR, channel by channel in mode F."""
    return np.stack(
        [
            np.asarray(
                PIL.Image.fromarray(canvas[c].numpy(), mode="F").resize(
                    (size, size), PIL.Image.Resampling.BILINEAR
                )
            )
            for c in range(3)
        ]
    )


# ---------------------------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("value", [0.0, 0.25, 0.5, 1.0])
def test_constant_canvas_maps_to_hand_normalised_value(value: float) -> None:
    canvases = torch.full((2, 3, 72, 128), value)
    pixels = clip_pixel_values(canvases)

    assert pixels.shape == (2, 3, 224, 224)
    assert pixels.dtype == torch.float32
    expected = ((value - MEAN) / STD).view(1, 3, 1, 1).expand(2, 3, 224, 224)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


def test_output_size_follows_the_size_argument() -> None:
    pixels = clip_pixel_values(torch.rand(3, 3, 40, 64), size=TINY_CLIP_IMAGE_SIZE)
    assert pixels.shape == (3, 3, TINY_CLIP_IMAGE_SIZE, TINY_CLIP_IMAGE_SIZE)


def test_whole_16_9_canvas_is_squashed_not_cropped_or_padded() -> None:
    # Left quarter white, rest black. Squashing keeps it the left quarter of the square (columns < 56 of 224)
    # on every row; a centre crop would shrink it to ~10 columns, padding would add black rows.
    canvas = torch.zeros(1, 3, 72, 128)
    canvas[..., :32] = 1.0
    pixels = _denormalise(clip_pixel_values(canvas))[0]

    torch.testing.assert_close(pixels[:, :, :54], torch.ones(3, 224, 54), rtol=0, atol=1e-5)
    torch.testing.assert_close(pixels[:, :, 58:], torch.zeros(3, 224, 166), rtol=0, atol=1e-5)
    # Same in the vertical direction: a top band of 18 rows (a quarter of 72) becomes 56 rows.
    canvas = torch.zeros(1, 3, 72, 128)
    canvas[..., :18, :] = 1.0
    pixels = _denormalise(clip_pixel_values(canvas))[0]
    torch.testing.assert_close(pixels[:, :54], torch.ones(3, 54, 224), rtol=0, atol=1e-5)
    torch.testing.assert_close(pixels[:, 58:], torch.zeros(3, 166, 224), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(72, 128), (360, 640)])
def test_resize_matches_pil_antialiased_bilinear(height: int, width: int) -> None:
    rng = np.random.default_rng(height)
    image = PIL.Image.fromarray(rng.integers(0, 256, size=(150, 100, 3), dtype=np.uint8), mode="RGB")
    canvas = letterbox(image, height, width).canvas  # real letterboxed content with black borders

    pixels = _denormalise(clip_pixel_values(canvas[None]))[0].numpy()
    expected = _pil_bilinear(canvas, 224)
    np.testing.assert_allclose(pixels, expected, rtol=0, atol=2 / 255)
    # A resize without antialiasing differs clearly from PIL when downscaling 640 -> 224.
    if width > 224:
        plain = torch.nn.functional.interpolate(
            canvas[None], size=(224, 224), mode="bilinear", antialias=False
        )
        assert np.abs(plain[0].numpy() - expected).max() > 4 / 255


# ---------------------------------------------------------------------------------------------- encoder


def test_encode_clip_returns_penultimate_hidden_states(image_encoder: CLIPVisionModel) -> None:
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, TINY_CLIP_IMAGE_SIZE, TINY_CLIP_IMAGE_SIZE)

    features = encode_clip(image_encoder, pixel_values)

    with torch.no_grad():
        stock = image_encoder(pixel_values=pixel_values, output_hidden_states=True)
    assert features.shape == (2, TINY_CLIP_TOKENS, TINY_CLIP_DIM)
    torch.testing.assert_close(features, stock.hidden_states[-2], rtol=0, atol=0)
    # The last layer's output is something else: the check above really pins the penultimate one.
    assert not torch.allclose(features, stock.hidden_states[-1], atol=1e-3)
    assert not torch.allclose(features, stock.last_hidden_state, atol=1e-3)


def test_clip_stream_end_to_end_per_reference(image_encoder: CLIPVisionModel) -> None:
    # Each reference is encoded independently: its tokens do not depend on what else is in the batch.
    rng = np.random.default_rng(7)
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")
        for h, w in [(50, 30), (20, 80)]
    ]
    canvases = torch.stack([letterbox(img, 36, 64).canvas for img in images])
    pixels = clip_pixel_values(canvases, size=TINY_CLIP_IMAGE_SIZE)
    features = encode_clip(image_encoder, pixels)
    with torch.no_grad():
        alone = image_encoder(pixel_values=pixels[1:], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(features[1:], alone)


# ---------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("num_refs", [1, 3, 4])
def test_pack_clip_tokens_places_references_in_order_and_zero_pads(num_refs: int) -> None:
    tokens, dim, slots = 5, 6, 4
    features = torch.randn(num_refs, tokens, dim)

    packed = pack_clip_tokens(features, slots)

    assert packed.shape == (1, slots * tokens, dim)
    for k in range(num_refs):
        assert torch.equal(packed[0, k * tokens : (k + 1) * tokens], features[k])
    assert torch.count_nonzero(packed[0, num_refs * tokens :]) == 0


def test_pack_clip_tokens_real_size_gives_1028_tokens() -> None:
    features = torch.randn(2, 257, 8)
    packed = pack_clip_tokens(features, 4)
    assert packed.shape == (1, 1028, 8)
    assert torch.equal(packed[0, 257:514], features[1])
    assert torch.count_nonzero(packed[0, 514:]) == 0


def test_pack_clip_tokens_rejects_more_references_than_slots() -> None:
    with pytest.raises(ValueError, match="5"):
        pack_clip_tokens(torch.randn(5, 3, 2), 4)
