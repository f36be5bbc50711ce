"""``BindWeavePipeline``'s LoRA methods: diffusers' Wan ones, for every Wan LoRA layout, checked, with the
whole-tensor deltas PEFT cannot hold."""

from __future__ import annotations

import logging
import os

from diffusers.loaders import WanLoraLoaderMixin

from .deltas import lora_deltas
from .formats import read_lora_contents
from .keys import (
    DIFFUSERS_PREFIX,
    LoraError,
    adapter_config,
    lora_state_dict_of,
    match_lora_to_model,
    read_lora_file,
    split_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = ["BindWeaveLoraLoaderMixin"]


def _is_converted(state_dict: dict) -> bool:
    """A state dict converted already (by :meth:`BindWeaveLoraLoaderMixin.lora_state_dict`)."""
    return bool(state_dict) and all(
        k.startswith(DIFFUSERS_PREFIX)
        and k.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_diff"))
        for k in state_dict
    )


def _read_stored(source, weight_name: str | None) -> tuple[dict, dict | None]:
    """The tensors and PEFT config of a LoRA given as a dict, a ``.safetensors`` file, or a folder + name."""
    if isinstance(source, dict):
        return dict(source), None
    path = os.path.join(source, weight_name) if weight_name and os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise LoraError(
            f"{path} is not a local .safetensors file (a Hub LoRA: download it first, e.g. with "
            "huggingface_hub.hf_hub_download, and pass the file)"
        )
    stored, metadata = read_lora_file(path)
    return stored, adapter_config(metadata)


def _layer_of(converted_key: str) -> str:
    """``transformer.blocks.0.attn1.to_q.lora_A.weight`` -> ``blocks.0.attn1.to_q``."""
    return converted_key.removeprefix(DIFFUSERS_PREFIX).rsplit(".lora_", 1)[0]


class BindWeaveLoraLoaderMixin(WanLoraLoaderMixin):
    """diffusers' ``WanLoraLoaderMixin`` (``load_lora_weights``, ``set_adapters``, ``fuse_lora`` /
    ``unfuse_lora``, ``unload_lora_weights``, ``delete_adapters``) for the BindWeave DiT.

    Every layout of :mod:`.formats` loads: low-rank layers as PEFT adapters, whole-tensor deltas (``diff``,
    ``diff_b``, ``diff_m``) through :mod:`.deltas`. A key that names no parameter of the DiT, or whose shape
    does not fit, is an error naming the LoRA and its first keys, unless ``skip_unknown_keys=True``, which
    skips them with a warning naming every one (kept in :attr:`lora_skipped_keys`).
    """

    _lora_loadable_modules = ["transformer"]  # Wan2.1: no transformer_2

    @property
    def lora_skipped_keys(self) -> dict[str, list[str]]:
        """``{adapter name: the stored keys skipped with skip_unknown_keys=True}`` of the loaded LoRAs."""
        return self.__dict__.setdefault("_lora_skipped_keys", {})

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """A LoRA's tensors in converted keys (``transformer.<layer>.lora_A.weight``, ``lora_B.weight``,
        ``lora_B.bias``; ``transformer.<parameter>.lora_diff`` for whole-tensor deltas), scales folded in.

        The source is a dict of tensors, a local ``.safetensors`` file, or a folder with ``weight_name`` in
        it. The PEFT config of a diffusers / PEFT file is folded into the tensors, so the metadata returned
        (``return_lora_metadata=True``) is ``None``.

        Raises:
            LoraError: keys that name no Wan DiT layer, named.
        """
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict) and _is_converted(source):
            state_dict = dict(source)
        else:
            stored, config = _read_stored(source, kwargs.get("weight_name"))
            state_dict = lora_state_dict_of(read_lora_contents(stored, config))
        return (state_dict, None) if kwargs.get("return_lora_metadata") else state_dict

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict,
        adapter_name: str | None = None,
        hotswap: bool = False,
        skip_unknown_keys: bool = False,
        **kwargs,
    ):
        """diffusers' ``load_lora_weights`` for Wan, for every layout; errors name the LoRA and its first keys.

        Args:
            skip_unknown_keys: load the keys that fit the DiT and skip the others, naming every one in a
                warning (and in :attr:`lora_skipped_keys`), instead of refusing the LoRA.
        """
        source = pretrained_model_name_or_path_or_dict
        label = "given as a dict" if isinstance(source, dict) else str(source)
        try:
            converted, sources, skipped = self._converted(
                source, kwargs.get("weight_name"), skip_unknown_keys
            )
            converted, misfits = match_lora_to_model(
                converted, self.transformer, skip_unknown=skip_unknown_keys, sources=sources
            )
        except LoraError as err:
            raise LoraError(f"LoRA {label}: {err}") from err
        skipped = sorted({*skipped, *(k for key in misfits for k in sources.get(_layer_of(key), [key]))})
        if not converted:
            raise LoraError(f"LoRA {label}: none of its keys fits the DiT ({len(skipped)} skipped)")
        peft, deltas = split_state_dict(converted)
        name = adapter_name or self._free_adapter_name()
        if peft:
            super().load_lora_weights(peft, adapter_name=name, hotswap=hotswap)
        if deltas:
            lora_deltas(self.transformer, create=True).add(name, deltas)
        if skipped:
            self.lora_skipped_keys[name] = skipped
            logger.warning("LoRA %s: %d keys skipped (they fit no parameter of the DiT): %s",
                           label, len(skipped), ", ".join(skipped))  # fmt: skip

    @staticmethod
    def _converted(source, weight_name, skip_unknown_keys) -> tuple[dict, dict[str, list[str]], list[str]]:
        """``(converted state dict, {layer or parameter: its stored keys}, unreadable keys skipped)``."""
        if isinstance(source, dict) and _is_converted(source):
            return dict(source), {}, []
        stored, config = _read_stored(source, weight_name)
        contents = read_lora_contents(stored, config)
        unreadable = contents.unreadable
        if skip_unknown_keys:
            contents.unreadable = []
            if not (contents.low_rank or contents.deltas):
                return {}, {}, unreadable
        return lora_state_dict_of(contents), contents.sources, unreadable if skip_unknown_keys else []

    def _free_adapter_name(self) -> str:
        """diffusers' default adapter name (``default_<n>``), not taken by a loaded adapter."""
        deltas = lora_deltas(self.transformer)
        taken = set(self._peft_adapters()) | (set(deltas.adapters) if deltas else set())
        n = 0
        while f"default_{n}" in taken:
            n += 1
        return f"default_{n}"

    def _peft_adapters(self) -> list[str]:
        return list(getattr(self.transformer, "peft_config", None) or {})

    @classmethod
    def _maybe_expand_t2v_lora_for_i2v(cls, transformer, state_dict):
        """No zero adapters on the image branch: a T2V LoRA loads as it is (diffusers' expansion would also
        overwrite a LoRA's ``add_k_proj`` with zeros when it has no ``add_v_proj``)."""
        return state_dict

    # The adapter switches, for the PEFT adapters (diffusers) and the whole-tensor deltas alike.

    def set_adapters(self, adapter_names, adapter_weights=None):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None:
            weights = [1.0] * len(names)
        elif isinstance(adapter_weights, (list, tuple)):
            weights = list(adapter_weights)
        else:
            weights = [adapter_weights] * len(names)
        peft = self._peft_adapters()
        deltas = lora_deltas(self.transformer)
        unknown = [n for n in names if n not in peft and (deltas is None or n not in deltas.adapters)]
        if unknown:  # checked before anything is switched
            raise ValueError(f"no adapter named {', '.join(unknown)} is loaded")
        if peft:
            chosen = [(n, w) for n, w in zip(names, weights, strict=True) if n in peft]
            if not chosen:  # PEFT has no "none": every PEFT adapter at weight 0
                chosen = [(n, 0.0) for n in peft]
            super().set_adapters([n for n, _ in chosen], [w for _, w in chosen])
        if deltas is not None:
            deltas.set_weights(names, weights)

    def fuse_lora(
        self, components=("transformer",), lora_scale=1.0, safe_fusing=False, adapter_names=None, **kwargs
    ):
        peft = self._peft_adapters()
        peft_names = None if adapter_names is None else [n for n in adapter_names if n in peft]
        if peft and peft_names != []:
            super().fuse_lora(list(components), lora_scale, safe_fusing, peft_names, **kwargs)
        deltas = lora_deltas(self.transformer)
        if deltas is not None:
            deltas.fuse(adapter_names, lora_scale)

    def unfuse_lora(self, components=("transformer",), **kwargs):
        if self._peft_adapters():
            super().unfuse_lora(list(components), **kwargs)
        deltas = lora_deltas(self.transformer)
        if deltas is not None:
            deltas.unfuse()

    def unload_lora_weights(self):
        super().unload_lora_weights()
        deltas = lora_deltas(self.transformer)
        if deltas is not None:
            deltas.unload()

    def delete_adapters(self, adapter_names):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        peft_names = [n for n in names if n in self._peft_adapters()]
        if peft_names:
            super().delete_adapters(peft_names)
        deltas = lora_deltas(self.transformer)
        if deltas is not None:
            deltas.delete(names)
        for name in names:
            self.lora_skipped_keys.pop(name, None)
