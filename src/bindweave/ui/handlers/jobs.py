"""Running a page job: generation with progress and cancelling, the files it writes, history, refinement."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ...config import to_dict
from ...generate import GenerateConfig, ModelConfig, sampling_kwargs
from ...io.files import atomic_write, atomic_write_json
from ...io.strip import write_strip
from ...io.video import write_video
from ...refine import PromptRefiner, refine_prompt
from .inputs import JobRequest, UIError, check_prompt, load_reference_images
from .settings import command_line, config_json, job_config

RANDOM_SEED_BOUND = 2**32
ProgressFn = Callable[[int, int], None]


# -------------------------------------------------------------------------------------- cancelling


class CancelToken:
    """Set by the cancel button, read after every denoising step (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class JobRegistry:
    """Cancel tokens of armed and running jobs, by job id, each owned by a browser session.

    A job is armed when the button is clicked, before it waits in the queue, so a cancel also stops a job
    that has not started yet.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, CancelToken]] = {}
        self._lock = threading.Lock()

    def arm(self, session: str) -> str:
        job_id = uuid.uuid4().hex
        with self._lock:
            self._jobs[job_id] = (session, CancelToken())
        return job_id

    def token(self, job_id: str) -> CancelToken:
        with self._lock:
            if job_id not in self._jobs:
                raise UIError("This job is no longer known to the server; click Generate again.")
            return self._jobs[job_id][1]

    def release(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def cancel_session(self, session: str) -> int:
        """Cancel every job of ``session``; returns how many there were."""
        with self._lock:
            tokens = [token for owner, token in self._jobs.values() if owner == session]
        for token in tokens:
            token.cancel()
        return len(tokens)


# -------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationOutcome:
    frames: np.ndarray | None  # (F, H, W, 3) floats in [0, 1]; None when cancelled
    steps_done: int
    cancelled: bool


def generate_frames(
    pipe: Any,
    config: GenerateConfig,
    references: Sequence[PIL.Image.Image],
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> GenerationOutcome:
    """Run the pipeline as ``bindweave generate`` does, reporting each step and stopping when cancelled.

    The latents are decoded only when the run was not cancelled: decoding 81 frames at 720p is seconds of
    work that a cancelled run would throw away.
    """
    cancel = cancel or CancelToken()
    steps_done = 0

    def on_step_end(pipeline: Any, step: int, _timestep: torch.Tensor, _tensors: dict) -> dict:
        nonlocal steps_done
        steps_done = step + 1
        if on_progress is not None:
            on_progress(steps_done, config.steps)
        if cancel.cancelled:
            pipeline._interrupt = True  # the pipeline checks it before the next step
        return {}

    if cancel.cancelled:
        return GenerationOutcome(frames=None, steps_done=0, cancelled=True)
    if on_progress is not None:
        on_progress(0, config.steps)
    latents = pipe(
        config.prompt,
        list(references),
        mllm_hidden_states=config.mllm_states,
        negative_mllm_hidden_states=config.negative_mllm_states,
        output_type="latent",
        callback_on_step_end=on_step_end,
        **sampling_kwargs(config),
    ).frames
    if cancel.cancelled:
        return GenerationOutcome(frames=None, steps_done=steps_done, cancelled=True)
    with torch.no_grad():
        frames = pipe.decode(latents, "np")[0]
    pipe.maybe_free_model_hooks()  # as the pipeline does after its own decode (model offload)
    return GenerationOutcome(frames=frames, steps_done=steps_done, cancelled=False)


@dataclass(frozen=True)
class JobResult:
    """A finished (or cancelled) page run; the paths are ``None`` when it was cancelled."""

    cancelled: bool
    steps_done: int
    total_steps: int
    seed: int
    seconds: float
    video: Path | None = None
    strip: Path | None = None
    poster: Path | None = None
    settings: Path | None = None
    command: str = ""
    settings_json: str = ""
    caption: str = ""

    @property
    def message(self) -> str:
        if self.cancelled:
            return f"Cancelled after step {self.steps_done} of {self.total_steps}; nothing was saved."
        return f"Done in {self.seconds:.1f} s (seed {self.seed}): `{self.video}`"


def new_run_dir(out_dir: Path, seed: int) -> Path:
    """A fresh folder per run (time-stamped, never reused), so results of a session never overwrite."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-seed{seed}-", dir=out_dir))


def copy_references(paths: Sequence[Path], run_dir: Path) -> list[Path]:
    """Keep the uploaded files (byte for byte) beside the result: the command line points at these."""
    refs_dir = run_dir / "refs"
    refs_dir.mkdir()
    copies = []
    for index, path in enumerate(paths):
        target = refs_dir / f"ref{index + 1}{path.suffix.lower()}"
        shutil.copyfile(path, target)
        copies.append(target)
    return copies


def write_poster(frames: np.ndarray, path: Path) -> Path:
    """The middle frame as a PNG: a gallery thumbnail (a strip is too wide for a square tile, and a
    video tile shows only a play icon)."""
    frame = (np.clip(frames[len(frames) // 2], 0, 1) * 255).round().astype(np.uint8)
    with atomic_write(path) as tmp:
        PIL.Image.fromarray(frame).save(tmp, format="PNG")
    return path


def run_job(
    request: JobRequest,
    pipe_loader: Callable[[str], Any],
    model_config: ModelConfig,
    out_dir: Path,
    on_progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> JobResult:
    """One page run: video, PNG strip and ``settings.json`` in a new folder under ``out_dir``.

    A cancelled or failed run leaves no folder behind.
    """
    start = time.perf_counter()
    seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_BOUND)
    run_dir = new_run_dir(Path(out_dir).resolve(), seed)
    try:
        refs = copy_references(request.refs, run_dir)
        config = job_config(request, model_config, refs, run_dir / "video.mp4", seed)
        references = load_reference_images(refs)
        pipe = pipe_loader(request.memory)
        outcome = generate_frames(pipe, config, references, on_progress, cancel)
        if outcome.cancelled:
            shutil.rmtree(run_dir)
            return JobResult(
                cancelled=True,
                steps_done=outcome.steps_done,
                total_steps=request.steps,
                seed=seed,
                seconds=time.perf_counter() - start,
            )
        write_video(outcome.frames, config.out, fps=config.fps)
        strip = write_strip(references, outcome.frames, run_dir / "strip.png")
        poster = write_poster(outcome.frames, run_dir / "poster.png")
        settings = atomic_write_json(run_dir / "settings.json", to_dict(config))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    prompt = request.prompt if len(request.prompt) <= 60 else request.prompt[:57] + "..."
    return JobResult(
        cancelled=False,
        steps_done=outcome.steps_done,
        total_steps=request.steps,
        seed=seed,
        seconds=time.perf_counter() - start,
        video=config.out,
        strip=strip,
        poster=poster,
        settings=settings,
        command=command_line(config),
        settings_json=config_json(config),
        caption=f"seed {seed}, {request.size.label()}, {request.steps} steps: {prompt}",
    )


# -------------------------------------------------------------------------------------- history


def history_entry(result: JobResult) -> dict[str, str]:
    """A past result as JSON-ready strings, kept per browser session."""
    if result.cancelled:
        raise ValueError("a cancelled run has no result to keep")
    return {
        "video": str(result.video),
        "strip": str(result.strip),
        "poster": str(result.poster),
        "settings": str(result.settings),
        "command": result.command,
        "settings_json": result.settings_json,
        "caption": result.caption,
    }


def gallery_items(history: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """Newest first: (poster frame, caption) per past result."""
    return [(entry["poster"], entry["caption"]) for entry in reversed(history)]


# -------------------------------------------------------------------------------------- refinement


def refine(refiner: PromptRefiner, prompt: str | None, refs: Sequence[str | Path] | None) -> tuple[str, str]:
    """(prompt to show, status message). An unusable answer keeps the user's prompt and says why."""
    prompt = check_prompt(prompt)
    images = load_reference_images(refs)
    result = refine_prompt(refiner, prompt, images)
    if result.accepted:
        return result.prompt, "Prompt refined; edit it freely before generating."
    return prompt, f"Kept your prompt: the refiner's answer was not usable ({result.reason})."
