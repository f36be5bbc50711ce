"""Generation jobs: one video, and a whole manifest (MLLM-state extraction is :mod:`bindweave.extract`).

Each job is a typed config (in :mod:`bindweave.generate_config`, re-exported here; the CLI is derived
from it, see :mod:`bindweave.cli`) and a ``run_*`` function. Inputs are validated before any model is
loaded, outputs are written atomically, and manifest runs skip finished outputs, so a killed run resumes
losing nothing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .conditioning.mllm import load_mllm_processor
from .conditioning.references import load_references
from .config import to_dict
from .default_model import default_model_notice
from .generate_checks import check_generate_inputs, manifest_states
from .generate_config import (
    Dtype,
    ExtractMLLMConfig,
    GenerateConfig,
    ModelConfig,
    RunManifestConfig,
    SamplingConfig,
    WeightsConfig,
    check_seed,
)
from .interrupt import interrupt_message
from .io.files import atomic_write_json, ensure_writable_dir, remove_stale_temporaries
from .io.manifest import ManifestEntry, load_manifest, resolve_images
from .io.run_record import check_rerun, record_path, recorded_settings, setting_differences, video_settings
from .io.video import write_video
from .perf.config import apply_perf_config
from .preflight import check_manifest_references, resolve_device
from .refine import refine_prompt

logger = logging.getLogger(__name__)

__all__ = [
    "Dtype",
    "ExtractMLLMConfig",
    "GenerateConfig",
    "ModelConfig",
    "RunManifestConfig",
    "SamplingConfig",
    "WeightsConfig",
    "check_seed",
    "configure_pipeline",
    "load_pipeline",
    "resolve_device",
    "resolve_dtype",
    "run_generate",
    "run_manifest",
    "sampling_kwargs",
    "shard_of",
]


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
    return configure_pipeline(pipe, config, device, distributed)


def configure_pipeline(pipe, config: ModelConfig, device: torch.device, distributed=None):
    """Fuse ``config``'s LoRAs into a loaded pipeline, then apply its speed and memory options and place it.

    The second half of :func:`load_pipeline`, shared with pipelines assembled another way (the ComfyUI
    loader's single files), so that both get the same LoRA and memory treatment.
    """
    if config.loras:  # fused into the weights before the speed options (fp8, offloading) see them
        from .lora.apply import apply_loras

        apply_loras(pipe, config.lora_specs(), skip_unknown_keys=config.lora_skip_unknown_keys)
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
        sampler=config.sampler,
    )


def run_generate(config: GenerateConfig) -> Path:
    """Generate one video to ``config.out`` (an H.264 mp4)."""
    config.validate()
    _check_mp4_path(config.out)
    remove_stale_temporaries(config.out.parent)
    references = load_references(config.refs)  # fail on a bad image before loading any model
    negative_states = check_generate_inputs(config, config.saved_model())
    _announce_default_model(config)
    pipe = load_pipeline(config)
    warn_if_not_native(pipe, config)
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


def _announce_default_model(config: WeightsConfig) -> None:
    if config.uses_default_model:
        print(default_model_notice())


def warn_if_not_native(pipe, config: SamplingConfig) -> None:
    """Warn when the video size is not the model's native one (``default_*`` in its model_index.json)."""
    native = (pipe.config.default_height, pipe.config.default_width, pipe.config.default_num_frames)
    asked = tuple(
        n if v is None else v
        for v, n in zip((config.height, config.width, config.num_frames), native, strict=True)
    )
    if asked != native:
        logger.warning(
            "%dx%d, %d frames is not this model's native size (%dx%d, %d frames): it may generate worse",
            *asked,
            *native,
        )


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
    beside the videos; a rerun whose settings differ from it is refused unless ``overwrite``
    (:func:`bindweave.io.run_record.check_rerun`).
    """
    config.validate()
    entries = load_manifest(config.manifest)
    ensure_writable_dir(config.out / "probe.mp4")
    # Every image is checked before hours of generation start.
    images = {entry_id: resolve_images(entry, config.images_dir) for entry_id, entry in entries.items()}
    check_manifest_references(images)
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
    states = manifest_states(todo, config, config.saved_model())
    _announce_default_model(config)
    pipe = load_pipeline(config)
    warn_if_not_native(pipe, config)
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
    if config.loras:  # what --lora-skip-unknown-keys left out of each LoRA
        from .lora.apply import lora_adapter_name

        skipped = getattr(pipe, "lora_skipped_keys", {})
        record["lora_skipped_keys"] = {
            str(spec.path): skipped.get(lora_adapter_name(i), [])
            for i, spec in enumerate(config.lora_specs())
        }
    return atomic_write_json(path, record)


def _check_mp4_path(path: Path) -> None:
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output path must end in .mp4, got {path}")
    ensure_writable_dir(path)
