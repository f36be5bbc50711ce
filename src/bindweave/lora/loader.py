"""``BindWeavePipeline``'s LoRA methods: diffusers' Wan ones, plus BindWeave's connector and the checks."""

from __future__ import annotations

import os

from diffusers.loaders import WanLoraLoaderMixin

from .keys import LoraError, check_lora_against_model, component_metadata, convert_lora_keys, read_lora_file

__all__ = ["BindWeaveLoraLoaderMixin"]


class BindWeaveLoraLoaderMixin(WanLoraLoaderMixin):
    """diffusers' ``WanLoraLoaderMixin`` (``load_lora_weights``, ``set_adapters``, ``fuse_lora`` /
    ``unfuse_lora``, ``unload_lora_weights``) for the BindWeave DiT: the formats of :mod:`.keys`, and a LoRA
    that matches no layer of the DiT or has other shapes is an error naming its keys.
    """

    _lora_loadable_modules = ["transformer"]  # Wan2.1: no transformer_2

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """A LoRA's tensors with diffusers-converted keys (``transformer.<layer>.lora_A.weight`` ...), checked.

        As ``WanLoraLoaderMixin.lora_state_dict``, plus: BindWeave's connector under its ComfyUI name
        (``text_projection.0`` / ``.2``), ``save_lora_adapter`` keys without the ``transformer.`` prefix (a
        ``bindweave train`` LoRA), and a :class:`~bindweave.lora.keys.LoraError` naming the first keys of a
        LoRA that does not convert to Wan DiT layers. A local path is a ``.safetensors`` file, or a folder
        with ``weight_name`` in it; anything else (a Hub id) goes to diffusers as it is.
        """
        return_metadata = kwargs.pop("return_lora_metadata", False)
        source = pretrained_model_name_or_path_or_dict
        weight_name = kwargs.get("weight_name")
        if isinstance(source, dict):  # copies: diffusers' converter scales some tensors in place
            raw, metadata = {k: v.clone() for k, v in source.items()}, None
        elif os.path.isfile(source) or (weight_name and os.path.isfile(os.path.join(source, weight_name))):
            raw, metadata = read_lora_file(
                source if os.path.isfile(source) else os.path.join(source, weight_name)
            )
        else:
            state_dict, metadata = super().lora_state_dict(source, return_lora_metadata=True, **kwargs)
            raw = state_dict
        parent = super()
        state_dict = convert_lora_keys(raw, lambda converted: parent.lora_state_dict(converted))
        return (state_dict, component_metadata(metadata)) if return_metadata else state_dict

    def load_lora_weights(
        self, pretrained_model_name_or_path_or_dict, adapter_name=None, hotswap=False, **kwargs
    ):
        """diffusers' ``load_lora_weights`` for Wan; an error names the LoRA and its first offending keys."""
        try:
            super().load_lora_weights(
                pretrained_model_name_or_path_or_dict, adapter_name=adapter_name, hotswap=hotswap, **kwargs
            )
        except LoraError as err:
            name = "given as a dict" if isinstance(pretrained_model_name_or_path_or_dict, dict) else None
            raise LoraError(f"LoRA {name or pretrained_model_name_or_path_or_dict}: {err}") from err

    @classmethod
    def load_lora_into_transformer(cls, state_dict, transformer, adapter_name=None, **kwargs):
        """diffusers' ``load_lora_into_transformer``, after checking every layer and shape against the DiT."""
        check_lora_against_model(state_dict, transformer)
        super().load_lora_into_transformer(state_dict, transformer, adapter_name=adapter_name, **kwargs)
