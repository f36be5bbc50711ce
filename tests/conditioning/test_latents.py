"""VAE stream (spec 2.3, 2.4): frame count, latent normalisation, reference slots and the condition ``y``.

Oracles: the stock ``AutoencoderKLWan`` loaded from the tiny Wan folder, the VAE config's
``latents_mean`` / ``latents_std`` applied by hand, and hand-built slot tensors (nearest indices
``floor(i * H / h)``, the semantics of ``F.interpolate(mode="nearest")`` that the release uses).
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKLWan

from bindweave.conditioning.latents import (
    build_condition,
    denormalize_latents,
    encode_references,
    latent_frame_count,
    normalize_latents,
    reference_slots,
    zero_video_condition,
)
from bindweave.conditioning.references import letterbox
from bindweave.testing import ReleaseFolders

Z = 16  # Wan 2.1 VAE z_dim (kept by the tiny VAE)


@pytest.fixture(scope="module")
def release(tiny_release: ReleaseFolders) -> ReleaseFolders:
    return tiny_release  # the session's tiny release (seed 0, read only)


@pytest.fixture(scope="module")
def vae(release: ReleaseFolders) -> AutoencoderKLWan:
    return AutoencoderKLWan.from_pretrained(release.wan, subfolder="vae", torch_dtype=torch.float32).eval()


def _stats(vae: AutoencoderKLWan) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean / std from the VAE config, shaped for ``(B, z, F, h, w)``."""
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, Z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, Z, 1, 1, 1)
    return mean, std


def _stock_normalised_mode(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae)
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
    return (latents - mean) / std


# ---------------------------------------------------------------------------------------------- frames


@pytest.mark.parametrize(("num_frames", "expected"), [(81, 21), (17, 5), (5, 2), (1, 1)])
def test_latent_frame_count(num_frames: int, expected: int) -> None:
    assert latent_frame_count(num_frames) == expected


@pytest.mark.parametrize("num_frames", [80, 0, 82, -3])
def test_latent_frame_count_rejects_frame_counts_not_4k_plus_1(num_frames: int) -> None:
    with pytest.raises(ValueError, match=r"4k \+ 1"):
        latent_frame_count(num_frames)


# ---------------------------------------------------------------------------------------------- normalisation


def test_tiny_vae_statistics_are_not_identity(vae: AutoencoderKLWan) -> None:
    # Guards the tests below: with mean 0 / std 1 a missing normalisation would go unnoticed.
    mean, std = _stats(vae)
    assert mean.abs().max() > 0.1 and (std - 1).abs().max() > 0.1


def test_normalize_latents_is_the_per_channel_formula(vae: AutoencoderKLWan) -> None:
    torch.manual_seed(0)
    latents = torch.randn(2, Z, 3, 4, 5)
    mean, std = _stats(vae)

    normalised = normalize_latents(latents, vae)
    torch.testing.assert_close(normalised, (latents - mean) / std)
    # Spot-check one element by plain Python arithmetic on the config lists.
    c = 7
    value = (latents[1, c, 2, 3, 4].item() - vae.config.latents_mean[c]) / vae.config.latents_std[c]
    assert normalised[1, c, 2, 3, 4].item() == pytest.approx(value, rel=1e-5)


def test_denormalize_latents_is_the_inverse_formula(vae: AutoencoderKLWan) -> None:
    torch.manual_seed(1)
    latents = torch.randn(1, Z, 2, 3, 3)
    mean, std = _stats(vae)

    torch.testing.assert_close(denormalize_latents(latents, vae), latents * std + mean)
    torch.testing.assert_close(denormalize_latents(normalize_latents(latents, vae), vae), latents)
    torch.testing.assert_close(normalize_latents(denormalize_latents(latents, vae), vae), latents)


# ---------------------------------------------------------------------------------------------- references


def test_encode_references_equals_stock_vae_mode_of_each_canvas_alone(vae: AutoencoderKLWan) -> None:
    torch.manual_seed(2)
    canvases = torch.rand(2, 3, 32, 48)  # pixels in [0, 1]

    encoded = encode_references(vae, canvases)

    assert encoded.shape == (2, Z, 1, 4, 6)  # 8x spatial compression, one latent frame
    for k in range(2):
        video = canvases[k : k + 1, :, None] * 2.0 - 1.0  # (1, 3, 1, H, W) in [-1, 1]
        torch.testing.assert_close(encoded[k : k + 1], _stock_normalised_mode(vae, video))


def test_encode_references_uses_the_minus_one_to_one_range(vae: AutoencoderKLWan) -> None:
    # A black canvas (0) must be encoded as -1, not as 0 (mid grey).
    black = torch.zeros(1, 3, 1, 16, 16)
    encoded = encode_references(vae, black[:, :, 0])
    torch.testing.assert_close(encoded, _stock_normalised_mode(vae, black - 1.0))
    assert not torch.allclose(encoded, _stock_normalised_mode(vae, black), atol=1e-4)


def _nearest(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Hand-written nearest resize: output (i, j) takes input (floor(i * H / h), floor(j * W / w))."""
    big_h, big_w = mask.shape
    rows = [i * big_h // h for i in range(h)]
    cols = [j * big_w // w for j in range(w)]
    return torch.tensor([[mask[r, c].item() for c in cols] for r in rows])


def test_hand_written_nearest_indices() -> None:
    # 20 -> 6 rows: floor(i * 20 / 6) = 0, 3, 6, 10, 13, 16; 30 -> 7 columns: 0, 4, 8, 12, 17, 21, 25.
    assert [i * 20 // 6 for i in range(6)] == [0, 3, 6, 10, 13, 16]
    assert [j * 30 // 7 for j in range(7)] == [0, 4, 8, 12, 17, 21, 25]


@pytest.mark.parametrize("num_refs", [1, 3])
def test_reference_slots_match_hand_built_tensor(num_refs: int) -> None:
    torch.manual_seed(3)
    h, w, big_h, big_w, slots = 6, 7, 20, 30, 4
    latents = torch.randn(num_refs, Z, 1, h, w)
    # Real letterbox masks of differently shaped images on a 20x30 canvas.
    sizes = [(12, 20), (30, 9), (40, 40)][:num_refs]
    masks = torch.stack([letterbox(_blank(w_, h_), big_h, big_w).mask for w_, h_ in sizes])

    result = reference_slots(latents, masks, slots)

    expected = torch.zeros(4 + Z, slots, h, w)
    for k in range(num_refs):
        expected[0, k] = _nearest(masks[k], h, w)
        expected[4:, k] = latents[k, :, 0]
    assert result.shape == (4 + Z, slots, h, w)
    assert torch.equal(result, expected)
    assert torch.count_nonzero(result[1:4]) == 0
    assert torch.count_nonzero(result[:, num_refs:]) == 0
    # The masks are not trivial: each slot's small mask has both ones and zeros.
    for k in range(num_refs):
        assert 0 < result[0, k].sum() < h * w


def _blank(width: int, height: int) -> PIL.Image.Image:
    return PIL.Image.new("RGB", (width, height), (200, 100, 50))


def test_reference_slots_rejects_more_references_than_slots() -> None:
    with pytest.raises(ValueError, match="5"):
        reference_slots(torch.zeros(5, Z, 1, 2, 2), torch.ones(5, 16, 16), 4)


# ---------------------------------------------------------------------------------------------- video part


def test_zero_video_condition_is_zero_masks_and_stock_encoding_of_a_zero_video(vae: AutoencoderKLWan) -> None:
    num_frames, height, width = 9, 16, 24  # -> F' = 3, h = 2, w = 3

    condition = zero_video_condition(vae, num_frames, height, width)

    assert condition.shape == (4 + Z, 3, 2, 3)
    assert torch.count_nonzero(condition[:4]) == 0
    expected = _stock_normalised_mode(vae, torch.zeros(1, 3, num_frames, height, width))[0]
    torch.testing.assert_close(condition[4:], expected)
    # Mid grey is not the zero latent: the normalised encoding is clearly non-zero.
    assert condition[4:].abs().max() > 1e-2


def test_zero_video_condition_rejects_bad_frame_counts(vae: AutoencoderKLWan) -> None:
    with pytest.raises(ValueError, match=r"4k \+ 1"):
        zero_video_condition(vae, 8, 16, 16)


def test_build_condition_puts_slots_first_in_time() -> None:
    torch.manual_seed(4)
    slots = torch.randn(4 + Z, 4, 3, 5)
    video = torch.randn(4 + Z, 6, 3, 5)

    y = build_condition(slots, video)

    assert y.shape == (1, 4 + Z, 4 + 6, 3, 5)
    assert torch.equal(y[0, :, :4], slots)
    assert torch.equal(y[0, :, 4:], video)


def test_build_condition_end_to_end_with_the_vae(vae: AutoencoderKLWan) -> None:
    # Two references + a 5-frame video at 32x48: y is (1, 20, 4 + 2, 4, 6).
    boxes = [letterbox(_blank(20, 40), 32, 48), letterbox(_blank(60, 10), 32, 48)]
    assert [b.box for b in boxes] == [(16, 0, 16, 32), (0, 12, 48, 8)]  # scale 0.8 for both
    canvases = torch.stack([b.canvas for b in boxes])
    masks = torch.stack([b.mask for b in boxes])

    latents = encode_references(vae, canvases)
    video = zero_video_condition(vae, 5, 32, 48)
    y = build_condition(reference_slots(latents, masks, 4), video)

    assert y.shape == (1, 4 + Z, 6, 4, 6)
    for k in range(2):
        stock = _stock_normalised_mode(vae, canvases[k : k + 1, :, None] * 2 - 1)[0, :, 0]
        torch.testing.assert_close(y[0, 4:, k], stock)
    # Nearest picks rows 0, 8, 16, 24 and columns 0, 8, ..., 40 of the 32x48 masks.
    expected_mask_0 = torch.zeros(4, 6)
    expected_mask_0[:, 2:4] = 1.0  # columns 16 and 24 lie in [16, 32)
    expected_mask_1 = torch.zeros(4, 6)
    expected_mask_1[2, :] = 1.0  # row 16 lies in [12, 20)
    assert torch.equal(y[0, 0, 0], expected_mask_0)
    assert torch.equal(y[0, 0, 1], expected_mask_1)
    assert torch.count_nonzero(y[0, 1:4]) == 0
    assert torch.count_nonzero(y[0, :, 2:4]) == 0
    assert torch.count_nonzero(y[0, :4, 4:]) == 0
    assert torch.equal(y[0, :, 4:], video)
