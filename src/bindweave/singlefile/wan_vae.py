"""Comfy-Org's repackaged Wan 2.1 VAE (``models/vae/wan_2.1_vae.safetensors``) as diffusers'
``AutoencoderKLWan``.

The file keeps the original Wan module names (``encoder.downsamples.N.residual.2.weight``,
``decoder.upsamples.N...``, ``decoder.middle.1.to_qkv``, ``conv1`` / ``conv2`` for the quant convolutions),
which ComfyUI loads into its copy of Wan's ``WanVAE``. The architecture is fixed, as in ComfyUI's loader
(``comfy/sd.py``): ``dim_mult`` [1, 2, 4, 4], 2 residual blocks, temporal downsampling [False, True, True];
the base width is read from ``decoder.head.0.gamma`` as ComfyUI reads it, the latent channels from ``conv2``.
The latent normalisation (``latents_mean`` / ``latents_std``), which no file holds, is Wan 2.1's (diffusers'
defaults). The names are renamed by diffusers' own converter (``convert_wan_vae_to_diffusers``), which is
written for this architecture.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .assign import assign_state_dict
from .reader import ComponentFile

__all__ = ["WAN_VAE_COMPONENT", "load_wan_vae_file"]

WAN_VAE_COMPONENT = "Wan 2.1 VAE (Comfy-Org wan_2.1_vae.safetensors)"
_PREFIXES = ("first_stage_model.", "vae.")


def load_wan_vae_file(path: str | os.PathLike, dtype: torch.dtype = torch.float32, **config: Any):
    """``AutoencoderKLWan`` from one Wan 2.1 VAE file; ``config`` overrides (e.g. another latent normalisation)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    file = ComponentFile(path, WAN_VAE_COMPONENT, prefixes=_PREFIXES)
    if "decoder.middle.0.residual.0.gamma" not in file.names:
        raise ValueError(f"{path} is not a Wan VAE file: it has no decoder.middle.0.residual.0.gamma")
    if "decoder.upsamples.0.upsamples.0.residual.2.weight" in file.names:
        raise ValueError(f"{path} is the Wan 2.2 VAE (48 latent channels); BindWeave uses the Wan 2.1 VAE")
    sizes = {
        "base_dim": file.shape("decoder.head.0.gamma")[0],
        "z_dim": file.shape("conv2.weight")[0],
        "in_channels": file.shape("encoder.conv1.weight")[1],
        "out_channels": file.shape("decoder.head.2.weight")[0],
    }
    state = convert_wan_vae_to_diffusers({name: file.tensor(name, dtype) for name in file.names})
    settings = {**sizes, **config}
    return assign_state_dict(
        lambda: AutoencoderKLWan(**settings).to(dtype),
        state,
        file.path,
        WAN_VAE_COMPONENT,
    )
