"""Checkpoints: a loadable pipeline folder plus everything needed to resume bit for bit.

Layout of ``output_dir``::

    frozen/                         the components training never changes, saved once at start
    checkpoint-000500/
        model_index.json            -> BindWeavePipeline.from_pretrained(checkpoint-000500) works
        transformer/                the trained DiT (save_pretrained, in checkpoint.save_dtype); with an
                                    EMA (the config's ``ema``), its average: what sampling should use
        lora/                       (LoRA runs) the adapter weights only (or their average); transformer/
                                    is the frozen base
        text_encoder -> ../frozen/text_encoder, tokenizer -> ..., vae -> ...   (symlinks; copies where
                                    the filesystem has none)
        training_state/
            state.json              step, stage, stage step, data-loader position, skipped samples, and
                                    the EMA's decay and update count (null without one)
            lr_scheduler.pt         the stage's LambdaLR state
            dcp/                    torch.distributed.checkpoint of the float32 trainable weights, the
                                    optimizer state and the EMA (sharded: every rank writes its own shard)
            rng/rank-00000.pt       python, numpy, torch and CUDA RNG states of each rank

A checkpoint is written into ``.tmp-checkpoint-000500`` and renamed into place only when complete, so a
``checkpoint-*`` folder that exists is whole; the newest ``checkpoint.keep_last`` are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from bindweave.io.files import atomic_folder, atomic_write_json
from bindweave.models import BindWeaveTransformer3DModel
from bindweave.pipeline import BindWeavePipeline

from .distributed import DistributedContext, barrier
from .ema import EMAWeights

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingState",
    "checkpoint_path",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "resume_checkpoint",
    "resume_hint",
    "save_checkpoint",
    "write_frozen_components",
]

FROZEN_DIR = "frozen"
STATE_DIR = "training_state"
LORA_DIR = "lora"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TRAINABLE_ONLY = StateDictOptions(ignore_frozen_params=True)
# Loading the trainable weights alone: the frozen ones (a LoRA base, a connector-only run's DiT) are
# missing by design, which a strict load refuses; _load_trainable_weights checks that nothing else is.
_LOAD_TRAINABLE = StateDictOptions(ignore_frozen_params=True, strict=False)


@dataclass
class TrainingState:
    """Where a run is: all a resumed run needs besides weights, optimizer and RNG states."""

    step: int = 0  # optimizer steps done, all stages
    stage: int = 0  # index of the current stage
    stage_step: int = 0  # optimizer steps done in the current stage
    stage_position: int = 0  # samples of the stage's stream consumed: the data-loader position
    skipped_samples: int = 0  # bad clips skipped so far (all ranks)


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _CHECKPOINT_RE.match(path.name)
        if match and (path / STATE_DIR / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def resume_checkpoint(output_dir: Path, resume: str | Path) -> Path | None:
    """The checkpoint a run resumes from: ``never`` -> none, ``auto`` -> the newest in ``output_dir``, or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        return find_latest_checkpoint(output_dir)
    return Path(resume)


def resume_hint(output_dir: Path, resume: str | Path, every_steps: int) -> str:
    """What a stopped run left in ``output_dir`` and how to continue from it (the ``resume`` setting)."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return (
            f"no checkpoint in {output_dir} yet (one every {every_steps} steps): a rerun starts from step 0"
        )
    step, path = checkpoints[-1]
    if str(resume) == "auto":
        how = "run the same command again to continue from it (resume: auto)"
    else:
        how = f"set resume: auto (or resume: {path}) in the config and run it again to continue from it"
    return f"the last checkpoint is {path} (step {step}); {how}"


# ---------------------------------------------------------------------------------------------- frozen parts


def write_frozen_components(pipe: BindWeavePipeline, output_dir: Path, include_transformer: bool) -> Path:
    """Save the components that never change once, into ``output_dir/frozen`` (main rank only).

    With ``include_transformer`` (LoRA runs) the frozen base DiT is saved too. A ``frozen`` folder
    already there (a resumed run) is kept.
    """
    frozen = Path(output_dir) / FROZEN_DIR
    if (frozen / "model_index.json").is_file():
        return frozen
    with atomic_folder(frozen) as staged:
        for name, component in pipe.components.items():
            if component is None or (name == "transformer" and not include_transformer):
                continue
            logger.info("saving frozen component %s to %s", name, frozen / name)
            component.save_pretrained(staged / name)
        pipe.save_config(staged)  # model_index.json, naming every component's class
    return frozen


def _link_frozen(checkpoint: Path, frozen: Path) -> None:
    for source in sorted(frozen.iterdir()):
        target = checkpoint / source.name
        if target.exists():
            continue
        if source.is_file():  # model_index.json
            shutil.copy2(source, target)
            continue
        try:
            os.symlink(os.path.relpath(source, checkpoint), target, target_is_directory=True)
        except OSError:  # a filesystem without symlinks
            shutil.copytree(source, target)


# ---------------------------------------------------------------------------------------------- RNG


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }  # fmt: skip


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- save


def _save_transformer(
    state_dict: dict[str, torch.Tensor], config: dict, folder: Path, dtype: torch.dtype
) -> None:
    """``save_pretrained`` a plain (unsharded) copy of the DiT built from a full state dict."""
    with torch.device("meta"):
        model = BindWeaveTransformer3DModel.from_config(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    model.save_pretrained(folder, max_shard_size="10GB")


def save_checkpoint(
    output_dir: Path,
    state: TrainingState,
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistributedContext,
    *,
    lora: bool,
    save_dtype: torch.dtype,
    keep_last: int,
    ema: EMAWeights | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically; collective: every rank must call it.

    With ``ema`` the inference weights (``transformer/`` or ``lora/``) are the average, and the training
    state holds the average beside the weights.
    """
    output_dir = Path(output_dir)
    final = checkpoint_path(output_dir, state.step)
    tmp = output_dir / f".tmp-{final.name}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / STATE_DIR / "rng").mkdir(parents=True)
    barrier(ctx)

    # 1. Weights for inference: the full DiT, or only the adapters; the average where there is one.
    with ema.applied() if ema is not None else nullcontext():
        if lora:
            if ctx.is_main:
                transformer.save_lora_adapter(tmp / LORA_DIR)
        else:
            full = get_model_state_dict(
                transformer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            if ctx.is_main:
                _save_transformer(full, dict(transformer.config), tmp / "transformer", save_dtype)
            del full

    # 2. Exact training state: float32 trainable weights, optimizer and EMA, sharded like the model.
    training = {
        "model": get_model_state_dict(transformer, options=_TRAINABLE_ONLY),
        "optimizer": get_optimizer_state_dict(transformer, optimizer, options=_TRAINABLE_ONLY),
    }
    if ema is not None:
        training["ema"] = ema.state_dict()
    dcp.save(training, checkpoint_id=tmp / STATE_DIR / "dcp", no_dist=not ctx.is_distributed)
    torch.save(_rng_state(), tmp / STATE_DIR / "rng" / f"rank-{ctx.rank:05d}.pt")
    barrier(ctx)

    if ctx.is_main:
        torch.save(scheduler.state_dict(), tmp / STATE_DIR / "lr_scheduler.pt")
        ema_info = None if ema is None else {"decay": ema.decay, "updates": ema.updates}
        atomic_write_json(
            tmp / STATE_DIR / "state.json", {**asdict(state), "world_size": ctx.world_size, "ema": ema_info}
        )
        _link_frozen(tmp, output_dir / FROZEN_DIR)
        if final.exists():  # the same step saved again (e.g. a resumed run's last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("saved %s", final)
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
            logger.info("removed old checkpoint %s", old)
    barrier(ctx)
    return final


# ---------------------------------------------------------------------------------------------- load


def _load_trainable_weights(transformer: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy the saved trainable weights into ``transformer``; only its frozen parameters may be left out.

    Raises ``RuntimeError`` naming any other key that is missing or not the model's.
    """
    frozen = {name for name, param in transformer.named_parameters() if not param.requires_grad}
    result = set_model_state_dict(transformer, weights, options=_LOAD_TRAINABLE)
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"training state does not fit the model: missing {missing}, unexpected {result.unexpected_keys}"
        )


@dataclass
class LoadedCheckpoint:
    state: TrainingState
    scheduler_state: dict


def load_checkpoint(
    path: Path,
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistributedContext,
    ema: EMAWeights | None = None,
) -> LoadedCheckpoint:
    """Restore weights, optimizer, ``ema`` and this rank's RNG states from ``path``; returns the rest.

    The DiT must already hold the checkpoint's frozen weights (the base the run started from); the
    trainable weights come from the float32 training state, not from the (maybe bf16) ``transformer/``.
    From a checkpoint saved without an EMA, ``ema`` (with no update yet) starts at this run's first
    step; one saved with an EMA that ``ema`` is None for drops its average (the next checkpoints hold the
    weights themselves).
    """
    path = Path(path)
    state_dir = path / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no {STATE_DIR}/state.json)")
    info = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    saved_ema = info.get("ema")  # absent in checkpoints written before the EMA existed
    saved = {
        "model": get_model_state_dict(transformer, options=_TRAINABLE_ONLY),
        "optimizer": get_optimizer_state_dict(transformer, optimizer, options=_TRAINABLE_ONLY),
    }
    if ema is not None and saved_ema is not None:
        saved["ema"] = ema.state_dict()  # loaded into the average in place
    dcp.load(saved, checkpoint_id=state_dir / "dcp", no_dist=not ctx.is_distributed)
    _load_trainable_weights(transformer, saved["model"])
    set_optimizer_state_dict(transformer, optimizer, saved["optimizer"], options=_TRAINABLE_ONLY)
    if ema is not None and saved_ema is not None:
        ema.set_updates(saved_ema["updates"])
    elif ema is not None:
        logger.info("%s has no EMA: the average starts at this run's first step", path)
    elif saved_ema is not None:
        logger.warning("%s has an EMA, but this run has none (ema.decay: null): its average is dropped", path)

    rng_file = state_dir / "rng" / f"rank-{ctx.rank:05d}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        logger.warning(
            "%s has no RNG state for rank %d (saved with %d ranks)", path, ctx.rank, info["world_size"]
        )
    fields = {k: info[k] for k in asdict(TrainingState())}
    return LoadedCheckpoint(
        state=TrainingState(**fields),
        scheduler_state=torch.load(state_dir / "lr_scheduler.pt", weights_only=True),
    )
