"""The web app's logic as plain functions: validation, letterbox preview, settings -> CLI/JSON, generation.

Nothing here imports Gradio, so every rule the page enforces is unit-tested without a server, and the
layout in :mod:`bindweave.ui.app` only wires these functions to components. User mistakes raise
:class:`UIError` with a message written for the page; the layout turns it into ``gr.Error``.

The logic is split by concern: :mod:`.inputs` (checking the page's inputs), :mod:`.loader` (the
pipeline), :mod:`.settings` (a run as a ``bindweave generate`` config, command line and JSON) and
:mod:`.jobs` (running, cancelling, the files of a run, history, refinement); this package exports them.

A run made in the page is written exactly as ``bindweave generate`` would write it: the settings become a
:class:`~bindweave.generate.GenerateConfig`, the pipeline is called with the same sampling arguments, and
the page shows that config as a shell command and as JSON, so the run can be repeated outside the app.
"""

from .inputs import (
    CUSTOM,
    MAX_SEED,
    PAPER_FRAMES,
    PAPER_RESOLUTIONS,
    SIZE_MULTIPLE,
    JobRequest,
    Preview,
    Size,
    UIError,
    check_prompt,
    check_reference_paths,
    check_size,
    load_reference_images,
    memory_modes,
    native_size,
    parse_request,
    preview_references,
    resolution_presets,
    sampling_config,
)
from .jobs import (
    RANDOM_SEED_BOUND,
    CancelToken,
    GenerationOutcome,
    JobRegistry,
    JobResult,
    ProgressFn,
    copy_references,
    gallery_items,
    generate_frames,
    history_entry,
    new_run_dir,
    refine,
    run_job,
    write_poster,
)
from .loader import PipelineLoader, model_config_of, with_memory
from .settings import command_line, config_argv, config_from_json, config_json, job_config

__all__ = [
    "CUSTOM",
    "MAX_SEED",
    "PAPER_FRAMES",
    "PAPER_RESOLUTIONS",
    "RANDOM_SEED_BOUND",
    "SIZE_MULTIPLE",
    "CancelToken",
    "GenerationOutcome",
    "JobRegistry",
    "JobRequest",
    "JobResult",
    "PipelineLoader",
    "Preview",
    "ProgressFn",
    "Size",
    "UIError",
    "check_prompt",
    "check_reference_paths",
    "check_size",
    "command_line",
    "config_argv",
    "config_from_json",
    "config_json",
    "copy_references",
    "gallery_items",
    "generate_frames",
    "history_entry",
    "job_config",
    "load_reference_images",
    "memory_modes",
    "model_config_of",
    "native_size",
    "new_run_dir",
    "parse_request",
    "preview_references",
    "refine",
    "resolution_presets",
    "run_job",
    "sampling_config",
    "with_memory",
    "write_poster",
]
