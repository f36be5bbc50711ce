"""The web app's logic as plain functions: validation, letterbox preview, settings -> CLI/JSON, generation.

Nothing here imports Gradio, so every rule the page enforces is unit-tested without a server, and the
layout in :mod:`bindweave.ui.app` only wires these functions to components. User mistakes raise
:class:`UIError` with a message written for the page; the layout turns it into ``gr.Error``.

A run made in the page is written exactly as ``bindweave generate`` would write it: the settings become a
:class:`~bindweave.generate.GenerateConfig`, the pipeline is called with the same sampling arguments, and
the page shows that config as a shell command and as JSON, so the run can be repeated outside the app.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import secrets
import shlex
import shutil
import tempfile
import threading
import time
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..conditioning.references import MAX_REFERENCES, ReferenceError, letterbox, load_reference
from ..config import to_dict, to_json
from ..generate import GenerateConfig, ModelConfig, SamplingConfig, load_pipeline, sampling_kwargs
from ..io.files import atomic_write, atomic_write_json
from ..io.strip import write_strip
from ..io.video import write_video
from ..perf.config import MemoryMode
from ..refine import PromptRefiner, refine_prompt

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2
MAX_SEED = 2**63 - 1
RANDOM_SEED_BOUND = 2**32
PAPER_FRAMES = 81
# The paper's resolutions (height x width); the model's native size is added at runtime.
PAPER_RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
CUSTOM = "custom"
ProgressFn = Callable[[int, int], None]


class UIError(ValueError):
    """A mistake in the page's inputs; the message is shown to the user as is."""


# ------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    height: int
    width: int
    num_frames: int

    def label(self) -> str:
        return f"{self.height}x{self.width}, {self.num_frames} frames"


def resolution_presets(native: Size) -> dict[str, Size]:
    """Preset name -> size: the model's native size first (the fast default), then the paper's 480p/720p."""
    presets = {f"native ({native.label()})": native}
    for name, (height, width) in PAPER_RESOLUTIONS.items():
        presets[f"{name} ({height}x{width}, {PAPER_FRAMES} frames)"] = Size(height, width, PAPER_FRAMES)
    return presets


def native_size(pipe: Any) -> Size:
    """The size a pipeline generates when none is given (``default_*`` in its ``model_index.json``)."""
    config = pipe.config
    return Size(config.default_height, config.default_width, config.default_num_frames)


def _whole_number(value: float | int | None, name: str) -> int:
    """Gradio number boxes give floats or None; only whole numbers are meaningful for sizes and steps."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        raise UIError(f"{name} is empty: enter a whole number.")
    if int(value) != value:
        raise UIError(f"{name} must be a whole number (got {value}).")
    return int(value)


def check_size(height: float | None, width: float | None, num_frames: float | None) -> Size:
    """The size rules of the model (spec 2.4), with messages that say what to type instead."""
    h, w = _whole_number(height, "Height"), _whole_number(width, "Width")
    for name, value in (("Height", h), ("Width", w)):
        if value <= 0 or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise UIError(
                f"{name} must be a positive multiple of {SIZE_MULTIPLE} (got {value}; try {lower} or "
                f"{lower + SIZE_MULTIPLE})."
            )
    frames = _whole_number(num_frames, "Frames")
    if frames < 1 or (frames - 1) % 4:
        nearest = max(1, round((frames - 1) / 4) * 4 + 1)
        raise UIError(f"Frames must be 4k + 1 (1, 5, 9, ..., 17, ..., 81); got {frames}, try {nearest}.")
    return Size(h, w, frames)


# -------------------------------------------------------------------------------------- references


def _ref_name(index: int, path: str | Path) -> str:
    return f"Reference {index + 1} ({Path(path).name})"


def check_reference_paths(paths: Sequence[str | Path] | None) -> list[Path]:
    """1-4 uploaded files, in order. The CLI drops extra references; the page asks instead of guessing."""
    paths = [Path(p) for p in paths or []]
    if not paths:
        raise UIError(f"Add 1 to {MAX_REFERENCES} reference images: none is uploaded.")
    if len(paths) > MAX_REFERENCES:
        extra = len(paths) - MAX_REFERENCES
        raise UIError(
            f"BindWeave uses at most {MAX_REFERENCES} reference images; {len(paths)} are uploaded. "
            f"Remove {extra}."
        )
    return paths


def load_reference_images(paths: Sequence[str | Path] | None) -> list[PIL.Image.Image]:
    """Check and load the references exactly as the pipeline will (RGB), naming a file that is no image."""
    images = []
    for index, path in enumerate(check_reference_paths(paths)):
        try:
            images.append(load_reference(path, name=_ref_name(index, path)))
        except ReferenceError as err:
            raise UIError(
                f"{_ref_name(index, path)} is not an image that can be read (use PNG, JPEG or WebP)."
            ) from err
    return images


@dataclass(frozen=True)
class Preview:
    """What the model sees of one reference: the letterboxed canvas and its mask (spec 2.1)."""

    canvas: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 255 on the pasted reference, 0 on the black border
    box: tuple[int, int, int, int]  # left, top, width, height
    caption: str


def preview_references(
    paths: Sequence[str | Path] | None, height: float | None, width: float | None
) -> list[Preview]:
    """Letterbox every reference at the chosen size with the pipeline's own :func:`letterbox`."""
    images = load_reference_images(paths)
    size = check_size(height, width, 1)
    previews = []
    for index, (path, image) in enumerate(zip(check_reference_paths(paths), images, strict=True)):
        boxed = letterbox(image, size.height, size.width)
        canvas = (boxed.canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        mask = (boxed.mask.numpy() * 255).round().astype(np.uint8)
        left, top, w, h = boxed.box
        scale = w / image.width
        caption = (
            f"{_ref_name(index, path)}: {image.width}x{image.height} -> {w}x{h}"
            f"{'' if scale == 1 else f' (x{scale:.2f})'} at ({left}, {top}) on {size.width}x{size.height}"
        )
        previews.append(Preview(canvas=canvas, mask=mask, box=boxed.box, caption=caption))
    return previews


# -------------------------------------------------------------------------------------- memory modes


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def memory_modes() -> tuple[str, ...]:
    """The ``--memory`` choices of the CLI, offered in the page."""
    return typing.get_args(MemoryMode)


def with_memory(config: ModelConfig, mode: str) -> ModelConfig:
    """``config`` with the memory mode chosen in the page (a copy; the launch config stays untouched)."""
    if mode not in memory_modes():
        raise UIError(f"Unknown memory mode {mode!r}; choose one of {', '.join(memory_modes())}.")
    return dataclasses.replace(config, memory=mode)


def model_config_of(config: ModelConfig) -> ModelConfig:
    """Only the :class:`ModelConfig` part of a larger config (e.g. the launcher's)."""
    return ModelConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig)})


class PipelineLoader:
    """Loads the pipeline once and keeps it; a different memory mode reloads it (freeing the old one first).

    Calls are serialised by a lock, so two events can never load two copies of a 14B model at once.
    """

    def __init__(self, config: ModelConfig, load: Callable[[ModelConfig], Any] = load_pipeline) -> None:
        self.config = model_config_of(config)
        self._load = load
        self._pipe: Any = None
        self._mode: str | None = None
        self._lock = threading.Lock()

    def __call__(self, memory: str | None = None) -> Any:
        mode = memory or self.config.memory
        with self._lock:
            if self._pipe is None or mode != self._mode:
                if self._pipe is not None:
                    logger.info("memory mode %s -> %s: reloading the pipeline", self._mode, mode)
                    self._pipe = self._mode = None
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                self._pipe = self._load(with_memory(self.config, mode))
                self._mode = mode
            return self._pipe


# -------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class JobRequest:
    """Everything the page collects for one run, already checked by :func:`parse_request`."""

    refs: tuple[Path, ...]
    prompt: str
    negative_prompt: str
    size: Size
    steps: int
    guidance: float
    seed: int | None  # None draws a random seed, reported with the result
    memory: str


def check_prompt(prompt: str | None) -> str:
    if prompt is None or not prompt.strip():
        raise UIError("Enter a prompt: what should the subjects do?")
    return prompt.strip()


def parse_request(
    refs: Sequence[str | Path] | None,
    prompt: str | None,
    negative_prompt: str | None,
    height: float | None,
    width: float | None,
    num_frames: float | None,
    steps: float | None,
    guidance: float | None,
    random_seed: bool,
    seed: float | None,
    memory: str | None,
) -> JobRequest:
    """Check every input of the page before any model work, so a mistake costs nothing."""
    load_reference_images(refs)
    prompt = check_prompt(prompt)
    size = check_size(height, width, num_frames)
    steps_ = _whole_number(steps, "Steps")
    if steps_ < 1:
        raise UIError(f"Steps must be at least 1 (got {steps_}).")
    if guidance is None or not np.isfinite(guidance) or guidance < 1:
        raise UIError(f"Guidance must be at least 1 (1 turns the negative prompt off); got {guidance}.")
    fixed_seed = None
    if not random_seed:
        fixed_seed = _whole_number(seed, "Seed")
        if not 0 <= fixed_seed <= MAX_SEED:
            raise UIError(f"Seed must be between 0 and {MAX_SEED} (got {fixed_seed}).")
    mode = memory or ModelConfig().memory
    if mode not in memory_modes():
        raise UIError(f"Unknown memory mode {mode!r}; choose one of {', '.join(memory_modes())}.")
    request = JobRequest(
        refs=tuple(check_reference_paths(refs)),
        prompt=prompt,
        negative_prompt=negative_prompt or "",
        size=size,
        steps=steps_,
        guidance=float(guidance),
        seed=fixed_seed,
        memory=mode,
    )
    # The CLI's own rules as the last word, so the page never accepts what `bindweave generate` refuses.
    _sampling_config(request, seed=0).validate()
    return request


def _sampling_config(request: JobRequest, seed: int) -> SamplingConfig:
    return SamplingConfig(
        height=request.size.height,
        width=request.size.width,
        num_frames=request.size.num_frames,
        steps=request.steps,
        guidance=request.guidance,
        seed=seed,
        negative_prompt=request.negative_prompt,
    )


def job_config(
    request: JobRequest, model: ModelConfig, refs: Sequence[Path], out: Path, seed: int
) -> GenerateConfig:
    """The ``bindweave generate`` config of a page run: the single source of its command line and JSON."""
    model = with_memory(model_config_of(model), request.memory)
    sampling = _sampling_config(request, seed)
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)}
    values |= {f.name: getattr(sampling, f.name) for f in dataclasses.fields(SamplingConfig)}
    return GenerateConfig(**values, refs=[Path(r) for r in refs], prompt=request.prompt, out=out)


# Written even when they equal the CLI default: the size defaults depend on the model, and a reader wants
# to see the seed and steps of a run without knowing the defaults.
_ALWAYS_WRITTEN = ("refs", "prompt", "out", "height", "width", "num_frames", "steps", "guidance", "seed")


def _flag(f: dataclasses.Field) -> str:
    """The option name :func:`bindweave.config.add_arguments` gives a field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


_LEADING = ("refs", "prompt", "out")  # what a reader looks for first


def config_argv(config: Any) -> list[str]:
    """Options that make the CLI parser rebuild ``config`` (fields equal to their default are left out)."""
    argv: list[str] = []
    for f in sorted(dataclasses.fields(config), key=lambda f: f.name not in _LEADING):
        value = getattr(config, f.name)
        if value is None or (f.name not in _ALWAYS_WRITTEN and value == _default(f)):
            continue
        if isinstance(value, bool):
            argv.append(_flag(f) if value else "--no-" + _flag(f)[2:])
        elif isinstance(value, (list, tuple)):
            argv += [_flag(f), *(str(v) for v in value)]
        else:
            argv += [_flag(f), str(value)]
    return argv


def command_line(config: GenerateConfig) -> str:
    """A shell-quoted ``bindweave generate`` command that repeats the run."""
    return shlex.join(["bindweave", "generate", *config_argv(config)])


def config_json(config: GenerateConfig) -> str:
    return to_json(config)


def config_from_json(text: str) -> GenerateConfig:
    """Rebuild a :class:`GenerateConfig` from :func:`config_json` (paths come back as ``Path``)."""
    data = json.loads(text)
    hints = typing.get_type_hints(GenerateConfig)
    values = {}
    for f in dataclasses.fields(GenerateConfig):
        if f.name not in data:
            continue
        value, tp = data[f.name], _unwrap_optional(hints[f.name])
        if value is not None and tp is Path:
            value = Path(value)
        elif value is not None and typing.get_origin(tp) is list and typing.get_args(tp) == (Path,):
            value = [Path(v) for v in value]
        values[f.name] = value
    return GenerateConfig(**values)


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
