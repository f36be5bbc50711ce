"""Crash-safe file output.

A generation run can take hours; a result that is half-written when the process is killed (Ctrl-C, OOM,
pre-emption) looks like a finished file to every later step that only checks existence, and an
overwritten-but-truncated manifest loses work that already existed. Everything here therefore writes to
a temporary file next to the target and renames it into place only once the write has fully succeeded:
``os.replace`` is atomic within one filesystem, so the target is always either the old file or the
complete new one. A writer killed outright (SIGKILL, OOM killer) cannot remove its temporary file:
each job sweeps its output folders with :func:`remove_stale_temporaries` when it starts, which removes
such files once their writer is provably gone (never one another process is still writing).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
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
    "remove_stale_temporaries",
]

PathLike = str | os.PathLike[str]


class UnwritablePathError(PermissionError):
    """An output path cannot be written (permissions, read-only filesystem, a file where a dir should be)."""


STALE_AFTER_S = 3600.0
"""A temporary file whose writer's liveness cannot be checked (another host, or a name from before the
host was part of it) counts as abandoned once it has not been modified for this long. Writers modify
their file continuously until the rename, so an hour of silence means the writer is gone."""

_TEMP_NAME = re.compile(
    r"\.(?P<target>.+)\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>[0-9]+)-[0-9a-f]{8}(?P<suffix>\.[^.]*)?"
)


def _host_tag() -> str:
    """This machine's name as it appears in temporary file names (``-`` is the field separator)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"


def _temp_path_for(target: Path) -> Path:
    """A hidden, unique sibling of ``target`` that keeps its suffix and names its writer.

    Same directory so the final rename never crosses filesystems; the original suffix is repeated at the
    end because some writers (ffmpeg/PyAV, ``PIL.Image.save``) choose the format from the extension. Host
    and pid say whose file it is, so a later run can tell an abandoned one from one still being written
    (by another torchrun rank, possibly on another node sharing the folder).
    """
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}.tmp-{_host_tag()}-{os.getpid()}-{token}{target.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _is_stale_temporary(path: Path, now: float) -> bool:
    """Whether ``path`` is one of our temporary files whose writer is gone (never one still in use)."""
    match = _TEMP_NAME.fullmatch(path.name)
    if match is None or (match["suffix"] or "") != Path(match["target"]).suffix or not path.is_file():
        return False
    if _pid_alive(int(match["pid"])):
        return False  # running here (or a pid now reused): keep
    if match["host"] == _host_tag():
        return True  # written on this host by a process that no longer exists
    # Another host's (or an old-style) file: its process is not visible from here, so only age tells.
    try:
        return now - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:  # its writer just renamed or removed it
        return False


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` left in ``folder`` when their writer was killed.

    Only files of our naming pattern whose writer is gone: written on this host, its pid is not running;
    written elsewhere, untouched for :data:`STALE_AFTER_S`. Returns the removed paths; a missing folder
    has none. Lists the folder once: call it when a job starts, not per file (a feature cache holds
    millions of files).
    """
    folder = Path(folder)
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    except (FileNotFoundError, NotADirectoryError):
        return []
    now, removed = time.time(), []
    for path in candidates:
        if _is_stale_temporary(path, now):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """Check that the output file ``path`` can be written, creating nothing; return its parent directory.

    Meant to be called at start-up, before hours of generation, so a typo or a read-only mount fails in
    seconds instead of at the first save. Nothing is created, so a run that fails later (a bad input, no
    GPU) leaves no empty output folder behind: the folders are made by the first write. Where the parent
    does not exist yet, its nearest existing ancestor must be a writable directory (that is where the
    first missing folder will be created). Writability is tested by actually creating (and deleting) a
    probe file, because ``os.access`` says yes to root even on read-only filesystems.

    Raises:
        UnwritablePathError: naming ``path`` and the reason, chained to the underlying ``OSError``.
    """
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise UnwritablePathError(f"output path {target} is an existing directory, expected a file path")
    existing = parent.absolute()
    try:
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is not a directory")
    except OSError as exc:
        raise UnwritablePathError(
            f"cannot create the directory {parent} for output {target}: {exc.strerror or exc}"
        ) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-probe-"):
            pass
    except OSError as exc:
        where = parent if existing == parent.absolute() else f"{existing} (where {parent} would be created)"
        raise UnwritablePathError(
            f"output directory {where} (for {target}) is not writable: {exc.strerror or exc}"
        ) from exc
    return parent
