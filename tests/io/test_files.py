"""Atomic writes: the target is either absent/old or complete, and no temp file survives a failure."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from bindweave.io.files import (
    UnwritablePathError,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_atomic_write_temp_name_is_hidden_sibling_keeping_suffix(tmp_path: Path) -> None:
    target = tmp_path / "x.mp4"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent
        assert re.fullmatch(rf"\.x\.mp4\.tmp-{os.getpid()}-[0-9a-f]+\.mp4", tmp.name), tmp.name
        assert not target.exists()
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert _leftovers(tmp_path) == []


def test_atomic_write_creates_parent_dir(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("ok")
    assert target.read_text() == "ok"


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_removes_temp_and_keeps_old_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_write(target) as tmp:
            tmp.write_text("half-writ")
            raise error
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_without_writing_raises_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "never.txt"
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_write(target):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(target, "first")
    assert atomic_write_text(target, "ünïcode") == target
    assert target.read_text(encoding="utf-8") == "ünïcode"


def test_atomic_write_json_format(tmp_path: Path) -> None:
    target = tmp_path / "d.json"
    atomic_write_json(target, {"b": [1, 2], "a": "’é"})
    text = target.read_text(encoding="utf-8")
    assert text == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": "’é"\n}\n'
    assert json.loads(text) == {"b": [1, 2], "a": "’é"}


def test_atomic_write_json_unserialisable_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_torch_save_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "hs" / "h.pt"
    tensor = torch.randn(1, 5, 8, dtype=torch.bfloat16)
    atomic_torch_save(tensor, target)
    assert torch.equal(torch.load(target), tensor)
    assert _leftovers(target.parent) == []


def test_ensure_writable_dir_creates_parent(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deep" / "case.mp4"
    assert ensure_writable_dir(target) == target.parent
    assert target.parent.is_dir()
    assert list(target.parent.iterdir()) == []  # the probe file is cleaned up


def test_ensure_writable_dir_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UnwritablePathError, match=re.escape(str(blocker / "out.mp4"))) as info:
        ensure_writable_dir(blocker / "out.mp4")
    assert isinstance(info.value, PermissionError) and isinstance(info.value, OSError)
    assert info.value.__cause__ is not None


def test_ensure_writable_dir_rejects_directory_target(tmp_path: Path) -> None:
    with pytest.raises(UnwritablePathError, match="existing directory"):
        ensure_writable_dir(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_ensure_writable_dir_read_only_dir(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with pytest.raises(UnwritablePathError, match="not writable"):
            ensure_writable_dir(read_only / "out.mp4")
    finally:
        read_only.chmod(0o700)


def test_ensure_writable_dir_probe_failure_names_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands in for a read-only mount, which root cannot be tested against with chmod."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("bindweave.io.files.tempfile.NamedTemporaryFile", refuse)
    target = tmp_path / "out.mp4"
    with pytest.raises(UnwritablePathError, match=rf"{re.escape(str(target))}.*Read-only file system"):
        ensure_writable_dir(target)


def test_atomic_folder_renames_into_place_only_on_success(tmp_path):
    from bindweave.io.files import atomic_folder

    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staged:
            staged.mkdir()
            (staged / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []

    with atomic_folder(target) as staged:
        staged.mkdir()
        (staged / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"

    with pytest.raises(OSError):  # a non-empty folder is not replaced unless asked
        with atomic_folder(target) as staged:
            staged.mkdir()
    assert (target / "a.txt").read_text() == "one"
    with atomic_folder(target, replace=True) as staged:
        staged.mkdir()
        (staged / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
