"""Checks before any model is loaded: the device, the saved model's promises, given inputs, and every
generation-like command failing fast, in one line, on an argument it can check without a model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave import cli
from bindweave.conditioning.mllm import MLLMStateError
from bindweave.default_model import default_model_path, embedded_guidance_scale
from bindweave.preflight import SavedModel, check_mllm_states_file, resolve_device, saved_model
from bindweave.testing.devices import skip_unless_cuda

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "1"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading any model fails the test: the checks under test must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    from bindweave.pipeline import BindWeavePipeline

    monkeypatch.setattr(BindWeavePipeline, "from_pretrained", refuse)
    monkeypatch.setattr(BindWeavePipeline, "from_released", refuse)
    monkeypatch.setattr("bindweave.extract._load_mllm", refuse)
    monkeypatch.setattr("bindweave.perf.bench._build", refuse)


@pytest.fixture
def refs(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(30, 40), (36, 24)]):
        path = tmp_path / f"ref{i}.png"
        PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def manifest(tmp_path: Path, refs: list[str]) -> Path:
    """Two entries whose images are relative to ``tmp_path`` (the --images-dir)."""
    path = tmp_path / "cases.json"
    data = {"a": {"img_paths": [Path(refs[0]).name], "prompt": "a cat"}}
    data["b"] = {"img_paths": [Path(r).name for r in refs], "prompt": "a dog"}
    path.write_text(json.dumps(data))
    return path


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------------------------- devices


def test_resolve_device_default_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_resolve_device_refuses_a_string_torch_does_not_know():
    with pytest.raises(ValueError, match=r"^--device foo: not a torch device"):
        resolve_device("foo")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_refuses_cuda_without_a_gpu():
    with pytest.raises(
        ValueError, match=r"^--device cuda: no CUDA device is available \(.+\); use --device cpu$"
    ):
        resolve_device("cuda")


@pytest.mark.gpu
def test_resolve_device_refuses_a_gpu_index_beyond_the_visible_ones(gpu_device):
    skip_unless_cuda(gpu_device, "CUDA device indices")
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=f"only {count} CUDA device"):
        resolve_device(f"cuda:{count}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["generate", "demo"])
def test_a_missing_cuda_device_is_one_line_and_no_model_load(command, refs, tmp_path, caplog, no_model_load):
    args = (
        ["--refs", *refs, "--prompt", "x", "--out", str(tmp_path / "v.mp4")] if command == "generate" else []
    )
    assert cli.main([command, *args, "--device", "cuda"]) == 1
    assert len(errors(caplog)) == 1 and "--device cuda: no CUDA device is available" in errors(caplog)[0]


# ---------------------------------------------------------------------------------------------- saved model


def test_saved_model_of_the_embedded_model_reads_its_config_files():
    """The toy model: MLLM width 32 (its transformer config), its saved guidance (model_index.json), an MLLM."""
    transformer = json.loads((default_model_path() / "transformer" / "config.json").read_text())
    index = json.loads((default_model_path() / "model_index.json").read_text())
    model = saved_model(None, None, None, None)
    assert model == SavedModel(
        mllm_dim=transformer["mllm_dim"],
        default_guidance_scale=index["default_guidance_scale"],
        has_mllm=True,
    )
    assert (model.mllm_dim, model.default_guidance_scale) == (32, embedded_guidance_scale())


def test_saved_model_of_released_folders(tmp_path):
    """A configless transformer folder is the released 14B one (3584-wide states); guidance 5; MLLM only with --mllm."""
    wan, transformer = tmp_path / "wan", tmp_path / "bindweave"
    wan.mkdir(), transformer.mkdir()
    assert saved_model(None, wan, transformer, None) == SavedModel(3584, 5.0, False)
    assert saved_model(None, wan, transformer, tmp_path).has_mllm
    (transformer / "config.json").write_text(json.dumps({"mllm_dim": 64}))
    assert saved_model(None, wan, transformer, None).mllm_dim == 64


def test_saved_model_names_a_folder_that_is_no_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--model {tmp_path}: no model_index.json"):
        saved_model(tmp_path, None, None, None)


def test_check_mllm_states_file(tmp_path):
    good, wide, listed = tmp_path / "good.pt", tmp_path / "wide.pt", tmp_path / "list.pt"
    torch.save(torch.zeros(1, 5, 32, dtype=torch.bfloat16), good)
    torch.save(torch.zeros(1, 5, 7), wide)
    torch.save([1, 2], listed)
    check_mllm_states_file(good, 32, "--x")
    with pytest.raises(MLLMStateError, match=rf"^--x file {wide} has shape \(1, 5, 7\).*mllm_dim=32"):
        check_mllm_states_file(wide, 32, "--x")
    with pytest.raises(MLLMStateError, match=rf"^--x file {listed} must hold a tensor"):
        check_mllm_states_file(listed, 32, "--x")
    with pytest.raises(MLLMStateError, match="not found"):
        check_mllm_states_file(tmp_path / "missing.pt", 32, "--x")


# ---------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("given", ["wrong", "missing"])
def test_negative_states_are_checked_at_guidance_1(given, refs, tmp_path, caplog, no_model_load):
    """At guidance 1 (no negative branch) a given file is checked all the same."""
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.zeros(1, 5, 7), wrong)
    path = wrong if given == "wrong" else tmp_path / "missing.pt"
    code = cli.main(["generate", "--refs", *refs, "--prompt", "x", "--out", str(tmp_path / "v.mp4"),
                     "--guidance", "1", "--negative-mllm-states", str(path)])  # fmt: skip
    assert code == 1 and not (tmp_path / "v.mp4").exists()
    [error] = errors(caplog)
    assert error.startswith(f"--negative-mllm-states file {path} ")


@pytest.mark.parametrize("how", ["given", "saved"])
def test_given_inputs_without_effect_are_named_in_a_warning(how, tmp_path, refs, caplog):
    """At guidance 1.0, given or the model's saved default, the negative states and prompt have no effect."""
    states = tmp_path / "negative.pt"
    torch.save(torch.randn(1, 4, 32).to(torch.bfloat16), states)
    out = tmp_path / "v.mp4"
    if how == "given":
        choice, why = ["--guidance", "1"], "at guidance 1.0 (no negative branch)"
    else:  # a copy of the embedded model that saves guidance 1.0
        model = tmp_path / "model"
        shutil.copytree(default_model_path(), model)
        index = json.loads((model / "model_index.json").read_text())
        (model / "model_index.json").write_text(json.dumps({**index, "default_guidance_scale": 1.0}))
        choice, why = ["--model", str(model)], "at guidance 1.0, the model's default (no negative branch)"
    code = cli.main(["generate", "--refs", *refs, "--prompt", "x", "--out", str(out), *SMALL, *choice,
                     "--negative-mllm-states", str(states), "--negative-prompt", "blurry"])  # fmt: skip
    assert code == 0 and out.is_file()
    assert [w for w in warnings(caplog) if "native size" not in w] == [
        f"--negative-mllm-states has no effect {why}",
        f"--negative-prompt has no effect {why}",
    ]


@pytest.mark.parametrize("size", [(1, 1), (400, 1), (1, 3)])
def test_a_reference_the_mllm_cannot_read_is_named_before_loading(
    size, refs, tmp_path, caplog, no_model_load
):
    thin = tmp_path / "thin.png"
    PIL.Image.new("RGB", size).save(thin)
    code = cli.main(
        ["generate", "--refs", str(thin), *refs, "--prompt", "x", "--out", str(tmp_path / "v.mp4")]
    )
    assert code == 1
    [error] = errors(caplog)
    assert error.startswith(f"reference 1 ({thin}) is {size[0]}x{size[1]} pixels: ")
    assert "each side must be at least 2 pixels" in error


def test_references_are_counted_from_1(refs, tmp_path, caplog, no_model_load):
    code = cli.main(["generate", "--refs", *refs, str(tmp_path / "nope.png"), "--prompt", "x",
                     "--out", str(tmp_path / "v.mp4")])  # fmt: skip
    assert code == 1 and errors(caplog) == [f"reference 3: image file not found: {tmp_path / 'nope.png'}"]


# ---------------------------------------------------------------------------------------------- manifests


def test_run_manifest_checks_named_states_before_loading(manifest, tmp_path, caplog, no_model_load):
    """Entry b names a negative states file of the wrong width: at guidance 1 it is unused, but still wrong."""
    torch.save(torch.zeros(1, 3, 7), tmp_path / "b_negative.pt")
    data = json.loads(manifest.read_text())
    data["b"]["hidden_states_path_negative"] = "b_negative.pt"
    manifest.write_text(json.dumps(data))
    code = cli.main(["run-manifest", "--manifest", str(manifest), "--images-dir", str(tmp_path),
                     "--out", str(tmp_path / "videos")])  # fmt: skip
    assert code == 1
    [error] = errors(caplog)
    assert error.startswith(
        f"entry 'b': hidden_states_path_negative file {tmp_path / 'b_negative.pt'} has shape"
    )


def test_run_manifest_names_the_entry_of_a_reference_the_mllm_cannot_read(
    manifest, tmp_path, caplog, no_model_load
):
    PIL.Image.new("RGB", (400, 1)).save(tmp_path / "ref1.png")  # entry b's second reference
    code = cli.main(["run-manifest", "--manifest", str(manifest), "--images-dir", str(tmp_path),
                     "--out", str(tmp_path / "videos")])  # fmt: skip
    assert code == 1
    [error] = errors(caplog)
    assert error.startswith(f"entry 'b': reference 2 ({tmp_path / 'ref1.png'}) is 400x1 pixels: ")


# ---------------------------------------------------------------------------------------------- every command


def _commands(tmp: Path, manifest: Path) -> dict[str, list[str]]:
    """Every generation-like command, runnable but for the argument each case adds."""
    images = ["--manifest", str(manifest), "--images-dir", str(tmp)]
    return {
        "generate": [
            "generate",
            "--refs",
            str(tmp / "ref0.png"),
            "--prompt",
            "x",
            "--out",
            str(tmp / "v.mp4"),
        ],
        "run-manifest": ["run-manifest", *images, "--out", str(tmp / "videos")],
        "eval generate": ["eval", "generate", *images, "--out", str(tmp / "videos")],
        "extract-mllm": ["extract-mllm", *images, "--out", str(tmp / "states")],
        "demo": ["demo", "--out", str(tmp / "demo")],
        "bench": ["bench", "--peak-tflops", "1"],
        "toy-eval": ["toy-eval", "--model", str(default_model_path()), "--out", str(tmp / "toy")],
    }


BAD_ARGUMENTS = [
    ("generate", ["--fps", "0"], "^--fps must be >= 1, got 0$"),
    ("generate", ["--seed", "-1"], "^--seed must be between 0 and 2\\*\\*64 - 1"),
    ("generate", ["--guidance", "nan"], "^--guidance must be a number >= 1"),
    ("generate", ["--prompt", " "], "^--prompt is empty"),
    ("generate", ["--cache", "none", "--cache-interval", "3"], "^--cache-interval needs --cache"),
    ("generate", ["--model", "{tmp}/missing"], "^--model .*missing: no such folder"),
    ("run-manifest", ["--fps", "0"], "^--fps must be >= 1"),
    ("run-manifest", ["--device", "foo"], "^--device foo: not a torch device"),
    ("run-manifest", ["--images-dir", "{tmp}/missing"], "^--images-dir .*missing: no such folder"),
    ("eval generate", ["--steps", "0"], "^--steps must be >= 1"),
    ("extract-mllm", ["--device", "foo"], "^--device foo: not a torch device"),
    ("extract-mllm", ["--wan", "{tmp}", "--transformer", "{tmp}"], "hold no MLLM: give --mllm"),
    ("extract-mllm", ["--out-manifest", "{tmp}/m.txt"], "^--out-manifest must end in .json"),
    ("demo", ["--steps", "0"], "^--steps must be >= 1"),
    ("demo", ["--seed", "-5"], "^--seed must be between"),
    ("demo", ["--device", "foo"], "^--device foo: not a torch device"),
    ("bench", ["--repeats", "0"], "^--repeats must be >= 1"),
    ("bench", ["--num-frames", "6"], "^--num-frames must be 4k \\+ 1"),
    ("bench", ["--device", "foo"], "^--device foo: not a torch device"),
    ("toy-eval", ["--guidance-scale", "0.5"], "^--guidance-scale must be a number >= 1"),
    ("toy-eval", ["--model", "{tmp}"], "no model_index.json"),
]


@pytest.mark.parametrize(("command", "extra", "message"), BAD_ARGUMENTS)
def test_every_command_checks_its_arguments_before_loading_a_model(
    command, extra, message, manifest, tmp_path, caplog, no_model_load
):
    import re

    argv = _commands(tmp_path, manifest)[command] + [a.format(tmp=tmp_path) for a in extra]
    assert cli.main(argv) == 1
    [error] = errors(caplog)
    assert re.search(message, error), error
