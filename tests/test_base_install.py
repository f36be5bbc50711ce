"""The base install (``pip install -e .``, no extras) runs every ``--help`` and every inference command.

Each case runs ``bindweave.cli.main`` in a fresh interpreter in which the packages of the extras are absent:
``sys.modules[name] = None`` makes ``import name`` raise ``ModuleNotFoundError`` and
``importlib.util.find_spec(name)`` return ``None``, as for a package that is not installed (libraries that
probe for an optional package see it missing). PyYAML, listed in the ``train`` extra, is not blocked: the
base dependencies accelerate, huggingface_hub and transformers require it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image

from bindweave.cli import COMMANDS

BLOCKED = ("peft", "tensorboard", "cv2", "gradio", "playwright")
HEAVY = ("torch", "diffusers", "transformers")

# argv: a JSON list of command lines, run one after the other; their exit codes and the heavy modules
# imported afterwards are written as JSON to the file named by the last argument.
RUNNER = f"""
import contextlib, io, json, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
from bindweave.cli import main
runs, report = json.loads(sys.argv[1]), sys.argv[2]
codes, outputs = [], []
for argv in runs:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            codes.append(main(argv))
        except SystemExit as exit:  # --help
            codes.append(exit.code)
    outputs.append(out.getvalue())
heavy = [m for m in {HEAVY!r} if m in sys.modules]
with open(report, "w") as f:
    json.dump({{"codes": codes, "outputs": outputs, "heavy": heavy}}, f)
"""


def run_base_install(runs: list[list[str]], tmp_path: Path, timeout: float = 600) -> dict:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(runs), str(report)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and report.is_file(), result.stderr[-3000:]
    return {**json.loads(report.read_text()), "stderr": result.stderr}


def test_every_help_runs_without_the_extras_and_imports_no_torch(tmp_path):
    names = [command.name.split(" ") for command in COMMANDS]
    runs = [["--help"], *([*name, "--help"] for name in names)]
    report = run_base_install(runs, tmp_path)
    assert report["codes"] == [0] * len(runs), report["stderr"][-3000:]
    assert "{demo,generate,run-manifest," in report["outputs"][0]
    for name, output in zip(names, report["outputs"][1:], strict=True):
        assert output.startswith(f"usage: bindweave {' '.join(name)} "), output[:200]
    # The job configs are importable without the heavy libraries; only running a job imports them.
    assert report["heavy"] == []


def test_inference_commands_run_on_the_embedded_model_without_the_extras(tmp_path):
    from bindweave.default_model import demo_prompt, demo_references

    refs = []
    for i, image in enumerate(demo_references()):
        refs.append(str(tmp_path / f"ref{i}.png"))
        image.save(refs[-1])
    (tmp_path / "manifest.json").write_text(
        json.dumps({"case_1": {"img_paths": [Path(r).name for r in refs], "prompt": demo_prompt()}})
    )
    # One step; generate and run-manifest also below the native 64x64x17, for time (the VAE dominates).
    fast, small = ["--steps", "1"], ["--steps", "1", "--height", "32", "--width", "32", "--num-frames", "5"]
    runs = [
        ["demo", "--out", "demo", *fast],
        ["generate", "--refs", *refs, "--prompt", demo_prompt(), "--out", "generate.mp4", *small],
        ["run-manifest", "--manifest", "manifest.json", "--images-dir", ".", "--out", "manifest", *small],
        ["extract-mllm", "--manifest", "manifest.json", "--images-dir", ".", "--out", "states"],
        ["bench", "--repeats", "1", "--steps", "1", "--no-compare-stock"],
        [
            "export-lora",
            str(write_trained_lora(tmp_path / "checkpoint-000001")),
            "--out",
            "comfy.safetensors",
        ],
    ]
    report = run_base_install(runs, tmp_path)
    assert report["codes"] == [0] * len(runs), report["stderr"][-3000:]
    for path in (
        "demo/demo.mp4",
        "demo/demo.png",
        "generate.mp4",
        "manifest/case_1.mp4",
        "comfy.safetensors",
    ):
        assert (tmp_path / path).stat().st_size > 0, path
    # The demo scene is a toy scene: under the generated frames, its true frames (one tile each).
    from bindweave.default_model import demo_true_frames
    from bindweave.io.video import sample_frame_indices

    with PIL.Image.open(tmp_path / "demo" / "demo.png") as image:
        strip = np.asarray(image.convert("RGB"))
    assert strip.shape[0] == 64 + 4 + 64
    last = demo_true_frames(17)[sample_frame_indices(17, 6)[-1]]
    assert np.array_equal(strip[68:, -64:], last)
    assert "under them the scene's true frames" in report["outputs"][0]
    assert sorted(p.name for p in (tmp_path / "states").glob("*.pt")) == [
        "case_1_hidden_states.pt",
        "case_1_hidden_states_negative.pt",
    ]
    assert "dit_step_seconds: " in report["outputs"][4]
    # generate, run-manifest and extract-mllm say which model they run, as demo does.
    for output in report["outputs"][:4]:
        assert output.startswith("Using the embedded default model, the toy BindWeave ("), output[:200]
    # No library warning that a user cannot act on (transformers' torchvision fallback); a warning for
    # each job run at a size that is not the model's native one.
    assert "torchvision" not in report["stderr"]
    warning = "WARNING bindweave.generate: 32x32, 5 frames is not this model's native size (64x64, 17 frames)"
    assert report["stderr"].count(warning) == 2


def write_trained_lora(checkpoint: Path) -> Path:
    """A ``bindweave train`` checkpoint's adapter as ``save_lora_adapter`` writes it (PEFT keys and config)."""
    import torch
    from safetensors.torch import save_file

    adapter = checkpoint / "lora" / "pytorch_lora_weights.safetensors"
    adapter.parent.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_file(
        {"blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 16, generator=g),
         "blocks.0.attn1.to_q.lora_B.weight": torch.randn(16, 4, generator=g)},
        adapter, metadata={"format": "pt", "lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8})},
    )  # fmt: skip
    return checkpoint


def test_a_command_that_needs_an_extra_names_it_in_one_line(tmp_path):
    lora = write_trained_lora(tmp_path / "checkpoint-000001")  # --lora loads through PEFT
    runs = {
        "train": ["train", "missing.yaml"],
        "precompute": ["precompute", "--config", "c.yaml", "--manifest", "m.jsonl", "--output-dir", "out"],
        "ui": ["ui"],
        "generate --lora": [
            "generate",
            "--refs",
            "r.png",
            "--prompt",
            "p",
            "--out",
            "v.mp4",
            "--lora",
            str(lora),
        ],
    }
    (tmp_path / "r.png").write_bytes(b"")  # --lora is checked first: the references are never read
    report = run_base_install(list(runs.values()), tmp_path)
    assert report["codes"] == [1, 1, 1, 1]
    errors = [line for line in report["stderr"].splitlines() if line.startswith("ERROR")]
    assert errors == [
        "ERROR bindweave: bindweave train needs 'peft', of the 'train' extra: pip install -e \".[train]\"",
        "ERROR bindweave: bindweave precompute needs 'peft', of the 'train' extra: pip install -e \".[train]\"",
        "ERROR bindweave: the web app needs Gradio 5 or newer, of the 'ui' extra: pip install -e \".[ui]\"",
        "ERROR bindweave: bindweave generate needs 'peft', of the 'train' extra: pip install -e \".[train]\"",
    ], report["stderr"][-2000:]
    assert "Traceback" not in report["stderr"]
