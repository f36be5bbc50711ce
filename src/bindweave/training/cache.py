"""The feature cache: one safetensors file per clip, an index, and the settings they were made with.

Layout of a cache folder::

    features.json                 the feature settings (data config + seed); checked on every use
    video_condition.safetensors   the grey-video part of the VAE condition, the same for every clip
    clips/00000042.safetensors    clip on manifest line 42: latents, text, image, mllm (full length),
                                  reference_slots (+ video_condition with the first-frame condition)
    clips/00000043.skipped.json   a clip that could not be encoded (on_bad_sample: skip), with the reason
    index.json                    every clip and skip, in manifest order (written when all ranks finish)

Every file is written atomically, so a file that exists is complete: a rerun skips it (resumable), and
``torchrun`` ranks write disjoint clips into the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from bindweave.io.files import atomic_write, atomic_write_json, remove_stale_temporaries

from .config import DataConfig, config_to_dict
from .data import StageDataset
from .features import ClipFeatures
from .manifest import ClipManifest

__all__ = ["CacheError", "FeatureCache", "FeatureCacheDataset", "FeatureCacheWriter", "feature_settings"]

# 2: MLLM states at full length, no mllm_mask (format 1 padded / truncated them to mllm_max_tokens).
CACHE_FORMAT = "bindweave-feature-cache/2"
SETTINGS_NAME = "features.json"
INDEX_NAME = "index.json"
SHARED_VIDEO_CONDITION = "video_condition.safetensors"

# Settings that do not change what a clip's features are.
_NOT_FEATURE_SETTINGS = ("num_workers", "on_bad_sample")


class CacheError(ValueError):
    """A feature cache that is missing, incomplete, corrupt, or made with other settings."""


def feature_settings(data: DataConfig, seed: int) -> dict[str, Any]:
    """What determines a clip's features: the data config (minus loader settings) and the seed."""
    settings = {k: v for k, v in config_to_dict(data).items() if k not in _NOT_FEATURE_SETTINGS}
    # The dropout rate is a training choice; the features only depend on whether negatives are stored
    # (recorded only then, so a cache made before the option existed keeps its key).
    if settings.pop("condition_dropout", 0) > 0:
        settings["negative_mllm"] = True
    return {"format": CACHE_FORMAT, "seed": seed, "data": settings}


def _check_settings(root: Path, expected: dict[str, Any]) -> None:
    path = root / SETTINGS_NAME
    found = json.loads(path.read_text(encoding="utf-8"))
    if found == expected:
        return
    if found.get("format") != expected["format"]:
        raise CacheError(
            f"feature cache {root} has format {found.get('format')!r}, this bindweave reads "
            f"{expected['format']!r} (since format 2 the MLLM states are kept at full length): re-run "
            "`bindweave precompute` into a new folder"
        )
    flat_found, flat_expected = _flatten(found), _flatten(expected)
    diff = [
        f"{key}: cache has {flat_found.get(key)!r}, config has {flat_expected.get(key)!r}"
        for key in sorted(set(flat_found) | set(flat_expected))
        if flat_found.get(key) != flat_expected.get(key)
    ]
    raise CacheError(
        f"feature cache {root} was made with other settings (re-run `bindweave precompute` into a new "
        "folder, or use the same data config and seed):\n  " + "\n  ".join(diff)
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class FeatureCacheWriter:
    """Writes clips' features into a cache folder (safe to share between ranks)."""

    def __init__(self, root: Path, settings: dict[str, Any]):
        self.root = Path(root)
        (self.root / "clips").mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.root / "clips"):  # what killed writers of a previous run left
            remove_stale_temporaries(folder)
        if (self.root / SETTINGS_NAME).is_file():
            _check_settings(self.root, settings)
        else:
            atomic_write_json(self.root / SETTINGS_NAME, settings)
        self.settings = settings
        self._shared: torch.Tensor | None = None

    def clip_path(self, line: int) -> Path:
        return self.root / "clips" / f"{line:08d}.safetensors"

    def skip_path(self, line: int) -> Path:
        return self.root / "clips" / f"{line:08d}.skipped.json"

    def is_done(self, line: int) -> bool:
        return self.clip_path(line).is_file() or self.skip_path(line).is_file()

    def write(self, line: int, features: ClipFeatures, metadata: dict[str, str]) -> None:
        slots = features.condition.shape[1] - features.latents.shape[1]
        tensors = {k: v for k, v in features.tensors().items() if k != "condition"}
        tensors["reference_slots"] = features.condition[:, :slots]
        video_condition = features.condition[:, slots:].contiguous()
        if self.settings["data"]["first_frame_condition"]:
            tensors["video_condition"] = video_condition  # differs per clip
        else:
            self._check_shared(video_condition)
        with atomic_write(self.clip_path(line)) as tmp:
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
            )

    def _check_shared(self, video_condition: torch.Tensor) -> None:
        """Store the grey-video condition once; every clip's must be the same tensor."""
        if self._shared is None:
            path = self.root / SHARED_VIDEO_CONDITION
            if not path.is_file():
                with atomic_write(path) as tmp:
                    safetensors.torch.save_file({"video_condition": video_condition}, tmp)
            self._shared = safetensors.torch.load_file(path)["video_condition"]
        if not torch.equal(self._shared, video_condition):
            raise CacheError(
                f"{self.root}: the grey-video condition differs between clips; was the VAE changed?"
            )

    def write_skip(self, line: int, reason: str) -> None:
        atomic_write_json(self.skip_path(line), {"line": line, "reason": reason})

    def write_index(self, manifest: ClipManifest) -> dict[str, Any]:
        """Index every clip of ``manifest`` (call once all ranks are done); raises if any is missing."""
        clips, skipped, missing = [], [], []
        for record in manifest.clips:
            if self.clip_path(record.line).is_file():
                clips.append(
                    {
                        "line": record.line,
                        "file": str(self.clip_path(record.line).relative_to(self.root)),
                        "video": str(record.video),
                        "prompt": record.prompt,
                        "num_references": len(record.references),
                    }
                )
            elif self.skip_path(record.line).is_file():
                skipped.append(json.loads(self.skip_path(record.line).read_text(encoding="utf-8")))
            else:
                missing.append(record.line)
        if missing:
            raise CacheError(f"{self.root}: {len(missing)} clip(s) were not written, e.g. line {missing[0]}")
        skipped += [{"line": b.line, "reason": b.reason} for b in manifest.skipped]
        index = {
            "format": CACHE_FORMAT,
            "manifest": str(manifest.path),
            "settings": self.settings,
            "clips": clips,
            "skipped": sorted(skipped, key=lambda s: s["line"]),
        }
        atomic_write_json(self.root / INDEX_NAME, index)
        return index


class FeatureCache:
    """Reads a finished cache; ``expected`` settings (from the training config) must match its own."""

    def __init__(self, root: Path, expected: dict[str, Any]):
        self.root = Path(root)
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            raise CacheError(
                f"{self.root} is not a finished feature cache (no {INDEX_NAME}); run or finish "
                "`bindweave precompute` for it"
            )
        _check_settings(self.root, expected)
        self.index = json.loads(index_path.read_text(encoding="utf-8"))
        self.clips: list[dict[str, Any]] = self.index["clips"]
        if not self.clips:
            raise CacheError(f"{self.root}: the cache holds no clips")
        self.shared: torch.Tensor | None = None
        if not expected["data"]["first_frame_condition"]:
            self.shared = safetensors.torch.load_file(self.root / SHARED_VIDEO_CONDITION)["video_condition"]

    def load(self, entry: dict[str, Any]) -> ClipFeatures:
        path = self.root / entry["file"]
        try:
            tensors = safetensors.torch.load_file(path)
        except (OSError, safetensors.SafetensorError) as err:
            raise CacheError(f"cannot read {path}: {err}") from err
        video_condition = tensors.pop("video_condition", None)
        video_condition = self.shared if video_condition is None else video_condition
        slots = tensors.pop("reference_slots")
        condition = torch.cat([slots, video_condition.to(slots.dtype)], dim=1)  # (4+z, S+F', h, w)
        try:
            return ClipFeatures(condition=condition, **tensors)
        except TypeError as err:
            raise CacheError(f"{path}: unexpected tensors {sorted(tensors)}: {err}") from err


class FeatureCacheDataset(StageDataset[ClipFeatures]):
    """A stage's clips from a feature cache."""

    data_errors = (CacheError,)

    def __init__(self, cache: FeatureCache, on_bad_sample: str):
        super().__init__(on_bad_sample, str(cache.root))
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.clips)

    def line(self, index: int) -> int:
        return self.cache.clips[index]["line"]

    def load(self, index: int, epoch: int) -> ClipFeatures:
        return self.cache.load(self.cache.clips[index])
