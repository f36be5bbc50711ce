"""``--lora PATH[:SCALE]`` and ``--sampler`` on the commands, in run records and in the web app's settings."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from bindweave import cli
from bindweave import config as cfg
from bindweave.generate_config import GenerateConfig, ModelConfig
from bindweave.io.run_record import video_settings
from bindweave.io.video import read_video
from bindweave.lora.config import LoraSpec, resolve_lora_file
from bindweave.ui.settings import command_line, config_from_json, config_json, job_config, parse_request

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "2"]


def write_lora(path: Path, seed: int = 0) -> Path:
    """An original-format LoRA (ComfyUI keys) for the tiny DiT's first self-attention query."""
    g = torch.Generator().manual_seed(seed)
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 16, generator=g),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(16, 4, generator=g),
            "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # the session's tiny pipeline folder, only read


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two reference images, a one-entry manifest over them, and a LoRA file."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    refs = []
    for i in range(2):
        refs.append(folder / f"ref{i}.png")
        PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(refs[-1])
    (folder / "manifest.json").write_text(
        json.dumps({"case_1": {"img_paths": [r.name for r in refs], "prompt": "a cat and a dog"}})
    )
    return folder, [str(r) for r in refs], write_lora(folder / "style.safetensors")


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "path", "scale"),
    [
        ("style.safetensors", "style.safetensors", 1.0),
        ("style.safetensors:0.6", "style.safetensors", 0.6),
        ("dir/a:b.safetensors:-1.5", "dir/a:b.safetensors", -1.5),
        (r"C:\loras\style.safetensors", r"C:\loras\style.safetensors", 1.0),
    ],
)
def test_lora_argument_is_path_and_optional_scale(text, path, scale):
    assert LoraSpec.parse(text) == LoraSpec(Path(path), scale)


def test_a_non_finite_scale_is_refused():
    with pytest.raises(ValueError, match="the scale must be a finite number"):
        LoraSpec.parse("style.safetensors:nan")


def test_lora_is_repeatable_on_every_generation_command(tmp_path):
    for command in (["generate"], ["run-manifest"], ["eval", "generate"], ["ui"]):
        parser = cli.build_parser(argv=command)
        args = parser.parse_args([*command, "--lora", "a.safetensors", "--lora", "b.safetensors:0.5"] + (
            ["--refs", "r.png", "--prompt", "p", "--out", "o.mp4"] if command == ["generate"] else
            ["--manifest", "m.json", "--images-dir", ".", "--out", "o"] if "generate" in command or
            command == ["run-manifest"] else []
        ))  # fmt: skip
        assert args.loras == ["a.safetensors", "b.safetensors:0.5"], command
    args = cli.build_parser(argv=["generate"]).parse_args(
        ["generate", "--refs", "r", "--prompt", "p", "--out", "o"]
    )
    assert cfg.from_namespace(GenerateConfig, args).loras == []


def test_lora_paths_resolve_to_one_file(tmp_path):
    lora = write_lora(tmp_path / "a.safetensors")
    assert resolve_lora_file(lora) == lora
    checkpoint = tmp_path / "checkpoint-000100"
    (checkpoint / "lora").mkdir(parents=True)
    trained = write_lora(checkpoint / "lora" / "pytorch_lora_weights.safetensors")
    assert resolve_lora_file(checkpoint) == trained == resolve_lora_file(checkpoint / "lora")
    write_lora(tmp_path / "b.safetensors")
    with pytest.raises(
        FileNotFoundError, match=r"exactly one \.safetensors LoRA file \(found: a\.safetensors, b"
    ):
        resolve_lora_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        resolve_lora_file(tmp_path / "missing.safetensors")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"must be a \.safetensors file"):
        resolve_lora_file(tmp_path / "x.pt")


# ---------------------------------------------------------------------------------------------- runs


def test_generate_with_a_lora_and_the_lightx2v_sampler(model_dir, inputs, tmp_path):
    _, refs, lora = inputs
    args = ["generate", "--model", str(model_dir), "--refs", *refs, "--prompt", "a cat", *SMALL]
    assert cli.main([*args, "--out", str(tmp_path / "plain.mp4")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "lora.mp4"), "--lora", f"{lora}:2"]) == 0
    assert (
        cli.main([*args, "--out", str(tmp_path / "fast.mp4"), "--lora", str(lora), "--sampler", "lightx2v"])
        == 0
    )
    plain, styled, fast = (read_video(tmp_path / f"{n}.mp4")[0] for n in ("plain", "lora", "fast"))
    assert plain.shape == styled.shape == fast.shape == (5, 32, 48, 3)
    # The LoRA and the sampler change the video, not by rounding: float32 rounding (<= 7.6e-6 of the [0, 1]
    # frames) flips a few pixels by one 8-bit level, a mean far below 0.05 level. Measured: 1.6 and 2.1.
    assert np.abs(plain.astype(int) - styled).mean() > 0.5 and np.abs(styled.astype(int) - fast).mean() > 0.5


def test_a_missing_lora_fails_before_any_model_loads(model_dir, inputs, tmp_path, caplog, monkeypatch):
    _, refs, _ = inputs
    monkeypatch.setattr("bindweave.generate.load_pipeline", lambda *_: pytest.fail("loaded a model"))
    code = cli.main(["generate", "--model", str(model_dir), "--refs", *refs, "--prompt", "a", "--out",
                     str(tmp_path / "v.mp4"), "--lora", str(tmp_path / "none.safetensors:0.5")])  # fmt: skip
    assert code == 1
    assert f"--lora {tmp_path / 'none.safetensors'}: no such file or folder" in caplog.text


def test_the_run_record_names_the_loras_and_sampler_and_refuses_others(model_dir, inputs, tmp_path, caplog):
    folder, _, lora = inputs
    out = tmp_path / "videos"
    args = ["run-manifest", "--model", str(model_dir), "--manifest", str(folder / "manifest.json"),
            "--images-dir", str(folder), "--out", str(out), *SMALL, "--sampler", "lightx2v"]  # fmt: skip
    assert cli.main([*args, "--lora", f"{lora}:0.5"]) == 0
    settings = json.loads((out / "run_record.json").read_text())["video_settings"]
    assert settings["loras"] == [{"path": str(lora.resolve()), "scale": 0.5}]
    assert settings["sampler"] == "lightx2v"
    assert cli.main([*args, "--lora", f"{lora}:0.7"]) == 1
    assert f"--lora [{lora.resolve()}:0.5] -> [{lora.resolve()}:0.7]" in caplog.text
    assert cli.main([*args[:-2], "--lora", f"{lora}:0.5"]) == 1  # unipc instead of lightx2v
    assert "--sampler 'lightx2v' -> 'unipc'" in caplog.text


def test_unknown_keys_refuse_a_lora_unless_skipped_and_the_run_record_names_them(
    model_dir, inputs, tmp_path, caplog
):
    folder, _, _ = inputs
    partial = tmp_path / "partial.safetensors"
    extra = {
        "diffusion_model.vace_blocks.0.after_proj.diff_b": torch.zeros(16),
        "lora_te_text_model.alpha": torch.tensor(1.0),
    }
    save_file({**load_file(write_lora(tmp_path / "plain.safetensors")), **extra}, partial)
    out = tmp_path / "videos"
    args = ["run-manifest", "--model", str(model_dir), "--manifest", str(folder / "manifest.json"),
            "--images-dir", str(folder), "--out", str(out), *SMALL, "--lora", str(partial)]  # fmt: skip
    assert cli.main(args) == 1
    assert f"LoRA {partial}: " in caplog.text and "lora_te_text_model.alpha" in caplog.text
    assert not out.exists() or not list(out.glob("*.mp4"))
    caplog.clear()
    assert cli.main([*args, "--lora-skip-unknown-keys"]) == 0
    assert all(key in caplog.text for key in extra)  # the warning names every skipped key
    record = json.loads((out / "run_record.json").read_text())
    assert record["lora_skipped_keys"] == {str(partial): sorted(extra)}
    assert record["video_settings"]["lora_skip_unknown_keys"] is True
    assert cli.main(args) == 1  # a rerun without the flag: other settings
    assert "--lora-skip-unknown-keys True -> False" in caplog.text


def test_video_settings_of_a_record_without_loras_compare_as_before():
    assert "loras" not in video_settings({"steps": 4}, "float32")
    assert video_settings({"loras": []}, "float32")["loras"] == []


# ---------------------------------------------------------------------------------------------- web app


def test_the_web_apps_settings_name_the_loras_and_sampler(inputs, tmp_path):
    _, refs, lora = inputs
    request = parse_request(refs, "a cat", "", 32, 48, 5, 4, 1.0, False, 3, "none", "lightx2v")
    model = ModelConfig(model=tmp_path / "m", loras=[f"{lora}:0.8", str(lora)])
    config = job_config(request, model, [Path(r) for r in refs], tmp_path / "v.mp4", seed=3)
    line = command_line(config)
    assert f"--lora {lora}:0.8 --lora {lora}" in line and "--sampler lightx2v" in line
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert cfg.from_namespace(GenerateConfig, args) == config
    assert json.loads(config_json(config))["loras"] == [f"{lora}:0.8", str(lora)]
    assert config_from_json(config_json(config)) == config
