"""Condition dropout: a dropped clip trains on exactly what CFG's unconditional branch feeds the DiT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bindweave.conditioning.mllm import MLLM_NEGATIVE_SUFFIX, encode_mllm
from bindweave.conditioning.text import DEFAULT_NEGATIVE_PROMPT
from bindweave.training.cache import CacheError, FeatureCache, feature_settings
from bindweave.training.config import ConfigError, PrecomputeConfig
from bindweave.training.data import ClipDataset
from bindweave.training.distributed import init_distributed
from bindweave.training.features import FeatureEncoder, condition_dropped, released_mllm_images
from bindweave.training.manifest import read_clip_manifest
from bindweave.training.model import load_pipeline
from bindweave.training.precompute import run_precompute
from bindweave.training.trainer import Trainer

from .conftest import build_config, tiny_config_dict, write_config


def dropout_config(tmp_path, pipeline_dir, dataset, **data):
    config = tiny_config_dict(tmp_path, pipeline_dir, dataset / "manifest.jsonl")
    config["data"] = {**config["data"], "condition_dropout": 0.5, **data}
    return config


@pytest.mark.parametrize("mllm_input", ["inference", "released"])
def test_a_dropped_clip_is_what_the_unconditional_branch_sees(
    tiny_pipeline_dir, tiny_dataset, tmp_path, mllm_input
):
    config = build_config(dropout_config(tmp_path, tiny_pipeline_dir, tiny_dataset, mllm_input=mllm_input))
    pipe = load_pipeline(config.model, torch.float32, load_transformer=False)
    clip = ClipDataset(read_clip_manifest(tiny_dataset / "manifest.jsonl"), config.data, seed=0).load(1, 0)
    images, boxes = pipe.prepare_references(clip.references, 32, 32)
    encoder = FeatureEncoder(pipe, config.data, torch.device("cpu"))
    features = encoder.encode(clip)

    # The pipeline's negative branch (spec 3): the negative prompt for umT5, the same text with the MLLM's
    # suffix and the same references for the MLLM.
    if mllm_input == "inference":
        _, negative_mllm = pipe.encode_mllm_states(
            clip.prompt, DEFAULT_NEGATIVE_PROMPT, images, None, None, do_cfg=True
        )
    else:  # the released training input: halved canvases, no pre-scale
        pictures = released_mllm_images(torch.stack([b.canvas for b in boxes]))
        negative_text = DEFAULT_NEGATIVE_PROMPT + MLLM_NEGATIVE_SUFFIX
        negative_mllm = encode_mllm(pipe.mllm, pipe.mllm_processor, negative_text, pictures, prescale=False)
    assert torch.equal(features.negative_mllm, negative_mllm[0])
    assert features.negative_mllm.shape[0] > features.mllm.shape[0]  # the long negative prompt

    _, negative_text_states = pipe.encode_text(clip.prompt, DEFAULT_NEGATIVE_PROMPT, do_cfg=True)
    dropped = features.unconditional(encoder.negative_text())
    # Encoded alone here, second of a batch of two in the pipeline: batched kernels may round differently.
    torch.testing.assert_close(dropped.text, negative_text_states[0], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(dropped.text, features.text, atol=1e-3)
    assert torch.equal(dropped.mllm, features.negative_mllm)
    for name in ("latents", "image", "condition"):  # the references and the target are kept
        assert getattr(dropped, name) is getattr(features, name)

    config.data.condition_dropout = 0.0  # no dropout: nothing extra encoded, and nothing to drop to
    plain = FeatureEncoder(pipe, config.data, torch.device("cpu")).encode(clip)
    assert plain.negative_mllm is None and "negative_mllm" not in plain.tensors()
    with pytest.raises(ValueError, match="condition_dropout > 0"):
        plain.unconditional(encoder.negative_text())


def test_the_dropout_draw_is_keyed_and_has_its_rate():
    draws = [condition_dropped(0, 0, position, 0.25) for position in range(4000)]
    assert draws == [condition_dropped(0, 0, position, 0.25) for position in range(4000)]
    # Binomial(4000, 0.25): standard deviation 0.0068; 0.03 is 4.4 of them.
    assert abs(np.mean(draws) - 0.25) < 0.03
    assert draws != [condition_dropped(0, 1, position, 0.25) for position in range(4000)]  # per stage
    assert draws != [condition_dropped(1, 0, position, 0.25) for position in range(4000)]  # per seed
    assert not any(condition_dropped(0, 0, position, 0.0) for position in range(1000))


def test_the_cache_records_negatives_not_the_rate(tiny_pipeline_dir, tiny_dataset, tmp_path):
    base = build_config(tiny_config_dict(tmp_path, tiny_pipeline_dir, tiny_dataset / "manifest.jsonl"))
    settings = feature_settings(base.data, 0)
    assert "negative_mllm" not in settings["data"] and "condition_dropout" not in settings["data"]
    rates = [
        build_config(dropout_config(tmp_path, tiny_pipeline_dir, tiny_dataset, condition_dropout=rate)).data
        for rate in (0.1, 0.3)
    ]
    assert (
        feature_settings(rates[0], 0)
        == feature_settings(rates[1], 0)
        == {
            **settings,
            "data": {**settings["data"], "negative_mllm": True},
        }
    )
    with pytest.raises(ConfigError, match=r"condition_dropout: must be in \[0, 1\), got 1.0"):
        build_config(dropout_config(tmp_path, tiny_pipeline_dir, tiny_dataset, condition_dropout=1.0))


def test_training_swaps_in_the_negative_prompt_for_the_drawn_clips(
    tiny_pipeline_dir, tiny_dataset, tiny_cache, tmp_path
):
    manifest = tiny_dataset / "manifest.jsonl"
    data = dropout_config(tmp_path, tiny_pipeline_dir, tiny_dataset)
    run_precompute(
        PrecomputeConfig(
            config=write_config(tmp_path / "train.json", data),
            manifest=manifest,
            output_dir=tmp_path / "cache",
        )
    )
    config = build_config(
        {
            **data,
            "output_dir": str(tmp_path / "run"),
            "micro_batch_size": 4,
            "stages": [{"name": "main", "steps": 2, "cache": str(tmp_path / "cache"), "lr": 1e-4}],
        }
    )
    cache = FeatureCache(tmp_path / "cache", feature_settings(config.data, config.seed))
    assert all(cache.load(entry).negative_mllm is not None for entry in cache.clips)

    trainer = Trainer(config, init_distributed())
    seen = []
    loss = trainer.objective.loss

    def spy(transformer, latents, cond, noise, index, padding=None, subject_mask=None):
        seen.append(cond)
        return loss(transformer, latents, cond, noise, index, padding, subject_mask)

    trainer.objective.loss = spy
    try:
        trainer.train()
    finally:
        trainer.close()
    negative = trainer.negative_text
    positions = range(8)  # 2 steps of 4 clips: stream positions 0-7
    dropped = [condition_dropped(config.seed, 0, p, 0.5) for p in positions]
    assert 0 < sum(dropped) < 8  # this seed drops some and keeps some
    rows = [cond.text[b] for cond in seen for b in range(cond.batch_size)]
    assert [torch.equal(row, negative) for row in rows] == dropped

    without = build_config(
        {
            **data,
            "output_dir": str(tmp_path / "run-old-cache"),
            "stages": [{"name": "main", "steps": 1, "cache": str(tiny_cache), "lr": 1e-4}],
        }
    )
    trainer = Trainer(without, init_distributed())
    try:
        with pytest.raises(CacheError, match="negative_mllm: cache has None, config has True"):
            trainer.train()  # a cache made without negatives
    finally:
        trainer.close()
