"""The typed configs of the generation jobs: which weights, how to sample, and each job's inputs.

They are the ``generate``, ``run-manifest`` and ``extract-mllm`` command-line options (see
:mod:`bindweave.cli`). This module imports no torch, diffusers or transformers, so the CLI builds its
parsers cheaply; the jobs themselves are in :mod:`bindweave.generate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .conditioning.prompts import DEFAULT_NEGATIVE_PROMPT
from .config import field
from .default_model import default_model_path, embedded_guidance_scale
from .lora.config import LoraSpec, check_lora_args
from .perf.config import PerfConfig
from .refine import RefineOptions
from .samplers import SamplerKind, get_sampler

if TYPE_CHECKING:
    from .preflight import SavedModel

__all__ = [
    "Dtype",
    "ExtractMLLMConfig",
    "GenerateConfig",
    "ModelConfig",
    "RunManifestConfig",
    "SamplingConfig",
    "WeightsConfig",
    "check_guidance",
    "check_seed",
    "check_video_size",
]

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


@dataclass(kw_only=True)
class WeightsConfig:
    """Which weights to load and where to run them."""

    model: Path | None = field(
        None, help="a saved BindWeavePipeline folder (default: the embedded default model)"
    )
    wan: Path | None = field(
        None, help="released Wan2.1-I2V-14B-720P-Diffusers folder (use with --transformer)"
    )
    transformer: Path | None = field(
        None,
        help="released BindWeave transformer folder, or a single-file checkpoint in the original Wan / ComfyUI "
        "layout (.safetensors: fp32, bf16, fp16, fp8 or fp8_scaled) (use with --wan)",
    )
    mllm: Path | None = field(
        None, help="Qwen2.5-VL-7B-Instruct folder (not needed with precomputed MLLM states)"
    )
    dtype: Dtype = field("auto", help="weights dtype; auto = bfloat16 on CUDA, float32 on CPU")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")

    @property
    def uses_default_model(self) -> bool:
        """Neither ``--model`` nor ``--wan`` given: the embedded default model is loaded."""
        return self.model is None and self.wan is None

    def check_folders(self) -> None:
        """Every named weights folder exists, checked before anything is loaded."""
        if (self.wan is None) != (self.transformer is None):
            raise ValueError(
                "--wan and --transformer go together (the released Wan I2V and BindWeave folders)"
            )
        if self.wan is not None and self.model is not None:
            raise ValueError("give either --model or --wan/--transformer, not both")
        for name in ("model", "wan", "transformer", "mllm"):
            folder = getattr(self, name)
            if name == "transformer" and folder is not None and Path(folder).suffix == ".safetensors":
                if not Path(folder).is_file():
                    raise FileNotFoundError(f"--transformer {folder}: no such file")
            elif folder is not None and not Path(folder).is_dir():
                raise FileNotFoundError(f"--{name} {folder}: no such folder")

    def validate_weights(self) -> None:
        """The folders exist and ``--device`` names a device this machine has."""
        from .preflight import resolve_device

        self.check_folders()
        resolve_device(self.device)

    def saved_model(self) -> SavedModel:
        """What the weights' config files say (MLLM width, default guidance), read without loading them."""
        from .preflight import saved_model

        return saved_model(self.model, self.wan, self.transformer, self.mllm)


@dataclass(kw_only=True)
class ModelConfig(WeightsConfig, PerfConfig):
    """Which weights to load, the LoRAs fused into them, where to run them, and how fast and lean
    (:class:`PerfConfig`)."""

    loras: list[str] = field(
        default_factory=list,
        flag="--lora",
        repeat=True,
        metavar="PATH[:SCALE]",
        help="a LoRA fused into the DiT, PATH[:SCALE] (scale 1 by default; repeat the option for several): "
        "a .safetensors file in diffusers / PEFT or original Wan / ComfyUI keys, or a `bindweave train` "
        "checkpoint; needs the 'train' extra (peft)",
    )

    lora_skip_unknown_keys: bool = field(
        False,
        help="load the keys of each --lora that fit the DiT and skip the others, each named in a warning and in "
        "the run record (default: a LoRA with a key that fits no parameter of the DiT is refused)",
    )

    def lora_specs(self) -> list[LoraSpec]:
        """The ``--lora`` arguments, parsed."""
        return [LoraSpec.parse(text) for text in self.loras]

    def validate_model(self) -> None:
        """Every model option that can be checked without loading the model."""
        self.validate_perf()
        self.validate_weights()
        check_lora_args(self.loras)


@dataclass(kw_only=True)
class SamplingConfig:
    """The sampler settings. Size, steps and guidance default to the model's own, saved in its
    ``model_index.json``: the paper's for the released model, the toy world's for the embedded one."""

    height: int | None = field(
        None,
        help="video height, a multiple of 16 (default: the model's native size: 64x64 for the embedded "
        "model, 720x1280 for the released one)",
    )
    width: int | None = field(
        None, help="video width, a multiple of 16 (default: the model's native size, as for --height)"
    )
    num_frames: int | None = field(
        None, help="frames, 4k+1 (default: the model's: 17 for the embedded model, 81 for the released one)"
    )
    steps: int | None = field(
        None,
        help="sampling steps (default: 4 for the lightx2v samplers, else the model's: 20 for the embedded "
        "model, the paper's 50 for the released one)",
    )
    guidance: float | None = field(
        None,
        help="classifier-free guidance scale, 1 disables the negative branch (default: 1.0 for the lightx2v "
        f"samplers, else the model's: {embedded_guidance_scale()} for the embedded model, the best on "
        "held-out toy scenes; the paper's 5.0 for the released one)",
    )
    sampler: SamplerKind = field(
        "unipc",
        help="unipc: the released UniPC; euler: Euler on the same timesteps; lightx2v / lightx2v-lcm: the "
        "4-step, shift-5, no-CFG sampling of LightX2V's step-distillation LoRAs (Euler / LCM update)",
    )
    seed: int = field(42, help="seed of the initial noise")
    negative_prompt: str = field(DEFAULT_NEGATIVE_PROMPT, help="negative prompt")
    fps: int = field(16, help="frame rate of the written mp4")

    def validate(self) -> None:
        """The sampling rules that need no model, checked before any weights are loaded."""
        check_video_size(self.height, self.width, self.num_frames)
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        check_guidance(self.guidance)
        check_seed(self.seed)
        get_sampler(self.sampler)
        if self.fps < 1:
            raise ValueError(f"--fps must be >= 1, got {self.fps}")

    def requested_guidance(self) -> float | None:
        """The guidance the run asks for: ``--guidance``, else the sampler's (1 for lightx2v); None: the model's."""
        return self.guidance if self.guidance is not None else get_sampler(self.sampler).default_guidance


def check_video_size(height: int | None, width: int | None, num_frames: int | None) -> None:
    """Sizes in multiples of 16 and ``4k + 1`` frames; ``None`` (the model's own) passes."""
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value <= 0 or value % 16):
            raise ValueError(f"--{name} must be a positive multiple of 16, got {value}")
    if num_frames is not None and (num_frames < 1 or (num_frames - 1) % 4):
        raise ValueError(f"--num-frames must be 4k + 1 (e.g. 81), got {num_frames}")


def check_guidance(guidance: float | None, flag: str = "--guidance") -> None:
    """A finite guidance scale >= 1 (1 turns the negative branch off); ``None`` (the model's own) passes."""
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 1):
        raise ValueError(f"{flag} must be a number >= 1, got {guidance}")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A seed ``torch.Generator.manual_seed`` takes, checked before the model is loaded, not after."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"{flag} must be between 0 and 2**64 - 1, got {seed}")


@dataclass(kw_only=True)
class GenerateConfig(ModelConfig, SamplingConfig, RefineOptions):
    refs: list[Path] = field(help="1-4 reference images, in order")
    prompt: str = field(help="what the subjects do")
    out: Path = field(help="output .mp4 path")
    mllm_states: Path | None = field(
        None, help="precomputed MLLM states (.pt, released format) for the prompt"
    )
    negative_mllm_states: Path | None = field(None, help="precomputed MLLM states for the negative prompt")

    def validate(self) -> None:
        """Every rule that needs no model: sampling settings, prompt, model options, refinement."""
        super().validate()
        if not self.prompt.strip():
            raise ValueError("--prompt is empty: say what the subjects do")
        self.validate_model()
        self.check_refine()


@dataclass(kw_only=True)
class RunManifestConfig(ModelConfig, SamplingConfig):
    manifest: Path = field(help="test_case.json-format manifest: id -> {img_paths, prompt, ...}")
    images_dir: Path = field(help="folder the manifest's img_paths are relative to")
    out: Path = field(help="output folder; each entry is written to <id>.mp4")
    overwrite: bool = field(
        False,
        help="delete the manifest's videos in --out and generate them all again (needed to change a "
        "setting recorded in its run_record.json; to resume an interrupted --overwrite run, omit it)",
    )

    def validate(self) -> None:
        """Every rule that needs no model: sampling settings, model options, the images folder."""
        from .preflight import check_images_dir

        super().validate()
        self.validate_model()
        check_images_dir(self.images_dir)


@dataclass(kw_only=True)
class ExtractMLLMConfig(WeightsConfig):
    manifest: Path = field(help="test_case.json-format manifest")
    images_dir: Path = field(help="folder the manifest's img_paths are relative to")
    out: Path = field(help="output folder for <id>_hidden_states.pt / <id>_hidden_states_negative.pt")
    out_manifest: Path | None = field(
        None, help="manifest copy with hidden_states paths (default: <out>/<name>)"
    )
    negative_prompt: str = field(
        DEFAULT_NEGATIVE_PROMPT, help="negative prompt (the MLLM suffix is appended)"
    )

    def validate(self) -> None:
        """Every rule that needs no model: folders, device, the images folder, where the manifest goes."""
        from .io.files import ensure_writable_dir
        from .preflight import check_images_dir

        self.validate_weights()
        self.mllm_folders()
        check_images_dir(self.images_dir)
        if self.out_manifest is not None:
            if self.out_manifest.suffix.lower() != ".json":
                raise ValueError(f"--out-manifest must end in .json, got {self.out_manifest}")
            ensure_writable_dir(self.out_manifest)

    def mllm_folders(self) -> tuple[Path, Path]:
        """(model, processor) folders of the MLLM: ``--mllm``, else the pipeline folder's subfolders."""
        if self.mllm is not None:
            return self.mllm, self.mllm
        if self.wan is not None:
            raise ValueError(
                "the released Wan and BindWeave folders hold no MLLM: give --mllm (Qwen2.5-VL-7B-Instruct)"
            )
        root = self.model or default_model_path()
        if not ((root / "mllm").is_dir() and (root / "mllm_processor").is_dir()):
            raise FileNotFoundError(f"{root} has no mllm and mllm_processor folders: give --mllm")
        return root / "mllm", root / "mllm_processor"
