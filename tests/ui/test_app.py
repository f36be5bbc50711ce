"""The Gradio layout and the launcher, without a browser: queueing, visibility, CLI options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from bindweave import config as cfg
from bindweave.generate import ModelConfig
from bindweave.refine import EndpointRefiner
from bindweave.ui import UIConfig, run_ui
from bindweave.ui.handlers import PipelineLoader, UIError
from bindweave.ui.launch import INSTALL_HINT, make_refiner

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


def test_settings_start_at_the_paper_defaults_and_native_size(app):
    assert component(app, "steps").value == 50
    assert component(app, "guidance").value == 5.0
    assert (component(app, "height").value, component(app, "width").value) == (64, 96)
    assert component(app, "frames").value == 17
    preset = component(app, "preset")
    assert preset.value.startswith("native (64x96")
    assert [c[0] for c in preset.choices][1:] == [
        "480p (480x832, 81 frames)",
        "720p (720x1280, 81 frames)",
        "custom",
    ]
    memory = component(app, "memory")
    assert memory.value == "none"
    assert memory.interactive is False  # the offload modes need a GPU; this app runs on the CPU


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
    with pytest.raises(OSError, match=r"pip install 'bindweave\[ui\]'"):
        run_ui(parse_ui([]))
    assert "bindweave[ui]" in INSTALL_HINT


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
        "bindweave.ui.launch.PipelineLoader.__call__", lambda *a, **k: pytest.fail("must not load the model")
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
