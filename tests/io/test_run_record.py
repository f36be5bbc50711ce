"""Run records: which settings are compared, records of older versions, unreadable records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bindweave.io.run_record import (
    RunSettingsError,
    check_rerun,
    recorded_settings,
    setting_differences,
    video_settings,
)

CONFIG = {
    "model": "weights/pipeline",
    "wan": None,
    "device": "cuda:1",
    "memory": "model-offload",
    "batch_cfg": True,
    "attention_backend": "flash",
    "steps": 50,
    "seed": 42,
    "guidance": None,
    "fps": 16,
}


def test_video_settings_keep_what_changes_the_video(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = video_settings(CONFIG, "bfloat16")
    assert settings == {
        "dtype": "bfloat16",
        "model": os.path.join(str(tmp_path), "weights", "pipeline"),
        "wan": None,
        "steps": 50,
        "seed": 42,
        "guidance": None,
        "fps": 16,
        "attention_backend": "exact",  # flash and native compute the same attention; sage quantises
    }
    assert video_settings({**CONFIG, "attention_backend": "sage"}, "bfloat16")["attention_backend"] == "sage"
    # Device, offloading and batched CFG are not compared.
    other = {**CONFIG, "device": "cpu", "memory": "none", "batch_cfg": False, "attention_backend": None}
    assert setting_differences(settings, video_settings(other, "bfloat16")) == []


def test_records_of_older_versions_are_read_from_their_config() -> None:
    old = {"config": {**CONFIG, "dtype": "auto"}, "device": "cuda:0"}
    assert recorded_settings(old)["dtype"] == "bfloat16"  # auto on CUDA
    assert recorded_settings({**old, "device": "cpu"})["dtype"] == "float32"
    # A setting the old record does not have is not compared.
    new = {**video_settings(CONFIG, "bfloat16"), "vae_tiling": True}
    assert setting_differences(recorded_settings(old), new) == []
    assert setting_differences(recorded_settings(old), {**new, "steps": 20}) == [("steps", 50, 20)]


def test_check_rerun(tmp_path: Path) -> None:
    settings = video_settings(CONFIG, "bfloat16")
    assert check_rerun(tmp_path / "missing", settings) == []
    record = tmp_path / "run_record.rank1.json"
    record.write_text(json.dumps({"video_settings": {**settings, "seed": 1, "negative_prompt": "x" * 60}}))
    new = {**settings, "negative_prompt": "short"}
    assert check_rerun(tmp_path, new) == [record]  # no videos: the record describes nothing
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(RunSettingsError, match="run_record.rank1.json") as info:
        check_rerun(tmp_path, new)
    assert "--seed 1 -> 42" in str(info.value)
    assert f"--negative-prompt {'x' * 45 + '...'!r} -> 'short'" in str(info.value)
    assert check_rerun(tmp_path, new, overwrite=True) == [record]
    assert check_rerun(tmp_path, {**settings, "seed": 1, "negative_prompt": "x" * 60}) == []


def test_unreadable_record_is_named(tmp_path: Path) -> None:
    (tmp_path / "run_record.json").write_text("{truncated")
    with pytest.raises(ValueError, match="cannot read the run record .*run_record.json"):
        check_rerun(tmp_path, {"steps": 1})
