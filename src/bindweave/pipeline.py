"""BindWeavePipeline: subject-to-video generation (spec 2 and 3)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionModel,
    PreTrainedModel,
    ProcessorMixin,
    UMT5EncoderModel,
)

from .conditioning.clip import encode_reference_tokens
from .conditioning.latents import (
    build_condition,
    denormalize_latents,
    encode_references,
    latent_frame_count,
    reference_slots,
    zero_video_condition,
)
from .conditioning.mllm import MLLM_NEGATIVE_SUFFIX, branch_states
from .conditioning.references import Letterboxed, ReferenceInput, letterbox, load_references
from .conditioning.text import DEFAULT_NEGATIVE_PROMPT, encode_t5
from .denoiser import Conditioning, guided_velocity
from .lora.loader import BindWeaveLoraLoaderMixin
from .models import BindWeaveTransformer3DModel
from .perf.cross_attention import context_kv_cache
from .perf.parallel import check_sequence_split
from .perf.pipeline_options import SpeedOptionsMixin
from .released import released_components
from .samplers import get_sampler
from .sampling import SamplingPlan

logger = logging.getLogger(__name__)

MLLMStates = torch.Tensor | str | os.PathLike


class BindWeavePipeline(DiffusionPipeline, BindWeaveLoraLoaderMixin, SpeedOptionsMixin):
    r"""Generate a video of the given reference subjects acting as the prompt says.

    LoRAs for the DiT load as for diffusers' Wan pipelines (``load_lora_weights``, ``set_adapters``,
    ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``: :mod:`bindweave.lora.loader`), and a LoRA
    that matches no layer or has other shapes is an error instead of a silent no-op. The speed and precision
    options (``enable_batched_cfg``, ``enable_step_cache``, ``set_precision``, ...) come from
    :class:`bindweave.perf.pipeline_options.SpeedOptionsMixin`.

    Components:
        tokenizer / text_encoder: umT5-XXL (Wan2.1).
        image_encoder / image_processor: CLIP ViT-H/14 vision tower (Wan2.1 I2V); the processor only
            supplies the input size and normalisation, the resize itself follows the release (spec 2.2).
        vae: Wan 2.1 ``AutoencoderKLWan``.
        transformer: [`BindWeaveTransformer3DModel`].
        scheduler: UniPC flow sampler (:func:`bindweave.flow.sampling_scheduler`).
        mllm / mllm_processor: Qwen2.5-VL and its processor; optional when MLLM states are given.
    """

    model_cpu_offload_seq = "mllm->text_encoder->image_encoder->vae->transformer"
    _optional_components = ["mllm", "mllm_processor"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        tokenizer: AutoTokenizer,
        text_encoder: UMT5EncoderModel,
        image_encoder: CLIPVisionModel,
        image_processor: CLIPImageProcessor,
        vae: AutoencoderKLWan,
        transformer: BindWeaveTransformer3DModel,
        scheduler: UniPCMultistepScheduler,
        mllm: PreTrainedModel | None = None,
        mllm_processor: ProcessorMixin | None = None,
        default_height: int = 720,
        default_width: int = 1280,
        default_num_frames: int = 81,
        default_guidance_scale: float = 5.0,
        default_num_inference_steps: int = 50,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            image_encoder=image_encoder,
            image_processor=image_processor,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            mllm=mllm,
            mllm_processor=mllm_processor,
        )
        # The model's native size, guidance and steps, saved in model_index.json: 720x1280x81, 5.0 and 50
        # for the released model. A model trained without condition dropout (the toy) has no negative
        # branch to guide against and saves 1.0.
        self.register_to_config(
            default_height=default_height,
            default_width=default_width,
            default_num_frames=default_num_frames,
            default_guidance_scale=default_guidance_scale,
            default_num_inference_steps=default_num_inference_steps,
        )
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        self._zero_video_cache: dict[tuple, torch.Tensor] = {}
        # Speed options (bindweave.perf); all off by default, the reference computation.
        self._init_speed_options()

    @classmethod
    def from_released(
        cls,
        wan_path: str | os.PathLike,
        transformer_path: str | os.PathLike,
        mllm_path: str | os.PathLike | None = None,
        torch_dtype: torch.dtype = torch.bfloat16,
        **transformer_kwargs: Any,
    ) -> BindWeavePipeline:
        """Assemble the pipeline from the three released folders.

        Args:
            wan_path: a ``Wan2.1-I2V-14B-720P-Diffusers`` folder (umT5, CLIP, VAE; its transformer and
                scheduler are not used).
            transformer_path: the BindWeave checkpoint folder (with or without ``config.json``), or a
                single-file checkpoint in the original Wan / ComfyUI layout
                (:meth:`BindWeaveTransformer3DModel.from_single_file`).
            mllm_path: a ``Qwen2.5-VL-7B-Instruct`` folder; leave out to pass precomputed MLLM states.
            torch_dtype: dtype of the transformer, umT5, CLIP and MLLM. The VAE stays float32, as Wan does.
            transformer_kwargs: config overrides for a configless transformer folder of another size.
        """
        return cls(
            **released_components(wan_path, transformer_path, mllm_path, torch_dtype, **transformer_kwargs)
        )

    # ------------------------------------------------------------------ steps

    def check_inputs(
        self, prompt: str, height: int, width: int, num_frames: int, guidance_scale: float
    ) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ValueError(
                f"height and width must be positive multiples of {multiple}, got {height}x{width}"
            )
        latent_frames = latent_frame_count(num_frames, self.vae_scale_factor_temporal)
        if self._context_parallel_degree > 1:
            scale = self.vae_scale_factor_spatial
            check_sequence_split(
                self.transformer.config,
                latent_frames,
                height // scale,
                width // scale,
                self._context_parallel_degree,
            )
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1, got {guidance_scale}")

    def prepare_references(
        self, reference_images: ReferenceInput | Sequence[ReferenceInput], height: int, width: int
    ) -> tuple[list[PIL.Image.Image], list[Letterboxed]]:
        images = load_references(reference_images)
        return images, [letterbox(image, height, width) for image in images]

    def encode_text(
        self, prompt: str, negative_prompt: str, do_cfg: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prompts = [prompt, negative_prompt] if do_cfg else [prompt]
        states = encode_t5(
            self.tokenizer, self.text_encoder, prompts, device=self._execution_device
        )  # (1 or 2, 512, text_dim)
        return states[:1], (states[1:] if do_cfg else None)

    def encode_mllm_states(
        self,
        prompt: str,
        negative_prompt: str,
        images: list[PIL.Image.Image],
        mllm_hidden_states: MLLMStates | None,
        negative_mllm_hidden_states: MLLMStates | None,
        do_cfg: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positive and negative MLLM states, each ``(1, L, mllm_dim)``, given or computed (spec 2.5)."""
        return branch_states(
            self.mllm,
            self.mllm_processor,
            self.transformer.config.mllm_dim,
            (prompt, negative_prompt + MLLM_NEGATIVE_SUFFIX),
            images,
            (mllm_hidden_states, negative_mllm_hidden_states),
            do_cfg,
            self._execution_device,
        )

    def encode_clip_tokens(self, boxes: list[Letterboxed]) -> torch.Tensor:
        canvases = torch.stack([b.canvas for b in boxes])  # (N, 3, H, W)
        return encode_reference_tokens(
            self.image_encoder,
            self.image_processor,
            canvases,
            self.transformer.config,
            self._execution_device,
        )  # (1, 4 * 257, 1280)

    def prepare_condition(
        self, boxes: list[Letterboxed], num_frames: int, height: int, width: int
    ) -> torch.Tensor:
        canvases = torch.stack([b.canvas for b in boxes])  # (N, 3, H, W)
        latents = encode_references(self.vae, canvases, self._execution_device)  # (N, z, 1, h, w)
        slots = reference_slots(
            latents, torch.stack([b.mask for b in boxes]), self.transformer.config.num_reference_slots
        )
        # The grey-video part depends only on the size: encode it once per size (the VAE is frozen).
        key = (num_frames, height, width, self._execution_device, self.vae.dtype)
        if key not in self._zero_video_cache:
            self._zero_video_cache = {
                key: zero_video_condition(self.vae, num_frames, height, width, self._execution_device)
            }
        return build_condition(slots, self._zero_video_cache[key])  # (1, 4+z, 4+F', h, w)

    def prepare_latents(
        self,
        num_frames: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        shape = (
            1,
            self.vae.config.z_dim,
            latent_frame_count(num_frames, self.vae_scale_factor_temporal),
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        # With a CPU generator the noise is drawn on the CPU and moved, as the release does.
        return randn_tensor(shape, generator=generator, device=device, dtype=self._sampling_dtype)

    def denoise(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        num_inference_steps: int,
        guidance_scale: float,
        callback_on_step_end: Callable | None,
        sampler: str = "unipc",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run ``sampler`` (:mod:`bindweave.samplers`) from noise ``latents`` to clean latents.

        ``generator`` draws the fresh noise of the ``lightx2v-lcm`` update (unused by the others).
        """
        plan = SamplingPlan.build(get_sampler(sampler), self.scheduler, num_inference_steps, latents.device)
        self._prepare_step_cache(num_inference_steps)
        reuse_context = (
            context_kv_cache(self.transformer) if self._context_kv_cache else contextlib.nullcontext()
        )
        with self.progress_bar(total=num_inference_steps) as progress_bar, reuse_context:
            for i, t in enumerate(plan.timesteps):
                if self.interrupt:
                    break
                velocity = guided_velocity(
                    self.transformer,
                    latents,
                    t.expand(latents.shape[0]).to(latents.device),
                    cond,
                    uncond,
                    guidance_scale,
                    batch_cfg=self._batch_cfg,
                    dtype=self._sampling_dtype,
                )
                latents = plan.step(i, latents, velocity.to(self._sampling_dtype), generator)
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    def decode(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        latents = denormalize_latents(latents.to(self.vae.dtype), self.vae)
        video = self.vae.decode(latents, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        return self.video_processor.postprocess_video(video, output_type=output_type)

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        reference_images: ReferenceInput | Sequence[ReferenceInput],
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        mllm_hidden_states: MLLMStates | None = None,
        negative_mllm_hidden_states: MLLMStates | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[BindWeavePipeline, int, torch.Tensor, dict], dict] | None = None,
        sampler: str = "unipc",
    ) -> WanPipelineOutput | tuple:
        r"""Generate a video.

        Args:
            prompt: what the subjects do.
            reference_images: 1-4 references (paths, PIL images or ``(H, W, 3)`` arrays); more are dropped.
            negative_prompt: the unconditional prompt for umT5; the MLLM reads it with
                ``MLLM_NEGATIVE_SUFFIX`` appended, as the release did.
            height, width: output size, multiples of 16; default the model's native size
                (``default_height`` / ``default_width`` in its config: 720x1280 for the released model).
            num_frames: ``4k + 1`` frames; default ``default_num_frames`` (81, at 16 fps, when released).
            num_inference_steps: sampling steps; default the sampler's (4 for the ``lightx2v`` ones), else
                ``default_num_inference_steps`` (50 when released).
            guidance_scale: classifier-free guidance; 1 disables the unconditional branch; default the
                sampler's (1 for the ``lightx2v`` ones), else ``default_guidance_scale`` (5.0 when released).
            generator: for the initial noise.
            mllm_hidden_states, negative_mllm_hidden_states: precomputed MLLM states, ``(1, L, mllm_dim)``
                tensors or released-format ``.pt`` files; computed with ``mllm`` when left out.
            output_type: ``"np"`` (``(1, F, H, W, 3)`` floats in [0, 1]), ``"pt"``, ``"pil"`` or ``"latent"``.
            callback_on_step_end: called as ``fn(pipe, step, t, {"latents": ...})`` after each step; may
                return replaced latents. Setting ``pipe._interrupt = True`` stops the loop.
            sampler: ``"unipc"`` (the released sampler), ``"euler"``, or ``"lightx2v"`` / ``"lightx2v-lcm"``
                for step-distillation LoRAs (:mod:`bindweave.samplers`).

        Returns:
            [`WanPipelineOutput`] with ``frames``, or a tuple ``(frames,)``.
        """
        # 1. Check inputs and load the references (1-4, in order).
        height = self.config.default_height if height is None else height
        width = self.config.default_width if width is None else width
        num_frames = self.config.default_num_frames if num_frames is None else num_frames
        kind = get_sampler(sampler)
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
            guidance_scale = guidance_scale if kind.default_guidance is None else kind.default_guidance
        if num_inference_steps is None:
            num_inference_steps = kind.default_steps or self.config.default_num_inference_steps
        self.check_inputs(prompt, height, width, num_frames, guidance_scale)
        if kind.cfg_distilled and guidance_scale != 1.0:
            logger.warning(
                "sampler %s is for CFG-distilled LoRAs, which LightX2V runs without CFG; guidance %s runs a "
                "second, negative branch they were not trained for",
                sampler,
                guidance_scale,
            )
        self._interrupt = False
        do_cfg = guidance_scale != 1.0
        device = self._execution_device
        images, boxes = self.prepare_references(reference_images, height, width)

        # 2. MLLM states of prompt + references: (1, L, 3584) each branch. First, so offloading can drop it.
        mllm, negative_mllm = self.encode_mllm_states(
            prompt, negative_prompt, images, mllm_hidden_states, negative_mllm_hidden_states, do_cfg
        )

        # 3. umT5 states: (1, 512, 4096) each branch.
        text, negative_text = self.encode_text(prompt, negative_prompt, do_cfg)

        # 4. CLIP tokens of the letterboxed references: (1, 4 * 257, 1280).
        image_tokens = self.encode_clip_tokens(boxes)

        # 5. VAE condition: reference slots + grey video, (1, 4 + 16, 4 + 21, 90, 160).
        condition = self.prepare_condition(boxes, num_frames, height, width)

        cond = Conditioning(text=text, image=image_tokens, mllm=mllm, condition=condition).to(device)
        uncond = cond.with_prompt(negative_text.to(device), negative_mllm.to(device)) if do_cfg else None

        # 6. Initial noise: (1, 16, 21, 90, 160).
        latents = self.prepare_latents(num_frames, height, width, generator, device)

        # 7. Denoise with the sampler (UniPC by default) and CFG (the branches differ only in umT5 and MLLM
        #    states).
        latents = self.denoise(
            latents,
            cond,
            uncond,
            num_inference_steps,
            guidance_scale,
            callback_on_step_end,
            sampler=sampler,
            generator=generator,
        )

        # 8. Decode: (1, 3, 81, 720, 1280) -> frames. Under model offload the DiT goes back to the CPU
        #    first, so the VAE decode has the accelerator to itself.
        self.maybe_free_model_hooks()
        video = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)
