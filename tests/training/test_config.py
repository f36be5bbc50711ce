"""Training configs: the shipped recipes load, and every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bindweave.training.cache import feature_settings
from bindweave.training.config import ConfigError, load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MINIMAL = """
output_dir: out
model: {pipeline: pipe}
stages:
  - {name: one, steps: 10, manifest: clips.jsonl, lr: 5e-6}
"""


def write(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_paper_recipe_loads_with_the_reported_settings():
    config = load_train_config(CONFIGS / "paper_14b.yaml")
    assert [(s.steps, s.lr) for s in config.stages] == [(1000, 5e-6), (5000, 5e-6)]
    assert all(s.cache is not None and s.warmup_steps == 0 for s in config.stages)
    assert config.global_batch_size == 512 and config.micro_batch_size == 1
    assert config.trainable == "full" and config.precision == "bf16" and config.gradient_checkpointing
    assert config.optimizer.betas == [0.9, 0.999] and config.optimizer.weight_decay == 0.0
    assert config.optimizer.max_grad_norm is None
    assert (config.objective.shift, config.objective.loss_weighting) == (5.0, "released")
    assert (config.data.height, config.data.width, config.data.num_frames, config.data.fps) == (
        720,
        1280,
        81,
        16,
    )
    assert not config.data.first_frame_condition
    assert config.model.transformer == CONFIGS / "../checkpoints/BindWeave"  # relative to the file


def test_lora_recipe_loads():
    config = load_train_config(CONFIGS / "lora_single_gpu.yaml")
    assert config.trainable == "lora" and config.lora.rank == 32
    assert config.lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]
    assert config.stages[0].manifest is not None and config.global_batch_size is None


def test_minimal_config_gets_the_released_defaults(tmp_path):
    config = load_train_config(write(tmp_path, MINIMAL))
    assert config.stages[0].lr == 5e-6  # PyYAML reads "5e-6" as a string; floats accept it
    assert config.stages[0].manifest == tmp_path / "clips.jsonl"
    assert config.optimizer.betas == [0.9, 0.999] and config.trainable == "full"
    assert config.data.on_bad_sample == "error" and config.resume == "auto"
    assert config.data.augment.enabled and config.data.augment.mode == "released"  # spec 4, as released
    assert config.data.mllm_input == "released" and not config.data.first_frame_condition


# file -> (stage lrs, weight decay, max grad norm, adam eps, augmentation mode, MLLM input)
RECIPES = {
    "paper_14b.yaml": ([5e-6, 5e-6], 0.0, None, 1e-8, "released", "released"),  # as the paper reports
    "released_14b.yaml": ([1e-5], 5e-3, 1.0, 1e-8, "released", "released"),  # the released train_s2v.sh
    "lora_single_gpu.yaml": ([1e-4], 0.0, 1.0, 1e-8, "released", "released"),
    "toy.yaml": ([2e-3, 2e-4, 2e-3, 2e-4], 0.0, 1.0, 1e-8, "mild", "inference"),
    "toy-long.yaml": ([1e-3, 2e-4], 0.0, 1.0, 1e-8, "mild", "inference"),
    "toy-long-anneal.yaml": ([2e-4], 0.0, 1.0, 1e-8, "mild", "inference"),
    "toy-continue.yaml": ([1e-3, 2e-4], 0.0, 1.0, 1e-8, "mild", "inference"),
    "toy-subject.yaml": ([1e-3, 2e-4], 0.0, 1.0, 1e-8, "mild", "inference"),
}


def test_every_shipped_config_loads_with_its_recipe():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(RECIPES)  # a new config joins the table
    for name, (lrs, weight_decay, max_grad_norm, eps, augment, mllm_input) in RECIPES.items():
        config = load_train_config(CONFIGS / name)
        found = (
            [s.lr for s in config.stages],
            config.optimizer.weight_decay,
            config.optimizer.max_grad_norm,
            config.optimizer.eps,
            config.data.augment.mode,
            config.data.mllm_input,
        )
        assert found == (lrs, weight_decay, max_grad_norm, eps, augment, mllm_input), name
        assert config.data.augment.enabled and not config.data.first_frame_condition, name
        assert config.optimizer.betas == [0.9, 0.999], name
        # Only the toy's long runs leave the release's loss weights (the 2x VAE's DiT cannot learn its prompt
        # with them; the continued shipped model learns no worse with flat ones), and only toy-subject and
        # toy-long weigh the subjects' latents more (toy-long-anneal, its landing anneal, goes back to 1).
        weighting = "uniform" if name.startswith(("toy-long", "toy-continue", "toy-subject")) else "released"
        subject_weight = 10.0 if name in ("toy-long.yaml", "toy-subject.yaml") else 1.0
        assert (config.objective.shift, config.objective.loss_weighting) == (5.0, weighting), name
        assert config.objective.subject_weight == subject_weight, name
        # Only the toy's long run samples from an EMA (the release keeps none).
        ema = (0.999, False) if name == "toy-long.yaml" else (None, True)
        assert (config.ema.decay, config.ema.warmup) == ema, name


def test_the_released_recipe_mirrors_the_released_script():
    config = load_train_config(CONFIGS / "released_14b.yaml")
    assert [(s.steps, s.warmup_steps) for s in config.stages] == [(5000, 0)]  # TRAIN_ITERS, no warmup
    assert config.gradient_checkpointing and config.precision == "bf16" and config.trainable == "full"
    assert config.micro_batch_size == 1 and config.gradient_accumulation_steps == 1
    assert config.checkpoint.every_steps == 1000  # SAVE_INTERVAL
    assert (config.data.height, config.data.width, config.data.num_frames) == (720, 1280, 81)


def test_the_toy_keeps_its_mild_augmentation():
    augment = load_train_config(CONFIGS / "toy.yaml").data.augment
    assert (augment.mild.scale, augment.mild.rotation_degrees, augment.mild.flip_probability) == (
        [0.9, 1.1],
        5.0,
        0.0,
    )
    assert (augment.mild.brightness, augment.mild.contrast, augment.mild.saturation, augment.mild.hue) == (
        0.05,
        0.05,
        0.05,
        0.0,
    )


def test_the_long_runs_landing_anneal_reads_its_cache():
    """configs/toy-long-anneal.yaml trains on the long run's feature cache, which a change of its data
    settings or seed would make it refuse; it starts where scripts/toy-long-land.sh puts the weights."""
    long, anneal = (load_train_config(CONFIGS / name) for name in ("toy-long.yaml", "toy-long-anneal.yaml"))
    assert feature_settings(anneal.data, anneal.seed) == feature_settings(long.data, long.seed)
    assert anneal.stages[0].cache.resolve() == long.stages[0].cache.resolve()
    assert anneal.model.pipeline.resolve() == (CONFIGS.parent / "runs/toy-long/anneal/start").resolve()
    assert (anneal.objective.subject_weight, anneal.ema.decay) == (1.0, None)


def test_json_configs_load_too(tmp_path):
    path = write(
        tmp_path,
        '{"output_dir": "o", "model": {"pipeline": "p"}, "stages": [{"name": "a", "steps": 1, "cache": "c"}],'
        ' "resume": "ckpt/checkpoint-000010"}',
        "train.json",
    )
    assert load_train_config(path).resume == tmp_path / "ckpt/checkpoint-000010"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "lerning_rate: 1\n", "lerning_rate: unknown key"),
        (MINIMAL.replace("lr: 5e-6", "lr: 5e-6, warmup: 3"), "stages[0].warmup: unknown key"),
        (MINIMAL + "micro_batch_size: two\n", "micro_batch_size: expected an integer, got 'two'"),
        (MINIMAL + "data: {height: 720.5}\n", "data.height: expected an integer"),
        (MINIMAL + "data: {augment: {mild: {scale: 1.2}}}\n", "data.augment.mild.scale: expected a list"),
        (
            MINIMAL + "data: {augment: {mode: strong}}\n",
            "data.augment.mode: expected one of ['released', 'mild']",
        ),
        (
            MINIMAL + "data: {mllm_max_tokens: 512}\n",
            "data.mllm_max_tokens: removed: MLLM states are kept at full length",
        ),
        (
            MINIMAL + "data: {augment: {scale: [0.8, 1.2]}}\n",
            "data.augment.scale: moved to data.augment.mild.scale, used with data.augment.mode: mild",
        ),
        (MINIMAL + "trainable: everything\n", "trainable: expected one of ['full', 'connector', 'lora']"),
        (MINIMAL + "gradient_checkpointing: 1\n", "gradient_checkpointing: expected true or false"),
        (MINIMAL.replace("output_dir: out\n", ""), "output_dir: required key is missing"),
        (
            MINIMAL.replace("manifest: clips.jsonl", "manifest: a.jsonl, cache: c"),
            "exactly one of 'manifest'",
        ),
        (MINIMAL + "data: {num_frames: 80}\n", "data.num_frames: must be 4k + 1"),
        (
            MINIMAL + "trainable: lora\ndistributed: {shard_single_process: true}\n",
            "distributed.shard_single_process: LoRA runs unsharded",
        ),
        (MINIMAL + "objective: {shift: 0}\n", "objective.shift: must be > 0, got 0"),
        (
            MINIMAL + "objective: {loss_weighting: flat}\n",
            "objective.loss_weighting: expected one of ['released', 'uniform']",
        ),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_missing_or_unparsable_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_train_config(write(tmp_path, "stages: [\n"))
