"""Training and feature-precomputation configs.

A training run is described by one YAML or JSON file loaded into :class:`TrainConfig`, a tree of typed
dataclasses. The dataclasses are the single source of truth for names, types, defaults and meaning (each
field's ``help``); :func:`load_train_config` checks a file against them and names the offending key, with
its full path, for any unknown key, missing value or wrong type, so a typo in a 512-GPU job fails in a
second on the login node rather than silently falling back to a default.

Relative paths in a config file are resolved against the directory of that file, so a config and its
manifests can be moved together.

:class:`PrecomputeConfig` is flat (it becomes the ``bindweave precompute`` command-line options); it points
at a training config so that cached features and online encoding can never be made with different
settings.

The ``data`` section lives in :mod:`.data_config` and the file reading and checking in :mod:`.config_io`;
both are re-exported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from bindweave.config import field

from .config_io import ConfigError, config_to_dict, from_mapping, read_mapping
from .data_config import AugmentConfig, DataConfig, MildAugmentConfig

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "EMAConfig",
    "LoRAConfig",
    "LoggingConfig",
    "MildAugmentConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimizerConfig",
    "PrecomputeConfig",
    "StageConfig",
    "TrainConfig",
    "ValidationCase",
    "ValidationConfig",
    "config_to_dict",
    "from_mapping",
    "load_train_config",
]

#: The attention projections of every Wan block (self- and cross-attention, incl. the image branch).
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


# ---------------------------------------------------------------------------------------------- sections


@dataclasses.dataclass
class ModelConfig:
    """Where the pretrained components come from: a pipeline folder, or the three released folders."""

    pipeline: Path | None = field(
        None, help="a BindWeavePipeline folder (save_pretrained output or a training checkpoint)"
    )
    wan: Path | None = field(None, help="Wan2.1-I2V-14B-720P-Diffusers folder (umT5, CLIP, VAE)")
    transformer: Path | None = field(None, help="the released BindWeave transformer folder")
    mllm: Path | None = field(None, help="Qwen2.5-VL-7B-Instruct folder")
    encoder_dtype: Literal["float32", "bfloat16"] = field(
        "bfloat16", help="dtype of the frozen umT5, CLIP and MLLM (the VAE always runs in float32)"
    )

    def validate(self, where: str) -> None:
        released = (self.wan, self.transformer)
        if self.pipeline is not None and any(p is not None for p in (*released, self.mllm)):
            raise ConfigError(f"{where}: give either model.pipeline or model.wan/transformer/mllm, not both")
        if self.pipeline is None and any(p is None for p in released):
            raise ConfigError(
                f"{where}: model needs either 'pipeline' (a BindWeavePipeline folder) or both 'wan' and "
                "'transformer' (the released folders, plus 'mllm')"
            )


@dataclasses.dataclass
class StageConfig:
    """One stage of the curriculum: its data (raw clips or a feature cache), length and learning rate."""

    name: str = field(help="stage name, used in logs")
    steps: int = field(help="optimizer steps in this stage")
    manifest: Path | None = field(None, help="JSONL clip manifest, encoded online by the frozen encoders")
    cache: Path | None = field(None, help="feature cache folder written by `bindweave precompute`")
    lr: float = field(5e-6, help="peak learning rate of this stage")
    warmup_steps: int = field(0, help="linear warmup from 0 over the first steps of this stage")

    def validate(self, where: str) -> None:
        if (self.manifest is None) == (self.cache is None):
            raise ConfigError(f"{where}: give exactly one of 'manifest' (raw clips) or 'cache' (features)")
        if self.steps < 1:
            raise ConfigError(f"{where}.steps: must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{where}.warmup_steps: must be >= 0, got {self.warmup_steps}")


@dataclasses.dataclass
class ObjectiveConfig:
    """Where the flow-matching loss looks. Defaults are the release's (spec 4): shift 5, its loss weights.

    The released weights are ~0 at both ends of the table. Where a clip's latents can be read through
    nearly all of the noise (the toy's: 278k values a clip), the prompt matters only at that top end, and
    a model trained from scratch with them never learnt to read it; flat weights did (docs/toy-world.md).
    """

    shift: float = field(5.0, help="timestep-table shift (the release: 5.0; 1.0: sigmas drawn uniformly)")
    loss_weighting: Literal["released", "uniform"] = field(
        "released", help="per-timestep loss weight: the release's bell over the table, or 1 everywhere"
    )
    subject_weight: float = field(
        1.0,
        help="loss weight of the latent elements on a subject (manifest 'subject_mask') against the "
        "background's 1 (the release: 1.0, a plain MSE)",
    )

    def validate(self, where: str) -> None:
        if self.shift <= 0:
            raise ConfigError(f"{where}.shift: must be > 0, got {self.shift}")
        if self.subject_weight <= 0:
            raise ConfigError(f"{where}.subject_weight: must be > 0, got {self.subject_weight}")


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW. Defaults as the paper reports: betas (0.9, 0.999), no weight decay, no gradient clipping.

    The released training script differs (weight decay 5e-3, clipping at 1.0; ``configs/released_14b.yaml``).
    """

    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    weight_decay: float = field(0.0, help="AdamW (decoupled) weight decay")
    eps: float = field(1e-8, help="AdamW epsilon")
    max_grad_norm: float | None = field(
        None, help="clip the global gradient norm to this (null: no clipping)"
    )

    def validate(self, where: str) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: expected two values in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"{where}.max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")


@dataclasses.dataclass
class EMAConfig:
    """An exponential moving average of the trainable weights, sampled from instead of the weights.

    Off by default, as in the release. On, every checkpoint's ``transformer/`` (or ``lora/``) and the
    validation videos use the average; the training state keeps both, so a run resumes exactly.
    """

    decay: float | None = field(
        None, help="average <- decay * average + (1 - decay) * weight each step (null: no EMA)"
    )
    warmup: bool = field(
        True,
        help="ramp the decay as min(decay, (1 + k) / (10 + k)) after k updates (diffusers' EMAModel); false: the "
        "full decay from the second update on (the first takes the weights), for a run from trained weights",
    )

    def validate(self, where: str) -> None:
        if self.decay is not None and not 0 < self.decay < 1:
            raise ConfigError(f"{where}.decay: must be in (0, 1) or null, got {self.decay}")


@dataclasses.dataclass
class LoRAConfig:
    """PEFT LoRA on the DiT; only the adapter weights train and get saved."""

    rank: int = field(32, help="LoRA rank r")
    alpha: float = field(32.0, help="LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = field(0.0, help="dropout on the LoRA branch input")
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        help="module name suffixes that get adapters (default: all attention projections)",
    )

    def validate(self, where: str) -> None:
        if self.rank < 1:
            raise ConfigError(f"{where}.rank: must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ConfigError(f"{where}.target_modules: must name at least one module")


@dataclasses.dataclass
class DistributedConfig:
    """FSDP2 sharding (used whenever the job runs on more than one process, or with shard_single_process)."""

    shard_group_size: int | None = field(
        None,
        help="shard within groups of this many ranks and replicate across groups (HSDP); null: shard over all",
    )
    reshard_after_forward: bool = field(True, help="free gathered block weights after forward (ZeRO-3)")
    shard_single_process: bool = field(
        False, help="shard with FSDP2 even in a one-process job (runs the sharded code path on one GPU)"
    )

    def validate(self, where: str) -> None:
        if self.shard_group_size is not None and self.shard_group_size < 1:
            raise ConfigError(f"{where}.shard_group_size: must be >= 1, got {self.shard_group_size}")


@dataclasses.dataclass
class LoggingConfig:
    every_steps: int = field(10, help="log loss, lr, grad norm and throughput every this many steps")
    tensorboard: bool = field(True, help="also write TensorBoard events under output_dir/tensorboard")

    def validate(self, where: str) -> None:
        if self.every_steps < 1:
            raise ConfigError(f"{where}.every_steps: must be >= 1, got {self.every_steps}")


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = field(500, help="write a checkpoint every this many steps (and at the end)")
    keep_last: int = field(3, help="keep only the newest this many checkpoints")
    save_dtype: Literal["float32", "bfloat16"] = field(
        "bfloat16",
        help="dtype of the transformer weights in checkpoint-*/transformer (training state is fp32)",
    )

    def validate(self, where: str) -> None:
        if self.every_steps < 1:
            raise ConfigError(f"{where}.every_steps: must be >= 1, got {self.every_steps}")
        if self.keep_last < 1:
            raise ConfigError(f"{where}.keep_last: must be >= 1, got {self.keep_last}")


@dataclasses.dataclass
class ValidationCase:
    prompt: str = field(help="validation prompt")
    references: list[Path] = field(help="1-4 reference images")


@dataclasses.dataclass
class ValidationConfig:
    """Periodic generation from fixed prompts and references, written as mp4."""

    every_steps: int = field(0, help="generate every this many steps (0: never)")
    cases: list[ValidationCase] = field(default_factory=list, help="fixed prompts and references")
    num_inference_steps: int = field(50, help="sampler steps")
    guidance_scale: float = field(5.0, help="classifier-free guidance scale")
    height: int | None = field(None, help="video height (null: data.height)")
    width: int | None = field(None, help="video width (null: data.width)")
    num_frames: int | None = field(None, help="video frames (null: data.num_frames)")
    seed: int = field(0, help="seed of the initial noise (the same every time, to compare steps)")

    def validate(self, where: str) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"{where}.every_steps: must be >= 0, got {self.every_steps}")
        if self.every_steps and not self.cases:
            raise ConfigError(f"{where}.cases: every_steps is set but no validation case is given")
        for i, case in enumerate(self.cases):
            if not 1 <= len(case.references) <= 4:
                raise ConfigError(f"{where}.cases[{i}].references: need 1-4, got {len(case.references)}")


@dataclasses.dataclass
class TrainConfig:
    """A whole training run (spec 4): model, data, curriculum, optimisation, checkpoints, validation."""

    output_dir: Path = field(help="checkpoints, logs, validation videos and metrics go here")
    model: ModelConfig = field(help="pretrained components")
    stages: list[StageConfig] = field(help="the curriculum, trained in order")
    data: DataConfig = field(default_factory=DataConfig, help="clip decoding and feature settings")
    seed: int = field(0, help="seeds data order, augmentation, noise and timesteps")
    micro_batch_size: int = field(1, help="clips per process per forward/backward")
    gradient_accumulation_steps: int = field(1, help="micro-batches per optimizer step")
    global_batch_size: int | None = field(
        None, help="if set, must equal micro_batch_size * gradient_accumulation_steps * world size"
    )
    trainable: Literal["full", "connector", "lora"] = field(
        "full", help="full: DiT + connector; connector: the MLLM connector alone; lora: adapters on the DiT"
    )
    lora: LoRAConfig = field(default_factory=LoRAConfig, help="LoRA settings (trainable: lora)")
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, help="AdamW settings")
    objective: ObjectiveConfig = field(
        default_factory=ObjectiveConfig, help="timestep table and loss weights of the flow-matching loss"
    )
    ema: EMAConfig = field(default_factory=EMAConfig, help="a moving average of the weights, for sampling")
    precision: Literal["bf16", "fp32"] = field(
        "bf16", help="bf16: bf16 compute with fp32 master weights (CUDA); fp32: everything in float32"
    )
    gradient_checkpointing: bool = field(True, help="recompute block activations in backward")
    deterministic: bool = field(
        False,
        help="deterministic kernels only (torch.use_deterministic_algorithms): a rerun or a resumed run "
        "repeats every bit on CUDA too; slower, and an op without a deterministic kernel raises",
    )
    distributed: DistributedConfig = field(default_factory=DistributedConfig, help="FSDP2 settings")
    logging: LoggingConfig = field(default_factory=LoggingConfig, help="stdout / TensorBoard logging")
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, help="checkpointing")
    validation: ValidationConfig = field(default_factory=ValidationConfig, help="validation videos")
    resume: Literal["auto", "never"] | Path = field(
        "auto", help="auto: continue from the newest checkpoint in output_dir; never; or a checkpoint path"
    )
    stop_after_steps: int | None = field(
        None,
        help="leave after this many optimizer steps of this invocation, checkpointing first "
        "(for time-limited cluster jobs; the next run resumes)",
    )

    def validate(self, where: str = "config") -> None:
        self.model.validate(f"{where}: model")
        if not self.stages:
            raise ConfigError(f"{where}: stages: at least one stage is required")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: stages: names must be unique, got {names}")
        for i, stage in enumerate(self.stages):
            stage.validate(f"{where}: stages[{i}]")
        self.data.validate(f"{where}: data")
        if self.micro_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError(f"{where}: micro_batch_size and gradient_accumulation_steps must be >= 1")
        self.lora.validate(f"{where}: lora")
        self.optimizer.validate(f"{where}: optimizer")
        self.objective.validate(f"{where}: objective")
        self.ema.validate(f"{where}: ema")
        self.distributed.validate(f"{where}: distributed")
        if self.trainable == "lora" and self.distributed.shard_single_process:
            raise ConfigError(
                f"{where}: distributed.shard_single_process: LoRA runs unsharded (trainable: lora in one process)"
            )
        self.logging.validate(f"{where}: logging")
        self.checkpoint.validate(f"{where}: checkpoint")
        self.validation.validate(f"{where}: validation")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ConfigError(f"{where}: stop_after_steps must be >= 1, got {self.stop_after_steps}")

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)


@dataclasses.dataclass
class PrecomputeConfig:
    """``bindweave precompute``: encode a manifest's clips once with the frozen encoders."""

    config: Path = field(
        help="training config (YAML/JSON) whose 'model', 'data' and 'seed' define the features"
    )
    manifest: Path = field(help="JSONL clip manifest to encode")
    output_dir: Path = field(help="feature cache folder (one safetensors file per clip + index.json)")
    device: str | None = field(None, help="device of the encoders (default: this rank's GPU, else cpu)")


# ---------------------------------------------------------------------------------------------- loading


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and check a YAML (``.yaml``/``.yml``) or JSON training config.

    Raises:
        ConfigError: naming the file and the key path (``stages[1].lr``) of an unknown key, a missing
            required key, a value of the wrong type, or an invalid combination.
    """
    path = Path(path)
    data = read_mapping(path)
    config = from_mapping(TrainConfig, data, where=str(path), base_dir=path.parent)
    config.validate(str(path))
    return config
