"""The ``bindweave`` CLI on a tiny pipeline folder and the released sample manifest."""

import argparse
import json
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from bindweave import cli, extract, generate
from bindweave.io.manifest import load_manifest
from bindweave.io.video import probe_video, read_video
from bindweave.testing import TINY_SIZE

SMALL = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", "1"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # the session's tiny pipeline folder (read only)


@pytest.fixture(scope="module")
def ref_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(30, 40), (36, 24)]):
        path = folder / f"ref{i}.png"
        PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def extracted(model_dir, fixtures_dir, tmp_path_factory):
    """`extract-mllm` on the released sample manifest (3 cases), run once for the module."""
    out = tmp_path_factory.mktemp("states")
    code = cli.main(
        ["extract-mllm", "--model", str(model_dir), "--manifest", str(fixtures_dir / "test_case.json"),
         "--images-dir", str(fixtures_dir), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def test_generate_writes_an_h264_mp4_that_reloads(model_dir, ref_paths, tmp_path, caplog):
    out = tmp_path / "video.mp4"
    code = cli.main(
        [
            "generate",
            "--model",
            str(model_dir),
            "--refs",
            *ref_paths,
            "--prompt",
            "a cat",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert code == 0
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width, info.fps, info.codec) == (5, 32, 48, 16, "h264")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]  # no temporary files left
    native = f"{TINY_SIZE['height']}x{TINY_SIZE['width']}, {TINY_SIZE['num_frames']} frames"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"32x48, 5 frames is not this model's native size ({native}): it may generate worse"]


def test_generate_same_seed_same_video(model_dir, ref_paths, tmp_path):
    args = ["generate", "--model", str(model_dir), "--refs", *ref_paths, "--prompt", "a cat", *SMALL]
    for name, seed in [("a", "1"), ("b", "1"), ("c", "2")]:
        assert cli.main([*args, "--seed", seed, "--out", str(tmp_path / f"{name}.mp4")]) == 0
    a, b, c = (read_video(tmp_path / f"{n}.mp4")[0] for n in "abc")
    # Bitwise: each run loads the same folder through the same loader and nothing moves the weights, so they
    # sit at the same offsets of their mapped files and the same kernels run (bindweave.testing.tolerance).
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-frames", "80"], "4k \\+ 1"),
        (["--height", "40"], "multiple of 16"),
        (["--guidance", "0.5"], "--guidance"),
    ],
)
def test_generate_rejects_bad_settings_before_loading(model_dir, ref_paths, tmp_path, caplog, extra, message):
    out = tmp_path / "video.mp4"
    code = cli.main(["generate", "--model", str(tmp_path / "no-model"), "--refs", *ref_paths, "--prompt", "x",
                     "--out", str(out), *extra])  # fmt: skip
    assert code == 1 and not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and re.search(message, errors[0])


def test_generate_bad_inputs_exit_non_zero_with_a_named_error(model_dir, ref_paths, tmp_path, caplog):
    base = ["generate", "--model", str(model_dir), "--prompt", "x", *SMALL]
    assert cli.main([*base, "--refs", str(tmp_path / "nope.png"), "--out", str(tmp_path / "a.mp4")]) == 1
    assert "nope.png" in caplog.text
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert cli.main([*base, "--refs", *ref_paths, "--out", str(blocker / "sub" / "a.mp4")]) == 1
    assert str(blocker) in caplog.text
    assert cli.main([*base, "--refs", *ref_paths, "--out", str(tmp_path / "a.gif")]) == 1
    assert ".mp4" in caplog.text
    assert list(tmp_path.glob("*.mp4")) == []


def test_generate_interrupted_leaves_no_partial_file(model_dir, ref_paths, tmp_path, monkeypatch, capsys):
    from bindweave.io import video

    def failing_encode(frames, path, fps, crf):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "_encode_h264", failing_encode)
    out = tmp_path / "video.mp4"
    code = cli.main(
        [
            "generate",
            "--model",
            str(model_dir),
            "--refs",
            *ref_paths,
            "--prompt",
            "x",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert code == 130 and capsys.readouterr().err.splitlines()[-1] == "bindweave generate: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_extract_mllm_writes_released_format_and_a_manifest_copy(extracted, fixtures_dir, model_dir):
    manifest = load_manifest(extracted / "test_case.json")
    original = load_manifest(fixtures_dir / "test_case.json")
    assert list(manifest) == list(original) == ["faceobj_1", "singleface_1", "multihuman_14"]
    mllm_dim = json.loads((model_dir / "mllm" / "config.json").read_text())["text_config"]["hidden_size"]
    for case, entry in manifest.items():
        assert entry.prompt == original[case].prompt and entry.img_paths == original[case].img_paths
        for rel in (entry.hidden_states_path, entry.hidden_states_path_negative):
            states = torch.load(extracted / rel, weights_only=True)
            assert isinstance(states, torch.Tensor) and states.dtype == torch.bfloat16
            assert states.ndim == 3 and states.shape[0] == 1 and states.shape[2] == mllm_dim
        positive = torch.load(extracted / entry.hidden_states_path, weights_only=True)
        negative = torch.load(extracted / entry.hidden_states_path_negative, weights_only=True)
        assert not torch.equal(positive[:, :10], negative[:, :10]) or positive.shape != negative.shape


def test_extract_mllm_resumes_without_recomputing(extracted, fixtures_dir, model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(extract, "encode_mllm", lambda *a, **k: calls.append(a) or None)
    args = ["extract-mllm", "--model", str(model_dir), "--manifest", str(fixtures_dir / "test_case.json"),
            "--images-dir", str(fixtures_dir), "--out", str(extracted)]  # fmt: skip
    assert cli.main(args) == 0 and calls == []


def test_run_manifest_generates_every_entry_and_resumes(
    extracted, fixtures_dir, model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "videos"
    args = ["run-manifest", "--model", str(model_dir), "--manifest", str(extracted / "test_case.json"),
            "--images-dir", str(fixtures_dir), "--out", str(out), *SMALL]  # fmt: skip

    # A run killed while writing its second video keeps the first and leaves nothing partial.
    from bindweave.io import video

    real_encode, written = video._encode_h264, []

    def encode_then_die(frames, path, fps, crf):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real_encode(frames, path, fps, crf)

    monkeypatch.setattr(video, "_encode_h264", encode_then_die)
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"bindweave run-manifest: interrupted; 1 of 3 videos are in {out}; run the same command again to "
        "make the rest (finished videos are skipped)"
    )
    assert sorted(p.name for p in out.iterdir()) == ["faceobj_1.mp4", "run_record.json"]
    first_bytes = (out / "faceobj_1.mp4").read_bytes()
    monkeypatch.undo()

    # The rerun generates only the two missing entries.
    from bindweave.pipeline import BindWeavePipeline

    prompts = []
    real_call = BindWeavePipeline.__call__
    monkeypatch.setattr(
        BindWeavePipeline,
        "__call__",
        lambda self, p, *a, **k: prompts.append(p) or real_call(self, p, *a, **k),
    )
    assert cli.main(args) == 0
    manifest = load_manifest(extracted / "test_case.json")
    assert prompts == [manifest["singleface_1"].prompt, manifest["multihuman_14"].prompt]
    videos = sorted(p.name for p in out.glob("*.mp4"))
    assert videos == ["faceobj_1.mp4", "multihuman_14.mp4", "singleface_1.mp4"]
    assert (out / "faceobj_1.mp4").read_bytes() == first_bytes
    for name in ("faceobj_1", "singleface_1", "multihuman_14"):
        assert probe_video(out / f"{name}.mp4").num_frames == 5

    record = json.loads((out / "run_record.json").read_text())
    assert sorted(record["seconds_per_video"]) == ["faceobj_1", "multihuman_14", "singleface_1"]
    assert record["config"]["seed"] == 42 and record["versions"]["torch"] == torch.__version__

    # Everything done: nothing is loaded or generated.
    prompts.clear()
    assert cli.main(args) == 0 and prompts == []


def test_run_manifest_checks_every_image_first(fixtures_dir, model_dir, tmp_path, caplog):
    manifest = tmp_path / "m.json"
    data = json.loads((fixtures_dir / "test_case.json").read_text())
    data["singleface_1"]["img_paths"] = ["Images/missing.png"]
    manifest.write_text(json.dumps(data))
    code = cli.main(["run-manifest", "--model", str(model_dir), "--manifest", str(manifest),
                     "--images-dir", str(fixtures_dir), "--out", str(tmp_path / "v"), *SMALL])  # fmt: skip
    assert code == 1 and "singleface_1" in caplog.text and "missing.png" in caplog.text
    assert not any((tmp_path / "v").glob("*.mp4"))


def test_shard_of_partitions_entries():
    items = list(range(7))
    shards = [generate.shard_of(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == items and shards[1] == [1, 4]


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "bindweave.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    for command in ("generate", "run-manifest", "extract-mllm", "demo"):
        assert command in result.stdout


def test_help_imports_no_job_module_and_no_torch():
    """``bindweave --help`` lists the commands without importing what they run (it takes a fraction of a
    second); a command's own help imports its config module only."""
    script = """
import contextlib, io, json, sys
from bindweave.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("bindweave", "torch", "numpy", "PIL"))))
"""
    top = json.loads(subprocess.check_output([sys.executable, "-c", script, "--help"], text=True))
    assert top == ["bindweave", "bindweave._lazy", "bindweave._logging", "bindweave.cli", "bindweave.config",
                   "bindweave.extras", "bindweave.interrupt"]  # fmt: skip
    generate_help = json.loads(
        subprocess.check_output([sys.executable, "-c", script, "generate", "--help"], text=True)
    )
    assert "bindweave.generate_config" in generate_help and "bindweave.generate" not in generate_help
    assert not any(m.split(".")[0] == "torch" for m in generate_help)


def _options(command: str) -> dict[str, str]:
    *group, name = command.split(" ")
    parser = cli.build_parser()
    for word in [*group, name]:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return {a.dest: a.help for a in parser._actions}


def test_help_states_the_real_defaults_of_both_models():
    """The help's numbers are the shipped model's model_index.json and the released pipeline's defaults."""
    import inspect

    from bindweave.default_model import SHIPPED_MODEL
    from bindweave.pipeline import BindWeavePipeline

    toy = json.loads((SHIPPED_MODEL / "model_index.json").read_text())
    paper = {k: p.default for k, p in inspect.signature(BindWeavePipeline.__init__).parameters.items()}
    for command in ("generate", "run-manifest", "eval generate"):
        options = _options(command)
        size = f"{toy['default_height']}x{toy['default_width']} for the embedded model, "
        assert (
            size + f"{paper['default_height']}x{paper['default_width']} for the released one"
            in options["height"]
        )
        frames = f"{toy['default_num_frames']} for the embedded model, {paper['default_num_frames']} for the released"
        assert frames in options["num_frames"]
        steps = f"{toy['default_num_inference_steps']} for the embedded model, the paper's "
        assert steps + f"{paper['default_num_inference_steps']} for the released one" in options["steps"]
        assert f"{toy['default_guidance_scale']} for the embedded model" in options["guidance"]
        assert f"the paper's {paper['default_guidance_scale']} for the released one" in options["guidance"]
    toy_eval = _options("toy-eval")["guidance_scale"]
    assert f"default_guidance_scale: {toy['default_guidance_scale']} for the embedded model" in toy_eval
    demo = _options("demo")
    assert demo["prompt"].count("(default:") == 1
    assert f"{toy['default_num_inference_steps']} for the embedded model" in demo["steps"]


def test_a_successful_job_closes_the_process_group_it_leaves_open(tmp_path):
    """A context-parallel job joins a process group and never leaves it; ``main`` closes it on success."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert cli.main(["toy", "data", "--out", str(tmp_path / "data"), "--num-clips", "1"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_failed_job_leaves_the_process_group_alone(tmp_path):
    """Tearing down while other ranks may still be inside a collective can hang: errors skip it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert cli.main(["demo", "--model", str(tmp_path / "missing")]) == 1
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
