"""The options of the toy commands ``toy data``, ``toy base`` and ``toy-eval``.

No torch here: the CLI builds its parsers from these configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bindweave.config import field
from bindweave.default_model import embedded_guidance_scale
from bindweave.generate_config import check_guidance, check_seed
from bindweave.samplers import SAMPLERS

__all__ = ["TOY_DIT_WIDTH", "VARIANTS", "ToyBaseConfig", "ToyDataConfig", "ToyEvalConfig"]

#: The toy DiT's width (4 heads of 32). Its output head maps a token's ``width`` features to the token's
#: ``z x p x p`` latent values, so it can emit at most ``width`` independent values a token: past that, the
#: part of the starting noise outside the head's span is never removed (docs/toy-world.md, "The long run").
TOY_DIT_WIDTH = 128

VARIANTS = ("trained", "no-mllm", "no-vae-refs", "no-clip", "random-init", "vae-recon", "ground-truth")


@dataclass
class ToyDataConfig:
    out: Path = field(help="output folder (manifest.jsonl, scenes.jsonl, clips/, references/)")
    num_clips: int = field(1200, help="number of samples")
    split: Literal["train", "heldout"] = field("train", help="which independent sample stream to draw")
    seed: int = field(0, help="world seed")


@dataclass
class ToyBaseConfig:
    out: Path = field(help="folder of the base pipeline (trained VAE, untrained DiT) to write")
    steps: int = field(1200, help="VAE steps on short windows (the first frame and two latent chunks)")
    clip_steps: int = field(600, help="then VAE steps on whole 17-frame clips, at lr / 4 and half the batch")
    batch_size: int = field(8, help="clips per VAE step on windows")
    crop: int = field(32, help="side of the random square crops the VAE trains on (<= 64, a multiple of 4)")
    lr: float = field(2e-3, help="peak AdamW learning rate (cosine decay to 0)")
    spatial_compression: Literal[2, 4] = field(
        4, help="VAE spatial compression; the DiT's patch is 8 / this, so a token always covers 8 x 8 pixels"
    )
    temporal_compression: Literal[1, 2, 4] = field(
        4, help="VAE temporal compression (<= the spatial one: Wan's blocks downsample space with time)"
    )
    vae_width: int = field(8, help="channels of the VAE's first level (doubled at each further level)")
    latent_channels: int = field(
        16, help="VAE latent channels (Wan's z_dim); the DiT's input and output follow (in 2 z + 4, out z)"
    )
    subject_weight: float = field(
        0.0, help="extra loss weight on the sprites' pixels (0: plain mean; the background is most pixels)"
    )
    tie_reference_embedding: bool = field(
        False,
        help="start the DiT with the patch-embedding weights that read the references' latents equal to "
        "those that read the noisy latents, so a reference embeds as the video's drawing of it would",
    )
    seed: int = field(0, help="seeds the clips drawn, the VAE and the untrained components")
    threads: int | None = field(None, help="torch CPU threads (default: torch's choice)")

    def validate(self) -> None:
        if self.temporal_compression > self.spatial_compression:
            raise ValueError(
                f"--temporal-compression {self.temporal_compression} exceeds --spatial-compression "
                f"{self.spatial_compression}: each Wan VAE level downsamples space, and time only with it"
            )
        if self.vae_width < 1 or self.latent_channels < 1 or self.subject_weight < 0:
            raise ValueError(
                f"--vae-width and --latent-channels must be >= 1 and --subject-weight >= 0, got "
                f"{self.vae_width}, {self.latent_channels}, {self.subject_weight}"
            )
        patch = 8 // self.spatial_compression
        if self.latent_channels * patch * patch > TOY_DIT_WIDTH:
            raise ValueError(
                f"--latent-channels {self.latent_channels} with --spatial-compression "
                f"{self.spatial_compression} puts {self.latent_channels * patch * patch} latent values in a "
                f"DiT token ({patch} x {patch} patches), more than the toy DiT's width {TOY_DIT_WIDTH} can "
                f"emit: part of every sample's starting noise would never be removed; use at most "
                f"{TOY_DIT_WIDTH // (patch * patch)} latent channels"
            )


@dataclass
class ToyEvalConfig:
    model: Path = field(help="toy pipeline folder, e.g. runs/toy/model from `make toy-model`")
    variants: list[str] = field(
        default_factory=lambda: list(VARIANTS), help=f"variants to run, from {', '.join(VARIANTS)}"
    )
    num_samples: int = field(32, help="held-out samples per variant")
    steps: list[int] = field(
        default_factory=lambda: [25],
        help="sampling steps; several values (e.g. 4 8 20) evaluate each, a row per variant, sampler and count",
    )
    samplers: list[str] = field(
        default_factory=lambda: ["unipc"],
        help=f"samplers to evaluate, from {', '.join(SAMPLERS)} (several: a row each, with its cost)",
    )
    guidance_scale: float | None = field(
        None,
        help="classifier-free guidance scale (default: the sampler's, 1.0 for lightx2v, else the model's saved "
        f"default_guidance_scale: {embedded_guidance_scale()} for the embedded model)",
    )
    world_seed: int = field(0, help="world seed of the scenes scored")
    split: Literal["heldout", "train"] = field(
        "heldout",
        help="scenes scored: held-out ones, or the training ones (the first scenes `toy data` writes for this "
        "world seed), to see how much of a model's score is remembered rather than generalised",
    )
    init_seed: int = field(0, help="seed of the random-init variant's DiT")
    out: Path = field(Path("outputs/toy-eval"), help="folder for the scores, table.md and results.json")
    save_videos: bool = field(False, help="also write each generated clip as <out>/videos/<variant>/<i>.mp4")

    def __post_init__(self) -> None:
        if isinstance(self.steps, int):  # ToyEvalConfig(steps=15): one count
            self.steps = [self.steps]

    @property
    def is_sweep(self) -> bool:
        """More than one sampler or step count: rows are named by them and carry their cost."""
        return len(self.samplers) * len(self.steps) > 1

    def validate(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
        samplers = [s for s in self.samplers if s not in SAMPLERS]
        if samplers or not self.samplers:
            raise ValueError(f"--samplers: unknown {samplers}; expected some of {list(SAMPLERS)}")
        if self.num_samples < 1 or not self.steps or min(self.steps) < 1:
            raise ValueError(f"--num-samples and --steps must be >= 1, got {self.num_samples}, {self.steps}")
        check_guidance(self.guidance_scale, "--guidance-scale")
        check_seed(self.world_seed, "--world-seed")
        check_seed(self.init_seed, "--init-seed")
