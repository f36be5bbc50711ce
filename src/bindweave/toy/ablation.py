"""Inference-time ablations of BindWeave's conditioning streams, as a pipeline subclass.

Each ablation replaces one stream's features by zeros before the DiT sees them, in both CFG branches:

- ``no-mllm``: the MLLM states (so the connector contributes only its bias);
- ``no-vae-refs``: the reference slots of the VAE condition (as if no reference were given there);
- ``no-clip``: the CLIP tokens of the references.

The model is run exactly as trained otherwise, so a score drop measures how much the trained model
relies on that stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bindweave.pipeline import BindWeavePipeline

__all__ = ["ABLATIONS", "Ablation", "AblatedBindWeavePipeline"]


@dataclass(frozen=True)
class Ablation:
    mllm: bool = True  # keep the MLLM stream
    vae_refs: bool = True  # keep the reference slots of the VAE condition
    clip: bool = True  # keep the CLIP stream


ABLATIONS: dict[str, Ablation] = {
    "full": Ablation(),
    "no-mllm": Ablation(mllm=False),
    "no-vae-refs": Ablation(vae_refs=False),
    "no-clip": Ablation(clip=False),
}


class AblatedBindWeavePipeline(BindWeavePipeline):
    """A :class:`BindWeavePipeline` whose :attr:`ablation` zeroes some conditioning streams."""

    ablation: Ablation = Ablation()

    @classmethod
    def from_pipeline(cls, pipe: BindWeavePipeline, ablation: Ablation) -> AblatedBindWeavePipeline:
        """The same components (shared, not copied) with ``ablation`` applied."""
        defaults = {k: v for k, v in pipe.config.items() if k.startswith("default_")}  # size, guidance
        ablated = cls(**pipe.components, **defaults)
        ablated.ablation = ablation
        return ablated

    def encode_mllm_states(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        positive, negative = super().encode_mllm_states(*args, **kwargs)
        if self.ablation.mllm:
            return positive, negative
        return torch.zeros_like(positive), None if negative is None else torch.zeros_like(negative)

    def encode_clip_tokens(self, boxes) -> torch.Tensor:
        tokens = super().encode_clip_tokens(boxes)  # (1, slots * clip_tokens, image_dim)
        return tokens if self.ablation.clip else torch.zeros_like(tokens)

    def prepare_condition(self, boxes, num_frames: int, height: int, width: int) -> torch.Tensor:
        condition = super().prepare_condition(boxes, num_frames, height, width)  # (1, 4+z, slots+F', h, w)
        if self.ablation.vae_refs:
            return condition
        condition = condition.clone()
        condition[:, :, : self.transformer.config.num_reference_slots] = 0  # empty slots are all zeros
        return condition
