"""Feature precomputation: resumable, equal to online encoding, and bad clips skipped with counts."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch

from bindweave.io.files import atomic_write_json
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.training.cache import CacheError, FeatureCache, FeatureCacheWriter, feature_settings
from bindweave.training.config import PrecomputeConfig
from bindweave.training.metrics import read_metrics
from bindweave.training.precompute import run_precompute
from bindweave.training.trainer import run_train

from .conftest import build_config, manifest_line, tiny_config_dict, write_config


def test_the_cache_holds_every_clip_with_the_training_shapes(tiny_cache, tiny_dataset):
    index = json.loads((tiny_cache / "index.json").read_text())
    assert [c["line"] for c in index["clips"]] == [1, 2, 3, 4] and index["skipped"] == []
    config = build_config(tiny_config_dict(tiny_cache, tiny_cache, tiny_dataset / "manifest.jsonl"))
    cache = FeatureCache(tiny_cache, feature_settings(config.data, config.seed))
    features = cache.load(cache.clips[1])
    assert features.latents.shape == (16, 3, 4, 4)  # 9 frames of 32x32 -> (9 - 1) / 4 + 1 latent frames
    assert features.condition.shape == (20, 4 + 3, 4, 4)  # 4 reference slots + 3 video frames
    assert features.text.shape == (512, 32) and features.image.shape == (4 * 17, 32)
    assert features.mllm.shape[1] == 32 and "mllm_mask" not in features.tensors()
    assert features.condition[0, :2].amax() == 1 and features.condition[:, 2:4].abs().sum() == 0  # 2 refs


def test_precompute_resumes_and_rejects_other_settings(tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path):
    manifest = tiny_dataset / "manifest.jsonl"
    config_file = write_config(
        tmp_path / "train.json", tiny_config_dict(tmp_path, tiny_pipeline_dir, manifest)
    )
    again = run_precompute(PrecomputeConfig(config=config_file, manifest=manifest, output_dir=tiny_cache))
    assert (again.encoded, again.reused, again.clips) == (0, 4, 4)

    other = tiny_config_dict(tmp_path, tiny_pipeline_dir, manifest)
    other["data"] = {**other["data"], "fps": 8.0}
    other_file = write_config(tmp_path / "other.json", other)
    with pytest.raises(CacheError, match=r"data.fps: cache has 16.0, config has 8.0"):
        run_precompute(PrecomputeConfig(config=other_file, manifest=manifest, output_dir=tiny_cache))


def test_training_from_the_cache_equals_online_encoding(
    tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path
):
    """Micro-batches of 2 clips (MLLM states of unequal length, padded per batch) from both sources."""
    manifest = tiny_dataset / "manifest.jsonl"
    stage = {"name": "main", "steps": 2, "lr": 1e-3}
    online = run_train(
        build_config(
            tiny_config_dict(
                tmp_path / "online",
                tiny_pipeline_dir,
                manifest,
                stages=[{**stage, "manifest": str(manifest)}],
                micro_batch_size=2,
            )
        )
    )
    cached = run_train(
        build_config(
            tiny_config_dict(
                tmp_path / "cached",
                tiny_pipeline_dir,
                manifest,
                stages=[{**stage, "cache": str(tiny_cache)}],
                micro_batch_size=2,
            )
        )
    )
    # Bit for bit: the same features, noise and timesteps. Both runs (and the cache's encoding) load the same
    # pipeline folder through the same loader and update the DiT in place: the same layout, the same kernels.
    assert online.losses == cached.losses
    a = safetensors.torch.load_file(
        online.checkpoints[-1] / "transformer" / "diffusion_pytorch_model.safetensors"
    )
    b = safetensors.torch.load_file(
        cached.checkpoints[-1] / "transformer" / "diffusion_pytorch_model.safetensors"
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in read_metrics(tmp_path / "online")] == [1, 2]


def test_a_cache_of_the_old_format_is_rejected(tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path):
    """Format 1 held MLLM states padded to mllm_max_tokens: reading or extending one says to re-run precompute."""
    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    settings = json.loads((old / "features.json").read_text())
    settings["format"] = "bindweave-feature-cache/1"
    settings["data"]["mllm_max_tokens"] = 128
    (old / "features.json").write_text(json.dumps(settings))

    config = build_config(tiny_config_dict(tmp_path, tiny_pipeline_dir, tiny_dataset / "manifest.jsonl"))
    expected = feature_settings(config.data, config.seed)
    message = (
        r"has format 'bindweave-feature-cache/1', this bindweave reads 'bindweave-feature-cache/2' "
        r"\(since format 2 the MLLM states are kept at full length\): re-run `bindweave precompute`"
    )
    with pytest.raises(CacheError, match=message):
        FeatureCache(old, expected)
    with pytest.raises(CacheError, match=message):
        FeatureCacheWriter(old, expected)


def test_bad_clips_are_skipped_and_counted(tiny_pipeline_dir, tiny_dataset, tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 1000)
    good = (
        (tiny_dataset / "manifest.jsonl")
        .read_text()
        .splitlines()[0]
        .replace('"clips/', f'"{tiny_dataset}/clips/')
    )
    good = good.replace('"subjects/', f'"{tiny_dataset}/subjects/')
    ref = json.loads(good)["references"]
    lines = [good, manifest_line("corrupt.mp4", "broken", ref), manifest_line("missing.mp4", "gone", ref)]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    data = tiny_config_dict(tmp_path / "out", tiny_pipeline_dir, manifest)
    data["data"] = {**data["data"], "on_bad_sample": "skip"}
    config_file = write_config(tmp_path / "train.json", data)
    summary = run_precompute(
        PrecomputeConfig(config=config_file, manifest=manifest, output_dir=tmp_path / "cache")
    )
    assert (summary.clips, summary.encoded, summary.skipped) == (1, 1, 2)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    reasons = {s["line"]: s["reason"] for s in index["skipped"]}
    assert "corrupt.mp4" in reasons[2] and "'video' file not found" in reasons[3]

    trained = run_train(
        build_config({**data, "stages": [{"name": "s", "steps": 2, "manifest": str(manifest)}]})
    )
    assert trained.skipped_samples >= 2  # the missing line, and the corrupt clip at least once
    assert read_metrics(tmp_path / "out")[-1]["skipped"] == trained.skipped_samples

    data["data"]["on_bad_sample"] = "error"
    atomic_write_json(config_file, data)
    with pytest.raises(ValueError, match="line 3: 'video' file not found"):
        run_precompute(
            PrecomputeConfig(config=config_file, manifest=manifest, output_dir=tmp_path / "cache2")
        )


def test_the_optional_first_frame_condition(tiny_pipeline_dir, tiny_dataset, tmp_path):
    """An extra, not released: first-frame CLIP tokens after the references', mask 1 on latent frame 0."""
    from bindweave.training.data import ClipDataset
    from bindweave.training.features import FeatureEncoder
    from bindweave.training.manifest import read_clip_manifest
    from bindweave.training.model import load_pipeline

    config = build_config(tiny_config_dict(tmp_path, tiny_pipeline_dir, tiny_dataset / "manifest.jsonl"))
    pipe = load_pipeline(config.model, torch.float32, load_transformer=False)
    clip = ClipDataset(read_clip_manifest(tiny_dataset / "manifest.jsonl"), config.data, seed=0).load(0, 0)
    plain = FeatureEncoder(pipe, config.data, torch.device("cpu")).encode(clip)
    config.data.first_frame_condition = True
    with_frame = FeatureEncoder(pipe, config.data, torch.device("cpu")).encode(clip)

    tokens = 17  # tiny CLIP: one image is 17 tokens; one reference here
    assert with_frame.image.shape == (5 * tokens, 32)
    # The reference's tokens first: CLIP ran on a batch of 2 images here, of 1 in ``plain`` (other GEMM
    # shapes, so up to float32 rounding).
    assert_close_to_float32_rounding(with_frame.image[:tokens], plain.image[:tokens])
    assert (
        with_frame.image[tokens : 2 * tokens].abs().sum() > 0
        and with_frame.image[2 * tokens :].abs().sum() == 0
    )
    assert torch.equal(with_frame.condition[:, :4], plain.condition[:, :4])  # reference slots unchanged
    video_masks = with_frame.condition[:4, 4:]  # (4, F', h, w) mask channels of the video part
    assert (video_masks[:, 0] == 1).all() and (video_masks[:, 1:] == 0).all()
    assert plain.condition[:4, 4:].abs().sum() == 0
    assert torch.equal(with_frame.latents, plain.latents)
