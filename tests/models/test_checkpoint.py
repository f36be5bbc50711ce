"""Loading the BindWeave DiT from the released folder layout (sharded safetensors + index, no config)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bindweave.models import BindWeaveTransformer3DModel, CheckpointError
from bindweave.models.checkpoint import INDEX_NAME
from bindweave.testing import tiny_transformer_kwargs

TINY = tiny_transformer_kwargs(mllm_dim=24)


@pytest.fixture
def released(tmp_path):
    """A tiny model saved like the release: >= 2 shards, the index, no config.json."""
    torch.manual_seed(0)
    model = BindWeaveTransformer3DModel(**TINY)
    folder = tmp_path / "bindweave"
    model.save_pretrained(folder, max_shard_size=20_000)
    (folder / "config.json").unlink()
    return model, folder


def shard_files(folder):
    return sorted(set(json.loads((folder / INDEX_NAME).read_text())["weight_map"].values()))


def test_released_layout_round_trip_without_config(released):
    model, folder = released
    assert len(shard_files(folder)) >= 2 and not (folder / "config.json").exists()
    loaded = BindWeaveTransformer3DModel.from_pretrained(folder, **TINY)
    assert (
        loaded.config.mllm_dim == 24
        and type(loaded.blocks[0].attn2.processor).__name__ == "BindWeaveAttnProcessor"
    )
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    keys = set(expected)
    assert {
        f"condition_embedder.text_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    } <= keys


def test_a_configless_load_says_once_which_config_it_uses(released, caplog):
    _model, folder = released
    with caplog.at_level("INFO", logger="bindweave.models.transformer"):
        BindWeaveTransformer3DModel.from_pretrained(folder, **TINY)
    (line,) = [r.getMessage() for r in caplog.records if "config.json" in r.getMessage()]
    expected = (
        f"{folder} has no config.json: using the released BindWeave 14B config, {len(TINY)} of its values"
    )
    assert line == expected + " replaced by those given"


def test_configless_folder_gets_the_released_14b_config(released):
    _model, folder = released
    config = BindWeaveTransformer3DModel.load_config(folder)
    assert config["num_layers"] == 40 and config["mllm_dim"] == 3584 and config["in_channels"] == 36
    # Tiny weights against the 14B config: every mismatch is named, before any weight is read.
    with pytest.raises(CheckpointError) as err:
        BindWeaveTransformer3DModel.from_pretrained(folder)
    message = str(err.value)
    with torch.device("meta"):
        full_keys = set(BindWeaveTransformer3DModel().state_dict())
    missing = sorted(full_keys - set(_model.state_dict()))  # the 38 blocks the tiny model lacks
    assert f"missing ({len(missing)}): {missing[0]}, " in message
    assert err.value.report.missing == missing and "mismatched (" in message
    expected = "patch_embedding.weight: checkpoint [16, 36, 1, 2, 2] vs model [5120, 36, 1, 2, 2]"
    assert expected in err.value.report.mismatched


def test_save_pretrained_round_trip_with_config(tmp_path):
    torch.manual_seed(0)
    model = BindWeaveTransformer3DModel(**TINY)
    model.save_pretrained(tmp_path / "m")
    loaded = BindWeaveTransformer3DModel.from_pretrained(tmp_path / "m")
    assert loaded.config.mllm_dim == 24 and loaded.config.image_context_tokens == TINY["image_context_tokens"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_missing_shard_file_is_named(released):
    _model, folder = released
    victim = shard_files(folder)[1]
    (folder / victim).unlink()
    with pytest.raises(CheckpointError, match=f"missing: {victim}"):
        BindWeaveTransformer3DModel.from_pretrained(folder, **TINY)


def test_missing_unexpected_and_mismatched_keys_are_all_named(released):
    _model, folder = released
    shard = folder / shard_files(folder)[0]
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["connector.extra.weight"] = torch.zeros(2)
    index = json.loads((folder / INDEX_NAME).read_text())
    index["weight_map"]["connector.extra.weight"] = shard.name
    (folder / INDEX_NAME).write_text(json.dumps(index))
    save_file(tensors, shard, metadata={"format": "pt"})

    with pytest.raises(CheckpointError) as err:
        BindWeaveTransformer3DModel.from_pretrained(folder, **TINY)
    assert f"missing (1): {dropped}" in str(err.value) and "unexpected (1): connector.extra.weight" in str(
        err.value
    )

    with pytest.raises(
        CheckpointError,
        match="text_projector.linear_1.weight: checkpoint \\[32, 24\\] vs model \\[32, 3584\\]",
    ):
        BindWeaveTransformer3DModel.from_pretrained(folder, **{**TINY, "mllm_dim": 3584})


def test_non_strict_loading_leaves_the_check_to_diffusers(released):
    _model, folder = released
    loaded = BindWeaveTransformer3DModel.from_pretrained(folder, strict=False, **TINY)
    assert loaded.config.num_layers == TINY["num_layers"]
