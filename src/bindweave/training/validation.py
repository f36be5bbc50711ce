"""Periodic validation videos: fixed prompts, references and noise, generated as inference would.

The conditioning of every case is encoded once, at start, with the pipeline's own inference methods
(full-length MLLM states, the negative prompt for classifier-free guidance), so the frozen encoders need
not stay in memory. Each validation then runs the pipeline's ``prepare_latents``, ``denoise`` (UniPC +
CFG on the model being trained) and ``decode``, and the main rank writes ``validation/step-XXXXXX/NN.mp4``.
Under FSDP every rank takes part in the forwards (the sharded weights are gathered collectively).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from bindweave.conditioning.text import DEFAULT_NEGATIVE_PROMPT
from bindweave.denoiser import Conditioning
from bindweave.io.video import write_video
from bindweave.pipeline import BindWeavePipeline

from .config import DataConfig, ValidationConfig
from .distributed import DistributedContext

logger = logging.getLogger(__name__)

__all__ = ["Validator"]

VALIDATION_FPS = 16


@dataclass
class _Case:
    cond: Conditioning
    uncond: Conditioning | None


class Validator:
    def __init__(
        self,
        pipe: BindWeavePipeline,
        config: ValidationConfig,
        data: DataConfig,
        output_dir: Path,
        ctx: DistributedContext,
    ):
        self.pipe, self.config, self.ctx = pipe, config, ctx
        self.output_dir = Path(output_dir) / "validation"
        self.height = config.height or data.height
        self.width = config.width or data.width
        self.num_frames = config.num_frames or data.num_frames
        pipe.check_inputs("validation", self.height, self.width, self.num_frames, config.guidance_scale)
        self.cases = [self._encode(case.prompt, case.references) for case in config.cases]

    @torch.no_grad()
    def _encode(self, prompt: str, references: list[Path]) -> _Case:
        pipe = self.pipe
        do_cfg = self.config.guidance_scale != 1.0
        images, boxes = pipe.prepare_references(references, self.height, self.width)
        mllm, negative_mllm = pipe.encode_mllm_states(
            prompt, DEFAULT_NEGATIVE_PROMPT, images, None, None, do_cfg
        )  # (1, L, D) each
        text, negative_text = pipe.encode_text(prompt, DEFAULT_NEGATIVE_PROMPT, do_cfg)  # (1, 512, D) each
        cond = Conditioning(
            text=text,
            image=pipe.encode_clip_tokens(boxes),  # (1, slots * T, D)
            mllm=mllm,
            condition=pipe.prepare_condition(boxes, self.num_frames, self.height, self.width),
        ).to(torch.device("cpu"))
        uncond = cond.with_prompt(negative_text.cpu(), negative_mllm.cpu()) if do_cfg else None
        return _Case(cond=cond, uncond=uncond)

    @torch.no_grad()
    def run(self, step: int, compute: Callable[[], AbstractContextManager]) -> list[Path]:
        """Generate every case with the current weights (forwards inside ``compute()``, e.g. autocast).

        Returns the written files (main rank; empty on the others).
        """
        pipe, config, device = self.pipe, self.config, self.ctx.device
        folder = self.output_dir / f"step-{step:06d}"
        written = []
        was_training = pipe.transformer.training
        pipe.transformer.eval()
        try:
            for i, case in enumerate(self.cases):
                generator = torch.Generator().manual_seed(config.seed + i)
                latents = pipe.prepare_latents(self.num_frames, self.height, self.width, generator, device)
                uncond = case.uncond.to(device) if case.uncond is not None else None
                with compute():
                    latents = pipe.denoise(
                        latents,
                        case.cond.to(device),
                        uncond,
                        config.num_inference_steps,
                        config.guidance_scale,
                        None,
                    )
                if self.ctx.is_main:
                    frames = pipe.decode(latents, output_type="np")[0]  # (F, H, W, 3) in [0, 1]
                    written.append(write_video(frames, folder / f"{i:02d}.mp4", fps=VALIDATION_FPS))
        finally:
            pipe.transformer.train(was_training)
        if written:
            logger.info("validation videos for step %d in %s", step, folder)
        return written
