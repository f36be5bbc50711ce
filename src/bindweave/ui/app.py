"""The Gradio layout of ``bindweave ui``: components and events only; the logic is in the sibling modules.

Generation and prompt refinement share one queue slot (``concurrency_id="model"``, limit 1): the model is
loaded once, and two users never run it at the same time. Previews, presets and cancelling do not wait
for that slot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from ..conditioning.references import MAX_REFERENCES
from ..conditioning.text import DEFAULT_NEGATIVE_PROMPT
from ..default_model import demo_prompt
from ..generate import resolve_device
from ..samplers import SAMPLERS, get_sampler
from .examples import toy_examples, uses_embedded_model
from .inputs import (
    CUSTOM,
    PAPER_RESOLUTIONS,
    UIError,
    native_size,
    paper_sizes_fit,
    preview_references,
    resolution_presets,
)
from .jobs import JobRegistry, JobResult, gallery_items, history_entry, run_job
from .loader import PipelineLoader, memory_modes
from .refining import RefinerFactory, refine
from .settings import parse_request

logger = logging.getLogger(__name__)

# System fonts only: the default theme pulls Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
# Small canvases and masks are shown enlarged: keep their pixels sharp, so the mask border is exact.
CSS = "#preview img, #strip img { image-rendering: pixelated; }"
MODEL_QUEUE = "model"


def _user_error(err: BaseException) -> gr.Error:
    """The message of a user-facing error, shown in the page (the server keeps running).

    Logged as one line, as the CLI does: a traceback would only bury the message.
    """
    message = str(err)
    if isinstance(err, torch.OutOfMemoryError):
        message = "Out of GPU memory: choose a smaller size, fewer frames or another memory mode."
    logger.warning("shown to the user: %s", message)
    return gr.Error(message, print_exception=False)


def _model_label(pipe_loader: PipelineLoader) -> str:
    config = pipe_loader.config
    if config.wan is not None:
        label = f"released BindWeave (`{config.transformer}` on `{config.wan}`)"
    elif config.model is not None:
        label = f"`{config.model}`"
    else:
        label = "the embedded toy BindWeave (trained on the toy world only: sprites on plain backgrounds)"
    specs = config.lora_specs()
    if specs:
        label += "; LoRAs fused in: " + ", ".join(f"`{s.path}` (scale {s.scale:g})" for s in specs)
    return label


def build_app(pipe_loader: PipelineLoader, out_dir: Path, refiner: RefinerFactory | None = None) -> gr.Blocks:
    """The page, bound to a pipeline loader, a result folder and an optional prompt refiner.

    The pipeline is loaded here (if it is not yet) to read its native size for the resolution presets and
    its saved guidance scale for the Guidance box.
    """
    out_dir = Path(out_dir).resolve()
    pipe = pipe_loader()
    native = native_size(pipe)
    model_guidance = pipe.config.default_guidance_scale  # 5.0 for the released model, the toy's own
    model_steps = pipe.config.default_num_inference_steps  # 50 for the released model, 20 for the toy
    presets = resolution_presets(native)
    modes = memory_modes()
    on_gpu = resolve_device(pipe_loader.config.device).type == "cuda"
    jobs = JobRegistry()

    def on_preview(refs: list[str] | None, height: float | None, width: float | None):
        if not refs:
            return [], ""
        try:
            previews = preview_references(refs, height, width)
        except UIError as err:
            return [], f"**Cannot use these inputs:** {err}"
        items: list[tuple[Any, str]] = []
        for preview in previews:
            items += [(preview.canvas, preview.caption), (preview.mask, "its mask (white: the reference)")]
        return items, ""

    def on_preset(name: str):
        if name not in presets:
            return gr.skip(), gr.skip(), gr.skip()
        size = presets[name]
        return size.height, size.width, size.num_frames

    def on_sampler(name: str):
        """A distillation sampler's steps and guidance (4, 1), or the model's own for the others."""
        kind = get_sampler(name)
        return kind.default_steps or model_steps, (
            model_guidance if kind.default_guidance is None else kind.default_guidance
        )

    def on_arm(request: gr.Request) -> str:
        return jobs.arm(request.session_hash or "anonymous")

    def on_cancel(request: gr.Request) -> None:
        # A toast, not the status line: this answer may arrive after the cancelled run's own message.
        if jobs.cancel_session(request.session_hash or "anonymous"):
            gr.Info("Cancelling: the run stops after the current denoising step.")
        else:
            gr.Info("Nothing is running.")

    def on_generate(
        job_id: str,
        refs: list[str] | None,
        prompt: str,
        negative_prompt: str,
        height: float | None,
        width: float | None,
        num_frames: float | None,
        steps: float | None,
        guidance: float | None,
        random_seed: bool,
        seed: float | None,
        memory: str,
        sampler: str,
        history: list[dict[str, str]],
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects progress through this default
    ):
        def report(done: int, total: int) -> None:
            if done == 0:
                progress((0, total), desc="Encoding the prompt and references", unit="steps")
            else:
                progress((done, total), desc="Denoising", unit="steps")

        try:
            token = jobs.token(job_id)
            request = parse_request(
                refs,
                prompt,
                negative_prompt,
                height,
                width,
                num_frames,
                steps,
                guidance,
                random_seed,
                seed,
                memory,
                sampler,
            )
            progress(0, desc="Loading the model")
            result = run_job(request, pipe_loader, pipe_loader.config, out_dir, report, token)
        except (ValueError, OSError, torch.OutOfMemoryError) as err:  # UIError is a ValueError
            raise _user_error(err) from err
        finally:
            jobs.release(job_id)
        if result.cancelled:
            return (*[gr.skip()] * 5, result.message, history, gr.skip(), gr.skip())
        history = [*history, history_entry(result)]
        return (*_show(result), result.message, history, gallery_items(history), result.seed)

    def on_select(history: list[dict[str, str]], evt: gr.SelectData):
        entry = list(reversed(history))[evt.index]
        files = [entry["video"], entry["strip"], entry["settings"]]
        return (
            entry["video"],
            entry["strip"],
            files,
            entry["command"],
            entry["settings_json"],
            f"Showing an earlier result: {entry['caption']}",
        )

    def on_refine(prompt: str, refs: list[str] | None):
        if refiner is None:
            raise gr.Error(
                "No prompt refiner is configured (start the app with --refine local or --refine endpoint)."
            )
        try:
            return refine(refiner(), prompt, refs)
        except (ValueError, OSError) as err:
            raise _user_error(err) from err

    # No telemetry or version check (the app must work offline); uploads and served copies older than a
    # day are removed from Gradio's cache every hour (the results stay in out_dir).
    with gr.Blocks(title="BindWeave", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        gr.Markdown(
            "# BindWeave: subject-to-video\n"
            f"Upload 1 to {MAX_REFERENCES} reference images, describe what the subjects do, and generate. "
            f"Model: {_model_label(pipe_loader)}; native size {native.label()}."
        )
        history = gr.State([])
        job_id = gr.State("")
        with gr.Row():
            with gr.Column(scale=1):
                refs = gr.File(
                    label=f"Reference images (1-{MAX_REFERENCES}; drag to reorder, x to remove)",
                    file_count="multiple",
                    allow_reordering=True,
                    elem_id="refs",
                )
                preview = gr.Gallery(
                    label="What the model sees: each reference letterboxed at the chosen size, and its mask",
                    columns=2,
                    height="auto",
                    format="png",
                    interactive=False,
                    elem_id="preview",
                )
                prompt = gr.Textbox(label="Prompt", value=demo_prompt(), lines=3, elem_id="prompt")
                refine_button = gr.Button("Refine prompt", visible=refiner is not None, elem_id="refine")
                if uses_embedded_model(pipe_loader.config):
                    _toy_examples(refs, prompt, out_dir / "examples")
                negative_prompt = gr.Textbox(
                    label="Negative prompt", value=DEFAULT_NEGATIVE_PROMPT, lines=2, elem_id="negative"
                )
                with gr.Accordion("Settings", open=True):
                    preset = gr.Radio(
                        [*presets, CUSTOM],
                        value=next(iter(presets)),
                        label="Resolution",
                        info=None if paper_sizes_fit(native) else _no_paper_sizes(native),
                        elem_id="preset",
                    )
                    with gr.Row():
                        height = gr.Number(
                            native.height, label="Height", precision=0, step=16, elem_id="height"
                        )
                        width = gr.Number(native.width, label="Width", precision=0, step=16, elem_id="width")
                        num_frames = gr.Number(
                            native.num_frames, label="Frames (4k+1)", precision=0, step=4, elem_id="frames"
                        )
                    with gr.Row():
                        steps = gr.Number(model_steps, label="Steps", precision=0, minimum=1, elem_id="steps")
                        guidance = gr.Number(
                            model_guidance, label="Guidance", minimum=1, step=0.5, elem_id="guidance"
                        )
                    sampler = gr.Radio(
                        list(SAMPLERS),
                        value="unipc",
                        label="Sampler",
                        info="unipc: the released sampler; lightx2v / lightx2v-lcm: for step-distillation "
                        "LoRAs (4 steps, guidance 1, set when chosen)",
                        elem_id="sampler",
                    )
                    with gr.Row():
                        random_seed = gr.Checkbox(True, label="Random seed", elem_id="random-seed")
                        seed = gr.Number(42, label="Seed (last used)", precision=0, minimum=0, elem_id="seed")
                    memory = gr.Radio(
                        list(modes),
                        value=pipe_loader.config.memory,
                        label="Memory mode",
                        info="where the weights live; changing it reloads the model. The offload modes "
                        "keep weights off the GPU, so they need one.",
                        interactive=on_gpu,
                        elem_id="memory",
                    )
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=1):
                video = gr.Video(label="Result", interactive=False, elem_id="result-video")
                strip = gr.Image(
                    label="Strip: the references, then frames",
                    type="filepath",
                    interactive=False,
                    elem_id="strip",
                )
                downloads = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                )
                command = gr.Code(
                    label="Repeat from the command line",
                    language="shell",
                    lines=3,
                    wrap_lines=True,
                    elem_id="command",
                )
                settings_json = gr.Code(
                    label="Settings (JSON)", language="json", lines=8, elem_id="settings-json"
                )
                gallery = gr.Gallery(
                    label="This session's results (newest first; click one to show it)",
                    columns=2,
                    height="auto",
                    object_fit="contain",
                    interactive=False,
                    elem_id="history",
                )

        gr.on(
            [refs.change, height.change, width.change],
            on_preview,
            inputs=[refs, height, width],
            outputs=[preview, status],
            trigger_mode="always_last",
            show_progress="hidden",
        )
        preset.input(on_preset, inputs=preset, outputs=[height, width, num_frames], show_progress="hidden")
        sampler.input(on_sampler, inputs=sampler, outputs=[steps, guidance], show_progress="hidden")
        gr.on(
            [height.input, width.input, num_frames.input],
            lambda: CUSTOM,
            outputs=preset,
            show_progress="hidden",
        )
        generate_button.click(on_arm, outputs=job_id, queue=False, api_visibility="private").then(
            on_generate,
            inputs=[
                job_id,
                refs,
                prompt,
                negative_prompt,
                height,
                width,
                num_frames,
                steps,
                guidance,
                random_seed,
                seed,
                memory,
                sampler,
                history,
            ],
            outputs=[video, strip, downloads, command, settings_json, status, history, gallery, seed],
            concurrency_limit=1,
            concurrency_id=MODEL_QUEUE,
            show_progress_on=video,
        )
        cancel_button.click(on_cancel, concurrency_limit=None, show_progress="hidden")
        gallery.select(
            on_select, inputs=history, outputs=[video, strip, downloads, command, settings_json, status]
        )
        refine_button.click(
            on_refine,
            inputs=[prompt, refs],
            outputs=[prompt, status],
            concurrency_limit=1,
            concurrency_id=MODEL_QUEUE,
        )
    return app


def _toy_examples(refs: gr.File, prompt: gr.Textbox, folder: Path) -> gr.Examples:
    """Toy-world scenes for the embedded model: clicking one fills the references and the prompt."""
    examples = [[[str(p) for p in ex.references], ex.prompt] for ex in toy_examples(folder)]
    return gr.Examples(
        examples,
        inputs=[refs, prompt],
        label="Examples from the toy world: the embedded model knows only sprites on plain backgrounds, "
        "not photos",
        elem_id="examples",
    )


def _no_paper_sizes(native) -> str:
    paper = " and ".join(f"{name} ({h}x{w})" for name, (h, w) in PAPER_RESOLUTIONS.items())
    return (
        f"This model was trained at {native.height}x{native.width} only; the paper's {paper} are for the "
        "released model (a custom size can still be typed in)."
    )


def _show(result: JobResult) -> tuple[Any, ...]:
    """The result panel's values: video, strip, downloads, command line, JSON."""
    files = [str(result.video), str(result.strip), str(result.settings)]
    return str(result.video), str(result.strip), files, result.command, result.settings_json
