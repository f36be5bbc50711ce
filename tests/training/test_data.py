"""Training data: manifest checks, the bad-sample policy, frame sampling, cut-outs, augmentation, order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave.io.video import write_video
from bindweave.training.augment import augment_reference, augment_rng
from bindweave.training.config import AugmentConfig, DataConfig
from bindweave.training.data import ClipDataset, SampleError, SampleKey, SampleStream, StreamBatchSampler
from bindweave.training.manifest import ManifestError, read_clip_manifest
from bindweave.training.subjects import cut_out_subject, load_subject
from bindweave.training.video import ClipError, clip_frame_indices, resize_center_crop

from .conftest import manifest_line, moving_square_video, write_subject

DATA = DataConfig(height=32, width=32, num_frames=9, fps=16.0, num_workers=0)


@pytest.fixture
def bad_manifest(tmp_path: Path) -> Path:
    """Line 1 good; 2 missing video; 3 zero refs; 4 five refs; 5 invalid JSON; 7 missing mask; 8 corrupt video."""
    write_video(moving_square_video((200, 30, 30)), tmp_path / "good.mp4", fps=32)
    (tmp_path / "corrupt.mp4").write_bytes(b"this is not an mp4 file" * 10)
    image, mask = write_subject(tmp_path, "subject", (200, 30, 30))
    ref = {"image": image.name, "mask": mask.name}
    lines = [
        manifest_line("good.mp4", "a red square", [ref]),
        manifest_line("missing.mp4", "a red square", [ref]),
        manifest_line("good.mp4", "a red square", []),
        manifest_line("good.mp4", "a red square", [ref] * 5),
        '{"video": "good.mp4", "prompt": ',
        "",
        manifest_line("good.mp4", "a red square", [{"image": image.name, "mask": "no_mask.png"}]),
        manifest_line("corrupt.mp4", "a red square", [ref]),
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_manifest_lines_are_reported_with_line_numbers(bad_manifest):
    with pytest.raises(ManifestError) as info:
        read_clip_manifest(bad_manifest, "error")
    message = str(info.value)
    assert "4 bad line(s)" not in message and "5 bad line(s)" in message
    assert "line 2: 'video' file not found" in message
    assert "line 3: 0 references; BindWeave trains with 1 to 4" in message
    assert "line 4: 5 references; BindWeave trains with 1 to 4" in message
    assert "line 5: invalid JSON" in message
    assert "line 7: 'references[0].mask' file not found" in message


def test_skip_policy_keeps_good_lines_and_counts_bad_ones(bad_manifest):
    manifest = read_clip_manifest(bad_manifest, "skip")
    assert [c.line for c in manifest.clips] == [1, 8]  # the corrupt video is only found when decoded
    assert [b.line for b in manifest.skipped] == [2, 3, 4, 5, 7]


def test_an_unreadable_video_raises_or_is_replaced_and_counted(bad_manifest):
    manifest = read_clip_manifest(bad_manifest, "skip")
    corrupt = next(i for i, c in enumerate(manifest.clips) if c.line == 8)
    key = SampleKey(position=0, index=corrupt, epoch=0)

    strict = ClipDataset(manifest, DataConfig(**{**DATA.__dict__, "on_bad_sample": "error"}), seed=0)
    with pytest.raises(SampleError, match=r"manifest.jsonl:8: .*corrupt.mp4"):
        strict[key]

    lenient = ClipDataset(manifest, DataConfig(**{**DATA.__dict__, "on_bad_sample": "skip"}), seed=0)
    sample = lenient[key]
    assert sample.line == 1 and len(sample.skipped) == 1 and "corrupt.mp4" in sample.skipped[0]
    assert sample.item.video.shape == (3, 9, 32, 32)


def test_a_too_short_video_is_a_clip_error(tmp_path):
    with pytest.raises(ClipError, match="span 17 source frames at 32 fps, but the video has 12"):
        clip_frame_indices(12, 32.0, 9, 16.0, 0.0)


def test_frames_are_sampled_at_the_target_rate():
    assert clip_frame_indices(20, 32.0, 9, 16.0, 0.0) == list(range(0, 17, 2))
    assert clip_frame_indices(20, 32.0, 9, 16.0, 0.999) == list(range(3, 20, 2))  # the last possible window
    assert clip_frame_indices(9, 16.0, 9, 16.0, 0.5) == list(range(9))


def test_resize_covers_the_bucket_then_centre_crops():
    frames = np.zeros((2, 48, 64, 3), dtype=np.uint8)
    frames[:, :, :4] = 255  # a white band on the left edge, cropped away by the centre crop
    frames[:, :, 28:36] = 255  # a white band in the middle, kept
    video = resize_center_crop(frames, 32, 32)  # 48x64 -> 32x43 -> centre 32x32
    assert video.shape == (3, 2, 32, 32) and video.min() >= -1 and video.max() <= 1
    assert video[:, :, :, 0].max() < -0.9  # the left band is gone (crop starts at 7.5 source columns)
    assert video[:, :, :, 16].min() > 0.9  # the middle band is there


def test_a_masked_reference_is_cropped_to_the_mask_on_white_with_the_mask_as_alpha(tmp_path):
    image = PIL.Image.fromarray(np.full((30, 40, 3), 50, dtype=np.uint8))
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:15, 10:30] = True
    mask[5, 10] = False  # a pixel outside the subject, inside its bounding box
    cut = cut_out_subject(image, mask)
    assert cut.mode == "RGBA" and cut.size == (20, 10)
    pixels = np.asarray(cut)
    assert pixels[0, 0].tolist() == [255, 255, 255, 0]  # white, transparent
    assert (pixels[1:, 1:, :3] == 50).all() and (pixels[1:, 1:, 3] == 255).all()
    assert np.array_equal(pixels[..., 3] == 255, mask[5:15, 10:30])
    assert np.asarray(cut_out_subject(image, mask, "black"))[0, 0].tolist() == [0, 0, 0, 0]

    image_path, mask_path = write_subject(tmp_path, "s", (10, 200, 10))
    assert load_subject(image_path, mask_path).size == (18, 14)
    unmasked = load_subject(image_path, None)
    assert unmasked.size == (40, 30) and unmasked.mode == "RGBA" and np.asarray(unmasked)[..., 3].min() == 255


def test_mild_augmentation_is_seeded_per_clip_epoch_and_reference():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    config = AugmentConfig(mode="mild")

    def augmented(epoch: int) -> np.ndarray:
        rng = augment_rng(seed=1, clip_line=3, epoch=epoch, reference=0)
        return np.asarray(augment_reference(image.convert("RGBA"), config, rng, 32, 32))

    assert np.array_equal(augmented(0), augmented(0))
    assert augmented(0).shape != augmented(1).shape or not np.array_equal(augmented(0), augmented(1))
    off = augment_reference(
        image.convert("RGBA"), AugmentConfig(enabled=False), augment_rng(1, 3, 0, 0), 32, 32
    )
    assert off.mode == "RGB" and np.array_equal(np.asarray(off), np.asarray(image))


def test_sample_order_is_independent_of_the_process_layout():
    stream = SampleStream(size=5, seed=3, stage=0)
    epoch0 = [stream.key(p).index for p in range(5)]
    assert sorted(epoch0) == list(range(5)) and [stream.key(p).epoch for p in (4, 5)] == [0, 1]

    def positions(micro_batch: int, world: int, micro_steps: int) -> list[int]:
        per_rank = [
            iter(StreamBatchSampler(stream, start=4, micro_batch_size=micro_batch, world_size=world, rank=r))
            for r in range(world)
        ]
        return sorted(k.position for _ in range(micro_steps) for it in per_rank for k in next(it))

    assert positions(2, 1, 3) == positions(1, 2, 3) == list(range(4, 10))
    with pytest.raises(ValueError, match="multiple"):
        StreamBatchSampler(stream, start=3, micro_batch_size=2, world_size=1, rank=0)


def test_a_clip_loads_as_video_and_references(tiny_dataset):
    manifest = read_clip_manifest(tiny_dataset / "manifest.jsonl")
    dataset = ClipDataset(manifest, DATA, seed=0)
    clip = dataset.load(1, epoch=0)
    assert clip.video.shape == (3, 9, 32, 32) and clip.video.dtype == torch.float32
    assert len(clip.references) == 2 and clip.prompt.startswith("A square number 1")
    assert all(r.mode == "RGB" and r.size == (32, 32) for r in clip.references)  # released: target size
    again = dataset.load(1, epoch=0)
    assert torch.equal(clip.video, again.video)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(clip.references, again.references, strict=True)
    )
