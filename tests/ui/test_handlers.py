"""The web app's logic without a server: validation, preview, CLI/JSON round trips, generation, cancel."""

from __future__ import annotations

import dataclasses
import json
import shlex

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave import cli
from bindweave import config as cfg
from bindweave.conditioning.references import letterbox
from bindweave.generate import GenerateConfig, ModelConfig
from bindweave.io.video import probe_video, read_video
from bindweave.refine import PromptRefiner
from bindweave.ui.inputs import Size, UIError, check_size, preview_references, resolution_presets
from bindweave.ui.jobs import CancelToken, JobRegistry, gallery_items, generate_frames, history_entry, run_job
from bindweave.ui.loader import PipelineLoader, memory_modes, with_memory
from bindweave.ui.refining import refine
from bindweave.ui.settings import (
    JobRequest,
    command_line,
    config_from_json,
    config_json,
    job_config,
    parse_request,
)

# The smallest size the tiny model runs quickly: a multiple of 16 on each side, 4k + 1 frames.
SMALL = {"height": 32, "width": 48, "num_frames": 5}
GOOD = dict(
    prompt="a red block slides right",
    negative_prompt="blurry",
    **SMALL,
    steps=2,
    guidance=5.0,
    random_seed=False,
    seed=7,
    memory="none",
)


def request_for(refs, **changes) -> JobRequest:
    return parse_request(refs, **{**GOOD, **changes})


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("refs", "changes", "message"),
    [
        ("none", {}, "Add 1 to 4 reference images: none is uploaded."),
        ("empty", {}, "Add 1 to 4 reference images: none is uploaded."),
        ("five", {}, "BindWeave uses at most 4 reference images; 5 are uploaded. Remove 1."),
        ("text", {}, "Reference 2 (notes.txt) is not an image that can be read (use PNG, JPEG or WebP)."),
        ("fake_png", {}, "Reference 1 (fake.png) is not an image that can be read"),
        ("thin", {}, "Reference 2 (thin.png) is 400x1 pixels: the MLLM reads references scaled by 0.75 "),
        ("ok", {"height": 50}, "Height must be a positive multiple of 16 (got 50; try 48 or 64)."),
        ("ok", {"width": 0}, "Width must be a positive multiple of 16 (got 0; try 16 or 32)."),
        ("ok", {"width": 47.5}, "Width must be a whole number (got 47.5)."),
        ("ok", {"height": None}, "Height is empty: enter a whole number."),
        ("ok", {"num_frames": 10}, "Frames must be 4k + 1 (1, 5, 9, ..., 17, ..., 81); got 10, try 9."),
        ("ok", {"num_frames": 0}, "Frames must be 4k + 1"),
        ("ok", {"prompt": "   "}, "Enter a prompt: what should the subjects do?"),
        ("ok", {"steps": 0}, "Steps must be at least 1 (got 0)."),
        ("ok", {"guidance": 0.5}, "Guidance must be at least 1 (1 turns the negative prompt off); got 0.5."),
        ("ok", {"seed": -1}, "Seed must be between 0 and"),
        ("ok", {"memory": "everything"}, "Unknown memory mode 'everything'; choose one of none, "),
    ],
)
def test_bad_inputs_give_a_clear_message(refs, changes, message, ref_paths, not_an_image, tmp_path):
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"GIF89a but not really")
    PIL.Image.new("RGB", (400, 1)).save(tmp_path / "thin.png")
    refs = {
        "none": None,
        "empty": [],
        "five": [ref_paths[0]] * 5,
        "text": [ref_paths[0], not_an_image],
        "fake_png": [fake_png],
        "thin": [ref_paths[0], tmp_path / "thin.png"],
        "ok": ref_paths,
    }[refs]
    with pytest.raises(UIError) as err:
        request_for(refs, **changes)
    assert str(err.value).startswith(message)


def test_good_inputs_become_a_typed_request(ref_paths):
    request = request_for([str(p) for p in ref_paths], prompt="  spaced out  ", height=32.0, seed=7.0)
    assert request.refs == tuple(ref_paths)
    assert request.prompt == "spaced out"
    assert request.size == Size(32, 48, 5) and isinstance(request.size.height, int)
    assert request.seed == 7 and isinstance(request.seed, int)
    assert request_for(ref_paths, random_seed=True, seed=None).seed is None  # the seed box is ignored


def test_check_size_accepts_the_paper_and_native_sizes():
    for native in (Size(64, 96, 17), Size(720, 1280, 81)):
        for size in resolution_presets(native).values():
            assert check_size(size.height, size.width, size.num_frames) == size


def test_presets_offer_the_paper_sizes_only_to_a_model_native_to_one():
    # The released model, native 720p: its size, then the paper's other one.
    presets = resolution_presets(Size(720, 1280, 81))
    assert list(presets.items()) == [
        ("native (720x1280, 81 frames)", Size(720, 1280, 81)),
        ("480p (480x832, 81 frames)", Size(480, 832, 81)),
    ]
    # A model native to another size (the tiny test model, the embedded toy) gets its own size only.
    assert list(resolution_presets(Size(64, 96, 17)).items()) == [
        ("native (64x96, 17 frames)", Size(64, 96, 17))
    ]
    assert list(resolution_presets(Size(64, 64, 17))) == ["native (64x64, 17 frames)"]


def test_memory_modes_are_the_cli_choices():
    parser = cli.build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    (memory,) = [a for a in generate._actions if a.dest == "memory"]
    assert memory_modes() == tuple(memory.choices)
    assert with_memory(ModelConfig(), "model-offload").memory == "model-offload"


# ------------------------------------------------------------------------------------------ preview


@pytest.mark.parametrize(("height", "width"), [(32, 48), (64, 96), (480, 832)])
def test_preview_is_exactly_what_letterbox_gives(ref_paths, height, width):
    previews = preview_references(ref_paths, height, width)
    assert len(previews) == 2
    for path, preview in zip(ref_paths, previews, strict=True):
        with PIL.Image.open(path) as image:
            expected = letterbox(image.convert("RGB"), height, width)
        assert preview.canvas.shape == (height, width, 3) and preview.canvas.dtype == np.uint8
        assert preview.mask.shape == (height, width) and set(np.unique(preview.mask)) <= {0, 255}
        np.testing.assert_array_equal(
            preview.canvas, (expected.canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        )
        np.testing.assert_array_equal(preview.mask, (expected.mask.numpy() * 255).astype(np.uint8))
        assert preview.box == expected.box
        left, top, w, h = preview.box
        assert f"at ({left}, {top}) on {width}x{height}" in preview.caption and path.name in preview.caption


def test_preview_rejects_a_bad_size(ref_paths):
    with pytest.raises(UIError, match="Height must be a positive multiple of 16"):
        preview_references(ref_paths, 40, 48)


# ------------------------------------------------------------------------------------------ CLI / JSON


@pytest.fixture
def unusual_config(ref_paths, tmp_path) -> GenerateConfig:
    """Quotes, a newline, spaces in paths and non-default model options: the hard cases for quoting."""
    request = request_for(
        ref_paths,
        prompt='it\'s a "quoted" prompt; $HOME `x`',
        negative_prompt="ugly,\nblurry",
        guidance=3.5,
        seed=2**40,
        memory="model-offload",
    )
    model = ModelConfig(model=tmp_path / "my model", dtype="float32", batch_cfg=False, vae_tiling=True)
    return job_config(request, model, ref_paths, tmp_path / "out dir" / "video.mp4", seed=2**40)


def test_command_line_round_trips_through_the_cli_parser(unusual_config):
    argv = shlex.split(command_line(unusual_config))
    assert argv[:2] == ["bindweave", "generate"]
    args = cli.build_parser().parse_args(argv[1:])
    assert cfg.from_namespace(GenerateConfig, args) == unusual_config


def test_command_line_states_the_settings_a_reader_looks_for(unusual_config):
    line = command_line(unusual_config)
    for option in ("--refs", "--prompt", "--height 32", "--width 48", "--num-frames 5", "--steps 2",
                   "--guidance 3.5", f"--seed {2**40}", "--memory model-offload", "--no-batch-cfg"):  # fmt: skip
        assert option in line
    assert "--fp8-weights" not in line  # defaults are left out
    assert line.index("--refs") < line.index("--height")


def test_default_negative_prompt_is_left_out_but_still_exact(ref_paths, tmp_path):
    from bindweave.conditioning.text import DEFAULT_NEGATIVE_PROMPT

    request = request_for(ref_paths, negative_prompt=DEFAULT_NEGATIVE_PROMPT)
    config = job_config(request, ModelConfig(), ref_paths, tmp_path / "v.mp4", seed=1)
    line = command_line(config)
    assert "--negative-prompt" not in line
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert cfg.from_namespace(GenerateConfig, args) == config


def test_json_round_trips(unusual_config):
    text = config_json(unusual_config)
    assert json.loads(text)["seed"] == 2**40
    assert config_from_json(text) == unusual_config


# ------------------------------------------------------------------------------------------ generation


class ForwardCounter:
    """Counts transformer forwards (one per CFG branch, or one per step with batched CFG)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, *_args) -> None:
        self.calls += 1

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *_exc) -> None:
        self._handle.remove()


def test_generate_writes_mp4_png_settings_and_reports_every_step(pipe_loader, ref_paths, tmp_path):
    progress: list[tuple[int, int]] = []
    request = request_for(ref_paths, steps=2, seed=11)
    result = run_job(
        request, pipe_loader, pipe_loader.config, tmp_path, on_progress=lambda *a: progress.append(a)
    )

    assert progress == [(0, 2), (1, 2), (2, 2)]
    assert not result.cancelled and result.steps_done == 2 and result.seed == 11
    info = probe_video(result.video)
    assert (info.num_frames, info.height, info.width, info.codec) == (5, 32, 48, "h264")
    with PIL.Image.open(result.strip) as strip:
        assert strip.format == "PNG" and strip.height == 32
    run_dir = result.video.parent
    assert run_dir.parent == tmp_path.resolve() and result.strip.parent == run_dir
    # The settings file, the JSON and the command line describe the same run, on the kept references.
    config = config_from_json(result.settings.read_text())
    assert config == config_from_json(result.settings_json)
    args = cli.build_parser().parse_args(shlex.split(result.command)[1:])
    assert cfg.from_namespace(GenerateConfig, args) == config
    assert config.out == result.video and config.seed == 11 and config.steps == 2
    assert [p.parent for p in config.refs] == [run_dir / "refs"] * 2
    for kept, original in zip(config.refs, ref_paths, strict=True):
        assert kept.read_bytes() == original.read_bytes()
    assert config.model == pipe_loader.config.model
    entry = history_entry(result)
    with PIL.Image.open(result.poster) as poster:
        assert poster.size == (48, 32)
    assert gallery_items([entry]) == [(str(result.poster), result.caption)]


def test_the_command_line_repeats_the_run(pipe_loader, ref_paths, tmp_path):
    """The point of showing the command: `bindweave generate` with it gives the same video."""
    result = run_job(
        request_for(ref_paths, steps=2, seed=5), pipe_loader, pipe_loader.config, tmp_path / "ui"
    )
    argv = shlex.split(result.command)[1:]
    again = tmp_path / "cli.mp4"
    argv[argv.index("--out") + 1] = str(again)
    assert cli.main(argv) == 0
    (frames, fps), (expected, expected_fps) = read_video(again), read_video(result.video)
    assert fps == expected_fps and frames.shape == (5, 32, 48, 3)
    # Bitwise: the app and the CLI load the same folder through the same loader (memory "none" keeps the
    # weights where the loader put them), so the same kernels run on the same layout.
    np.testing.assert_array_equal(frames, expected)


def test_random_seed_is_drawn_and_recorded(pipe_loader, ref_paths, tmp_path):
    request = request_for(ref_paths, random_seed=True, steps=1)
    result = run_job(request, pipe_loader, pipe_loader.config, tmp_path)
    assert f"--seed {result.seed}" in result.command
    assert config_from_json(result.settings_json).seed == result.seed


def test_cancel_after_the_first_step_stops_the_loop(pipe_loader, ref_paths, tmp_path):
    steps = 4
    token = CancelToken()
    calls_at_step: dict[int, int] = {}
    pipe = pipe_loader()

    def on_progress(done: int, _total: int) -> None:
        calls_at_step[done] = counter.calls
        if done == 1:
            token.cancel()  # what the cancel button does

    request = request_for(ref_paths, steps=steps)
    with ForwardCounter(pipe.transformer) as counter:
        result = run_job(request, pipe_loader, pipe_loader.config, tmp_path, on_progress, token)

    assert result.cancelled and result.steps_done == 1 and result.total_steps == steps
    assert result.message == f"Cancelled after step 1 of {steps}; nothing was saved."
    per_step = calls_at_step[1]
    assert per_step in (1, 2)  # batched CFG or one forward per branch
    assert counter.calls == per_step < steps * per_step  # not a single forward after the cancel
    assert list(tmp_path.iterdir()) == []  # a cancelled run leaves no folder
    # The interrupt flag does not leak into the next run.
    again = run_job(request_for(ref_paths, steps=1), pipe_loader, pipe_loader.config, tmp_path)
    assert not again.cancelled and again.steps_done == 1


def test_a_job_cancelled_before_it_starts_never_runs_the_model(pipe_loader, ref_paths, tmp_path):
    token = CancelToken()
    token.cancel()
    config = job_config(request_for(ref_paths), pipe_loader.config, ref_paths, tmp_path / "v.mp4", seed=0)
    with ForwardCounter(pipe_loader().transformer) as counter:
        outcome = generate_frames(pipe_loader(), config, [], cancel=token)
    assert outcome.cancelled and outcome.steps_done == 0 and counter.calls == 0


def test_a_failed_run_leaves_no_folder(pipe_loader, ref_paths, tmp_path):
    def broken_loader(_memory: str):
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        run_job(request_for(ref_paths), broken_loader, pipe_loader.config, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_job_registry_cancels_only_the_sessions_own_jobs():
    jobs = JobRegistry()
    mine, other = jobs.arm("alice"), jobs.arm("bob")
    assert jobs.cancel_session("alice") == 1
    assert jobs.token(mine).cancelled and not jobs.token(other).cancelled
    jobs.release(mine)
    assert jobs.cancel_session("alice") == 0
    with pytest.raises(UIError, match="no longer known"):
        jobs.token(mine)


def test_pipeline_loader_loads_once_per_memory_mode():
    loads: list[str] = []

    def load(config: ModelConfig) -> object:
        loads.append(config.memory)
        return object()

    loader = PipelineLoader(ModelConfig(), load=load)
    first = loader()
    assert loader("none") is first and loads == ["none"]
    assert loader("model-offload") is not first and loads == ["none", "model-offload"]


def test_history_gallery_is_newest_first():
    history = [{"poster": f"{i}.png", "caption": f"run {i}"} for i in range(3)]
    assert gallery_items(history) == [("2.png", "run 2"), ("1.png", "run 1"), ("0.png", "run 0")]


# ------------------------------------------------------------------------------------------ refinement


@dataclasses.dataclass
class FakeRefiner:
    answer: str
    seen: list = dataclasses.field(default_factory=list)

    def generate(self, prompt: str, images) -> str:
        self.seen.append((prompt, [image.size for image in images]))
        return self.answer


def test_refine_uses_the_references_and_returns_the_new_prompt(ref_paths):
    refiner: PromptRefiner = FakeRefiner('"A tall noisy figure walks past a red banner."')
    prompt, message = refine(refiner, "walks", ref_paths)
    assert prompt == "A tall noisy figure walks past a red banner."
    assert refiner.seen == [("walks", [(30, 40), (120, 36)])]
    assert message.startswith("Prompt refined")


def test_refine_keeps_the_prompt_when_the_answer_is_unusable(ref_paths):
    prompt, message = refine(FakeRefiner("   "), "walks", ref_paths)
    assert (
        prompt == "walks"
        and message == "Kept your prompt: the refiner's answer was not usable (empty answer)."
    )


def test_refine_checks_its_inputs(ref_paths):
    with pytest.raises(UIError, match="Enter a prompt"):
        refine(FakeRefiner("x"), "", ref_paths)
    with pytest.raises(UIError, match="none is uploaded"):
        refine(FakeRefiner("x"), "walks", [])
