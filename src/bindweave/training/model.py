"""Loading the pretrained pipeline for training, and choosing what trains.

Trained (spec 4): the DiT and the MLLM connector. Frozen: umT5, CLIP, the VAE and the MLLM. Variants:
the connector alone, or PEFT LoRA adapters on the DiT (only the adapters train and are saved).
"""

from __future__ import annotations

import logging

import torch
from peft import LoraConfig

from bindweave.conditioning.latents import latent_frame_count
from bindweave.models import BindWeaveTransformer3DModel
from bindweave.pipeline import BindWeavePipeline

from .config import ConfigError, DataConfig, LoRAConfig, ModelConfig
from .features import DTYPES

logger = logging.getLogger(__name__)

__all__ = ["CONNECTOR_PREFIX", "configure_trainable", "dit_tokens_per_clip", "load_pipeline"]

#: Parameter-name prefix of the MLLM connector (Linear 3584->4096, GELU-tanh, Linear 4096->4096).
CONNECTOR_PREFIX = "condition_embedder.text_projector."


def load_pipeline(
    model: ModelConfig, transformer_dtype: torch.dtype, *, load_transformer: bool = True
) -> BindWeavePipeline:
    """The pipeline to train: frozen encoders in ``model.encoder_dtype`` (VAE float32), DiT in ``transformer_dtype``.

    With ``load_transformer=False`` (feature precomputation) a pipeline folder's transformer is built on
    the meta device from its config only: the encoders need its sizes, not its weights. (The released
    folders are loaded through :meth:`BindWeavePipeline.from_released`, transformer included, in the
    encoder dtype, which is the release's own precision, and then cast.)
    """
    for name in ("pipeline", "wan", "transformer", "mllm"):
        folder = getattr(model, name)
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"model.{name}: folder not found: {folder}")
    encoder_dtype = DTYPES[model.encoder_dtype]
    if model.pipeline is not None:
        kwargs = {}
        if not load_transformer:
            config = BindWeaveTransformer3DModel.load_config(model.pipeline / "transformer")
            with torch.device("meta"):
                kwargs["transformer"] = BindWeaveTransformer3DModel.from_config(config)
        dtypes = {"transformer": transformer_dtype, "vae": torch.float32, "default": encoder_dtype}
        pipe = BindWeavePipeline.from_pretrained(str(model.pipeline), dtype=dtypes, **kwargs)
    else:
        pipe = BindWeavePipeline.from_released(
            model.wan, model.transformer, model.mllm, torch_dtype=encoder_dtype
        )
        if load_transformer:
            pipe.transformer.to(transformer_dtype)
    pipe.set_progress_bar_config(disable=True)
    for name in ("text_encoder", "image_encoder", "vae", "mllm"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval().requires_grad_(False)
    return pipe


def configure_trainable(
    transformer: BindWeaveTransformer3DModel, trainable: str, lora: LoRAConfig
) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` for the chosen mode and return the trainable parameters.

    - ``full``: every DiT parameter, connector included;
    - ``connector``: the MLLM connector only;
    - ``lora``: PEFT adapters (``lora.target_modules``) added to the frozen DiT.
    """
    transformer.requires_grad_(False)
    if trainable == "full":
        transformer.requires_grad_(True)
    elif trainable == "connector":
        transformer.condition_embedder.text_projector.requires_grad_(True)
    elif trainable == "lora":
        adapter = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            init_lora_weights=True,
        )
        try:
            transformer.add_adapter(adapter)
        except ValueError as err:  # PEFT: none of the target modules exist
            raise ConfigError(f"lora.target_modules {lora.target_modules}: {err}") from err
    else:
        raise ConfigError(f"trainable: unknown mode {trainable!r}")

    params = [p for p in transformer.parameters() if p.requires_grad]
    for param in params:  # trainable weights are float32 masters, whatever the frozen base's dtype
        param.data = param.data.float()
    count = sum(p.numel() for p in params)
    total = sum(p.numel() for p in transformer.parameters())
    logger.info("trainable (%s): %d / %d parameters (%.2f%%)", trainable, count, total, 100 * count / total)
    return params


def dit_tokens_per_clip(pipe: BindWeavePipeline, data: DataConfig) -> int:
    """The DiT's sequence length for one clip of ``data``'s size, its reference slots included."""
    cfg, spatial = pipe.transformer.config, pipe.vae_scale_factor_spatial
    frames = latent_frame_count(data.num_frames, pipe.vae_scale_factor_temporal)
    _, patch_h, patch_w = cfg.patch_size
    return (
        (cfg.num_reference_slots + frames)
        * (data.height // spatial // patch_h)
        * (data.width // spatial // patch_w)
    )
