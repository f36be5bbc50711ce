"""What the sampler node runs: ``bindweave generate``'s pipeline call, from ComfyUI's inputs.

The settings become the :class:`GenerateConfig` fields ``bindweave generate`` has (0 in a ComfyUI number
input standing for the CLI's "not given": the model's own), are validated by the same rules and passed
through the same :func:`bindweave.generate.sampling_kwargs`, so the same inputs and seed give the command's
video. ComfyUI's ``IMAGE`` is a float ``(B, H, W, C)`` tensor in [0, 1]; each of its images is one reference,
rounded to 8 bits by the pipeline's loader exactly as a PNG of it would be read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..conditioning.references import MAX_REFERENCES
from ..generate_config import SamplingConfig
from .hooks import StepReporter, raise_if_cancelled

logger = logging.getLogger(__name__)

__all__ = ["SamplerInputs", "references_from_images", "run_sampler"]


def references_from_images(images: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """The references, in order, from the node's ``image_1`` ... ``image_4`` (``None``: not connected).

    Raises:
        ValueError: naming the input, for a tensor that is not a ComfyUI ``IMAGE`` of RGB images, or when
            there are more than 4 references in all.
    """
    references = []
    for index, image in enumerate(images, start=1):
        if image is None:
            continue
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"image_{index}: expected a ComfyUI IMAGE (batch, height, width, 3), got {shape}"
            )
        references.extend(image.unbind(0))
    if not 1 <= len(references) <= MAX_REFERENCES:
        raise ValueError(
            f"BindWeave takes 1-{MAX_REFERENCES} reference images, got {len(references)} (each image of an "
            "IMAGE batch counts as one)"
        )
    return references


def _given(value: int | float) -> int | float | None:
    """ComfyUI number inputs have no "empty": 0 stands for "the model's own"."""
    return None if value == 0 else value


def _states_path(text: str) -> Path | None:
    return Path(text.strip()).expanduser() if text.strip() else None


@dataclass(frozen=True)
class SamplerInputs:
    """The sampler node's inputs: the references, the prompt, the sampling settings and MLLM states."""

    references: list[torch.Tensor]
    prompt: str
    sampling: SamplingConfig
    mllm_states: Path | None = None
    negative_mllm_states: Path | None = None

    @classmethod
    def from_node(
        cls,
        images: list[torch.Tensor | None],
        prompt: str,
        *,
        negative_prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        sampler: str,
        width: int,
        height: int,
        num_frames: int,
        fps: int,
        mllm_states: str = "",
        negative_mllm_states: str = "",
    ) -> SamplerInputs:
        """Validated before any model runs, with the CLI's rules and messages."""
        sampling = SamplingConfig(
            height=_given(height),
            width=_given(width),
            num_frames=_given(num_frames),
            steps=_given(steps),
            guidance=_given(guidance),
            sampler=sampler,
            seed=seed,
            negative_prompt=negative_prompt,
            fps=fps,
        )
        sampling.validate()
        if not prompt.strip():
            raise ValueError("prompt is empty: say what the subjects do")
        return cls(
            references=references_from_images(images),
            prompt=prompt,
            sampling=sampling,
            mllm_states=_states_path(mllm_states),
            negative_mllm_states=_states_path(negative_mllm_states),
        )


def run_sampler(pipe, inputs: SamplerInputs) -> tuple[torch.Tensor, float]:
    """Generate: ``(frames, fps)``, frames a ComfyUI ``IMAGE`` ``(F, H, W, 3)`` float32 in [0, 1].

    ComfyUI's progress bar moves once per sampling step and its Cancel stops the run after the current step
    (:class:`bindweave.comfyui.hooks.StepReporter`).
    """
    from ..generate import sampling_kwargs, warn_if_not_native

    raise_if_cancelled()
    warn_if_not_native(pipe, inputs.sampling)
    kwargs = sampling_kwargs(inputs.sampling)
    steps = kwargs["num_inference_steps"]
    if steps is None:  # what the pipeline will take: the sampler's default, else the model's
        from ..samplers import get_sampler

        steps = get_sampler(inputs.sampling.sampler).default_steps or pipe.config.default_num_inference_steps
    frames = pipe(
        inputs.prompt,
        inputs.references,
        mllm_hidden_states=inputs.mllm_states,
        negative_mllm_hidden_states=inputs.negative_mllm_states,
        callback_on_step_end=StepReporter(steps),
        **kwargs,
    ).frames[0]
    return torch.from_numpy(frames).float(), float(inputs.sampling.fps)
