"""GmeScore: text-frame relevance with the GME-Qwen2-VL-7B universal embedder.

Per video (the benchmark's ``eval/get_gmescore.py``): the 32 benchmark frames are embedded as corpus
images, the case prompt as a query with the instruction "Find an image that matches the given text.";
the score is the mean over frames of the dot product of the (L2-normalised, fp16) embeddings. The same
embedder serves NexusScore (:mod:`bindweave.eval.scorers.nexus`).

:class:`GmeQwen2VLEmbedder` is a native port, on transformers 5's Qwen2-VL classes, of the ``GmeQwen2VL``
class the benchmark runs (``eval/utils/gme/gme_model.py`` of OpenS2V-Nexus, identical to the
``gme_inference.py`` shipped with the GME weights; it needs transformers 4.x). What decides the embedding:

* the model in fp16 (the benchmark's ``torch_dtype``), the GME folder being a Qwen2-VL checkpoint;
* images: converted to RGB and resized (PIL's default filter) to GME's ``smart_resize`` with 4..16384
  28x28 tiles, then Qwen2-VL's image processor bounded to 256..1280 tiles (min/max pixels);
* the chat text ``<|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{content}<|im_end|>
  \\n<|im_start|>assistant\\n<|endoftext|>``; queries carry the instruction, corpus images the default
  "You are a helpful assistant."; an image's content is ``<|vision_start|><|image_pad|><|vision_end|>``;
* left padding, truncation to 1800 tokens, batches of 32;
* attention: v1.1's ``get_gmescore.py`` and ``get_nexusscore.py`` (PKU-YuanGroup/OpenS2V-Nexus
  8cb7427ed56b) load GME with ``attn_model="flash_attention_2"``, which in ``GmeQwen2VL`` also selects the
  left padding above (``"sdpa"`` would select right padding; the fork commit franciszzj/OpenS2V-Nexus@70e5b55
  switches GmeScore to that, not v1.1). By default (:func:`gme_attn_implementation`) we run
  ``flash_attention_2`` where the benchmark could (CUDA with the ``flash_attn`` package installed), else
  ``sdpa``; with the padding masked both give the same embeddings up to fp16 rounding;
* the decoder run on the embeddings with **sequential** positions 0..L-1 on all three M-RoPE axes
  **(quirk)**: GME calls the text decoder directly, so Qwen2-VL's 2-D image positions are not used;
* the pooled token: the last one (left padding), else each row's last unpadded token; L2-normalised.

Checked against the benchmark's own code under transformers 4.51.3 on a tiny random checkpoint in the
GME layout, in fp16 and fp32, left and right padded (``tests/eval/fixtures/make_gme_fixture.py``,
``tests/eval/test_eval_gme_port.py``); the fp16 forward on CUDA in ``tests/eval/test_cuda.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from bindweave.eval.scorers.base import DEFAULT_NUM_FRAMES, VideoSample, require_files, require_weights

__all__ = [
    "GME_DEFAULT_INSTRUCTION",
    "GME_SOURCE",
    "GME_TEXT_INSTRUCTION",
    "GmeEmbedder",
    "GmeQwen2VLEmbedder",
    "GmeScorer",
    "gme_attn_implementation",
    "gme_fetch_image",
    "gme_prompt",
    "gme_smart_resize",
]

GME_SOURCE = "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct"
GME_TEXT_INSTRUCTION = "Find an image that matches the given text."
GME_DEFAULT_INSTRUCTION = "You are a helpful assistant."
GME_IMAGE_CONTENT = "<|vision_start|><|image_pad|><|vision_end|>"
GME_IMAGE_TOKEN = "<|image_pad|>"
GME_MAX_LENGTH = 1800
GME_BATCH_SIZE = 32
GME_MIN_PIXELS = 256 * 28 * 28  # the processor's bounds (min/max_image_tokens 256 / 1280)
GME_MAX_PIXELS = 1280 * 28 * 28
FETCH_FACTOR = 28  # the resize GME applies to every image first (its fetch_image)
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
FETCH_MAX_RATIO = 200


class GmeEmbedder(Protocol):
    """L2-normalised embeddings ``(N, D)`` of texts (queries, with an instruction) and of images (corpus)."""

    def embed_texts(self, texts: Sequence[str], instruction: str) -> torch.Tensor: ...

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


def gme_attn_implementation(device: str | torch.device) -> str:
    """The benchmark's ``flash_attention_2`` on CUDA where the ``flash_attn`` package is importable, else
    ``sdpa`` (flash-attn has no CPU kernels; transformers refuses it without the package)."""
    import importlib.util

    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def text_image_similarity(gme: GmeEmbedder, text: str, images: Sequence[Image.Image]) -> torch.Tensor:
    """Dot product of the text query with each image, ``(N,)``, in the embeddings' dtype (fp16 for GME,
    as the benchmark multiplies them)."""
    query = gme.embed_texts([text], GME_TEXT_INSTRUCTION)
    corpus = gme.embed_images(images)
    return (corpus * query.to(corpus.dtype)).sum(-1)


class GmeScorer:
    """Per-video GmeScore (raw mean cosine; aggregation applies ``min(x, 1)``)."""

    name = "gme"

    def __init__(self, gme: GmeEmbedder, num_frames: int = DEFAULT_NUM_FRAMES) -> None:
        self.gme = gme
        self.num_frames = num_frames

    def __call__(self, sample: VideoSample) -> float:
        if not sample.prompt.strip():
            raise ValueError(f"{sample.id}: GmeScore needs the case prompt, it is empty")
        return float(
            text_image_similarity(self.gme, sample.prompt, sample.sampled_images(self.num_frames)).mean()
        )


def gme_prompt(instruction: str, text: str | None = None, image: bool = False) -> str:
    """GME's chat text for one input (an image placeholder first, then the text)."""
    content = (GME_IMAGE_CONTENT if image else "") + (text or "")
    return (
        f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )


def gme_smart_resize(
    height: int,
    width: int,
    factor: int = FETCH_FACTOR,
    min_pixels: int = FETCH_MIN_PIXELS,
    max_pixels: int = FETCH_MAX_PIXELS,
) -> tuple[int, int]:
    """GME's ``smart_resize``: multiples of ``factor``, pixel count within bounds, aspect kept.

    Unlike transformers' version, an aspect ratio over 200 is clamped, not refused.
    """
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if max(h_bar, w_bar) / min(h_bar, w_bar) > FETCH_MAX_RATIO:
        if h_bar > w_bar:
            h_bar = w_bar * FETCH_MAX_RATIO
        else:
            w_bar = h_bar * FETCH_MAX_RATIO
    return h_bar, w_bar


def gme_fetch_image(image: Image.Image) -> Image.Image:
    """GME's first resize of every image (its ``fetch_image``): RGB, :func:`gme_smart_resize`, PIL default."""
    image = image.convert("RGB")
    height, width = gme_smart_resize(image.height, image.width)
    return image.resize((width, height))


class GmeQwen2VLEmbedder:
    """GME-Qwen2-VL embeddings, natively on transformers 5 (see the module docstring for the recipe).

    ``attn_implementation=None`` picks :func:`gme_attn_implementation` for ``device``; the choice is kept in
    ``self.attn_implementation``.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.float16,
        batch_size: int = GME_BATCH_SIZE,
        padding_side: str = "left",
        attn_implementation: str | None = None,
    ) -> None:
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        model_path = Path(model_path)
        require_files("gme", [(model_path, GME_SOURCE)])
        require_weights("gme", model_path, GME_SOURCE)
        require_files("gme", [(model_path / "preprocessor_config.json", GME_SOURCE)])
        self.attn_implementation = attn_implementation or gme_attn_implementation(device)
        full = Qwen2VLForConditionalGeneration.from_pretrained(
            model_path, dtype=dtype, attn_implementation=self.attn_implementation
        )
        self.model = full.model.eval().requires_grad_(False).to(device)  # GME never uses the LM head
        del full
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = padding_side
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_path)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(GME_IMAGE_TOKEN)
        self.device = torch.device(device)
        self.batch_size = batch_size

    def embed_texts(self, texts: Sequence[str], instruction: str) -> torch.Tensor:
        """Query embeddings ``(N, D)`` of ``texts`` under ``instruction`` (on the CPU, model dtype)."""
        prompts = [gme_prompt(instruction, text=t) for t in texts]
        return self._batched(prompts, None)

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Corpus embeddings ``(N, D)`` of ``images`` (default instruction, as ``is_query=False``)."""
        prompts = [gme_prompt(GME_DEFAULT_INSTRUCTION, image=True) for _ in images]
        return self._batched(prompts, list(images))

    def _batched(self, prompts: list[str], images: list[Image.Image] | None) -> torch.Tensor:
        if not prompts:
            raise ValueError("gme: nothing to embed")
        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = None if images is None else images[start : start + self.batch_size]
            out.append(self._embed(prompts[start : start + self.batch_size], chunk).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> torch.Tensor:
        vision = None
        if images is not None:
            vision = self.image_processor(
                images=[gme_fetch_image(i) for i in images],
                size={"shortest_edge": GME_MIN_PIXELS, "longest_edge": GME_MAX_PIXELS},  # GME's bounds
                return_tensors="pt",
            )
            merge = self.image_processor.merge_size**2
            counts = (vision["image_grid_thw"].prod(-1) // merge).tolist()
            # One image per prompt: its placeholder becomes one token per merged 2x2 patch group.
            prompts = [
                p.replace(GME_IMAGE_TOKEN, GME_IMAGE_TOKEN * n, 1)
                for p, n in zip(prompts, counts, strict=True)
            ]
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=GME_MAX_LENGTH, return_tensors="pt"
        )
        input_ids = batch["input_ids"].to(self.device)  # (B, L)
        attention_mask = batch["attention_mask"].to(self.device)  # (B, L)
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, L, D)
        if vision is not None:
            pixels = vision["pixel_values"].to(self.device, self.model.visual.dtype)
            grid = vision["image_grid_thw"].to(self.device)
            image_embeds = torch.cat(self.model.get_image_features(pixels, grid).pooler_output)
            image_mask = input_ids == self.image_token_id
            if int(image_mask.sum()) != image_embeds.shape[0]:
                raise ValueError(
                    f"gme: {int(image_mask.sum())} image tokens for {image_embeds.shape[0]} image features "
                    f"(an input longer than {GME_MAX_LENGTH} tokens was truncated)"
                )
            embeds[image_mask] = image_embeds.to(embeds.dtype)
        # GME runs the text decoder itself: positions default to 0..L-1 on every M-RoPE axis.
        hidden = self.model.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask
        ).last_hidden_state
        if bool((attention_mask[:, -1] == 1).all()):  # left padded (or unpadded): the last token
            pooled = hidden[:, -1]
        else:
            last = attention_mask.sum(dim=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return torch.nn.functional.normalize(pooled, p=2, dim=1)  # (B, D), model dtype
