"""The subject-weighted loss (``objective.subject_weight``): the manifest's subject mask, read on the clip's
frames, pooled to the latent grid, cached, and weighing the loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from bindweave.denoiser import Conditioning
from bindweave.io.video import write_video
from bindweave.training.config import DataConfig
from bindweave.training.data import ClipDataset
from bindweave.training.features import collate_features, latent_subject_mask
from bindweave.training.manifest import ManifestError, read_clip_manifest
from bindweave.training.objective import FlowMatchingObjective, subject_weighted_mean
from bindweave.training.trainer import run_train
from bindweave.training.video import ClipError, read_subject_mask

from .conftest import (
    COLOURS,
    build_config,
    moving_square_video,
    tiny_config_dict,
    write_config,
    write_subject,
)
from .test_objective import _FixedVelocity

DATA = DataConfig(height=32, width=32, num_frames=9, fps=16.0, feature_dtype="float32", num_workers=0)


def square_mask_video(frames: int = 20, height: int = 48, width: int = 64) -> np.ndarray:
    """White where :func:`moving_square_video` draws its square."""
    grey = moving_square_video((255, 255, 255), frames, height, width)
    return np.where(grey == 255, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's moving squares (4 clips), each line with its ``subject_mask`` video."""
    root = tmp_path_factory.mktemp("masked")
    for folder in ("clips", "masks", "subjects"):
        (root / folder).mkdir()
    lines = []
    for i, colour in enumerate(COLOURS):
        write_video(moving_square_video(colour), root / "clips" / f"{i}.mp4", fps=32)
        write_video(square_mask_video(), root / "masks" / f"{i}.mp4", fps=32)
        image, mask = write_subject(root / "subjects", f"subject{i}", colour)
        entry = {
            "video": f"clips/{i}.mp4",
            "prompt": f"A square number {i} slides to the right.",
            "references": [{"image": f"subjects/{image.name}", "mask": f"subjects/{mask.name}"}],
            "subject_mask": f"masks/{i}.mp4",
        }
        lines.append(json.dumps(entry))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_the_manifest_reads_an_optional_subject_mask(masked_dataset):
    manifest = read_clip_manifest(masked_dataset / "manifest.jsonl")
    assert [c.subject_mask for c in manifest.clips] == [
        masked_dataset / "masks" / f"{i}.mp4" for i in range(4)
    ]
    line = json.loads((masked_dataset / "manifest.jsonl").read_text().splitlines()[0])
    line["subject_mask"] = str(masked_dataset / "masks" / "missing.mp4")
    (masked_dataset / "bad.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ManifestError, match=r"line 1: 'subject_mask' file not found: .*missing\.mp4"):
        read_clip_manifest(masked_dataset / "bad.jsonl")


def test_the_mask_is_read_on_the_clips_frames_resized_alike(masked_dataset):
    """The mask marks the pixels where the loaded clip shows the square (more than half covered)."""
    manifest = read_clip_manifest(masked_dataset / "manifest.jsonl")
    clip = ClipDataset(manifest, DATA, seed=0).load(0, epoch=0)
    assert clip.subject_mask is not None and clip.subject_mask.shape == (9, 32, 32)
    assert clip.subject_mask.dtype == torch.bool
    # The square's coverage of each pixel, read from the clip's red channel: 128 grey -> 220 red.
    pixels = (clip.video[0] + 1) * 127.5  # (F, H, W) in [0, 255]
    coverage = (pixels - 128) / (COLOURS[0][0] - 128)
    sure = (coverage - 0.5).abs() > 0.1  # pixels the codec's noise cannot flip
    assert torch.equal(clip.subject_mask[sure], (coverage > 0.5)[sure])
    assert sure.float().mean() > 0.95 and clip.subject_mask.any(dim=(1, 2)).all()


def test_a_mask_video_unlike_its_clip_is_refused(masked_dataset, tmp_path):
    write_video(square_mask_video(frames=12), tmp_path / "short.mp4", fps=32)
    with pytest.raises(
        ClipError, match=r"short\.mp4 must have the video's frames: it has num_frames 12 \(the video: 20\)"
    ):
        read_subject_mask(tmp_path / "short.mp4", masked_dataset / "clips" / "0.mp4", 9, 16.0, 32, 32, 0.0)


def test_the_latent_mask_marks_every_element_a_subject_pixel_reaches():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(9, 16, 24, generator=g) > 0.97  # sparse: some latent elements stay unmarked
    pooled = latent_subject_mask(mask, temporal=4, spatial=4)
    expected = torch.zeros(3, 4, 6)
    for f, frames in enumerate([[0], [1, 2, 3, 4], [5, 6, 7, 8]]):  # the Wan VAE's causal grouping
        for y in range(4):
            for x in range(6):
                expected[f, y, x] = float(mask[frames, 4 * y : 4 * y + 4, 4 * x : 4 * x + 4].any())
    assert torch.equal(pooled, expected) and 0 < expected.mean() < 1
    assert latent_subject_mask(mask, temporal=1, spatial=2).shape == (9, 8, 12)
    with pytest.raises(ValueError, match="expected 4k \\+ 1 frames and a size divisible by 4"):
        latent_subject_mask(mask[:8], temporal=4, spatial=4)


def test_the_weighted_mean_and_the_loss():
    g = torch.Generator().manual_seed(1)
    error = torch.rand(2, 3, 2, 2, 2, generator=g)
    mask = (torch.rand(2, 2, 2, 2, generator=g) > 0.5).float()
    expected = []
    for b in range(2):
        numerator, denominator = 0.0, 0.0
        for c in range(3):
            for f in range(2):
                for y in range(2):
                    for x in range(2):
                        w = 7.0 if mask[b, f, y, x] else 1.0
                        numerator += w * float(error[b, c, f, y, x])
                        denominator += w
        expected.append(numerator / denominator)
    torch.testing.assert_close(subject_weighted_mean(error, mask, 7.0), torch.tensor(expected))

    latents, noise, prediction = (torch.randn(2, 3, 2, 2, 2, generator=g) for _ in range(3))
    cond = Conditioning(
        text=torch.zeros(2, 512, 8), image=torch.zeros(2, 4, 8), mllm=torch.zeros(2, 5, 8),
        condition=torch.zeros(2, 7, 6, 2, 2),
    )  # fmt: skip
    index = torch.tensor([3, 900])
    squared = (prediction - (noise - latents)) ** 2
    weighted = FlowMatchingObjective(loss_weighting="uniform", subject_weight=7.0)
    out = weighted.loss(_FixedVelocity(prediction), latents, cond, noise, index, subject_mask=mask)
    torch.testing.assert_close(out.per_sample, subject_weighted_mean(squared, mask, 7.0))
    torch.testing.assert_close(out.loss, out.per_sample.mean())
    plain = FlowMatchingObjective(loss_weighting="uniform")  # weight 1: the mask changes nothing
    with_mask = plain.loss(_FixedVelocity(prediction), latents, cond, noise, index, subject_mask=mask)
    without = plain.loss(_FixedVelocity(prediction), latents, cond, noise, index)
    assert torch.equal(with_mask.per_sample, without.per_sample)
    with pytest.raises(ValueError, match="subject_weight is 7.0, but the batch has no subject mask"):
        weighted.loss(_FixedVelocity(prediction), latents, cond, noise, index)
    with pytest.raises(ValueError, match="subject_weight: must be > 0, got 0"):
        FlowMatchingObjective(subject_weight=0)


def test_a_run_weighs_its_clips_subjects(masked_dataset, tiny_pipeline_dir, tiny_cache, tmp_path):
    """Online and cached runs agree bit for bit, the cache holds each clip's pooled mask, the weight changes
    the loss, and a cache without masks is refused naming its clips."""
    from bindweave.training.config import PrecomputeConfig
    from bindweave.training.precompute import run_precompute

    manifest = masked_dataset / "manifest.jsonl"
    config_file = write_config(
        tmp_path / "train.json", tiny_config_dict(tmp_path / "unused", tiny_pipeline_dir, manifest)
    )
    run_precompute(PrecomputeConfig(config=config_file, manifest=manifest, output_dir=tmp_path / "cache"))
    dataset = ClipDataset(read_clip_manifest(manifest), DATA, seed=0)
    for i in range(4):
        cached = safetensors.torch.load_file(tmp_path / "cache" / "clips" / f"{i + 1:08d}.safetensors")
        expected = latent_subject_mask(dataset.load(i, epoch=0).subject_mask, temporal=4, spatial=8)
        assert torch.equal(cached["subject_mask"], expected) and cached["subject_mask"].shape == (3, 4, 4)

    def run(name: str, weight: float, **stage):
        config = tiny_config_dict(
            tmp_path / name, tiny_pipeline_dir, manifest, objective={"subject_weight": weight},
            stages=[{"name": "main", "steps": 2, "lr": 1e-3, **stage}], micro_batch_size=2,
        )  # fmt: skip
        return run_train(build_config(config)).losses

    online = run("online", 10.0, manifest=str(manifest))
    assert online == run("cached", 10.0, cache=str(tmp_path / "cache"))
    assert run("plain", 1.0, cache=str(tmp_path / "cache"))[0] != online[0]
    with pytest.raises(ValueError, match=r"clips on manifest line\(s\) \[\d, \d\] have none"):
        run("maskless", 10.0, cache=str(tiny_cache))


def test_collating_clips_without_masks():
    from bindweave.training.features import ClipFeatures

    def clip(mask):
        return ClipFeatures(
            latents=torch.zeros(2, 1, 2, 2), text=torch.zeros(512, 4), image=torch.zeros(4, 4),
            mllm=torch.zeros(3, 4), condition=torch.zeros(6, 5, 2, 2), subject_mask=mask,
        )  # fmt: skip

    both = collate_features([clip(torch.ones(1, 2, 2)), clip(torch.zeros(1, 2, 2))], [4, 9], [0, 1])
    assert both.subject_mask.shape == (2, 1, 2, 2) and both.subject_mask[0].all()
    one = collate_features([clip(torch.ones(1, 2, 2)), clip(None)], [4, 9], [0, 1])
    assert one.subject_mask is None
    with pytest.raises(ValueError, match=r"line\(s\) \[9\] have none"):
        collate_features([clip(torch.ones(1, 2, 2)), clip(None)], [4, 9], [0, 1], need_subject_mask=True)
