"""The BindWeave nodes for ComfyUI: a loader, a LoRA chain and a sampler on :class:`BindWeavePipeline`.

ComfyUI finds a node through ``NODE_CLASS_MAPPINGS`` and calls it by its class attributes: ``INPUT_TYPES()``
names the inputs, ``FUNCTION`` the method it calls with them as keyword arguments, ``RETURN_TYPES`` what
that returns (a tuple). This module imports neither torch nor ComfyUI at import time: the work is done by
:mod:`bindweave.comfyui.loading` and :mod:`bindweave.comfyui.sampling`, and ComfyUI's hooks are optional
(:mod:`bindweave.comfyui.hooks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from ..conditioning.prompts import DEFAULT_NEGATIVE_PROMPT
from ..lora.config import LoraSpec
from ..perf.kinds import MemoryMode, Precision
from ..samplers import SAMPLERS
from . import hooks
from .loading import NONE, SOURCES, ComfyFiles, Folders, load_bindweave

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

PIPELINE = "BINDWEAVE_PIPELINE"
LORAS = "BINDWEAVE_LORAS"
MAX_SEED = 2**64 - 1
DTYPES = ("auto", "bfloat16", "float16", "float32")


def _files(folder: str) -> tuple[list[str], dict]:
    """A combo input listing ComfyUI's ``models/<folder>``, with "none" first and as default."""
    return [NONE, *hooks.model_file_list(folder)], {"default": NONE}


def _text(tooltip: str, default: str = "") -> tuple[str, dict]:
    return "STRING", {"default": default, "tooltip": tooltip}


class BindWeaveLoraSelect:
    """One LoRA and its strength, appended to the chain of ``previous`` (any number, in order)."""

    CATEGORY = "BindWeave"
    FUNCTION = "select"
    RETURN_TYPES = (LORAS,)
    RETURN_NAMES = ("loras",)
    DESCRIPTION = "A LoRA for the BindWeave DiT (diffusers, ComfyUI or LightX2V keys), fused at load time."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora": (hooks.model_file_list("loras"), {"tooltip": "a file in ComfyUI's models/loras"}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            },
            "optional": {"previous": (LORAS,)},
        }

    def select(self, lora: str, strength: float, previous: tuple[LoraSpec, ...] = ()) -> tuple:
        return ((*previous, LoraSpec(Path(hooks.model_file_path("loras", lora)), strength)),)


class BindWeaveLoader:
    """Load a BindWeave pipeline: the embedded toy model, diffusers folders, or ComfyUI's model files."""

    CATEGORY = "BindWeave"
    FUNCTION = "load"
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    DESCRIPTION = (
        "embedded toy model: no files needed. diffusers folders: model_folder (a saved BindWeavePipeline), or "
        "wan_folder + transformer (+ mllm_folder). ComfyUI model files: diffusion_model, text_encoder, "
        "clip_vision, vae (+ mllm) from ComfyUI's model folders."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source": (list(SOURCES), {"default": SOURCES[0]}),
                "memory": (list(get_args(MemoryMode)), {"default": "none"}),
                "fp8_weights": ("BOOLEAN", {"default": False, "tooltip": "store the DiT in float8 (lossy)"}),
                "precision": (list(get_args(Precision)), {"default": "float32"}),
                "dtype": (
                    list(DTYPES),
                    {"default": "auto", "tooltip": "auto: bfloat16 on CUDA, else float32"},
                ),
            },
            "optional": {
                "loras": (LORAS,),
                "model_folder": _text("diffusers folders: a saved BindWeavePipeline folder"),
                "wan_folder": _text("diffusers folders: Wan2.1-I2V-14B-720P-Diffusers (umT5, CLIP, VAE)"),
                "transformer": _text("diffusers folders: the BindWeave DiT folder or single file"),
                "mllm_folder": _text(
                    "Qwen2.5-VL-7B-Instruct folder (leave empty with precomputed MLLM states)"
                ),
                "diffusion_model": _files("diffusion_models"),
                "text_encoder": _files("text_encoders"),
                "clip_vision": _files("clip_vision"),
                "vae": _files("vae"),
                "mllm": _files("text_encoders"),
                "umt5_tokenizer": _text("ComfyUI model files: a folder with umT5-XXL's tokenizer files"),
                "mllm_processor": _text(
                    "ComfyUI model files: a folder with Qwen2.5-VL-7B-Instruct's config.json and processor files"
                ),
            },
        }

    def load(
        self,
        source: str,
        memory: str,
        fp8_weights: bool,
        precision: str,
        dtype: str,
        loras: tuple[LoraSpec, ...] = (),
        model_folder: str = "",
        wan_folder: str = "",
        transformer: str = "",
        mllm_folder: str = "",
        diffusion_model: str = NONE,
        text_encoder: str = NONE,
        clip_vision: str = NONE,
        vae: str = NONE,
        mllm: str = NONE,
        umt5_tokenizer: str = "",
        mllm_processor: str = "",
    ) -> tuple:
        folders = Folders(model=model_folder, wan=wan_folder, transformer=transformer, mllm=mllm_folder)
        files = ComfyFiles(
            diffusion_model=diffusion_model,
            text_encoder=text_encoder,
            clip_vision=clip_vision,
            vae=vae,
            mllm=mllm,
            umt5_tokenizer=umt5_tokenizer,
            mllm_processor=mllm_processor,
        )
        pipe = load_bindweave(
            source,
            folders=folders,
            files=files,
            loras=list(loras),
            memory=memory,
            fp8_weights=fp8_weights,
            precision=precision,
            dtype=dtype,
        )
        return (pipe,)


class BindWeaveSampler:
    """Generate a video of 1-4 references: ``IMAGE`` frames and their frame rate, for ComfyUI's video nodes."""

    CATEGORY = "BindWeave"
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    DESCRIPTION = (
        "The same video as `bindweave generate` with the same inputs and seed. 0 for width, height, frames, "
        "steps or guidance: the model's own (the sampler's steps and guidance for lightx2v)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        def size(tooltip: str) -> tuple[str, dict]:
            return "INT", {"default": 0, "min": 0, "max": 4096, "step": 16, "tooltip": tooltip}

        return {
            "required": {
                "pipeline": (PIPELINE,),
                "image_1": ("IMAGE", {"tooltip": "reference 1 (each image of a batch is one reference)"}),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE_PROMPT}),
                "seed": ("INT", {"default": 42, "min": 0, "max": MAX_SEED}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "0: the model's own"}),
                "guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                       "tooltip": "0: the model's own; 1 turns the negative branch off"}),
                "sampler": (list(SAMPLERS), {"default": "unipc"}),
                "width": size("0: the model's native width"),
                "height": size("0: the model's native height"),
                "num_frames": ("INT", {"default": 0, "min": 0, "max": 1001, "step": 4,
                                       "tooltip": "4k + 1 frames; 0: the model's own"}),
                "fps": ("INT", {"default": 16, "min": 1, "max": 120}),
            },
            "optional": {
                "image_2": ("IMAGE",),
                "image_3": ("IMAGE",),
                "image_4": ("IMAGE",),
                "mllm_states": _text("precomputed MLLM states (.pt, released format) for the prompt"),
                "negative_mllm_states": _text("precomputed MLLM states for the negative prompt"),
            },
        }  # fmt: skip

    def generate(self, pipeline, image_1, prompt: str, **inputs) -> tuple:
        from .sampling import SamplerInputs, run_sampler

        images = [image_1, *(inputs.pop(f"image_{i}", None) for i in (2, 3, 4))]
        frames, fps = run_sampler(pipeline, SamplerInputs.from_node(images, prompt, **inputs))
        return (frames, fps)


NODE_CLASS_MAPPINGS = {
    "BindWeaveLoader": BindWeaveLoader,
    "BindWeaveLoraSelect": BindWeaveLoraSelect,
    "BindWeaveSampler": BindWeaveSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BindWeaveLoader": "BindWeave Loader",
    "BindWeaveLoraSelect": "BindWeave LoRA",
    "BindWeaveSampler": "BindWeave Sampler",
}
