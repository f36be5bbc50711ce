"""The toy model: its components, the base-folder command, ablations, export and the benchmark runner."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
from bindweave.toy.model import TOY_GUIDANCE, TOY_SIZE, build_toy_pipeline, toy_corpus, toy_vae
from bindweave.toy.sprites import reference_image
from bindweave.toy.vae import (
    ToyBaseConfig,
    reconstruct_clip,
    reconstruction_loss,
    run_toy_base,
    toy_vae_batch,
)
from bindweave.toy.world import render_clip


@pytest.mark.parametrize(
    ("spatial", "temporal", "channels", "latent_shape"),
    [
        (4, 4, 16, (16, 5, 16, 16)),
        (2, 2, 16, (16, 9, 32, 32)),
        (2, 1, 16, (16, 17, 32, 32)),
        (2, 2, 4, (4, 9, 32, 32)),
    ],
)
def test_toy_vae_compresses_as_asked(spatial, temporal, channels, latent_shape):
    vae = toy_vae(spatial_compression=spatial, temporal_compression=temporal, latent_channels=channels)
    video = torch.zeros(1, 3, 17, 64, 64)
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
        decoded = vae.decode(latents).sample
    assert latents.shape == (1, *latent_shape)
    assert decoded.shape == video.shape
    assert (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (spatial, temporal)


def test_toy_vae_refuses_more_compression_in_time_than_in_space():
    with pytest.raises(ValueError, match="at most the spatial one"):
        toy_vae(spatial_compression=2, temporal_compression=4)
    with pytest.raises(ValueError, match="--temporal-compression 4 exceeds"):
        ToyBaseConfig(out="x", spatial_compression=2, temporal_compression=4).validate()
    with pytest.raises(ValueError, match="--latent-channels must be >= 1 .* got 8, 0, 0.0"):
        ToyBaseConfig(out="x", latent_channels=0).validate()


def test_vae_batches_are_clips_and_reference_canvases():
    batch, mask = toy_vae_batch(np.random.default_rng(0), 16, seed=0)
    assert batch.shape == (16, 3, 9, 64, 64)  # 1 + 2 chunks of 4: every causal-cache path of the VAE
    assert mask.shape == (16, 1, 9, 64, 64)
    assert batch.min() >= -1 and batch.max() <= 1
    static = [(b[:, :1] == b).all().item() for b in batch]  # reference canvases are repeated frames
    assert 0 < sum(static) < 16
    again, again_mask = toy_vae_batch(np.random.default_rng(0), 16, seed=0)
    assert torch.equal(batch, again) and torch.equal(mask, again_mask)


def test_vae_batch_masks_cover_the_sprites_and_one_pixel_around_them():
    batch, mask = toy_vae_batch(np.random.default_rng(1), 12, seed=0)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for pixels, m in zip(batch, mask[:, 0], strict=True):
        frame, frame_mask = pixels[:, 0], m[0]  # (3, H, W), (H, W)
        if (frame[:, 0, 0] == -1).all():  # a reference canvas: the sprite on white inside black (no
            # clip background is black)
            sprite = (frame < 1).any(0) & (frame > -1).any(0)  # neither white nor the black border
        else:  # a clip window: whatever is not the background colour (the corner pixel's here)
            background = frame[:, :1, :1]
            sprite = (frame != background).any(0)
        grown = F.max_pool2d(sprite[None].float(), 3, stride=1, padding=1)[0]
        assert torch.equal(frame_mask, grown), "the mask is the sprites grown by one pixel"
        assert 0 < frame_mask.mean() < 0.6


def test_vae_batch_crops_are_windows_of_the_whole_frames():
    whole, whole_mask = toy_vae_batch(np.random.default_rng(3), 6, seed=0)
    cropped, cropped_mask = toy_vae_batch(np.random.default_rng(3), 6, seed=0, crop=32)
    assert cropped.shape == (6, 3, 9, 32, 32)
    assert cropped_mask.shape == (6, 1, 9, 32, 32)
    for clip, crop, m, crop_m in zip(whole, cropped, whole_mask, cropped_mask, strict=True):  # the same clips
        windows = clip.unfold(2, 32, 1).unfold(3, 32, 1)  # (3, 9, 33, 33, 32, 32)
        mask_windows = m.unfold(2, 32, 1).unfold(3, 32, 1)  # (1, 9, 33, 33, 32, 32)
        same_pixels = (windows == crop[:, :, None, None]).flatten(4).all(-1).all(0).all(0)  # (33, 33)
        same_mask = (mask_windows == crop_m[:, :, None, None]).flatten(4).all(-1).all(0).all(0)
        assert (same_pixels & same_mask).any()  # a window of the frame, pixels and mask alike
    with pytest.raises(ValueError, match="multiple of 4"):
        toy_vae_batch(np.random.default_rng(0), 1, seed=0, crop=30)


def test_reconstruction_loss_weighs_the_sprites():
    torch.manual_seed(0)
    recon, target = torch.randn(2, 3, 5, 8, 8), torch.randn(2, 3, 5, 8, 8)
    mask = (torch.rand(2, 1, 5, 8, 8) < 0.2).float()
    error = recon - target
    plain = error.abs().mean() + error.pow(2).mean()  # the loss before subject weighting
    assert torch.equal(reconstruction_loss(recon, target, mask, 0.0), plain)  # the same operations
    per_pixel = (error.abs() + error.pow(2)).sum(1)  # (2, 5, 8, 8), summed over channels
    on, off = per_pixel[mask[:, 0] == 1].sum(), per_pixel[mask[:, 0] == 0].sum()
    n_on, n_off = 3 * mask.sum(), 3 * (1 - mask).sum()
    expected = (10 * on + off) / (10 * n_on + n_off)
    torch.testing.assert_close(reconstruction_loss(recon, target, mask, 9.0), expected)


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


def test_a_less_compressing_vae_gets_larger_dit_patches_and_the_same_tokens_per_frame(toy_pipe):
    from bindweave.default_model import demo_references

    pipe = build_toy_pipeline(toy_vae(spatial_compression=2, temporal_compression=2, width=16), seed=0)
    narrow = build_toy_pipeline(
        toy_vae(spatial_compression=2, temporal_compression=2, latent_channels=4), seed=0
    )
    assert pipe.transformer.config.patch_size == (1, 4, 4)
    assert toy_pipe.transformer.config.patch_size == (1, 2, 2)  # the shipped recipe's VAE: 4x and 4x
    # The DiT's channels follow the VAE's: noise z + condition (4 masks + z), out z.
    assert (narrow.transformer.config.in_channels, narrow.transformer.config.out_channels) == (12, 4)
    assert (pipe.transformer.config.in_channels, pipe.transformer.config.out_channels) == (36, 16)
    lengths = {}
    for name, p in (("2x", pipe), ("4x", toy_pipe), ("2x z4", narrow)):

        def record(_module, _args, kwargs, name=name):
            lengths.setdefault(name, tuple(kwargs["hidden_states"].shape))

        hook = p.transformer.register_forward_pre_hook(record, with_kwargs=True)
        try:
            frames = p("On a grey background, the subject rises.", demo_references()[:1], num_inference_steps=1,
                       generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
        finally:
            hook.remove()
        assert frames.shape == (17, 64, 64, 3)
    # Latents (B, z, F, h, w): 9 frames of 32 x 32 against 5 of 16 x 16; 8 x 8 tokens of 8 x 8 pixels
    # per frame in all three.
    assert lengths == {"2x": (1, 16, 9, 32, 32), "4x": (1, 16, 5, 16, 16), "2x z4": (1, 4, 9, 32, 32)}


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
    assert (pipe.vae.config.scale_factor_spatial, pipe.vae.config.scale_factor_temporal) == (4, 4)
    assert tuple(pipe.transformer.config.patch_size) == (1, 2, 2)  # tokens of 8 x 8 pixels
    mean = torch.tensor(pipe.vae.config.latents_mean)
    assert mean.shape == (16,) and mean.abs().max() > 0  # measured, not the 0 placeholder
    assert json.loads((out / "toy_base.json").read_text())["steps"] == 2
    stamp = (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    run_toy_base(config)  # same settings: kept
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        run_toy_base(ToyBaseConfig(out=out, steps=3, clip_steps=1, batch_size=2, crop=16))
    # A folder made before the compression, width and weight options had them as the defaults are now.
    record = json.loads((out / "toy_base.json").read_text())
    for key in (
        "spatial_compression",
        "temporal_compression",
        "vae_width",
        "latent_channels",
        "subject_weight",
        "tie_reference_embedding",
    ):
        del record[key]
    (out / "toy_base.json").write_text(json.dumps(record))
    run_toy_base(config)  # kept
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        run_toy_base(
            dataclasses.replace(config, spatial_compression=2, temporal_compression=2, latent_channels=4)
        )


def test_toy_base_refuses_latents_its_dit_cannot_denoise():
    # A 2x VAE of 16 channels: 4 x 4 patches of 256 values, more than the width-128 output head emits.
    with pytest.raises(
        ValueError, match=r"--latent-channels 16 with --spatial-compression 2 puts 256 .* at most 8 latent"
    ):
        ToyBaseConfig(out="x", spatial_compression=2, temporal_compression=1, vae_width=16).validate()
    ToyBaseConfig(out="x", spatial_compression=2, temporal_compression=1, latent_channels=8).validate()
    ToyBaseConfig(out="x").validate()  # the shipped recipe's 4x VAE: 2 x 2 patches of 16 channels, 64


def test_the_dit_output_lies_in_its_heads_span_so_wider_tokens_keep_noise():
    """Why the check above: every velocity the DiT predicts is ``proj_out.weight @ h + bias``, so sampling
    never touches the starting noise outside that span, half of each token when it holds 256 values."""
    pipe = build_toy_pipeline(toy_vae(spatial_compression=2, temporal_compression=1, width=8), seed=0)
    dit = pipe.transformer
    weight, bias = dit.proj_out.weight.detach().double(), dit.proj_out.bias.detach().double()
    assert weight.shape == (256, 128)
    q = torch.linalg.qr(weight).Q  # (256, 128): an orthonormal basis of the span
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 8, generator=generator)  # (B, z, F, h, w): 3 frames of 2 x 2 tokens
    condition = torch.randn(1, 20, 3 + 4, 8, 8, generator=generator)  # 4 slots + the video's frames
    with torch.no_grad():
        v = dit(
            x, torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, 512, 32, generator=generator),
            encoder_hidden_states_image=torch.randn(1, 4 * 17, 32, generator=generator),
            mllm_hidden_states=torch.randn(1, 5, 32, generator=generator),
            condition=condition, return_dict=False,
        )[0]  # fmt: skip
    # (1, 16, F, 8, 8) -> one row per token, ordered as proj_out's (p_t, p_h, p_w, z) outputs
    tokens = v.double()[0].reshape(16, -1, 2, 4, 2, 4).permute(1, 2, 4, 3, 5, 0).reshape(-1, 256) - bias
    outside = tokens - tokens @ q @ q.T
    assert outside.abs().max() < 1e-4 * tokens.abs().max()
    noise = torch.randn(4096, 256, dtype=torch.float64, generator=generator)
    kept = (noise - noise @ q @ q.T).pow(2).sum() / noise.pow(2).sum()
    assert abs(kept.item() - 0.5) < 0.01


def test_toy_base_makes_the_less_compressing_vae_and_its_dit(tmp_path, monkeypatch):
    from bindweave.toy import vae

    monkeypatch.setattr(vae, "_STATS_CLIPS", 2)
    config = ToyBaseConfig(
        out=tmp_path / "base", steps=1, clip_steps=1, batch_size=2, crop=16,
        spatial_compression=2, temporal_compression=2, vae_width=8, latent_channels=4, subject_weight=10.0,
        tie_reference_embedding=True,
    )  # fmt: skip
    assert [phase.frames for phase in vae.vae_phases(config)] == [
        5,
        17,
    ]  # the first frame + two 2-frame chunks
    run_toy_base(config)
    pipe = BindWeavePipeline.from_pretrained(config.out)
    assert (pipe.vae.config.scale_factor_spatial, pipe.vae.config.scale_factor_temporal) == (2, 2)
    assert pipe.vae.config.base_dim == 8 and tuple(pipe.transformer.config.patch_size) == (1, 4, 4)
    assert pipe.vae.config.z_dim == 4 and len(pipe.vae.config.latents_std) == 4
    assert (pipe.transformer.config.in_channels, pipe.transformer.config.out_channels) == (12, 4)
    assert json.loads((config.out / "toy_base.json").read_text())["subject_weight"] == 10.0
    # Tied: input channels 8-11 (the condition's latents, after 4 noise and 4 mask channels) read as 0-3.
    weight = pipe.transformer.patch_embedding.weight
    assert torch.equal(weight[:, 8:12], weight[:, 0:4]) and not torch.equal(weight[:, 4:8], weight[:, 0:4])
    untied = build_toy_pipeline(pipe.vae, seed=0).transformer.patch_embedding.weight
    assert torch.equal(untied[:, :8], weight[:, :8]) and not torch.equal(untied[:, 8:12], untied[:, 0:4])


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


def test_the_train_split_scores_the_scenes_toy_data_writes(tmp_path, toy_pipe):
    """``split="train"``: every row scores training scene i, generated with noise seed i as held-out ones are."""
    config = ToyEvalConfig(
        model=tmp_path, variants=["trained", "vae-recon"], num_samples=1, steps=1, split="train", out=tmp_path
    )
    results = toy_eval(toy_pipe, config)
    scene = toy_scene(0, "train", 0)
    assert scene != toy_scene(0, "heldout", 0)
    truth = render_clip(scene)
    references = [reference_image(s.sprite)[0] for s in scene.subjects]
    frames = toy_pipe(
        scene.prompt, references, num_inference_steps=1, generator=torch.Generator().manual_seed(0)
    ).frames[0]
    assert results["trained"] == [score_clip(frames, scene, truth)]
    assert results["vae-recon"] == [score_clip(reconstruct_clip(toy_pipe.vae, truth), scene, truth)]
    assert json.loads((tmp_path / "trained.json").read_text())["settings"]["split"] == "train"


def test_scores_saved_before_the_split_option_are_reused_as_held_out(tmp_path, toy_pipe):
    config = ToyEvalConfig(model=tmp_path, variants=["ground-truth"], num_samples=1, out=tmp_path)
    toy_eval(toy_pipe, config)
    path = tmp_path / "ground-truth.json"
    record = json.loads(path.read_text())
    del record["settings"]["split"]
    record["scores"][0]["psnr"] = -1.0  # a marker: only a reused file can carry it
    path.write_text(json.dumps(record))
    assert toy_eval(toy_pipe, config)["ground-truth"][0].psnr == -1.0
    train = dataclasses.replace(config, split="train")
    assert toy_eval(toy_pipe, train)["ground-truth"][0].psnr == 100.0  # another split: scored anew


def test_toy_cli_commands_are_registered():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["toy-eval", "--model", "m", "--num-samples", "3", "--variants", "trained", "no-clip"]
    )
    assert args.num_samples == 3 and args.variants == ["trained", "no-clip"]
    assert parser.parse_args(["toy", "data", "--out", "x"]).num_clips == 1200
