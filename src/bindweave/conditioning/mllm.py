"""MLLM stream: Qwen2.5-VL reads the prompt and the references together (spec 2.5).

The kept tensor is the output of the last decoder layer *after* the final RMSNorm, without the LM head,
full length: ``(1, L, 3584)`` for Qwen2.5-VL-7B, i.e. transformers' ``Qwen2_5_VLModel(...).last_hidden_state``.
The release's extraction runs Megatron's decoder with its final layernorm, and its ``.pt`` files agree:
every token's RMS is 2.5-6.3, token 0 included (pre-norm Qwen2.5 states carry massive activations there).

Images go through the PIL image processor, as the release's ``qwen_vl_utils`` + slow processor did, also
when torchvision is installed: transformers' torchvision backend resizes differently.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from transformers import AutoImageProcessor, ProcessorMixin, Qwen2_5_VLProcessor

logger = logging.getLogger(__name__)

# Appended to the negative prompt for the MLLM branch only, as the released negative states were made.
MLLM_NEGATIVE_SUFFIX = ",motionless, frozen, still image, no movement, stationary, unmoving"

_LARGE_IMAGE_PIXELS = 720 * 1280
MLLM_MAX_ASPECT_RATIO = 200  # Qwen2.5-VL's image processor refuses longer images (smart_resize)


class MLLMStateError(ValueError):
    """Precomputed MLLM states of the wrong format; the message names the file and the expected shape."""


class QwenVLImageProcessor(Qwen2_5_VLProcessor):
    """The stock ``Qwen2_5_VLProcessor`` without its video processor.

    The stock processor cannot be built without torchvision because of its video processor, which
    BindWeave never uses, and it would pick the torchvision image backend where that is installed. This
    class is used with or without torchvision (:func:`load_mllm_processor`). Tokenisation, image-token expansion and the modality ids that Qwen2.5-VL's
    3D RoPE needs are inherited unchanged.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        # Skip Qwen2_5_VLProcessor.__init__, which requires the video processor.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backend: str = "pil", **kwargs):
        """The saved processor, with the PIL image backend unless another is asked for (spec 2.5).

        diffusers loads a pipeline's ``mllm_processor`` through this method too.
        """
        # ``backend`` is given to the image processor alone: passed to the processor's own loading it
        # would reach the tokenizer too, overwrite its backend ("tokenizers") and be saved with it.
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        processor.image_processor = AutoImageProcessor.from_pretrained(
            pretrained_model_name_or_path, backend=backend, **kwargs
        )
        return processor


def load_mllm_processor(path: str | os.PathLike) -> QwenVLImageProcessor:
    """Qwen2.5-VL's processor with the PIL image backend (spec 2.5), whether or not torchvision is installed.

    Tokenisation is the stock processor's; only the video processor, never used, is left out.
    """
    return QwenVLImageProcessor.from_pretrained(path)


def mllm_prescale(width: int, height: int) -> tuple[float, tuple[int, int]]:
    """The pre-scale factor of a ``width x height`` reference and its size after it (spec 2.5)."""
    factor = 0.3 if width * height > _LARGE_IMAGE_PIXELS else 0.75
    return factor, (int(width * factor), int(height * factor))


def mllm_size_problem(width: int, height: int) -> str | None:
    """Why the MLLM cannot read a ``width x height`` reference, or None when it can.

    After the pre-scale every side must keep at least 1 pixel (2 pixels before it for most images, 4
    above 720x1280 pixels), and the aspect ratio must stay within Qwen2.5-VL's 200:1.
    """
    factor, (w, h) = mllm_prescale(width, height)
    if min(w, h) < 1:
        return (
            f"the MLLM reads references scaled by {factor} (int sides), which leaves {w}x{h}; "
            f"each side must be at least {math.ceil(1 / factor)} pixels"
        )
    if max(w, h) / min(w, h) > MLLM_MAX_ASPECT_RATIO:
        return (
            f"the MLLM reads references scaled by {factor} (int sides), which gives {w}x{h}, an aspect "
            f"ratio of {max(w, h) / min(w, h):.0f}:1; Qwen2.5-VL reads at most {MLLM_MAX_ASPECT_RATIO}:1"
        )
    return None


def prescale_for_mllm(image: PIL.Image.Image) -> PIL.Image.Image:
    """Shrink a reference before the MLLM processor: x0.3 above 720x1280 pixels, else x0.75 (int sides)."""
    problem = mllm_size_problem(*image.size)
    if problem is not None:
        raise ValueError(f"a {image.width}x{image.height} image cannot be a reference: {problem}")
    return image.resize(mllm_prescale(*image.size)[1], PIL.Image.Resampling.BICUBIC)


def build_mllm_messages(prompt: str, num_images: int) -> list[dict]:
    """One user turn: the prompt text first, then one image entry per reference, in order."""
    content = [{"type": "text", "text": prompt}] + [{"type": "image"} for _ in range(num_images)]
    return [{"role": "user", "content": content}]


def mllm_inputs(
    processor: ProcessorMixin, prompt: str, images: Sequence[PIL.Image.Image], prescale: bool = True
):
    """Tokenised chat (default system message, generation prompt) and the images' pixels.

    ``prescale``: shrink the images first as inference does (:func:`prescale_for_mllm`); the released
    training features were made without it (spec 4).
    """
    text = processor.apply_chat_template(
        build_mllm_messages(prompt, len(images)), tokenize=False, add_generation_prompt=True
    )
    scaled = [prescale_for_mllm(image) for image in images] if prescale else list(images)
    return processor(text=[text], images=scaled or None, return_tensors="pt")


@torch.no_grad()
def encode_mllm(
    mllm: torch.nn.Module,
    processor: ProcessorMixin,
    prompt: str,
    images: Sequence[PIL.Image.Image],
    device: torch.device | None = None,
    prescale: bool = True,
):
    """``(1, L, hidden)`` states of the last decoder layer after the final norm, for one prompt + references.

    ``device``: where the MLLM runs (default: where its weights are; pass it when offloading hooks move them).
    ``prescale``: as in :func:`mllm_inputs`.
    """
    inputs = mllm_inputs(processor, prompt, images, prescale)
    model = getattr(mllm, "model", mllm)  # Qwen2_5_VLModel: the LM head is not needed
    param = next(model.parameters())
    inputs = {k: v.to(device or param.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
    return model(**inputs, use_cache=False).last_hidden_state


def load_mllm_states(source: torch.Tensor | str | os.PathLike, mllm_dim: int, name: str = "MLLM states"):
    """Precomputed MLLM states as ``(1, L, mllm_dim)``: a tensor, or a ``.pt`` file in the released format.

    The released files are bare ``torch.save``d bf16 tensors of shape ``(1, L, 3584)``.
    """
    label = name
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = f"{name} file {path}"
        if not path.is_file():
            raise MLLMStateError(f"{label} not found")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises many types for a corrupt or foreign file
            raise MLLMStateError(f"{label} is not a readable torch file: {err}") from err
    if not isinstance(source, torch.Tensor):
        raise MLLMStateError(
            f"{label} must hold a tensor of shape (1, L, {mllm_dim}), got {type(source).__name__}"
        )
    states = source[None] if source.ndim == 2 else source
    if (
        states.ndim != 3
        or states.shape[0] != 1
        or states.shape[-1] != mllm_dim
        or not states.is_floating_point()
    ):
        raise MLLMStateError(
            f"{label} has shape {tuple(source.shape)} ({source.dtype}); expected a float tensor (1, L, {mllm_dim}) "
            f"matching the transformer's mllm_dim={mllm_dim}"
        )
    return states


def branch_states(
    mllm: torch.nn.Module | None,
    processor: ProcessorMixin | None,
    mllm_dim: int,
    texts: tuple[str, str],
    images: Sequence[PIL.Image.Image],
    given: tuple[torch.Tensor | str | os.PathLike | None, torch.Tensor | str | os.PathLike | None],
    do_cfg: bool,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positive and negative states, each ``(1, L, mllm_dim)``: the ``given`` ones, else computed.

    ``texts``: what the MLLM reads in each branch (the negative one ends in :data:`MLLM_NEGATIVE_SUFFIX`).
    Without CFG there is no negative branch; negative states given anyway are still checked, then unused.
    """
    names = ("mllm_hidden_states", "negative_mllm_hidden_states")

    def states_for(branch: int) -> torch.Tensor:
        if given[branch] is not None:
            return load_mllm_states(given[branch], mllm_dim, name=names[branch])
        if mllm is None or processor is None:
            raise ValueError(
                f"{names[branch]} were not given and the pipeline has no mllm / mllm_processor to compute them"
            )
        states = encode_mllm(mllm, processor, texts[branch], images, device)
        return load_mllm_states(states, mllm_dim, name=names[branch])

    positive = states_for(0)
    if do_cfg:
        return positive, states_for(1)
    if given[1] is not None:  # unused, but a wrong one is still a mistake
        load_mllm_states(given[1], mllm_dim, name=names[1])
        logger.warning("negative_mllm_hidden_states have no effect at guidance_scale 1 (no negative branch)")
    return positive, None
