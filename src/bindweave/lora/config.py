"""``--lora PATH[:SCALE]`` and ``bindweave export-lora`` options, without torch (the CLI builds its parsers
from them).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import field

__all__ = [
    "ExportLoraConfig",
    "LoraSpec",
    "TRAINED_LORA_NAME",
    "check_lora_args",
    "require_peft",
    "resolve_lora_file",
]

#: What ``bindweave train`` (``trainable: lora``) writes into ``checkpoint-*/lora``.
TRAINED_LORA_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora`` argument: the LoRA file and the scale (strength) it is fused with."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``PATH`` or ``PATH:SCALE``; a tail after the last ``:`` that is not a number belongs to the path."""
        path, sep, tail = text.rpartition(":")
        scale = 1.0
        if sep and path:
            try:
                scale = float(tail)
            except ValueError:
                path = text
        else:
            path = text
        if not math.isfinite(scale):
            raise ValueError(f"--lora {text}: the scale must be a finite number, got {tail!r}")
        return cls(Path(path), scale)

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


def resolve_lora_file(path: Path) -> Path:
    """The ``.safetensors`` file a ``--lora`` path names.

    A file; a folder holding one ``.safetensors`` file (e.g. a training checkpoint's ``lora/``); or a training
    checkpoint folder (its ``lora/``).

    Raises:
        FileNotFoundError: naming the path, when none or several candidate files are there.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"--lora {path}: a LoRA must be a .safetensors file")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--lora {path}: no such file or folder")
    if (path / "lora" / TRAINED_LORA_NAME).is_file():  # a `bindweave train` checkpoint
        return path / "lora" / TRAINED_LORA_NAME
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) if files else "none"
        raise FileNotFoundError(
            f"--lora {path}: a folder must hold exactly one .safetensors LoRA file (found: {found}); name the file"
        )
    return files[0]


def require_peft(flag: str = "--lora") -> None:
    """diffusers loads LoRAs through PEFT, of the ``train`` extra: a missing PEFT is named before any loading."""
    if importlib.util.find_spec("peft") is None:
        raise ModuleNotFoundError(f"{flag} needs the 'peft' package (the 'train' extra)", name="peft")


def check_lora_args(loras: list[str]) -> list[LoraSpec]:
    """Parse ``--lora`` arguments and check their files exist and PEFT is installed, loading nothing."""
    specs = [LoraSpec.parse(text) for text in loras]
    for spec in specs:
        resolve_lora_file(spec.path)
    if specs:
        require_peft()
    return specs


@dataclass(kw_only=True)
class ExportLoraConfig:
    """Write a LoRA trained by ``bindweave train`` as one ComfyUI / original-Wan ``.safetensors`` file."""

    lora: Path = field(
        help="the trained LoRA: a training checkpoint folder, its lora/ folder, or the .safetensors file",
        positional=True,
    )
    out: Path = field(help="the ComfyUI LoRA file to write (.safetensors)")
    dtype: Literal["keep", "bfloat16", "float16", "float32"] = field(
        "keep", help="dtype of the written weights (keep: as trained, float32)"
    )
    overwrite: bool = field(False, help="replace --out if it exists")

    def validate(self) -> None:
        resolve_lora_file(self.lora)
        if self.out.suffix != ".safetensors":
            raise ValueError(f"--out must end in .safetensors, got {self.out}")
        if self.out.exists() and not self.overwrite:
            raise FileExistsError(f"--out {self.out} exists; add --overwrite to replace it")
