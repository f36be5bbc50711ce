"""Generation jobs: one video, and a whole manifest (MLLM-state extraction is :mod:`bindweave.extract`).

Each job is a typed config (the CLI is derived from it, see :mod:`bindweave.cli`) and a ``run_*``
function. Inputs are validated before any model is loaded, outputs are written atomically, and manifest
runs skip finished outputs, so a killed run resumes losing nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from .conditioning.mllm import load_mllm_processor
from .conditioning.references import load_references
from .conditioning.text import DEFAULT_NEGATIVE_PROMPT
from .config import field, to_dict
from .interrupt import interrupt_message
from .io.files import atomic_write_json, ensure_writable_dir
from .io.manifest import load_manifest, resolve_images
from .io.video import write_video
from .perf.config import PerfConfig, apply_perf_config
from .preflight import (
    SavedModel,
    check_generate_inputs,
    check_images_dir,
    check_manifest_references,
    manifest_states,
    resolve_device,
    saved_model,
)
from .refine import RefineOptions, refine_prompt

logger = logging.getLogger(__name__)

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
    transformer: Path | None = field(None, help="released BindWeave transformer folder (use with --wan)")
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
            if folder is not None and not Path(folder).is_dir():
                raise FileNotFoundError(f"--{name} {folder}: no such folder")

    def validate_weights(self) -> None:
        """The folders exist and ``--device`` names a device this machine has."""
        self.check_folders()
        resolve_device(self.device)

    def saved_model(self) -> SavedModel:
        """What the weights' config files say (MLLM width, default guidance), read without loading them."""
        return saved_model(self.model, self.wan, self.transformer, self.mllm)


@dataclass(kw_only=True)
class ModelConfig(WeightsConfig, PerfConfig):
    """Which weights to load, where to run them, and how fast and lean (:class:`PerfConfig`)."""

    def validate_model(self) -> None:
        """Every model option that can be checked without loading the model."""
        self.validate_perf()
        self.validate_weights()


@dataclass(kw_only=True)
class SamplingConfig:
    """The sampler settings; the defaults are the paper's (size defaults to the model's native size)."""

    height: int | None = field(None, help="video height, a multiple of 16 (default: the model's, 720)")
    width: int | None = field(None, help="video width, a multiple of 16 (default: the model's, 1280)")
    num_frames: int | None = field(None, help="frames, 4k+1 (default: the model's, 81)")
    steps: int = field(50, help="UniPC sampling steps")
    guidance: float | None = field(
        None,
        help="classifier-free guidance scale, 1 disables the negative branch (default: the model's, 5.0)",
    )
    seed: int = field(42, help="seed of the initial noise")
    negative_prompt: str = field(DEFAULT_NEGATIVE_PROMPT, help="negative prompt")
    fps: int = field(16, help="frame rate of the written mp4")

    def validate(self) -> None:
        """The size rules that need no model, checked before any weights are loaded."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 16):
                raise ValueError(f"--{name} must be a positive multiple of 16, got {value}")
        if self.num_frames is not None and (self.num_frames < 1 or (self.num_frames - 1) % 4):
            raise ValueError(f"--num-frames must be 4k + 1 (e.g. 81), got {self.num_frames}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 1):
            raise ValueError(f"--guidance must be a number >= 1, got {self.guidance}")
        check_seed(self.seed)
        if self.fps < 1:
            raise ValueError(f"--fps must be >= 1, got {self.fps}")


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

    def validate(self) -> None:
        """Every rule that needs no model: sampling settings, model options, the images folder."""
        super().validate()
        self.validate_model()
        check_images_dir(self.images_dir)


# ---------------------------------------------------------------------------------------------- loading


def resolve_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_pipeline(config: ModelConfig):
    """Load the pipeline a :class:`ModelConfig` names, with its speed and memory options applied.

    Under ``--context-parallel`` this joins the torchrun process group and runs on this rank's GPU.
    """
    from .default_model import default_model_path
    from .perf.parallel import init_distributed
    from .pipeline import BindWeavePipeline

    config.validate_perf()  # before any weights are read
    config.check_folders()
    distributed = init_distributed() if config.context_parallel != "none" else None
    device = distributed.device if distributed is not None else resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.wan is not None:
        pipe = BindWeavePipeline.from_released(config.wan, config.transformer, config.mllm, torch_dtype=dtype)
    else:
        folder = config.model or default_model_path()
        # The Wan VAE runs in float32, as in the release.
        pipe = BindWeavePipeline.from_pretrained(folder, dtype={"default": dtype, "vae": torch.float32})
        if config.mllm is not None:
            from transformers import Qwen2_5_VLForConditionalGeneration

            pipe.mllm = Qwen2_5_VLForConditionalGeneration.from_pretrained(config.mllm, dtype=dtype)
            pipe.mllm_processor = load_mllm_processor(config.mllm)
    apply_perf_config(pipe, config, device, distributed)
    return pipe


# ---------------------------------------------------------------------------------------------- jobs


def sampling_kwargs(config: SamplingConfig) -> dict:
    return dict(
        negative_prompt=config.negative_prompt,
        height=config.height,
        width=config.width,
        num_frames=config.num_frames,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        generator=torch.Generator(device="cpu").manual_seed(config.seed),
    )


def run_generate(config: GenerateConfig) -> Path:
    """Generate one video to ``config.out`` (an H.264 mp4)."""
    config.validate()
    _check_mp4_path(config.out)
    references = load_references(config.refs)  # fail on a bad image before loading any model
    negative_states = check_generate_inputs(config, config.saved_model())
    pipe = load_pipeline(config)
    prompt = _refined_prompt(config, pipe, references)
    frames = pipe(
        prompt,
        references,
        mllm_hidden_states=config.mllm_states,
        negative_mllm_hidden_states=negative_states,
        **sampling_kwargs(config),
    ).frames[0]
    if _writes_outputs(config):
        write_video(frames, config.out, fps=config.fps)
    logger.info("wrote %s", config.out)
    return config.out


def _refined_prompt(config: GenerateConfig, pipe, references) -> str:
    """Spec 5's optional first step; an unusable answer keeps the user's prompt (with a warning)."""
    refiner = config.make_refiner(pipe)
    if refiner is None:
        return config.prompt
    result = refine_prompt(refiner, config.prompt, references)
    if result.accepted:
        logger.info("refined prompt: %s", result.prompt)
    return result.prompt


def _writes_outputs(config: ModelConfig) -> bool:
    """Under context parallelism every rank holds the same video: only rank 0 writes it."""
    return config.context_parallel == "none" or int(os.environ.get("RANK", 0)) == 0


def shard_of(items: list, rank: int | None = None, world_size: int | None = None) -> list:
    """This process's share of ``items`` (``i % world_size == rank``; torchrun's env by default)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    return items[rank::world_size]


def _manifest_interrupted(config: RunManifestConfig) -> str:
    entries = load_manifest(config.manifest)
    done = sum((config.out / f"{entry_id}.mp4").is_file() for entry_id in entries)
    return (
        f"{done} of {len(entries)} videos are in {config.out}; run the same command again to make the rest "
        "(finished videos are skipped)"
    )


@interrupt_message(_manifest_interrupted)
def run_manifest(config: RunManifestConfig) -> list[Path]:
    """Generate every entry of a manifest to ``<out>/<id>.mp4``, skipping the ones already written.

    Under torchrun each rank takes its share (:func:`shard_of`); every video uses the same fixed seed,
    so a video does not depend on the sharding. A run record (config, versions, timings) is written
    beside the videos.
    """
    config.validate()
    entries = load_manifest(config.manifest)
    ensure_writable_dir(config.out / "probe.mp4")
    # Every image is checked before hours of generation start.
    images = {entry_id: resolve_images(entry, config.images_dir) for entry_id, entry in entries.items()}
    check_manifest_references(images)
    # Data parallel: each rank takes its share. Context parallel: all ranks make every video together.
    share = list(entries.values()) if config.context_parallel != "none" else shard_of(list(entries.values()))
    todo = [e for e in share if not (config.out / f"{e.id}.mp4").is_file()]
    logger.info("%d of %d entries to generate in %s", len(todo), len(entries), config.out)
    if not todo:
        return []
    states = manifest_states(todo, config, config.saved_model())
    pipe = load_pipeline(config)
    written, seconds = [], {}
    for entry in tqdm(todo, desc="manifest", unit="video"):
        start = time.perf_counter()
        positive, negative = states[entry.id]
        frames = pipe(
            entry.prompt,
            images[entry.id],
            mllm_hidden_states=positive,
            negative_mllm_hidden_states=negative,
            **sampling_kwargs(config),
        ).frames[0]
        seconds[entry.id] = round(time.perf_counter() - start, 3)
        if _writes_outputs(config):
            written.append(write_video(frames, config.out / f"{entry.id}.mp4", fps=config.fps))
            _write_run_record(config, pipe, seconds)
    return written


def _write_run_record(config: RunManifestConfig, pipe, seconds: dict[str, float]) -> Path:
    """``run_record[.rankN].json`` beside the videos: what produced them, with which versions, how fast."""
    import diffusers
    import transformers

    from . import __version__

    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    path = config.out / ("run_record.json" if world_size == 1 else f"run_record.rank{rank}.json")
    if path.is_file():  # a resumed run keeps the timings of the videos made before
        seconds = {**json.loads(path.read_text()).get("seconds_per_video", {}), **seconds}
    record = {
        "config": to_dict(config),
        # Paths and tuples inside the configs become strings and lists.
        "model": json.loads(
            json.dumps({"transformer": pipe.transformer.config, "pipeline": pipe.config}, default=str)
        ),
        "device": str(pipe._execution_device),
        "rank": rank,
        "world_size": world_size,
        "versions": {
            "bindweave": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "seconds_per_video": seconds,
    }
    return atomic_write_json(path, record)


def _check_mp4_path(path: Path) -> None:
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output path must end in .mp4, got {path}")
    ensure_writable_dir(path)
