"""The trainer: it learns, resumes bit for bit, writes loadable checkpoints, LoRA and validation videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from bindweave import cli
from bindweave.io.video import probe_video
from bindweave.perf.cross_attention import install_fast_cross_attention
from bindweave.pipeline import BindWeavePipeline
from bindweave.training.cache import FeatureCache, feature_settings
from bindweave.training.checkpoint import list_checkpoints, resume_hint
from bindweave.training.distributed import init_distributed
from bindweave.training.features import collate_features
from bindweave.training.metrics import read_metrics
from bindweave.training.model import configure_trainable, load_pipeline
from bindweave.training.objective import FlowMatchingObjective
from bindweave.training.trainer import Trainer, run_train

from .conftest import build_config, tiny_config_dict, write_config

WEIGHTS = "diffusion_pytorch_model.safetensors"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def cached_config(tmp_path: Path, pipeline_dir: Path, cache: Path, **overrides):
    """A tiny run on the precomputed features; ``stages`` default to one 3-step stage on the cache."""
    overrides.setdefault("stages", [{"name": "main", "steps": 3, "cache": str(cache), "lr": 1e-3}])
    return tiny_config_dict(tmp_path, pipeline_dir, cache, **overrides)


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "transformer" / WEIGHTS)


def test_overfitting_one_batch(tiny_cache, tiny_pipeline_dir):
    """With one fixed batch, noise and timesteps, the DiT + connector drive the loss down >= 10x."""
    torch.manual_seed(0)
    config = build_config(cached_config(Path("unused"), tiny_pipeline_dir, tiny_cache))
    cache = FeatureCache(tiny_cache, feature_settings(config.data, config.seed))
    batch = collate_features([cache.load(c) for c in cache.clips[:2]], [1, 2], [0, 1])
    transformer = load_pipeline(config.model, torch.float32).transformer
    params = configure_trainable(transformer, "full", config.lora)
    install_fast_cross_attention(transformer)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    objective = FlowMatchingObjective()
    noise, index = objective.draw(tuple(batch.latents.shape[1:]), seed=0, stage=0, positions=[0, 1])

    losses = []
    for _ in range(300):
        with batch.padded(transformer):
            loss = objective.loss(transformer, batch.latents, batch.cond, noise, index, batch.padding).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] * 10 <= losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_resume_continues_exactly_as_if_never_stopped(tiny_cache, tiny_pipeline_dir, tmp_path):
    """5 steps straight == 3 steps, stop, resume, 2 steps: same losses and bitwise-equal weights.

    Two curriculum stages (the stop falls inside the second, after its lr warmup began), gradient
    accumulation, gradient checkpointing and clipping, and checkpoint rotation along the way.
    """
    stages = [
        {"name": "curated", "steps": 2, "cache": str(tiny_cache), "lr": 1e-3},
        {"name": "full", "steps": 3, "cache": str(tiny_cache), "lr": 5e-4, "warmup_steps": 2},
    ]
    common = {
        "stages": stages,
        "gradient_accumulation_steps": 2,
        "gradient_checkpointing": True,
        "optimizer": {"max_grad_norm": 0.5},
    }
    straight = run_train(build_config(cached_config(tmp_path / "a", tiny_pipeline_dir, tiny_cache, **common)))

    resumed_dir = tmp_path / "b"
    resumed_config = cached_config(
        resumed_dir, tiny_pipeline_dir, tiny_cache, checkpoint={"every_steps": 1, "keep_last": 2, "save_dtype": "float32"},
        **common,
    )  # fmt: skip
    first = run_train(build_config({**resumed_config, "stop_after_steps": 3}))
    assert first.stopped_early and first.step == 3
    second = run_train(build_config(resumed_config))
    assert second.step == 5 and not second.stopped_early

    # Bitwise holds by construction: every run loads the same pipeline folder through the same loader, so the DiT's
    # weights sit at the same offsets of their mapped files; the optimizer updates them in place, and the
    # resume copies the saved values into them. The same kernels run on the same layout throughout.
    assert straight.losses == first.losses + second.losses
    a, b = load_weights(straight.checkpoints[-1]), load_weights(second.checkpoints[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [step for step, _ in list_checkpoints(resumed_dir)] == [4, 5]  # keep_last: 2
    metrics = read_metrics(resumed_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["stage"] for m in metrics] == ["curated"] * 2 + ["full"] * 3
    assert [m["lr"] for m in metrics] == [1e-3, 1e-3, 2.5e-4, 5e-4, 5e-4]  # per-stage lr, warmup in stage 2


def test_a_checkpoint_is_a_loadable_pipeline_and_validation_writes_videos(
    tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path
):
    reference = tiny_dataset / "subjects" / "subject0.png"
    config = cached_config(
        tmp_path,
        tiny_pipeline_dir,
        tiny_cache,
        validation={
            "every_steps": 3,
            "num_inference_steps": 2,
            "cases": [{"prompt": "a red square slides", "references": [str(reference)]}],
        },
        logging={"every_steps": 1, "tensorboard": True},
    )
    summary = run_train(build_config(config))
    checkpoint = summary.checkpoints[-1]
    assert checkpoint.name == "checkpoint-000003"
    assert (checkpoint / "vae").is_symlink() and os.readlink(checkpoint / "vae") == "../frozen/vae"
    assert not (checkpoint / "transformer").is_symlink()

    pipe = BindWeavePipeline.from_pretrained(checkpoint, dtype=torch.float32)
    trained = load_weights(checkpoint)
    assert all(torch.equal(pipe.transformer.state_dict()[k], v) for k, v in trained.items())
    frames = pipe(
        "a red square slides", [str(reference)], height=32, width=32, num_frames=9, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip
    assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()

    assert summary.validation_videos == [tmp_path / "validation" / "step-000003" / "00.mp4"]
    assert probe_video(summary.validation_videos[0]).num_frames == 9
    assert any((tmp_path / "tensorboard").iterdir())
    assert summary.clips_per_second > 0 and summary.tokens_per_second == summary.clips_per_second * 28


def test_lora_trains_and_saves_only_the_adapters(tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path):
    config = cached_config(
        tmp_path, tiny_pipeline_dir, tiny_cache, trainable="lora", lora={"rank": 4, "alpha": 4},
        stages=[{"name": "lora", "steps": 2, "cache": str(tiny_cache), "lr": 1e-2}],
    )  # fmt: skip
    summary = run_train(build_config(config))
    checkpoint = summary.checkpoints[-1]

    adapter = safetensors.torch.load_file(checkpoint / "lora" / LORA_WEIGHTS)
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(".attn2.add_k_proj.lora_B" in k for k in adapter)
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B starts at zero: it trained

    # The checkpoint's transformer is the untouched base: only the adapters changed.
    assert (checkpoint / "transformer").is_symlink()
    base = BindWeavePipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32).transformer.state_dict()
    pipe = BindWeavePipeline.from_pretrained(checkpoint, dtype=torch.float32)
    assert all(torch.equal(base[k], v) for k, v in pipe.transformer.state_dict().items())

    def generate() -> torch.Tensor:
        return pipe(
            "a red square slides", [str(tiny_dataset / "subjects" / "subject0.png")], height=32, width=32,
            num_frames=9, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent",
        ).frames  # fmt: skip

    before = generate()
    pipe.transformer.load_lora_adapter(checkpoint / "lora", weight_name=LORA_WEIGHTS, prefix=None)
    assert not torch.allclose(generate(), before)


@pytest.mark.parametrize(
    ("trainable", "weights"), [("lora", f"lora/{LORA_WEIGHTS}"), ("connector", f"transformer/{WEIGHTS}")]
)
def test_a_run_with_frozen_weights_resumes_exactly(
    trainable, weights, tiny_cache, tiny_pipeline_dir, tmp_path
):
    """4 steps straight == 2, stop, resume, 2: a resume loads only the trainable weights (the frozen ones
    are not in the training state, which a strict load used to refuse)."""
    common = {"trainable": trainable, "lora": {"rank": 4, "alpha": 4}}
    common["stages"] = [{"name": "main", "steps": 4, "cache": str(tiny_cache), "lr": 1e-2}]
    straight = run_train(build_config(cached_config(tmp_path / "a", tiny_pipeline_dir, tiny_cache, **common)))
    split = cached_config(tmp_path / "b", tiny_pipeline_dir, tiny_cache, **common)
    first = run_train(build_config({**split, "stop_after_steps": 2}))
    second = run_train(build_config(split))

    assert first.stopped_early and second.step == 4
    assert straight.losses == first.losses + second.losses
    a, b = (safetensors.torch.load_file(s.checkpoints[-1] / weights) for s in (straight, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_connector_only_training_changes_only_the_connector(tiny_cache, tiny_pipeline_dir, tmp_path):
    summary = run_train(
        build_config(cached_config(tmp_path, tiny_pipeline_dir, tiny_cache, trainable="connector"))
    )
    base = BindWeavePipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32).transformer.state_dict()
    trained = load_weights(summary.checkpoints[-1])
    changed = {k for k, v in trained.items() if not torch.equal(base[k], v)}
    assert changed and all(k.startswith("condition_embedder.text_projector.") for k in changed)


def test_ctrl_c_names_the_last_checkpoint_and_how_to_resume(
    tiny_cache, tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    """Interrupted in step 3 of a run checkpointing every step: one line, exit 130, no traceback."""
    out = tmp_path / "run"
    config = cached_config(out, tiny_pipeline_dir, tiny_cache, checkpoint={"every_steps": 1, "keep_last": 5})
    real_step, steps = Trainer._optimizer_step, []

    def third_step_interrupted(self, *args, **kwargs):
        steps.append(len(steps) + 1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_optimizer_step", third_step_interrupted)
    assert cli.main(["train", str(write_config(tmp_path / "train.json", config))]) == 130
    err = capsys.readouterr().err
    line = (
        f"bindweave train: interrupted; the last checkpoint is {out / 'checkpoint-000002'} (step 2); run the "
        "same command again to continue from it (resume: auto)"
    )
    assert "Traceback" not in err and err.splitlines()[-1] == line
    assert [text for text in err.splitlines() if text.startswith("bindweave")] == [line]


def test_resume_hint_without_a_checkpoint_or_without_auto_resume(tmp_path):
    assert resume_hint(tmp_path, "auto", 500) == (
        f"no checkpoint in {tmp_path} yet (one every 500 steps): a rerun starts from step 0"
    )
    (tmp_path / "checkpoint-000007" / "training_state").mkdir(parents=True)
    (tmp_path / "checkpoint-000007" / "training_state" / "state.json").write_text("{}")
    assert resume_hint(tmp_path, "never", 500) == (
        f"the last checkpoint is {tmp_path / 'checkpoint-000007'} (step 7); set resume: auto (or resume: "
        f"{tmp_path / 'checkpoint-000007'}) in the config and run it again to continue from it"
    )


def test_the_objective_section_reaches_the_trainer(tiny_cache, tiny_pipeline_dir, tmp_path):
    """``objective: {shift: 1, loss_weighting: uniform}``: the run draws from the unshifted table, weight 1."""
    objective = {"shift": 1.0, "loss_weighting": "uniform"}
    config = build_config(cached_config(tmp_path, tiny_pipeline_dir, tiny_cache, objective=objective))
    trainer = Trainer(config, init_distributed())
    try:
        expected = torch.linspace(1.0, 0.0, 1001, dtype=torch.float64)[:-1]
        torch.testing.assert_close(trainer.objective.sigmas, expected, rtol=0, atol=1e-12)
        assert torch.equal(trainer.objective.weights, torch.ones(1000, dtype=torch.float64))
    finally:
        trainer.close()
    default = Trainer(
        build_config(cached_config(tmp_path / "d", tiny_pipeline_dir, tiny_cache)), init_distributed()
    )
    try:
        assert default.objective.sigmas[500] == 5 * 0.5 / 3 and default.objective.weights.min() == 0
    finally:
        default.close()


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_on_a_cpu_without_bf16_kernels_warns(
    tiny_cache, tiny_pipeline_dir, tmp_path, monkeypatch, caplog, fast
):
    """Emulated bf16 autocast made the toy DiT's step 7x slower than fp32 (an AVX2 CPU): say so at start."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: fast)
    config = build_config(cached_config(tmp_path, tiny_pipeline_dir, tiny_cache, precision="bf16"))
    with caplog.at_level("WARNING", logger="bindweave.training"):
        Trainer(config, init_distributed()).close()
    warned = [r.message for r in caplog.records if "no bf16 kernels" in r.message]
    assert warned == (
        [] if fast else ["precision bf16: this CPU has no bf16 kernels, so it is emulated; fp32 is faster"]
    )
