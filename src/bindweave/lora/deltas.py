"""Whole-tensor LoRA deltas (``diff``, ``diff_b``, ``diff_m``) that PEFT adapters cannot hold, added to the
DiT's parameters and kept in step with diffusers' adapter methods.

Each adapter's deltas have a *target* weight (what ``set_adapters`` asks: 1 after loading, the adapter
weight after ``set_adapters``, 0 when left out or unloaded) and the weight *applied* to the parameters.
:meth:`LoraDeltas.sync` adds ``(target - applied) * delta`` in float32 and rounds once to the parameter's
dtype; it runs when the weights are set, fused, unfused or unloaded, and before every DiT forward (a
forward pre-hook), so an unfused run sees the adapters as PEFT's do, and ``--lora`` (load, set, fuse,
unload) writes ``W + scale * delta`` in one rounding, as ComfyUI does.

What diffusers' switches do to them: ``set_adapters`` sets their weight (a number per adapter: block-wise
weights are refused for adapters with deltas); ``fuse_lora`` keeps them (times its ``lora_scale``) and
``unload_lora_weights`` then leaves them in the weights; ``unload_lora_weights`` without a fuse, and
``delete_adapters``, take them out. ``disable_lora`` / ``enable_lora`` do not switch them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["LoraDeltas", "lora_deltas"]

_ATTRIBUTE = "_bindweave_lora_deltas"


@dataclass
class _Adapter:
    deltas: dict[str, torch.Tensor]  # diffusers parameter name -> delta, as stored
    target: float = 1.0
    applied: float = 0.0
    fused: bool = False


class LoraDeltas:
    """The whole-tensor deltas of a DiT's LoRA adapters, by adapter name."""

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self.adapters: dict[str, _Adapter] = {}
        self._hook = transformer.register_forward_pre_hook(lambda module, args: self.sync())

    def _parameter(self, name: str) -> torch.nn.Parameter:
        """``name``, or the same parameter inside PEFT's ``base_layer`` of a layer that holds adapters."""
        try:
            return self.transformer.get_parameter(name)
        except AttributeError:
            module, _, leaf = name.rpartition(".")
            return self.transformer.get_parameter(f"{module}.base_layer.{leaf}")

    def add(self, name: str, deltas: Mapping[str, torch.Tensor]) -> None:
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} is loaded already")
        self.adapters[name] = _Adapter(dict(deltas))

    def set_weights(self, names: Iterable[str], weights: Iterable[object]) -> None:
        """As ``set_adapters``: the named adapters get their weights, every other unfused one 0."""
        chosen = dict(zip(names, weights, strict=True))
        for name, adapter in self.adapters.items():
            if adapter.fused:
                continue
            weight = chosen.get(name, 0.0)
            if not isinstance(weight, (int, float)):
                raise ValueError(
                    f"adapter {name!r} holds whole-tensor deltas (diff / diff_b / diff_m), which take one "
                    f"weight, not {weight!r}"
                )
            adapter.target = float(weight)
        self.sync()

    def fuse(self, names: Iterable[str] | None, lora_scale: float = 1.0) -> None:
        for name in self.adapters if names is None else names:
            adapter = self.adapters.get(name)
            if adapter is not None and not adapter.fused:
                adapter.target *= lora_scale
                adapter.fused = True
        self.sync()

    def unfuse(self) -> None:
        for adapter in self.adapters.values():
            adapter.fused = False

    def delete(self, names: Iterable[str]) -> None:
        names = list(names)
        for name in names:
            if name in self.adapters:
                self.adapters[name].target = 0.0
        self.sync()
        for name in names:
            self.adapters.pop(name, None)

    def unload(self) -> None:
        """Take out the unfused deltas, keep the fused ones in the weights, and forget them all."""
        for adapter in self.adapters.values():
            if not adapter.fused:
                adapter.target = 0.0
        self.sync()
        self.adapters.clear()
        self._hook.remove()
        delattr(self.transformer, _ATTRIBUTE)

    @torch.no_grad()
    def sync(self) -> None:
        """Add ``(target - applied) * delta`` to each parameter, in float32, rounded once to its dtype."""
        for adapter in self.adapters.values():
            change = adapter.target - adapter.applied
            if change == 0.0:
                continue
            for name, delta in adapter.deltas.items():
                parameter = self._parameter(name)
                update = change * delta.to(parameter.device, torch.float32)
                parameter.copy_((parameter.float() + update).to(parameter.dtype))
            adapter.applied = adapter.target


def lora_deltas(transformer: torch.nn.Module, create: bool = False) -> LoraDeltas | None:
    """The :class:`LoraDeltas` of ``transformer`` (made with ``create``; else ``None`` when it has none)."""
    deltas = getattr(transformer, _ATTRIBUTE, None)
    if deltas is None and create:
        deltas = LoraDeltas(transformer)
        setattr(transformer, _ATTRIBUTE, deltas)
    return deltas
