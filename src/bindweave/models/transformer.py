"""The BindWeave DiT: Wan2.1-I2V plus what BindWeave adds (spec 1, 2.4, 2.7).

BindWeave adds three things to diffusers' ``WanTransformer3DModel`` and nothing else:

1. the MLLM connector ``condition_embedder.text_projector`` (Linear 3584->4096, GELU-tanh,
   Linear 4096->4096), whose output is prepended to the umT5 tokens before Wan's text embedder;
2. a cross-attention split after the first ``image_context_tokens`` context tokens
   (:class:`~bindweave.models.attention.BindWeaveAttnProcessor`);
3. ``num_reference_slots`` zero latent frames in front of the noisy video, which the channel-concatenated
   condition fills with the references' VAE latents; the output's slot frames are dropped.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils import logging

from .attention import BindWeaveAttnProcessor
from .checkpoint import CheckpointError, checkpoint_shapes, compare_to_model
from .single_file import infer_single_file_config, load_single_file_state_dict, single_file_shapes

logger = logging.get_logger(__name__)

# DiffusionPipeline.from_pretrained finds a custom component's loader by looking its base class up by name
# in the component's module, so this module must expose ModelMixin.
__all__ = ["BindWeaveTransformer3DModel", "ModelMixin"]

# Keyword arguments of ``ConfigMixin.load_config`` that concern finding the file, not the config.
_HUB_KWARGS = (
    "cache_dir", "local_dir", "local_dir_use_symlinks", "force_download", "proxies", "token",
    "local_files_only", "revision", "mirror", "subfolder", "user_agent",
)  # fmt: skip


class BindWeaveTransformer3DModel(WanTransformer3DModel):
    r"""Wan2.1-I2V transformer with BindWeave's MLLM connector, context split and reference slots.

    The defaults are the released 14B model's sizes. Arguments are those of
    [`~diffusers.WanTransformer3DModel`] plus:

    Args:
        mllm_dim (`int`, defaults to 3584): hidden size of the MLLM states (Qwen2.5-VL-7B).
        image_context_tokens (`int`, defaults to 257): leading context tokens seen by the image branch
            of cross-attention (one CLIP ViT-H/14 image).
        num_reference_slots (`int`, defaults to 4): reference latent frames prepended to the video.
    """

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 5120,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        mllm_dim: int = 3584,
        image_context_tokens: int = 257,
        num_reference_slots: int = 4,
    ) -> None:
        if image_dim is None or added_kv_proj_dim is None:
            raise ValueError("BindWeave is an I2V model: image_dim and added_kv_proj_dim are required")
        if in_channels != 2 * out_channels + 4:
            raise ValueError(
                f"in_channels must be 2 * out_channels + 4 (noise + reference/video latents + 4 mask "
                f"channels), got in_channels={in_channels}, out_channels={out_channels}"
            )
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        # Registered under the stock embedder so the state dict keys are the released ones:
        # condition_embedder.text_projector.linear_{1,2}.{weight,bias}.
        self.condition_embedder.text_projector = PixArtAlphaTextProjection(
            mllm_dim, text_dim, text_dim, act_fn="gelu_tanh"
        )
        for block in self.blocks:
            block.attn2.set_processor(BindWeaveAttnProcessor(image_context_tokens))

    # ------------------------------------------------------------------ loading

    @classmethod
    def released_config(cls) -> dict[str, Any]:
        """The config of the released 14B checkpoint, which ships without a ``config.json``."""
        return {"_class_name": cls.__name__, **cls._default_init_kwargs()}

    @classmethod
    def _default_init_kwargs(cls) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        return {name: p.default for name, p in params.items() if name != "self"}

    @classmethod
    def load_config(
        cls, pretrained_model_name_or_path, return_unused_kwargs=False, return_commit_hash=False, **kwargs
    ):
        """Like ``ConfigMixin.load_config``, but a local folder without ``config.json`` gets the released config.

        The released BindWeave folder holds only the sharded safetensors and their index. Config values
        passed to ``from_pretrained`` as keyword arguments still override the supplied defaults.
        """
        folder = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        if not folder.is_dir() or (folder / cls.config_name).is_file():
            return super().load_config(
                pretrained_model_name_or_path,
                return_unused_kwargs=return_unused_kwargs,
                return_commit_hash=return_commit_hash,
                **kwargs,
            )
        config = cls.released_config()  # announced once, by from_pretrained
        if not (return_unused_kwargs or return_commit_hash):
            return config
        outputs: tuple = (config,)
        if return_unused_kwargs:
            outputs += ({k: v for k, v in kwargs.items() if k not in _HUB_KWARGS},)
        if return_commit_hash:
            outputs += (None,)
        return outputs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, strict: bool = True, **kwargs):
        """Load a BindWeave DiT folder (diffusers layout, sharded or not, with or without ``config.json``).

        With ``strict=True`` (default) the safetensors headers are checked against the config first, and
        any missing, unexpected or wrongly shaped tensor is a :class:`CheckpointError` naming every such
        key, instead of diffusers' warning and random initialisation.
        """
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        if folder.is_dir() and not (folder / cls.config_name).is_file():
            given = [k for k in kwargs if k in cls._default_init_kwargs()]
            logger.info(
                f"{folder} has no {cls.config_name}: using the released BindWeave 14B config"
                + (f", {len(given)} of its values replaced by those given" if given else "")
            )
        shapes = checkpoint_shapes(folder) if folder.is_dir() else None
        if strict and shapes is not None:
            config, unused = cls.load_config(
                pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
            config_overrides = {k: v for k, v in unused.items() if k in cls._default_init_kwargs()}
            with torch.device("meta"):
                expected = cls.from_config(config, **config_overrides)
            report = compare_to_model(shapes, expected, cls._keys_to_ignore_on_load_unexpected)
            if report:
                raise CheckpointError(f"{folder} does not match {cls.__name__}: {report.describe()}", report)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        config: str | os.PathLike | dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        **config_overrides: Any,
    ) -> BindWeaveTransformer3DModel:
        """Load a single-file checkpoint in the original Wan / ComfyUI layout (:mod:`.single_file`).

        fp32 / bf16 / fp16 files, plain float8 and ComfyUI ``fp8_scaled`` ones (dequantised), with the
        connector as ``text_projection.0`` / ``.2``; prefixed ``model.diffusion_model.`` or not. As in
        ``from_pretrained``, the modules in ``_keep_in_fp32_modules`` stay float32. Nothing is loaded before
        the file's header has been checked against the model: a missing, unexpected or wrongly shaped tensor
        is a :class:`CheckpointError` naming every such key.

        Args:
            path: the ``.safetensors`` file.
            config: the model config: a folder (with or without ``config.json``, as for ``from_pretrained``)
                or a dict; default the released 14B config with the sizes the file's shapes say (widths,
                layers, channels; heads ``= dim // 128``: :func:`.single_file.infer_single_file_config`).
            dtype: the weights' dtype.
            config_overrides: config values replacing the given ones.
        """
        from accelerate import init_empty_weights

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        shapes = single_file_shapes(path)
        if config is None:
            config = {**cls.released_config(), **infer_single_file_config(shapes)}
        elif not isinstance(config, dict):
            config = cls.load_config(config)
        unknown = [k for k in config_overrides if k not in cls._default_init_kwargs()]
        if unknown:
            raise TypeError(f"from_single_file: unknown config values {unknown}")
        with init_empty_weights():  # parameters on the meta device; the RoPE buffers computed for real
            model = cls.from_config({**config, **config_overrides})
        report = compare_to_model(shapes, model, cls._keys_to_ignore_on_load_unexpected)
        if report:
            raise CheckpointError(f"{path} does not match {cls.__name__}: {report.describe()}", report)
        keep = cls._keep_in_fp32_modules or []

        def dtype_of(name: str) -> torch.dtype:
            return torch.float32 if any(m in name.split(".") for m in keep) else dtype

        model.load_state_dict(load_single_file_state_dict(path, dtype_of), strict=True, assign=True)
        model.register_to_config(_name_or_path=str(path))
        return model.eval()

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        mllm_hidden_states: torch.Tensor,
        condition: torch.Tensor,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow velocity of the video frames.

        Args:
            hidden_states: ``(B, z, F, h, w)`` noisy video latents, without reference slots.
            timestep: ``(B,)`` timesteps in [0, 1000].
            encoder_hidden_states: ``(B, 512, text_dim)`` umT5 states, zero-padded.
            encoder_hidden_states_image: ``(B, slots * clip_tokens, image_dim)`` CLIP penultimate states.
            mllm_hidden_states: ``(B, L, mllm_dim)`` MLLM states (L may be 0).
            condition: ``(B, 4 + z, slots + F, h, w)`` masks and latents of the reference slots and video.

        Returns:
            ``.sample`` of shape ``(B, z, F, h, w)``.
        """
        slots = self.config.num_reference_slots
        batch, z, frames, height, width = hidden_states.shape
        expected = (batch, self.config.in_channels - z, slots + frames, height, width)
        if tuple(condition.shape) != expected:
            raise ValueError(f"condition must have shape {expected}, got {tuple(condition.shape)}")

        # 1. Reference slots: zero frames in front of the noise, filled by the condition's channels.
        slot_frames = hidden_states.new_zeros(batch, z, slots, height, width)
        latents = torch.cat([slot_frames, hidden_states], dim=2)  # (B, z, S+F, h, w)
        latents = torch.cat([latents, condition.to(latents.dtype)], dim=1)  # (B, 2z+4, S+F, h, w)

        # 2. Text context: connector(MLLM) then umT5, embedded together by Wan's text embedder.
        projector = self.condition_embedder.text_projector
        mllm_tokens = projector(mllm_hidden_states.to(projector.linear_1.weight.dtype))  # (B, L, text_dim)
        text = torch.cat([mllm_tokens.to(encoder_hidden_states.dtype), encoder_hidden_states], dim=1)

        # 3. The stock Wan forward: context = [image ; text], RoPE over all S+F frames.
        output = super().forward(
            latents,
            timestep,
            text,  # (B, L + 512, text_dim)
            encoder_hidden_states_image,  # (B, slots * clip_tokens, image_dim)
            return_dict=False,
            attention_kwargs=attention_kwargs,
        )[0]
        output = output[:, :, slots:]  # (B, z, F, h, w): reference slots dropped
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
