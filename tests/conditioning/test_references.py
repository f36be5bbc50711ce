"""Reference images (spec 2.1): loading/validation and the letterbox onto a black canvas.

Every expected box is computed by hand from the spec's rule (scale = min(W/w, H/h, 1), int sides, offset =
floor of half the free space); expected pixels come from PIL directly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.conditioning.references import (
    MAX_REFERENCES,
    Letterboxed,
    ReferenceError,
    check_reference_files,
    letterbox,
    load_reference,
    load_references,
)

H, W = 64, 96  # target canvas (height, width) used throughout


def _random_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def _solid_image(width: int, height: int, rgb: tuple[int, int, int]) -> PIL.Image.Image:
    return PIL.Image.new("RGB", (width, height), rgb)


def _as_uint8_hwc(canvas: torch.Tensor) -> np.ndarray:
    return np.round(canvas.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- letterbox


def test_letterbox_downscales_wide_image_to_full_width_centred_vertically() -> None:
    # 200x100 into 96x64: scale = min(96/200, 64/100, 1) = 0.48 -> 96x48, left 0, top (64-48)//2 = 8.
    image = _random_image(200, 100)
    result = letterbox(image, H, W)

    assert isinstance(result, Letterboxed)
    assert result.box == (0, 8, 96, 48)
    assert result.canvas.shape == (3, H, W) and result.canvas.dtype == torch.float32
    assert result.mask.shape == (H, W) and result.mask.dtype == torch.float32


def test_letterbox_content_equals_pil_lanczos_resize() -> None:
    image = _random_image(200, 100, seed=1)
    result = letterbox(image, H, W)

    expected = np.asarray(image.resize((96, 48), PIL.Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    content = result.canvas[:, 8:56, 0:96].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(content, expected)


def test_letterbox_tall_image_is_fitted_to_height_and_centred_horizontally() -> None:
    # 50x200 into 96x64: scale = min(96/50, 64/200, 1) = 0.32 -> 16x64, left (96-16)//2 = 40, top 0.
    result = letterbox(_random_image(50, 200), H, W)
    assert result.box == (40, 0, 16, 64)


def test_letterbox_never_enlarges_a_small_image() -> None:
    image = _random_image(20, 10, seed=2)
    result = letterbox(image, H, W)

    left, top = (96 - 20) // 2, (64 - 10) // 2  # 38, 27
    assert result.box == (left, top, 20, 10)
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(result.canvas[:, top : top + 10, left : left + 20], expected)


def test_letterbox_odd_free_space_uses_floor_for_the_offset() -> None:
    # 21x11 (no scaling): free space 75 horizontally and 53 vertically -> left 37, top 26 (not 38 / 27).
    result = letterbox(_solid_image(21, 11, (255, 255, 255)), H, W)
    assert result.box == (37, 26, 21, 11)
    assert result.canvas[:, 26, 37].tolist() == [1.0, 1.0, 1.0]
    assert result.canvas[:, 25, 37].tolist() == [0.0, 0.0, 0.0]
    assert result.canvas[:, 26, 36].tolist() == [0.0, 0.0, 0.0]
    assert result.canvas[:, 36, 57].tolist() == [1.0, 1.0, 1.0]  # last row / column of the box
    assert result.canvas[:, 37, 57].tolist() == [0.0, 0.0, 0.0]
    assert result.canvas[:, 36, 58].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("size", "box"),
    [((200, 100), (0, 8, 96, 48)), ((20, 10), (38, 27, 20, 10)), ((21, 11), (37, 26, 21, 11))],
)
def test_letterbox_mask_is_one_exactly_on_the_box_and_canvas_black_elsewhere(
    size: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    # A white image: every pasted pixel is 1, so the canvas must equal the box indicator on all channels.
    result = letterbox(_solid_image(*size, (255, 255, 255)), H, W)
    left, top, width, height = box
    expected_mask = torch.zeros(H, W)
    expected_mask[top : top + height, left : left + width] = 1.0

    assert torch.equal(result.mask, expected_mask)
    assert set(result.mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(result.canvas, expected_mask.expand(3, H, W))


def test_letterbox_black_border_with_random_content() -> None:
    result = letterbox(_random_image(200, 100, seed=3), H, W)
    outside = result.mask == 0
    assert outside.sum() == H * W - 96 * 48
    assert torch.all(result.canvas[:, outside] == 0)


def test_letterbox_image_exactly_target_size_is_copied_unchanged() -> None:
    image = _random_image(W, H, seed=4)
    result = letterbox(image, H, W)
    assert result.box == (0, 0, W, H)
    assert torch.all(result.mask == 1)
    np.testing.assert_array_equal(_as_uint8_hwc(result.canvas), np.asarray(image))


# ---------------------------------------------------------------------------------------------- loading


def _save_png(path: Path, image: PIL.Image.Image) -> Path:
    image.save(path)
    return path


def test_load_references_single_path_and_single_image(tmp_path: Path) -> None:
    image = _random_image(30, 20, seed=5)
    path = _save_png(tmp_path / "one.png", image)

    from_path = load_references(path)
    from_str = load_references(str(path))
    from_pil = load_references(image)
    for loaded in (from_path, from_str, from_pil):
        assert len(loaded) == 1
        assert loaded[0].mode == "RGB" and loaded[0].size == (30, 20)
        np.testing.assert_array_equal(np.asarray(loaded[0]), np.asarray(image))


def test_load_references_keeps_three_in_order(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    paths = [_save_png(tmp_path / f"ref{i}.png", _solid_image(8, 6, c)) for i, c in enumerate(colours)]
    loaded = load_references(paths)
    assert [img.getpixel((0, 0)) for img in loaded] == colours


def test_load_references_more_than_four_warns_and_keeps_the_first_four(
    caplog: pytest.LogCaptureFixture,
) -> None:
    colours = [(10 * i, 0, 0) for i in range(5)]
    images = [_solid_image(4, 4, c) for c in colours]
    with caplog.at_level(logging.WARNING, logger="bindweave.conditioning.references"):
        loaded = load_references(images)

    assert MAX_REFERENCES == 4
    assert [img.getpixel((0, 0)) for img in loaded] == colours[:4]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "5" in warnings[0].getMessage() and "4" in warnings[0].getMessage()


def test_load_references_exactly_four_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = load_references([_solid_image(4, 4, (i, i, i)) for i in range(4)])
    assert len(loaded) == 4
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_load_references_empty_raises() -> None:
    with pytest.raises(ReferenceError):
        load_references([])


def test_load_references_names_a_reference_the_mllm_cannot_read(tmp_path: Path) -> None:
    """Counted from 1, with its file and its size; a 2x2 reference is the smallest the MLLM reads."""
    thin = _save_png(tmp_path / "thin.png", _solid_image(400, 1, (1, 2, 3)))
    good = _save_png(tmp_path / "good.png", _solid_image(2, 2, (1, 2, 3)))
    assert [image.size for image in load_references([good, good])] == [(2, 2), (2, 2)]
    with pytest.raises(
        ReferenceError, match=rf"^reference 2 \({thin}\) is 400x1 pixels: .* at least 2 pixels$"
    ):
        load_references([good, thin])
    with pytest.raises(ReferenceError, match=r"^reference 1 is 1x1 pixels: "):
        load_references([_solid_image(1, 1, (0, 0, 0))])


def test_check_reference_files_checks_as_load_references_does(tmp_path: Path) -> None:
    good = _save_png(tmp_path / "good.png", _random_image(30, 20))
    long = _save_png(tmp_path / "long.png", _solid_image(268, 2, (0, 0, 0)))
    check_reference_files([good, good])
    with pytest.raises(ReferenceError, match=rf"^reference 2 \({long}\) is 268x2 pixels: .* 201:1"):
        check_reference_files([good, long])
    with pytest.raises(
        ReferenceError, match=rf"^reference 1 \({tmp_path / 'no.png'}\): image file not found$"
    ):
        check_reference_files([tmp_path / "no.png"])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ReferenceError, match="reference 1 .*text.png.*: cannot read image"):
        check_reference_files([tmp_path / "text.png"])


def test_load_reference_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "absent.png"
    with pytest.raises(ReferenceError, match="absent.png") as info:
        load_references([missing])
    assert str(missing) in str(info.value)


def test_load_reference_unreadable_file_names_the_path(tmp_path: Path) -> None:
    fake = tmp_path / "not_an_image.png"
    fake.write_text("this is plain text, not a PNG\n")
    with pytest.raises(ReferenceError) as info:
        load_references([fake])
    assert str(fake) in str(info.value)


def test_load_reference_accepts_uint8_array_and_tensor() -> None:
    rng = np.random.default_rng(6)
    array = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    for source in (array, torch.from_numpy(array.copy())):
        image = load_reference(source)
        assert image.mode == "RGB" and image.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(image), array)


def test_load_reference_accepts_float_arrays_in_unit_range() -> None:
    array = np.array([[[0.0, 0.5, 1.0], [0.2, 0.8, 0.999]]], dtype=np.float32)  # (1, 2, 3)
    expected = np.array([[[0, 128, 255], [51, 204, 255]]], dtype=np.uint8)  # round(x * 255)
    for source in (array, array.astype(np.float64), torch.from_numpy(array.copy())):
        np.testing.assert_array_equal(np.asarray(load_reference(source)), expected)


@pytest.mark.parametrize("bad_value", [1.5, -0.1, 255.0])
def test_load_reference_rejects_out_of_range_floats(bad_value: float) -> None:
    array = np.full((4, 4, 3), 0.5, dtype=np.float32)
    array[1, 2, 0] = bad_value
    with pytest.raises(ReferenceError, match=r"\[0, 1\]"):
        load_reference(array)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_load_reference_rejects_non_finite_floats(bad_value: float) -> None:
    array = np.full((4, 4, 3), 0.5, dtype=np.float32)
    array[0, 0, 0] = bad_value
    with pytest.raises(ReferenceError):
        load_reference(array)


def test_load_reference_accepts_bfloat16_tensor() -> None:
    tensor = torch.tensor([[[0.0, 0.5, 1.0]]], dtype=torch.bfloat16)  # 0, 0.5, 1 are exact in bf16
    np.testing.assert_array_equal(np.asarray(load_reference(tensor)), [[[0, 128, 255]]])


@pytest.mark.parametrize("shape", [(3, 8, 8), (8, 8), (8, 8, 4), (1, 8, 8, 3)])
def test_load_reference_rejects_wrong_shapes(shape: tuple[int, ...]) -> None:
    for source in (np.zeros(shape, dtype=np.uint8), torch.zeros(shape, dtype=torch.uint8)):
        with pytest.raises(ReferenceError, match="shape"):
            load_reference(source)


def test_load_reference_converts_other_modes_to_rgb() -> None:
    grey = PIL.Image.new("L", (3, 2), 100)
    rgba = PIL.Image.new("RGBA", (3, 2), (1, 2, 3, 4))
    assert load_reference(grey).mode == "RGB" and load_reference(grey).getpixel((0, 0)) == (100, 100, 100)
    assert load_reference(rgba).getpixel((1, 1)) == (1, 2, 3)


def test_load_reference_rejects_unsupported_types() -> None:
    with pytest.raises(ReferenceError, match="unsupported"):
        load_reference(12345)  # type: ignore[arg-type]


def test_load_reference_rejects_integer_arrays_other_than_uint8():
    with pytest.raises(ReferenceError, match="uint8 or float in \\[0, 1\\], got int64"):
        load_reference(np.zeros((4, 4, 3), dtype=np.int64))
