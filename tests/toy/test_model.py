"""The toy model: its components, the base-folder command, ablations, export and the benchmark runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bindweave import cli
from bindweave.conditioning.latents import encode_video
from bindweave.pipeline import BindWeavePipeline
from bindweave.testing import assert_close_to_float32_rounding
from bindweave.toy.ablation import ABLATIONS, AblatedBindWeavePipeline
from bindweave.toy.config import VARIANTS
from bindweave.toy.dataset import toy_scene
from bindweave.toy.evaluate import ToyEvalConfig, format_table, toy_eval
from bindweave.toy.export import export_pipeline
from bindweave.toy.metrics import score_clip
from bindweave.toy.model import TOY_GUIDANCE, TOY_SIZE, toy_corpus, toy_vae
from bindweave.toy.vae import ToyBaseConfig, reconstruct_clip, run_toy_base, toy_vae_batch
from bindweave.toy.world import render_clip


def test_toy_vae_compresses_4x_in_space_and_time():
    vae = toy_vae()
    video = torch.zeros(1, 3, 17, 64, 64)
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, 16, 5, 16, 16)
    assert (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (4, 4)


def test_vae_batches_are_clips_and_reference_canvases():
    batch = toy_vae_batch(np.random.default_rng(0), 16, seed=0)
    assert batch.shape == (16, 3, 9, 64, 64)  # 1 + 2 chunks of 4: every causal-cache path of the VAE
    assert batch.min() >= -1 and batch.max() <= 1
    static = [(b[:, :1] == b).all().item() for b in batch]  # reference canvases are repeated frames
    assert 0 < sum(static) < 16
    assert torch.equal(batch, toy_vae_batch(np.random.default_rng(0), 16, seed=0))


def test_vae_batch_crops_are_windows_of_the_whole_frames():
    whole = toy_vae_batch(np.random.default_rng(3), 6, seed=0)
    cropped = toy_vae_batch(np.random.default_rng(3), 6, seed=0, crop=32)
    assert cropped.shape == (6, 3, 9, 32, 32)
    for clip, crop in zip(whole, cropped, strict=True):  # the same clips, drawn in the same order
        windows = clip.unfold(2, 32, 1).unfold(3, 32, 1)  # (3, 9, 33, 33, 32, 32)
        assert (windows == crop[:, :, None, None]).flatten(4).all(-1).all(0).all(0).any()
    with pytest.raises(ValueError, match="multiple of 4"):
        toy_vae_batch(np.random.default_rng(0), 1, seed=0, crop=30)


def test_toy_tokenizers_know_the_toy_words(toy_pipe):
    from bindweave.testing.tokenizers import build_umt5_tokenizer

    prompt = toy_corpus()[-1]
    tokens = toy_pipe.tokenizer(prompt).input_ids
    assert toy_pipe.tokenizer.unk_token_id not in tokens
    assert len(tokens) < len(build_umt5_tokenizer()(prompt).input_ids)  # fewer pieces than the generic one


def test_toy_pipeline_generates_at_its_native_size(toy_pipe):
    assert {k: toy_pipe.config[f"default_{k}"] for k in TOY_SIZE} == TOY_SIZE
    from bindweave.default_model import demo_references

    frames = toy_pipe(
        "On a grey background, the subject starts in the centre and rises.",
        demo_references()[:1],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert frames.shape == (17, 64, 64, 3)


@pytest.mark.parametrize("name", ["no-mllm", "no-clip", "no-vae-refs"])
def test_ablations_zero_exactly_one_stream(toy_pipe, name):
    from bindweave.default_model import demo_references

    seen = {}

    def capture(pipe):
        def hook(_module, args, kwargs):
            seen[pipe.ablation] = {
                "mllm": kwargs["mllm_hidden_states"].clone(),
                "image": kwargs["encoder_hidden_states_image"].clone(),
                "condition": kwargs["condition"].clone(),
                "text": kwargs["encoder_hidden_states"].clone(),
            }

        return hook

    runs = {}
    for ablation in (ABLATIONS["full"], ABLATIONS[name]):
        pipe = AblatedBindWeavePipeline.from_pipeline(toy_pipe, ablation)
        assert pipe.config.default_guidance_scale == toy_pipe.config.default_guidance_scale == TOY_GUIDANCE
        handle = pipe.transformer.register_forward_pre_hook(capture(pipe), with_kwargs=True)
        try:
            pipe("On a grey background, the subject rises.", demo_references(), num_inference_steps=1,
                 guidance_scale=1.0, output_type="latent")  # fmt: skip
        finally:
            handle.remove()
        runs[ablation] = seen[ablation]
    full, ablated = runs[ABLATIONS["full"]], runs[ABLATIONS[name]]
    zeroed = {"no-mllm": "mllm", "no-clip": "image", "no-vae-refs": "condition"}[name]
    for key in full:
        if key == zeroed and key == "condition":
            assert ablated[key][:, :, :4].abs().max() == 0  # the 4 reference slots
            assert full[key][:, :, :4].abs().max() > 0
            assert torch.equal(ablated[key][:, :, 4:], full[key][:, :, 4:])  # the video part is kept
        elif key == zeroed:
            assert ablated[key].abs().max() == 0 and full[key].abs().max() > 0
        else:
            assert torch.equal(ablated[key], full[key])


def test_run_toy_base_writes_a_loadable_pipeline_and_reuses_it(tmp_path, capsys, monkeypatch):
    from bindweave.toy import vae

    # The latent mean / std over 2 clips instead of 64: the same code, 9/10 of this test's time saved.
    monkeypatch.setattr(vae, "_STATS_CLIPS", 2)
    out = tmp_path / "base"
    config = ToyBaseConfig(out=out, steps=2, clip_steps=1, batch_size=2, crop=16)
    run_toy_base(config)
    pipe = BindWeavePipeline.from_pretrained(out)
    assert pipe.vae.config.scale_factor_spatial == 4
    mean = torch.tensor(pipe.vae.config.latents_mean)
    assert mean.shape == (16,) and mean.abs().max() > 0  # measured, not the 0 placeholder
    assert json.loads((out / "toy_base.json").read_text())["steps"] == 2
    stamp = (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    run_toy_base(config)  # same settings: kept
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        run_toy_base(ToyBaseConfig(out=out, steps=3, clip_steps=1, batch_size=2, crop=16))


def test_export_resolves_links_and_drops_training_state(tmp_path, toy_pipe):
    frozen = tmp_path / "train" / "frozen"
    checkpoint = tmp_path / "train" / "checkpoint-000010"
    toy_pipe.save_pretrained(frozen)
    checkpoint.mkdir(parents=True)
    for item in frozen.iterdir():
        (checkpoint / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    (checkpoint / "training_state").mkdir()
    (checkpoint / "training_state" / "state.json").write_text("{}")
    out = export_pipeline(tmp_path / "train", tmp_path / "model")  # the newest checkpoint of output_dir
    assert not (out / "training_state").exists()
    assert not any(p.is_symlink() for p in out.rglob("*"))
    reloaded = BindWeavePipeline.from_pretrained(out)
    for key, value in toy_pipe.transformer.state_dict().items():
        assert torch.equal(reloaded.transformer.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="neither a pipeline checkpoint"):
        export_pipeline(tmp_path / "nothing-here", tmp_path / "x")


def test_toy_eval_scores_variants_and_resumes(tmp_path, toy_pipe):
    config = ToyEvalConfig(
        model=tmp_path, variants=["trained", "ground-truth"], num_samples=2, steps=1, out=tmp_path
    )
    results = toy_eval(toy_pipe, config)
    assert [len(results[v]) for v in ("trained", "ground-truth")] == [2, 2]
    assert all(s.psnr == 100.0 and s.direction_accuracy == 1.0 for s in results["ground-truth"])
    table = format_table(results)
    assert table.splitlines()[2].startswith("| trained | ") and "ground-truth" in table
    saved = (tmp_path / "trained.json").read_text()
    assert json.loads(saved)["settings"]["guidance_scale"] == TOY_GUIDANCE == 1.0  # the model's own default
    again = toy_eval(toy_pipe, config)  # reused from disk, not regenerated
    assert (tmp_path / "trained.json").read_text() == saved and again == results
    with pytest.raises(ValueError, match="unknown"):
        toy_eval(toy_pipe, ToyEvalConfig(model=tmp_path, variants=["best"], out=tmp_path))


def test_vae_recon_scores_the_true_clip_through_the_vae(tmp_path, toy_pipe):
    """The ceiling row: the held-out clip encoded and decoded (no DiT), as the pipeline's own decode gives it."""
    assert VARIANTS[-2:] == ("vae-recon", "ground-truth")  # in the default table, under the DiT rows
    config = ToyEvalConfig(model=tmp_path, variants=["vae-recon"], num_samples=1, out=tmp_path)
    (scores,) = toy_eval(toy_pipe, config)["vae-recon"]
    scene = toy_scene(config.world_seed, "heldout", 0)
    truth = render_clip(scene)  # (17, 64, 64, 3) uint8
    frames = reconstruct_clip(toy_pipe.vae, truth)
    assert frames.shape == truth.shape and frames.dtype == np.float32
    assert scores == score_clip(frames, scene, truth)
    # The pipeline's path: normalised latents, denormalised and decoded, postprocessed to [0, 1].
    video = torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
    with torch.no_grad():
        decoded = toy_pipe.decode(encode_video(toy_pipe.vae, video), output_type="np")[0]
    assert_close_to_float32_rounding(frames, decoded, scale=1.0)
    assert 0 < np.abs(frames - truth / 255.0).mean() and scores.psnr < 100  # a lossy reconstruction


def test_toy_cli_commands_are_registered():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["toy-eval", "--model", "m", "--num-samples", "3", "--variants", "trained", "no-clip"]
    )
    assert args.num_samples == 3 and args.variants == ["trained", "no-clip"]
    assert parser.parse_args(["toy", "data", "--out", "x"]).num_clips == 1200
