"""Atomic writes: the target is either absent/old or complete, and no temp file survives a failure."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bindweave.io.files import (
    UnwritablePathError,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temporaries,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_atomic_write_temp_name_is_hidden_sibling_keeping_suffix(tmp_path: Path) -> None:
    target = tmp_path / "x.mp4"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent
        host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
        assert re.fullmatch(rf"\.x\.mp4\.tmp-{re.escape(host)}-{os.getpid()}-[0-9a-f]{{8}}\.mp4", tmp.name)
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


def test_ensure_writable_dir_creates_nothing(tmp_path: Path) -> None:
    """A run that fails after the check (bad input, no GPU) must not leave empty folders behind."""
    target = tmp_path / "new" / "deep" / "case.mp4"
    assert ensure_writable_dir(target) == target.parent
    assert list(tmp_path.iterdir()) == []  # neither the folders nor the probe file
    existing = tmp_path / "out.mp4"
    assert ensure_writable_dir(existing) == tmp_path and list(tmp_path.iterdir()) == []


def test_ensure_writable_dir_missing_parent_below_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UnwritablePathError, match="is not a directory"):
        ensure_writable_dir(blocker / "sub" / "out.mp4")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_ensure_writable_dir_missing_parent_under_read_only_dir(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with pytest.raises(UnwritablePathError, match="where .* would be created"):
            ensure_writable_dir(read_only / "new" / "out.mp4")
    finally:
        read_only.chmod(0o700)


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


# ------------------------------------------------------------------------------------ stale temporaries

# Runs write_video with an encoder that writes a real partial mp4 and then hangs, like a killed encode.
_HANGING_WRITER = """
import sys, time
import numpy as np
from bindweave.io import video
real_encode = video._encode_h264
def encode_and_hang(frames, path, fps, crf):
    real_encode(frames[:2], path, fps, crf)
    print("writing", flush=True)
    time.sleep(600)
video._encode_h264 = encode_and_hang
video.write_video(np.zeros((4, 16, 16, 3), np.uint8), sys.argv[1])
"""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def test_sweep_removes_the_temp_file_of_a_killed_write_but_never_a_live_one(tmp_path: Path) -> None:
    from bindweave.io.video import read_video, write_video

    target = tmp_path / "case.mp4"
    writer = subprocess.Popen(
        [sys.executable, "-c", _HANGING_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline() == "writing\n"
        (temp,) = _leftovers(tmp_path)
        # Another process (a concurrent rank) sweeps and writes the same file meanwhile: the live temp stays.
        assert remove_stale_temporaries(tmp_path) == []
        write_video(np.full((2, 16, 16, 3), 200, np.uint8), target)
        assert _leftovers(tmp_path) == [temp]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert _leftovers(tmp_path) == [temp]  # SIGKILL: nobody could remove it
    assert remove_stale_temporaries(tmp_path) == [tmp_path / temp]  # the rerun's sweep
    assert _leftovers(tmp_path) == []
    assert read_video(target)[0].shape == (2, 16, 16, 3)


def test_remove_stale_temporaries_rules(tmp_path: Path) -> None:
    dead, alive, host = _dead_pid(), os.getpid(), _host()
    two_hours_ago = time.time() - 2 * 3600
    files = {
        f".a.mp4.tmp-{host}-{dead}-0123abcd.mp4": True,  # this host, writer gone
        f".b.mp4.tmp-{host}-{alive}-0123abcd.mp4": False,  # this host, writer running
        f".c.mp4.tmp-otherhost-{dead}-0123abcd.mp4": False,  # another node's, recently written
        f".d.mp4.tmp-otherhost-{dead}-0123abcd.mp4": True,  # another node's, untouched for 2 h
        f".e.json.tmp-{dead}-0123abcd.json": False,  # old-style name (no host), recent
        f".f.json.tmp-{dead}-0123abcd.json": True,  # old-style name, untouched for 2 h
        f".g.mp4.tmp-{host}-{dead}-0123abcd.json": False,  # suffix is not the target's: not ours
        f".h.mp4.tmp-{host}-{dead}-notahex.mp4": False,
        "i.mp4": False,
        ".write-probe-abc": False,
    }
    for name in files:
        (tmp_path / name).write_text("x")
    (tmp_path / f".j.mp4.tmp-{host}-{dead}-0123abcd.mp4").mkdir()  # a folder: not one of our files
    files[f".j.mp4.tmp-{host}-{dead}-0123abcd.mp4"] = False
    for name in (f".d.mp4.tmp-otherhost-{dead}-0123abcd.mp4", f".f.json.tmp-{dead}-0123abcd.json", "i.mp4"):
        os.utime(tmp_path / name, (two_hours_ago, two_hours_ago))
    assert remove_stale_temporaries(tmp_path / "missing") == []
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(name for name, stale in files.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in files.items() if not stale)
