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
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from bindweave.config import field

T = TypeVar("T")

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "LoRAConfig",
    "LoggingConfig",
    "ModelConfig",
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


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file and the key path."""


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
class AugmentConfig:
    """Reference-image augmentation, so the model cannot copy-paste the reference (spec 4).

    Every draw is seeded by (run seed, clip, epoch, reference), so a clip gets the same augmentation in
    online training and in a precomputed cache, and a resumed run replays the same draws.
    """

    enabled: bool = field(True, help="augment the reference subjects")
    scale: list[float] = field(
        default_factory=lambda: [0.8, 1.2], help="[min, max] random resize factor of the subject cut-out"
    )
    rotation_degrees: float = field(8.0, help="random rotation in [-x, x] degrees")
    flip_probability: float = field(0.5, help="probability of a horizontal flip")
    brightness: float = field(0.1, help="brightness factor drawn from [1 - x, 1 + x]")
    contrast: float = field(0.1, help="contrast factor drawn from [1 - x, 1 + x]")
    saturation: float = field(0.1, help="saturation factor drawn from [1 - x, 1 + x]")
    hue: float = field(0.02, help="hue shift drawn from [-x, x] turns of the colour wheel (<= 0.5)")

    def validate(self, where: str) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"{where}.scale: expected [min, max] with 0 < min <= max, got {self.scale}")
        if not 0 <= self.flip_probability <= 1:
            raise ConfigError(f"{where}.flip_probability: must be in [0, 1], got {self.flip_probability}")
        for name in ("rotation_degrees", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.hue > 0.5:
            raise ConfigError(f"{where}.hue: must be <= 0.5, got {self.hue}")


@dataclasses.dataclass
class DataConfig:
    """How a clip becomes training features; shared by online encoding and the precomputed cache."""

    height: int = field(720, help="bucket height: frames are resized and centre-cropped to it")
    width: int = field(1280, help="bucket width")
    num_frames: int = field(81, help="frames per clip, 4k + 1")
    fps: float = field(16.0, help="frames are sampled at this rate from the source video")
    frame_start: Literal["random", "first"] = field(
        "random", help="where the sampled window starts: seeded random, or the first frame"
    )
    subject_background: Literal["white", "black"] = field(
        "white",
        help="colour outside a reference's subject mask (OpenS2V's cut-outs are on white) before letterboxing",
    )
    mllm_max_tokens: int = field(
        512, help="MLLM states are zero-padded / truncated to this many tokens, as the released trainer does"
    )
    first_frame_condition: bool = field(
        False,
        help="also feed the clip's first frame as an I2V condition like the released trainer "
        "(inconsistent with inference, spec 4)",
    )
    on_bad_sample: Literal["error", "skip"] = field(
        "error", help="a bad manifest line or unreadable clip: stop with an error, or log, count and skip it"
    )
    feature_dtype: Literal["float32", "bfloat16"] = field(
        "bfloat16", help="dtype of the encoded features, online and in the cache"
    )
    num_workers: int = field(
        2, help="data-loader worker processes that decode videos (0: in the main process)"
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig, help="reference augmentation")

    def validate(self, where: str) -> None:
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ConfigError(f"{where}.num_frames: must be 4k + 1 (e.g. 81), got {self.num_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % 16:
                raise ConfigError(f"{where}.{name}: must be a positive multiple of 16, got {value}")
        if self.fps <= 0:
            raise ConfigError(f"{where}.fps: must be > 0, got {self.fps}")
        if self.mllm_max_tokens < 1:
            raise ConfigError(f"{where}.mllm_max_tokens: must be >= 1, got {self.mllm_max_tokens}")
        if self.num_workers < 0:
            raise ConfigError(f"{where}.num_workers: must be >= 0, got {self.num_workers}")
        self.augment.validate(f"{where}.augment")


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
class OptimizerConfig:
    """AdamW, as released: betas (0.9, 0.999), no weight decay, no gradient clipping."""

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
    """FSDP2 sharding (used whenever the job runs on more than one process)."""

    shard_group_size: int | None = field(
        None,
        help="shard within groups of this many ranks and replicate across groups (HSDP); null: shard over all",
    )
    reshard_after_forward: bool = field(True, help="free gathered block weights after forward (ZeRO-3)")

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
    precision: Literal["bf16", "fp32"] = field(
        "bf16", help="bf16: bf16 compute with fp32 master weights (CUDA); fp32: everything in float32"
    )
    gradient_checkpointing: bool = field(True, help="recompute block activations in backward")
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
        self.distributed.validate(f"{where}: distributed")
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
    data = _read_mapping(path)
    config = from_mapping(TrainConfig, data, where=str(path), base_dir=path.parent)
    config.validate(str(path))
    return config


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml  # the 'train' extra: imported when a config is read, not when the CLI lists its options

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format {path.suffix!r}; use .yaml, .yml or .json")
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def from_mapping(cls: type[T], data: Any, *, where: str, base_dir: Path | None = None) -> T:
    """Build the dataclass ``cls`` from plain data (parsed YAML/JSON), checking every key and type.

    ``where`` prefixes error messages (a file name, then the key path is appended). Relative paths are
    resolved against ``base_dir`` when it is given.
    """
    return _convert(cls, data, where, "", base_dir)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _fail(where: str, path: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {path or '<top level>'}: {message}")


def _convert(tp: Any, value: Any, where: str, path: str, base_dir: Path | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise _fail(where, path, "must not be null")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, where, path, base_dir)
            except ConfigError as err:
                errors.append(str(err).rsplit(": ", 1)[-1])
        raise _fail(where, path, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, path, base_dir)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise _fail(where, path, f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _fail(where, path, f"expected a list, got {type(value).__name__} {value!r}")
        return [_convert(item_type, v, where, f"{path}[{i}]", base_dir) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads ``5e-6`` (no dot) as a string, so numeric strings are accepted for floats.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _fail(where, path, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _fail(where, path, f"expected a path string, got {value!r}")
        result = Path(value).expanduser()
        return base_dir / result if base_dir is not None and not result.is_absolute() else result
    raise TypeError(f"unsupported config field type {tp!r} at {path}")  # a programming error


def _convert_dataclass(cls: type, value: Any, where: str, path: str, base_dir: Path | None) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, path, f"expected a mapping, got {type(value).__name__} {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _fail(where, _join(path, str(unknown[0])), f"unknown key (known keys: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], where, _join(path, name), base_dir)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(where, _join(path, name), "required key is missing")
    return cls(**kwargs)


def config_to_dict(config: Any) -> Any:
    """A JSON-ready view of a (nested) config: paths as strings; the inverse of :func:`from_mapping`."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config
