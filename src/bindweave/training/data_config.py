"""How a clip becomes training features: the ``data`` section of a training config (spec 4).

Online encoding and the feature cache read the same :class:`DataConfig`, so the two cannot drift apart.
The defaults are the release's: the reference augmentation and the MLLM input of the released training
features. The toy (``configs/toy.yaml``) keeps the mild augmentation and the inference MLLM input.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from bindweave.config import field

from .config_io import ConfigError

__all__ = ["AugmentConfig", "DataConfig", "MildAugmentConfig"]

_MILD_KEYS = ("scale", "rotation_degrees", "flip_probability", "brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass
class MildAugmentConfig:
    """The mild augmentation (``mode: mild``): a small random scale and rotation, flip, colour jitter."""

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
class AugmentConfig:
    """Reference-image augmentation, so the model cannot copy-paste the reference (spec 4).

    Every draw is seeded by (run seed, clip, epoch, reference), so a clip gets the same augmentation in
    online training and in a precomputed cache, and a resumed run replays the same draws.
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        key: f"moved to data.augment.mild.{key}, used with data.augment.mode: mild (the default mode, "
        "'released', is the released augmentation, which has no settings)"
        for key in _MILD_KEYS
    }

    enabled: bool = field(True, help="augment the reference subjects")
    mode: Literal["released", "mild"] = field(
        "released",
        help="released: the release's augmentation (rotation by an integer angle in [-45, 45), scale "
        "exp(U(-1.5, 1.5)) capped to fit, padded / cropped to the target size; no flip, no colour change); "
        "mild: small scale and rotation, flip and colour jitter, as set in 'mild'",
    )
    mild: MildAugmentConfig = field(
        default_factory=MildAugmentConfig, help="settings of the mild augmentation (mode: mild)"
    )

    def validate(self, where: str) -> None:
        self.mild.validate(f"{where}.mild")


@dataclasses.dataclass
class DataConfig:
    """How a clip becomes training features; shared by online encoding and the precomputed cache."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "mllm_max_tokens": "removed: MLLM states are kept at full length, as in the released training "
        "features (spec 2.5); a micro-batch pads them to its longest clip and each clip's cross-attention "
        "skips its own padding rows. Delete the key (and re-run `bindweave precompute` for an old cache)",
    }

    height: int = field(720, help="bucket height: frames are resized and centre-cropped to it")
    width: int = field(1280, help="bucket width")
    num_frames: int = field(81, help="frames per clip, 4k + 1")
    fps: float = field(16.0, help="frames are sampled at this rate from the source video")
    frame_start: Literal["random", "first"] = field(
        "random", help="where the sampled window starts: seeded random, or the first frame"
    )
    subject_background: Literal["white", "black"] = field(
        "white",
        help="colour outside a reference's subject mask, inside its box (OpenS2V's cut-outs are on white); "
        "the released augmentation's RGBA rotate / resize turn every fully transparent pixel black",
    )
    mllm_input: Literal["released", "inference"] = field(
        "released",
        help="what the MLLM sees of the references: released: the reference canvases downsampled x0.5 "
        "(bilinear) as the released training features were made (spec 4); inference: the references "
        "pre-scaled x0.3 / x0.75 as at inference (spec 2.5)",
    )
    first_frame_condition: bool = field(
        False,
        help="an extra, not in the release (neither its training nor its inference has it, spec 4): also "
        "feed the clip's first frame as an I2V condition (CLIP tokens and the VAE condition's video part)",
    )
    condition_dropout: float = field(
        0.0,
        help="an extra, not in the release: the probability that a training clip is seen as classifier-free "
        "guidance's unconditional branch sees it (the negative prompt's umT5 and MLLM states, its own "
        "references), so guidance > 1 has a branch it was trained for; > 0 also encodes each clip's negative "
        "MLLM states",
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
        if not 0 <= self.condition_dropout < 1:
            raise ConfigError(f"{where}.condition_dropout: must be in [0, 1), got {self.condition_dropout}")
        if self.num_workers < 0:
            raise ConfigError(f"{where}.num_workers: must be >= 0, got {self.num_workers}")
        self.augment.validate(f"{where}.augment")
