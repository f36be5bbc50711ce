"""Generation jobs: one video, a whole manifest, and MLLM-state extraction for a manifest.

Each job is a typed config (the CLI is derived from it, see :mod:`bindweave.cli`) and a ``run_*``
function. Inputs are validated before any model is loaded, outputs are written atomically, and manifest
runs skip finished outputs, so a killed run resumes losing nothing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from .conditioning.mllm import MLLM_NEGATIVE_SUFFIX, encode_mllm, load_mllm_processor
from .conditioning.references import load_references
from .conditioning.text import DEFAULT_NEGATIVE_PROMPT
from .config import field, to_dict
from .io.files import atomic_torch_save, atomic_write_json, ensure_writable_dir, remove_stale_temporaries
from .io.manifest import (
    ManifestEntry,
    load_manifest,
    resolve_hidden_states,
    resolve_images,
    save_manifest,
    with_fields,
)
from .io.run_record import check_rerun, record_path, recorded_settings, setting_differences, video_settings
from .io.video import write_video
from .perf.config import PerfConfig, apply_perf_config
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


@dataclass(kw_only=True)
class ModelConfig(WeightsConfig, PerfConfig):
    """Which weights to load, where to run them, and how fast and lean (:class:`PerfConfig`)."""


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
        if self.guidance is not None and self.guidance < 1:
            raise ValueError(f"--guidance must be >= 1, got {self.guidance}")


@dataclass(kw_only=True)
class GenerateConfig(ModelConfig, SamplingConfig, RefineOptions):
    refs: list[Path] = field(help="1-4 reference images, in order")
    prompt: str = field(help="what the subjects do")
    out: Path = field(help="output .mp4 path")
    mllm_states: Path | None = field(
        None, help="precomputed MLLM states (.pt, released format) for the prompt"
    )
    negative_mllm_states: Path | None = field(None, help="precomputed MLLM states for the negative prompt")


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


# ---------------------------------------------------------------------------------------------- loading


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


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
    remove_stale_temporaries(config.out.parent)
    references = load_references(config.refs)  # fail on a bad image before loading any model
    config.check_refine()
    pipe = load_pipeline(config)
    prompt = _refined_prompt(config, pipe, references)
    frames = pipe(
        prompt,
        references,
        mllm_hidden_states=config.mllm_states,
        negative_mllm_hidden_states=config.negative_mllm_states,
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


def run_manifest(config: RunManifestConfig) -> list[Path]:
    """Generate every entry of a manifest to ``<out>/<id>.mp4``, skipping the ones already written.

    Under torchrun each rank takes its share (:func:`shard_of`); every video uses the same fixed seed,
    so a video does not depend on the sharding. A run record (config, versions, timings) is written
    beside the videos; a rerun whose settings differ from it is refused unless ``overwrite``
    (:func:`bindweave.io.run_record.check_rerun`).
    """
    config.validate()
    entries = load_manifest(config.manifest)
    ensure_writable_dir(config.out / "probe.mp4")
    # Every image is checked before hours of generation start.
    images = {entry_id: resolve_images(entry, config.images_dir) for entry_id, entry in entries.items()}
    settings = _video_settings(config)
    stale_records = check_rerun(config.out, settings, overwrite=config.overwrite)
    # Data parallel: each rank takes its share. Context parallel: all ranks make every video together.
    share = list(entries.values()) if config.context_parallel != "none" else shard_of(list(entries.values()))
    if _writes_outputs(config):
        _clear_outputs(config, share, stale_records)
    # With --overwrite every rank must agree on the whole share whether or not rank 0 deleted it yet.
    todo = share if config.overwrite else [e for e in share if not (config.out / f"{e.id}.mp4").is_file()]
    logger.info("%d of %d entries to generate in %s", len(todo), len(entries), config.out)
    if not todo:
        return []
    pipe = load_pipeline(config)
    written, seconds = [], {}
    for entry in tqdm(todo, desc="manifest", unit="video"):
        start = time.perf_counter()
        positive, negative = _existing_states(entry, config.manifest.parent)
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
            _write_run_record(config, pipe, seconds, settings)
    return written


def _video_settings(config: RunManifestConfig) -> dict:
    """The settings the videos depend on (:func:`bindweave.io.run_record.video_settings`)."""
    device = torch.device("cuda") if config.context_parallel != "none" else resolve_device(config.device)
    dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    return video_settings(to_dict(config), dtype)


def _clear_outputs(config: RunManifestConfig, share: list[ManifestEntry], stale_records: list[Path]) -> None:
    """Before generating: remove killed writes' temporary files and records that describe no video; with
    ``overwrite``, also this process's videos and its own record (it restarts the timings)."""
    remove_stale_temporaries(config.out)
    removed = list(stale_records)
    if config.overwrite:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        removed.append(record_path(config.out, rank, world_size))
        for entry in share:
            (config.out / f"{entry.id}.mp4").unlink(missing_ok=True)
    for path in removed:
        path.unlink(missing_ok=True)


def _write_run_record(config: RunManifestConfig, pipe, seconds: dict[str, float], settings: dict) -> Path:
    """``run_record[.rankN].json`` beside the videos: what produced them, with which versions, how fast."""
    import diffusers
    import transformers

    from . import __version__

    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    path = record_path(config.out, rank, world_size)
    if path.is_file():  # a resumed run keeps the timings of the videos made before with these settings
        previous = json.loads(path.read_text())
        if not setting_differences(recorded_settings(previous), settings):
            seconds = {**previous.get("seconds_per_video", {}), **seconds}
    record = {
        "config": to_dict(config),
        "video_settings": settings,
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


def _existing_states(entry: ManifestEntry, base: Path) -> tuple[Path | None, Path | None]:
    """Cached MLLM states named by the entry; a named but absent file is recomputed, with a warning."""
    paths = []
    for path in resolve_hidden_states(entry, base):
        if path is not None and not path.is_file():
            logger.warning("entry %s: %s not found; computing the MLLM states instead", entry.id, path)
            path = None
        paths.append(path)
    return paths[0], paths[1]


def run_extract_mllm(config: ExtractMLLMConfig) -> Path:
    """Save positive and negative MLLM states of every entry (released ``.pt`` format) and a manifest copy."""
    entries = load_manifest(config.manifest)
    out_manifest = config.out_manifest or config.out / config.manifest.name
    ensure_writable_dir(config.out / "probe.pt")
    ensure_writable_dir(out_manifest)
    for folder in {config.out, out_manifest.parent}:
        remove_stale_temporaries(folder)
    images = {entry_id: resolve_images(entry, config.images_dir) for entry_id, entry in entries.items()}
    mllm, processor, device = _load_mllm(config)

    updated = {}
    for entry_id, entry in tqdm(entries.items(), desc="MLLM states", unit="case"):
        paths = (
            config.out / f"{entry_id}_hidden_states.pt",
            config.out / f"{entry_id}_hidden_states_negative.pt",
        )
        texts = (entry.prompt, config.negative_prompt + MLLM_NEGATIVE_SUFFIX)
        if not all(p.is_file() for p in paths):
            references = load_references(images[entry_id])
            for path, text in zip(paths, texts, strict=True):
                states = encode_mllm(mllm, processor, text, references)  # (1, L, 3584)
                atomic_torch_save(states.to(torch.bfloat16).cpu().contiguous(), path)
        relative = [os.path.relpath(p, out_manifest.parent) for p in paths]
        updated[entry_id] = with_fields(
            entry, hidden_states_path=relative[0], hidden_states_path_negative=relative[1]
        )
    save_manifest(updated, out_manifest)
    logger.info("wrote %s", out_manifest)
    return out_manifest


def _load_mllm(config: WeightsConfig):
    """Only the MLLM and its processor: from --mllm, else from a pipeline folder's subfolders."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .default_model import default_model_path

    config.check_folders()
    if config.mllm is not None:
        model_dir = processor_dir = config.mllm
    else:
        root = config.model or default_model_path()
        model_dir, processor_dir = root / "mllm", root / "mllm_processor"
    device = resolve_device(config.device)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=resolve_dtype(config.dtype, device)
    )
    return model.to(device).eval(), load_mllm_processor(processor_dir), device


def _check_mp4_path(path: Path) -> None:
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output path must end in .mp4, got {path}")
    ensure_writable_dir(path)
