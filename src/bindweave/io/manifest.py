"""The OpenS2V-Eval case manifest (``test_case.json``, ``Open-Domain_Eval.json``).

A manifest is a JSON object ``id -> {img_paths, prompt, synthesis_flag, class_label, ...}``; outputs are
named ``<id>.mp4``. Image paths are relative to a base folder supplied separately (``--images-dir``, the
OpenS2V-Eval root, e.g. ``Images/human.jpg``); ``hidden_states_path`` fields are relative to the
manifest's own folder. Loading validates every entry up front so a malformed case fails at start-up with
the file, the id and the field named, not hours into a batch. Unknown fields are kept (``extra``) so that
rewriting a manifest (prompt refinement, cached hidden states) never drops information.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bindweave.io.files import PathLike, atomic_write_json

__all__ = [
    "ManifestEntry",
    "ManifestError",
    "entry_to_dict",
    "load_manifest",
    "resolve_hidden_states",
    "resolve_images",
    "save_manifest",
    "with_fields",
]

# Order in which known fields are written: the order of the released files.
_KNOWN_FIELDS = (
    "img_paths",
    "prompt",
    "synthesis_flag",
    "class_label",
    "hidden_states_path",
    "hidden_states_path_negative",
)
_OPTIONAL_STR_FIELDS = ("synthesis_flag", "hidden_states_path", "hidden_states_path_negative")
MANIFEST_INDENT = 4  # the released manifests use 4-space indentation


class ManifestError(ValueError):
    """A manifest file or entry does not have the expected structure."""


def _as_str_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"{name} must be a sequence of strings, not a single string: {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ManifestEntry:
    """One evaluation case. ``extra`` holds unknown JSON fields, in their original order (read-only)."""

    id: str
    img_paths: tuple[str, ...]
    prompt: str
    class_label: tuple[str, ...] = ()
    synthesis_flag: str | None = None
    hidden_states_path: str | None = None
    hidden_states_path_negative: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Accept lists for convenience but store tuples, and freeze ``extra``, so entries stay immutable.
        object.__setattr__(self, "img_paths", _as_str_tuple(self.img_paths, "img_paths"))
        object.__setattr__(self, "class_label", _as_str_tuple(self.class_label, "class_label"))
        clashes = [key for key in self.extra if key in _KNOWN_FIELDS]
        if clashes:
            raise ValueError(f"entry {self.id!r}: extra repeats known field(s) {clashes}; set them directly")
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value, ensure_ascii=False, default=repr)[:80]}"


def _check_str_list(raw: Mapping[str, Any], key: str, where: str, *, required: bool) -> tuple[str, ...]:
    if key not in raw:
        if required:
            raise ManifestError(f"{where}: missing required field '{key}' (a non-empty list of strings)")
        return ()
    value = raw[key]
    if not isinstance(value, (list, tuple)):  # tuples only come from with_fields, never from JSON
        raise ManifestError(f"{where}: field '{key}' must be a list of strings, got {_describe(value)}")
    if required and not value:
        raise ManifestError(f"{where}: field '{key}' must be a non-empty list of strings, got []")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ManifestError(
                f"{where}: field '{key}'[{index}] must be a non-empty string, got {_describe(item)}"
            )
    return tuple(value)


def _parse_entry(entry_id: Any, raw: Any, source: str) -> ManifestEntry:
    """Validate one raw JSON entry; ``source`` names where it came from for the error messages."""
    where = f"{source}: entry {entry_id!r}"
    if not isinstance(entry_id, str) or not entry_id.strip():
        raise ManifestError(f"{where}: the case id must be a non-empty string")
    # Ids become output file names (<id>.mp4): refuse anything that would escape the output folder.
    if "/" in entry_id or "\\" in entry_id or "\0" in entry_id or entry_id in (".", ".."):
        raise ManifestError(f"{where}: the case id must be usable as a file name (no '/', '\\', '..')")
    if not isinstance(raw, Mapping):
        raise ManifestError(
            f"{where}: expected a JSON object with 'img_paths' and 'prompt', got {_describe(raw)}"
        )

    if "prompt" not in raw:
        raise ManifestError(f"{where}: missing required field 'prompt' (a non-empty string)")
    prompt = raw["prompt"]
    if not isinstance(prompt, str):
        raise ManifestError(f"{where}: field 'prompt' must be a string, got {_describe(prompt)}")
    if not prompt.strip():
        raise ManifestError(f"{where}: field 'prompt' is empty")

    img_paths = _check_str_list(raw, "img_paths", where, required=True)
    class_label = _check_str_list(raw, "class_label", where, required=False)

    optional: dict[str, str | None] = {}
    for key in _OPTIONAL_STR_FIELDS:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ManifestError(
                f"{where}: field '{key}' must be a non-empty string or null, got {_describe(value)}"
            )
        optional[key] = value

    extra = {key: value for key, value in raw.items() if key not in _KNOWN_FIELDS}
    return ManifestEntry(
        id=entry_id,
        img_paths=img_paths,
        prompt=prompt,
        class_label=class_label,
        extra=extra,
        **optional,
    )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON silently keeps the last duplicate; for case ids that would silently drop a case."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_manifest(path: PathLike) -> dict[str, ManifestEntry]:
    """Read and validate a manifest; returns ``id -> entry`` in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ManifestError: invalid JSON (with line and column) or an invalid entry (file, id, field named).
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"manifest not found: {source}")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(
            f"{source}: expected a JSON object mapping case id -> entry, got {type(data).__name__}"
        )
    return {entry_id: _parse_entry(entry_id, raw, str(source)) for entry_id, raw in data.items()}


def entry_to_dict(entry: ManifestEntry) -> dict[str, Any]:
    """The JSON object for ``entry``: known fields in the released order, then ``extra`` in its order.

    Optional fields that are ``None`` (and an empty ``class_label``) are omitted rather than written as
    null/[], matching the released files.
    """
    values: dict[str, Any] = {
        "img_paths": list(entry.img_paths),
        "prompt": entry.prompt,
        "synthesis_flag": entry.synthesis_flag,
        "class_label": list(entry.class_label) if entry.class_label else None,
        "hidden_states_path": entry.hidden_states_path,
        "hidden_states_path_negative": entry.hidden_states_path_negative,
    }
    out = {key: values[key] for key in _KNOWN_FIELDS if values[key] is not None}
    out.update(entry.extra)
    return out


def save_manifest(entries: Mapping[str, ManifestEntry] | Iterable[ManifestEntry], path: PathLike) -> Path:
    """Write entries atomically in the released format (4-space JSON); returns the path.

    Accepts the mapping :func:`load_manifest` returns or any iterable of entries; ids must be unique and,
    for a mapping, match their keys (a mismatch would silently rename a case's output).
    """
    items = list(entries.items()) if isinstance(entries, Mapping) else [(e.id, e) for e in entries]
    data: dict[str, Any] = {}
    for key, entry in items:
        if not isinstance(entry, ManifestEntry):
            raise TypeError(f"expected ManifestEntry for {key!r}, got {type(entry).__name__}")
        if key != entry.id:
            raise ValueError(f"manifest key {key!r} does not match its entry's id {entry.id!r}")
        if key in data:
            raise ValueError(f"duplicate case id {key!r}")
        data[key] = entry_to_dict(entry)
    return atomic_write_json(path, data, indent=MANIFEST_INDENT)


def resolve_images(entry: ManifestEntry, images_dir: PathLike) -> list[Path]:
    """Absolute-or-joined paths of the entry's reference images, all checked to exist.

    ``images_dir`` is the folder the ``img_paths`` are relative to (for OpenS2V-Eval its root, since the
    paths start with ``Images/``). All missing files are reported at once.
    """
    base = Path(images_dir)
    paths = [base / rel for rel in entry.img_paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"entry {entry.id!r}: reference image(s) not found under {base}: {', '.join(missing)}"
        )
    return paths


def resolve_hidden_states(entry: ManifestEntry, base_dir: PathLike) -> tuple[Path | None, Path | None]:
    """(positive, negative) cached MLLM hidden-state paths, relative ones joined onto ``base_dir``.

    ``base_dir`` should be the manifest's folder. Existence is not checked here: the released
    ``test_case_with_features.json`` points at names that differ from the shipped files, so the loader
    decides whether a missing file is an error or a cue to recompute.
    """
    base = Path(base_dir)

    def resolve(value: str | None) -> Path | None:
        return None if value is None else base / value

    return resolve(entry.hidden_states_path), resolve(entry.hidden_states_path_negative)


def with_fields(entry: ManifestEntry, **updates: Any) -> ManifestEntry:
    """A validated copy of ``entry`` with fields replaced; unknown names go into ``extra``.

    E.g. ``with_fields(e, prompt=refined, prompt_original=e.prompt)`` keeps the original prompt as an
    extra field; ``hidden_states_path=None`` removes a field. ``id=`` renames the case.
    """
    entry_id = updates.pop("id", entry.id)
    if "extra" in updates:
        replacement = updates.pop("extra")
        base = entry_to_dict(dataclasses.replace(entry, extra={}))
        base.update(replacement)
    else:
        base = entry_to_dict(entry)
    base.update(updates)
    return _parse_entry(entry_id, base, "with_fields")
