"""The Gradio layout and the launcher, without a browser: queueing, visibility, CLI options."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from bindweave import config as cfg
from bindweave.default_model import SHIPPED_MODEL, embedded_guidance_scale
from bindweave.generate import ModelConfig
from bindweave.refine import EndpointRefiner
from bindweave.toy.sprites import reference_image
from bindweave.toy.world import toy_scene
from bindweave.ui import UIConfig, run_ui
from bindweave.ui.examples import EXAMPLE_SCENES, toy_examples, uses_embedded_model
from bindweave.ui.inputs import UIError
from bindweave.ui.launch import INSTALL_HINT, launch_app
from bindweave.ui.loader import PipelineLoader
from bindweave.ui.refining import make_refiner

gr = pytest.importorskip("gradio", reason="the web app needs the 'ui' extra: pip install 'bindweave[ui]'")
from bindweave.ui.app import MODEL_QUEUE, build_app  # noqa: E402 - needs gradio


def parse_ui(argv: list[str]) -> UIConfig:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, UIConfig)
    return cfg.from_namespace(UIConfig, parser.parse_args(argv))


@pytest.fixture(scope="module")
def app(pipe_loader: PipelineLoader, tmp_path_factory: pytest.TempPathFactory) -> gr.Blocks:
    return build_app(pipe_loader, tmp_path_factory.mktemp("ui-out"))


def events(blocks: gr.Blocks) -> dict[str, object]:
    return {fn.name: fn for fn in blocks.fns.values()}


def test_generate_and_refine_share_one_model_slot(app):
    fns = events(app)
    for name in ("on_generate", "on_refine"):
        assert fns[name].concurrency_limit == 1 and fns[name].concurrency_id == MODEL_QUEUE
    # Cancelling and arming never wait behind a running job.
    assert fns["on_cancel"].concurrency_limit is None and fns["on_cancel"].concurrency_id != MODEL_QUEUE
    assert fns["on_arm"].queue is False


def component(blocks: gr.Blocks, elem_id: str):
    (found,) = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return found


def test_refine_button_only_with_a_refiner(app, pipe_loader, tmp_path):
    assert component(app, "refine").visible is False
    with_refiner = build_app(pipe_loader, tmp_path, refiner=lambda: None)
    assert component(with_refiner, "refine").visible is True


def test_settings_start_at_the_models_defaults_and_native_size(app):
    # The tiny test model saves the paper's steps and guidance and a native size of its own.
    assert component(app, "steps").value == 50
    assert component(app, "guidance").value == 5.0
    assert (component(app, "height").value, component(app, "width").value) == (64, 96)
    assert component(app, "frames").value == 17
    preset = component(app, "preset")
    assert [c[0] for c in preset.choices] == ["native (64x96, 17 frames)", "custom"]
    assert preset.value == "native (64x96, 17 frames)" and "480p (480x832)" in preset.info
    memory = component(app, "memory")
    assert memory.value == "none"
    assert memory.interactive is False  # the offload modes need a GPU; this app runs on the CPU
    assert not datasets(app)  # toy-world examples only for the embedded model


class ReleasedLikeLoader:
    """Stands in for a loaded released model: only the saved defaults that the page reads."""

    config = ModelConfig(model=Path("released"), device="cpu")

    def __call__(self, memory: str | None = None) -> SimpleNamespace:
        defaults = dict(height=720, width=1280, num_frames=81, guidance_scale=5.0, num_inference_steps=50)
        return SimpleNamespace(config=SimpleNamespace(**{f"default_{k}": v for k, v in defaults.items()}))


def test_a_model_native_to_720p_is_offered_the_paper_sizes(tmp_path):
    app = build_app(ReleasedLikeLoader(), tmp_path)
    preset = component(app, "preset")
    assert [c[0] for c in preset.choices] == [
        "native (720x1280, 81 frames)",
        "480p (480x832, 81 frames)",
        "custom",
    ]
    assert preset.info is None
    assert (component(app, "steps").value, component(app, "guidance").value) == (50, 5.0)


def datasets(blocks: gr.Blocks) -> list:
    return [b for b in blocks.blocks.values() if isinstance(b, gr.Dataset)]


def test_the_embedded_model_is_offered_toy_world_examples_at_its_own_size(tmp_path):
    app = build_app(PipelineLoader(ModelConfig(device="cpu")), tmp_path)
    assert (component(app, "steps").value, component(app, "guidance").value) == (
        20,
        embedded_guidance_scale(),
    )
    preset = component(app, "preset")
    assert [c[0] for c in preset.choices] == ["native (64x64, 17 frames)", "custom"]
    (examples,) = datasets(app)
    assert examples.elem_id == "examples"
    ids = [component(app, "refs")._id, component(app, "prompt")._id]
    assert examples.get_config()["component_ids"] == ids  # a click fills the references and the prompt
    expected = [toy_scene(*scene) for scene in EXAMPLE_SCENES]
    assert [sample[1] for sample in examples.samples] == [scene.prompt for scene in expected]
    assert [len(scene.subjects) for scene in expected] == [2, 1, 3, 4]
    for scene, example in zip(expected, toy_examples(tmp_path / "examples"), strict=True):
        for subject, path in zip(scene.subjects, example.references, strict=True):
            with PIL.Image.open(path) as image:
                drawn = np.asarray(image.convert("RGB"))
            assert np.array_equal(drawn, np.asarray(reference_image(subject.sprite)[0]))


def test_only_the_embedded_model_counts_as_the_toy(tiny_model_dir):
    assert uses_embedded_model(ModelConfig())
    assert uses_embedded_model(ModelConfig(model=SHIPPED_MODEL))
    assert not uses_embedded_model(ModelConfig(model=tiny_model_dir))


def test_ui_options_default_to_a_local_server_and_the_embedded_model():
    config = parse_ui([])
    assert (config.host, config.port, config.share) == ("127.0.0.1", 7860, False)
    assert config.model is None and config.wan is None and config.memory == "none"
    config = parse_ui(["--model", "m", "--memory", "model-offload", "--port", "8000", "--share"])
    assert (config.model, config.memory, config.port, config.share) == (
        Path("m"),
        "model-offload",
        8000,
        True,
    )
    assert isinstance(config, ModelConfig)


def test_make_refiner(pipe_loader):
    assert make_refiner(parse_ui([]), pipe_loader) is None
    with pytest.raises(ValueError, match="--refine-endpoint"):
        make_refiner(parse_ui(["--refine", "endpoint"]), pipe_loader)
    factory = make_refiner(
        parse_ui(["--refine", "endpoint", "--refine-endpoint", "http://127.0.0.1:9/v1"]), pipe_loader
    )
    assert isinstance(factory(), EndpointRefiner)  # built only: nothing is sent
    local = make_refiner(parse_ui(["--refine", "local"]), pipe_loader)
    assert local().model is pipe_loader().mllm  # the tiny model ships a (random) Qwen2.5-VL


def test_local_refiner_needs_an_mllm(monkeypatch):
    class NoMLLM:
        mllm = mllm_processor = None

    local = make_refiner(parse_ui(["--refine", "local"]), lambda: NoMLLM())
    with pytest.raises(UIError, match="--mllm"):
        local()


def test_run_ui_without_gradio_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(OSError, match=r'pip install -e "\.\[ui\]"'):
        run_ui(parse_ui([]))
    assert '".[ui]"' in INSTALL_HINT


def test_run_ui_loads_the_model_builds_the_page_and_serves_it(tiny_model_dir, tmp_path, monkeypatch):
    served = {}

    def fake_launch(app, host, port, out_dir, share=False, block=True):
        served.update(app=app, host=host, port=port, out_dir=out_dir, share=share, block=block)
        return None, f"http://{host}:{port}/"

    monkeypatch.setattr("bindweave.ui.launch.launch_app", fake_launch)
    run_ui(
        parse_ui(
            ["--model", str(tiny_model_dir), "--dtype", "float32", "--out", str(tmp_path), "--port", "7999"]
        )
    )
    assert isinstance(served.pop("app"), gr.Blocks)
    assert served == {"host": "127.0.0.1", "port": 7999, "out_dir": tmp_path, "share": False, "block": True}


def test_the_server_announces_itself_with_the_commands_options(app, tmp_path, capsys):
    """Gradio's own start-up hint ("set share=True in launch()") names an argument the user cannot pass."""
    _, url = launch_app(app, "127.0.0.1", free_port(), tmp_path, block=False)
    try:
        printed = capsys.readouterr().out
    finally:
        app.close()
    assert url.startswith("http://127.0.0.1:")
    assert (
        f"Serving the web app on {url} (Ctrl-C stops it; --share also opens a public Gradio link)" in printed
    )
    assert "launch()" not in printed and "share=True" not in printed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_ui_fails_before_serving_on_a_wrong_model_path(tmp_path, monkeypatch):
    monkeypatch.setattr("bindweave.ui.launch.launch_app", lambda *a, **k: pytest.fail("must not serve"))
    with pytest.raises(OSError, match=r"--model .*missing: no such folder"):
        run_ui(parse_ui(["--model", str(tmp_path / "missing")]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--device", "foo"], "--device foo: not a torch device"),
        (["--refine", "endpoint"], "--refine endpoint needs --refine-endpoint"),
    ],
)
def test_run_ui_checks_its_options_before_loading_the_model(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr("bindweave.ui.launch.launch_app", lambda *a, **k: pytest.fail("must not serve"))
    monkeypatch.setattr(
        "bindweave.ui.loader.PipelineLoader.__call__", lambda *a, **k: pytest.fail("must not load the model")
    )
    with pytest.raises(ValueError, match=message):
        run_ui(parse_ui([*argv, "--out", str(tmp_path)]))


def test_bindweave_ui_command():
    """Once ``bindweave ui`` is wired into the CLI, its options are UIConfig's."""
    from bindweave import cli

    commands = {command.name: command for command in cli.COMMANDS}
    if "ui" not in commands:
        pytest.skip("the 'ui' subcommand is not wired into bindweave.cli yet")
    assert commands["ui"].config_cls is UIConfig and commands["ui"].run is run_ui
    args = cli.build_parser().parse_args(["ui", "--port", "7001"])
    config = cfg.from_namespace(UIConfig, args)
    assert (config.host, config.port, config.share) == ("127.0.0.1", 7001, False)
