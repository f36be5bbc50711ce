"""Crash-safe file output.

A generation run can take hours; a result that is half-written when the process is killed (Ctrl-C, OOM,
pre-emption) looks like a finished file to every later step that only checks existence, and an
overwritten-but-truncated manifest loses work that already existed. Everything here therefore writes to
a temporary file next to the target and renames it into place only once the write has fully succeeded:
``os.replace`` is atomic within one filesystem, so the target is always either the old file or the
complete new one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "UnwritablePathError",
    "atomic_folder",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_writable_dir",
]

PathLike = str | os.PathLike[str]


class UnwritablePathError(PermissionError):
    """An output path cannot be written (permissions, read-only filesystem, a file where a dir should be)."""


def _temp_path_for(target: Path) -> Path:
    """A hidden, unique sibling of ``target`` that keeps its suffix.

    Same directory so the final rename never crosses filesystems; the original suffix is repeated at the
    end because some writers (ffmpeg/PyAV, ``PIL.Image.save``) choose the format from the extension.
    """
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{token}{target.suffix}")


def _fsync_file(path: Path) -> None:
    """Flush ``path`` to disk so a crash right after the rename cannot leave an empty target."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; move it onto ``path`` only if the block succeeds.

    The parent directory is created if needed. On any exception (including ``KeyboardInterrupt``) the
    temporary file is removed and the exception re-raised, so ``path`` is never left half-written and an
    existing ``path`` is kept untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path_for(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_write: nothing was written to the temporary file for {target}")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a path (not yet created) beside ``path`` to build a folder at; rename it onto ``path`` only if
    the block succeeds.

    ``path`` must be absent or an empty folder, unless ``replace``: then an existing ``path`` is removed
    just before the rename. On any exception the staged folder is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        staged = Path(tmp) / target.name
        yield staged
        if replace and target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    target = Path(path)
    with atomic_write(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return target


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as UTF-8 JSON (non-ASCII kept readable, trailing newline) atomically.

    The object is serialised before anything touches the disk, so an unserialisable value raises without
    creating a file.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (checkpoints and cached hidden states are expensive to redo)."""
    import torch  # local: keeps ``bindweave.io.files`` importable without paying for torch

    target = Path(path)
    with atomic_write(target) as tmp:
        torch.save(obj, tmp)
    return target


def ensure_writable_dir(path: PathLike) -> Path:
    """Create the parent directory of the output file ``path`` and prove it is writable; return it.

    Meant to be called at start-up, before hours of generation, so a typo or a read-only mount fails in
    seconds instead of at the first save. Writability is tested by actually creating (and deleting) a
    probe file, because ``os.access`` says yes to root even on read-only filesystems.

    Raises:
        UnwritablePathError: naming ``path`` and the reason, chained to the underlying ``OSError``.
    """
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise UnwritablePathError(f"output path {target} is an existing directory, expected a file path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnwritablePathError(
            f"cannot create the directory {parent} for output {target}: {exc.strerror or exc}"
        ) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise UnwritablePathError(
            f"output directory {parent} (for {target}) is not writable: {exc.strerror or exc}"
        ) from exc
    return parent
