"""The training manifest: JSONL, one clip per line.

Format (paths are relative to the manifest's folder unless absolute)::

    {"video": "clips/0001.mp4", "prompt": "A man in a red coat ...",
     "references": [{"image": "subjects/0001_man.png", "mask": "subjects/0001_man_mask.png"},
                    {"image": "subjects/0001_dog.jpg", "mask": null}]}

- ``references``: 1 to 4 subjects, in the order the prompt mentions them. A ``mask`` (optional) is a
  greyscale image of the same size as ``image``, white (> 127) on the subject: the subject is cut out with
  it (see :mod:`bindweave.training.subjects`). Without a mask the image is used as it is.
- ``subject_mask`` (optional): a video of the same frames as ``video`` (count, rate, size), white (> 127)
  where a subject is. Only ``objective.subject_weight`` reads it (the loss weighs those places more);
  the features keep it at the latents' resolution.
- Blank lines are ignored. A clip's identity is its 1-based line number: it seeds the clip's augmentation
  and frame window and names its cache file, so it is stable across processes, runs and resumes.

Everything that can be checked without decoding (JSON syntax, keys and types, 1-4 references, that every
file exists) is checked when the manifest is read, so a typo fails before the first step instead of hours
in. What only decoding reveals (a corrupt video) is handled by the data loader with the same policy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bindweave.conditioning.references import MAX_REFERENCES

logger = logging.getLogger(__name__)

__all__ = ["BadLine", "ClipManifest", "ClipRecord", "ManifestError", "ReferenceRecord", "read_clip_manifest"]

BadSamplePolicy = Literal["error", "skip"]

_MAX_LISTED = 20  # bad lines listed in one error message


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and line(s)."""


@dataclass(frozen=True)
class ReferenceRecord:
    image: Path
    mask: Path | None


@dataclass(frozen=True)
class ClipRecord:
    """One training clip: a video, its prompt and 1-4 reference subjects."""

    line: int  # 1-based line in the manifest; the clip's identity
    video: Path
    prompt: str
    references: tuple[ReferenceRecord, ...]
    subject_mask: Path | None = None  # a video, white where a subject is

    @property
    def clip_id(self) -> str:
        return f"{self.line:08d}"


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ClipManifest:
    """The usable clips of a manifest, and the lines that were skipped (with ``on_bad_sample: skip``)."""

    path: Path
    clips: list[ClipRecord]
    skipped: list[BadLine] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)


def read_clip_manifest(path: str | Path, on_bad_sample: BadSamplePolicy = "error") -> ClipManifest:
    """Read and check a training manifest.

    Args:
        path: the JSONL file.
        on_bad_sample: ``"error"`` raises on any bad line; ``"skip"`` logs each bad line, leaves it out
            and counts it in :attr:`ClipManifest.skipped`.

    Raises:
        ManifestError: the file is missing or empty of clips, or (policy ``"error"``) a line is bad; the
            message lists every bad line (up to 20) with its number and reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"training manifest not found: {path}")
    base_dir = path.parent
    clips: list[ClipRecord] = []
    bad: list[BadLine] = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                clips.append(parse_clip_line(text, number, base_dir))
            except ManifestError as err:
                bad.append(BadLine(number, str(err)))

    if bad and on_bad_sample == "error":
        listed = "\n  ".join(str(b) for b in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise ManifestError(
            f"{path}: {len(bad)} bad line(s) (set data.on_bad_sample: skip to leave them out):\n  {listed}{more}"
        )
    for b in bad:
        logger.warning("%s: skipping %s", path, b)
    if not clips:
        raise ManifestError(f"{path}: no usable clips ({len(bad)} bad line(s))")
    if bad:
        logger.warning("%s: %d clips, %d bad line(s) skipped", path, len(clips), len(bad))
    return ClipManifest(path=path, clips=clips, skipped=bad)


def parse_clip_line(text: str, line: int, base_dir: Path) -> ClipRecord:
    """Parse and check one manifest line; raises :class:`ManifestError` with the reason."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(entry, dict):
        raise ManifestError(f"expected a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - {"video", "prompt", "references", "subject_mask"})
    if unknown:
        raise ManifestError(
            f"unknown key(s) {unknown}; expected 'video', 'prompt', 'references' (and 'subject_mask')"
        )

    video = _existing_file(entry, "video", base_dir)
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ManifestError("'prompt' must be a non-empty string")

    refs = entry.get("references")
    if not isinstance(refs, list):
        raise ManifestError('\'references\' must be a list of {"image": ..., "mask": ...} objects')
    if not 1 <= len(refs) <= MAX_REFERENCES:
        raise ManifestError(f"{len(refs)} references; BindWeave trains with 1 to {MAX_REFERENCES}")
    references = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise ManifestError(f"references[{i}] must be an object, got {type(ref).__name__}")
        extra = sorted(set(ref) - {"image", "mask"})
        if extra:
            raise ManifestError(f"references[{i}]: unknown key(s) {extra}; expected 'image', 'mask'")
        image = _existing_file(ref, "image", base_dir, f"references[{i}].")
        mask = None if ref.get("mask") is None else _existing_file(ref, "mask", base_dir, f"references[{i}].")
        references.append(ReferenceRecord(image=image, mask=mask))
    subject_mask = (
        None if entry.get("subject_mask") is None else _existing_file(entry, "subject_mask", base_dir)
    )
    return ClipRecord(
        line=line, video=video, prompt=prompt, references=tuple(references), subject_mask=subject_mask
    )


def _existing_file(entry: dict[str, Any], key: str, base_dir: Path, prefix: str = "") -> Path:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"'{prefix}{key}' must be a path string, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ManifestError(f"'{prefix}{key}' file not found: {path}")
    return path
