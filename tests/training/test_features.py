"""Training features: full-length MLLM states, a micro-batch that gives each clip what it gets alone, and
the released MLLM input (spec 2.5, 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bindweave.conditioning.latents import encode_video
from bindweave.conditioning.mllm import encode_mllm, mllm_inputs
from bindweave.denoiser import Conditioning, predict_velocity
from bindweave.flow import add_noise, velocity_target
from bindweave.perf.cross_attention import install_fast_cross_attention
from bindweave.training.cache import FeatureCache, feature_settings
from bindweave.training.data import ClipDataset
from bindweave.training.features import FeatureEncoder, collate_features, released_mllm_images
from bindweave.training.manifest import read_clip_manifest
from bindweave.training.model import configure_trainable, load_pipeline
from bindweave.training.objective import FlowMatchingObjective

from .conftest import build_config, tiny_config_dict

# Tolerance of a clip's results in a micro-batch against the same clip alone. Both are float32 forwards of
# the same operations on the same values; only batched kernels may order their reductions differently with
# the batch size, which moves a result by a few float32 ulps (2^-23 = 1.2e-7 relative): measured here, the
# velocities agree to 3.5e-7 (norm of the difference over the norm) and the losses to 8e-8. A loss is a mean
# of squared velocity errors, so its relative error is at most ~2x the velocity's. RTOL = 2e-6 (~16 ulps)
# for both. Attending to zero-padded MLLM rows instead (what the old padding to `mllm_max_tokens` did) moves
# a clip's velocity by ~3e-4 relative, and its loss by 2e-6 (6 padding rows) to 2e-5-1.6e-4 (padded to 128).
RTOL = 2e-6
# Gradients: each parameter's gradient (norm of the difference over the norm) sums over every token of both
# clips through the backward of every block, so more reordered reductions: measured up to 3.6e-6 here.
GRAD_RTOL = 2e-5


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tiny_config(tmp_path: Path, pipeline_dir: Path, dataset: Path, **data):
    config = tiny_config_dict(tmp_path, pipeline_dir, dataset / "manifest.jsonl")
    config["data"] = {**config["data"], **data}
    return build_config(config)


def two_clips_of_unequal_length(cache_dir: Path, config):
    cache = FeatureCache(cache_dir, feature_settings(config.data, config.seed))
    features = [cache.load(entry) for entry in cache.clips[:2]]  # lines 1 and 2: one and two references
    assert features[0].mllm.shape[0] != features[1].mllm.shape[0]
    return features


def test_released_mllm_images_are_the_canvases_halved_bilinearly_and_truncated():
    """Each output pixel is the mean of a 2x2 block (bilinear, align_corners False, x0.5), then int(255 x)."""
    values = np.array(
        [
            [[10, 10, 3, 4], [10, 10, 3, 4]],  # block means 10 (a uniform block), 3.5
            [[200, 201, 0, 0], [201, 201, 0, 1]],  # 200.75, 0.25
        ],
        dtype=np.uint8,
    ).reshape(4, 4)
    pixels = np.stack([values, values[::-1], values.T])  # (3, 4, 4): three different channels
    canvases = torch.from_numpy(np.stack([pixels, 255 - pixels]).astype(np.float32) / 255.0)  # (2, 3, 4, 4)

    images = released_mllm_images(canvases)
    blocks = np.stack([pixels, 255 - pixels]).astype(np.float64).reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))
    expected = (
        np.floor(blocks).astype(np.uint8).transpose(0, 2, 3, 1)
    )  # (2, 2, 2, 3): truncation, not rounding
    assert [image.size for image in images] == [(2, 2), (2, 2)] and all(i.mode == "RGB" for i in images)
    assert np.array_equal(np.stack([np.asarray(image) for image in images]), expected)
    assert expected[0, 0, 1, 0] == 3 and expected[0, 1, 0, 0] == 200  # 3.5 and 200.75 truncated

    big = released_mllm_images(torch.rand(1, 3, 720, 1280))[0]
    assert big.size == (640, 360)


def test_the_mllm_input_without_the_pre_scale(tiny_pipeline_dir):
    """A 100x60 image reaches Qwen's processor as it is (grid 4x8 of 14 px) instead of x0.75 (grid 4x6)."""
    from bindweave.pipeline import BindWeavePipeline

    processor = BindWeavePipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32).mllm_processor
    image = released_mllm_images(torch.rand(1, 3, 120, 200))[0]  # 100x60
    # Qwen's smart_resize rounds each side to a multiple of 28: 60 -> 56, 100 -> 112; 45 -> 56, 75 -> 84.
    assert mllm_inputs(processor, "a cat", [image], prescale=False)["image_grid_thw"].tolist() == [[1, 4, 8]]
    assert mllm_inputs(processor, "a cat", [image])["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_features_keep_the_full_mllm_states_of_their_configured_input(
    tiny_pipeline_dir, tiny_dataset, tmp_path
):
    """inference: exactly the pipeline's states; released: the halved canvases without the pre-scale."""
    config = tiny_config(tmp_path, tiny_pipeline_dir, tiny_dataset, mllm_input="inference")
    pipe = load_pipeline(config.model, torch.float32, load_transformer=False)
    clip = ClipDataset(read_clip_manifest(tiny_dataset / "manifest.jsonl"), config.data, seed=0).load(1, 0)
    images, boxes = pipe.prepare_references(clip.references, 32, 32)

    inference = FeatureEncoder(pipe, config.data, torch.device("cpu")).encode(clip)
    states, _ = pipe.encode_mllm_states(clip.prompt, "", images, None, None, do_cfg=False)  # (1, L, D)
    assert inference.mllm.shape == states.shape[1:] and torch.equal(inference.mllm, states[0])

    config.data.mllm_input = "released"
    released = FeatureEncoder(pipe, config.data, torch.device("cpu")).encode(clip)
    pictures = released_mllm_images(torch.stack([b.canvas for b in boxes]))
    expected = encode_mllm(pipe.mllm, pipe.mllm_processor, clip.prompt, pictures, prescale=False)
    assert torch.equal(released.mllm, expected[0])
    assert not torch.equal(released.mllm, inference.mllm)
    for name in ("latents", "text", "image", "condition"):  # only the MLLM input differs
        assert torch.equal(getattr(released, name), getattr(inference, name))


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_a_micro_batch_gives_each_clip_what_it_gets_alone(
    tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path, trainable
):
    """Per-clip losses and the gradient of a micro-batch of 2 clips with MLLM states of unequal length equal
    those of each clip alone, with gradient checkpointing (it recomputes the blocks in the backward)."""
    config = tiny_config(tmp_path, tiny_pipeline_dir, tiny_dataset)
    items = two_clips_of_unequal_length(tiny_cache, config)
    transformer = load_pipeline(config.model, torch.float32).transformer
    params = configure_trainable(transformer, trainable, config.lora)
    install_fast_cross_attention(transformer)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    if trainable == "lora":  # B starts at zero: move it so the adapters change the output
        with torch.no_grad():
            for name, param in transformer.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    objective = FlowMatchingObjective()
    noise = torch.randn(2, *items[0].latents.shape, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([300, 800])  # mid-range timesteps: both losses carry weight

    def run(clips: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch = collate_features([items[i] for i in clips], clips, clips)
        with batch.padded(transformer):
            output = objective.loss(
                transformer, batch.latents, batch.cond, noise[clips], index[clips], batch.padding
            )
            (output.loss * len(clips)).backward()  # the sum over the clips of weighted losses
        grads = [p.grad.clone() for p in params]
        transformer.zero_grad(set_to_none=True)
        return output.per_sample.detach(), grads

    together, grads = run([0, 1])
    alone = [run([0]), run([1])]
    torch.testing.assert_close(together, torch.cat([a[0] for a in alone]), rtol=RTOL, atol=0)
    errors = [relative(g, g0 + g1) for g, g0, g1 in zip(grads, alone[0][1], alone[1][1], strict=True)]
    assert max(errors) < GRAD_RTOL, max(errors)

    # The padding rows matter: attended to (as with a fixed-length padding), they move the shorter clip.
    batch = collate_features(items, [0, 1], [0, 1])
    short = int(items[1].mllm.shape[0] < items[0].mllm.shape[0])
    single = collate_features([items[short]], [0], [0])
    x_t, timestep = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(1)), index * 1.0
    with torch.no_grad():
        reference = predict_velocity(
            transformer, x_t[short : short + 1], timestep[short : short + 1], single.cond
        )
        attended = predict_velocity(transformer, x_t, timestep, batch.cond)[short]
        with batch.padded(transformer):
            skipped = predict_velocity(transformer, x_t, timestep, batch.cond)[short]
    assert relative(skipped, reference[0]) < RTOL
    assert relative(attended, reference[0]) > 30 * RTOL  # measured ~3e-4


def test_a_padded_batch_must_run_inside_its_padded_context(
    tiny_cache, tiny_pipeline_dir, tiny_dataset, tmp_path
):
    config = tiny_config(tmp_path, tiny_pipeline_dir, tiny_dataset)
    batch = collate_features(two_clips_of_unequal_length(tiny_cache, config), [0, 1], [0, 1])
    transformer = load_pipeline(config.model, torch.float32).transformer
    install_fast_cross_attention(transformer)
    objective = FlowMatchingObjective()
    noise, index = objective.draw(tuple(batch.latents.shape[1:]), seed=0, stage=0, positions=[0, 1])
    with pytest.raises(ValueError, match=r"inside bindweave.perf.cross_attention.padded_context"):
        objective.loss(transformer, batch.latents, batch.cond, noise, index, batch.padding)


def test_training_conditions_each_clip_as_inference_does(tiny_pipeline_dir, tiny_dataset, tmp_path):
    """A micro-batch's per-clip losses equal an independent computation: each clip alone, conditioned by the
    inference calls of the pipeline (full-length MLLM states), noised and differenced by hand."""
    config = tiny_config(tmp_path, tiny_pipeline_dir, tiny_dataset, mllm_input="inference")
    pipe = load_pipeline(config.model, torch.float32)
    transformer = pipe.transformer.eval()
    install_fast_cross_attention(transformer)
    dataset = ClipDataset(read_clip_manifest(tiny_dataset / "manifest.jsonl"), config.data, seed=0)
    clips = [dataset.load(0, 0), dataset.load(1, 0)]  # one and two references
    objective = FlowMatchingObjective()
    noise = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([250, 600])

    velocities, losses = [], []
    with torch.no_grad():
        for b, clip in enumerate(clips):
            images, boxes = pipe.prepare_references(clip.references, 32, 32)
            mllm, _ = pipe.encode_mllm_states(clip.prompt, "", images, None, None, do_cfg=False)
            cond = Conditioning(
                text=pipe.encode_text(clip.prompt, "", do_cfg=False)[0],
                image=pipe.encode_clip_tokens(boxes),
                mllm=mllm,
                condition=pipe.prepare_condition(boxes, 9, 32, 32),
            )
            x0 = encode_video(pipe.vae, clip.video[None])
            sigma = objective.sigmas[index[b : b + 1]].float()
            x_t = add_noise(x0, noise[b : b + 1], sigma)
            velocity = predict_velocity(transformer, x_t, 1000 * sigma, cond)  # (1, z, F', h, w)
            velocities.append(velocity[0])
            losses.append((velocity - velocity_target(x0, noise[b : b + 1])).pow(2).mean())

        encoder = FeatureEncoder(pipe, config.data, torch.device("cpu"))
        batch = collate_features([encoder.encode(clip) for clip in clips], [1, 2], [0, 1])
        sigma = objective.sigmas[index].float()
        with batch.padded(transformer):
            found = objective.loss(transformer, batch.latents, batch.cond, noise, index, batch.padding)
            prediction = predict_velocity(
                transformer, add_noise(batch.latents, noise, sigma), 1000 * sigma, batch.cond
            )
    torch.testing.assert_close(found.per_sample, torch.stack(losses), rtol=RTOL, atol=0)
    assert [relative(prediction[b], velocities[b]) < RTOL for b in range(2)] == [True, True]
