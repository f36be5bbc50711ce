"""Prompt refinement (spec 5): a VLM looks at the references and rewrites the user's prompt.

The rewritten prompt is one English paragraph describing a single coherent scene (no split screen, no
duplicated subject) that uses each reference's visible features, places the subjects naturally and
states clear motion (optionally a camera move). The instruction wording below is our own.

Two backends share :class:`PromptRefiner`: :class:`EndpointRefiner` (any OpenAI-compatible
chat-completions endpoint, the way the released code calls a hosted model; same HTTP client as the
NaturalScore judge) and :class:`LocalQwenRefiner` (a loaded Qwen2.5-VL). A refinement is only accepted
when it is usable: an empty answer, an answer that is mostly non-ASCII letters (not English), or an
endpoint that keeps failing leaves the original prompt in place, with a warning, so a batch never
stops or silently degrades because of one bad answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image
from tqdm import tqdm

from bindweave.config import field
from bindweave.eval.chat import ChatClient, ChatEndpointError, image_part, text_part
from bindweave.io.manifest import ManifestEntry, load_manifest, resolve_images, save_manifest, with_fields

log = logging.getLogger(__name__)

__all__ = [
    "REFINE_INSTRUCTION",
    "EndpointRefiner",
    "LocalQwenRefiner",
    "PromptRefiner",
    "RefineConfig",
    "RefineOptions",
    "RefineResult",
    "check_refinement",
    "refine_prompt",
    "run_refine",
]

REFINE_INSTRUCTION = """\
You write prompts for a video generator that must show given subjects. You receive reference images, \
each showing a subject (a person, an animal, an object) or a setting that has to appear in the video, \
followed by the user's prompt. Rewrite the prompt as a single paragraph in English that:
- describes one continuous, coherent scene: no split screen, collage or picture-in-picture, and every \
subject appears exactly once, never duplicated;
- introduces each reference subject with the features visible in its image (clothing, hair, colours, \
materials, distinctive details) so it is clearly recognisable;
- places the subjects naturally in the environment and in relation to each other;
- says clearly what moves and how (actions, gestures, interactions) and, where it helps, one camera \
movement;
- keeps the user's intent and every detail the user gave.
Output only the rewritten prompt, with no title, preamble, quotes or list."""

MLLM_SOURCE = "Qwen/Qwen2.5-VL-7B-Instruct"
MAX_REFERENCES = 4  # spec 2.1: extra references are dropped
_QUOTES = "\"'“”‘’«»`"


class PromptRefiner(Protocol):
    """Returns the raw rewritten prompt for ``prompt`` and its reference images."""

    def generate(self, prompt: str, images: Sequence[Image.Image]) -> str: ...


def user_text(prompt: str, num_images: int) -> str:
    """The user turn's text: how many references precede it, then the prompt."""
    refs = (
        f"{num_images} reference image{'s' if num_images != 1 else ''} (in order) above."
        if num_images
        else ""
    )
    return (refs + "\n" if refs else "") + f"User prompt: {prompt.strip()}"


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """RGB copy with the longer side at most ``max_side`` (never enlarged), to keep requests small."""
    image = image.convert("RGB")
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return image


class EndpointRefiner:
    """Refine through an OpenAI-compatible chat-completions endpoint; references as data URLs."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 120.0,
        retries: int = 3,
        max_image_side: int = 1024,
        instruction: str = REFINE_INSTRUCTION,
        client: ChatClient | None = None,
    ) -> None:
        self.client = client or ChatClient(endpoint, model, api_key_env, timeout=timeout, retries=retries)
        self.max_image_side = max_image_side
        self.instruction = instruction

    def messages(self, prompt: str, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        content = [image_part(shrink(img, self.max_image_side)) for img in images]
        content.append(text_part(user_text(prompt, len(images))))
        return [{"role": "system", "content": self.instruction}, {"role": "user", "content": content}]

    def generate(self, prompt: str, images: Sequence[Image.Image]) -> str:
        return self.client.complete(self.messages(prompt, images))


class LocalQwenRefiner:
    """Refine with a loaded ``Qwen2_5_VLForConditionalGeneration`` and its processor (greedy decoding).

    ``processor`` must be callable as ``processor(text=[...], images=[...], return_tensors="pt")`` and
    provide ``apply_chat_template`` and ``batch_decode`` (see
    :func:`bindweave.conditioning.mllm.load_mllm_processor`).
    """

    def __init__(
        self,
        model,
        processor,
        max_new_tokens: int = 512,
        max_image_side: int = 1024,
        instruction: str = REFINE_INSTRUCTION,
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.max_image_side = max_image_side
        self.instruction = instruction

    def generate(self, prompt: str, images: Sequence[Image.Image]) -> str:
        import torch

        content = [{"type": "image"} for _ in images] + [
            {"type": "text", "text": user_text(prompt, len(images))}
        ]
        messages = [
            {"role": "system", "content": [{"type": "text", "text": self.instruction}]},
            {"role": "user", "content": content},
        ]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        scaled = [shrink(img, self.max_image_side) for img in images]
        inputs = self.processor(text=[text], images=scaled or None, return_tensors="pt")
        param = next(self.model.parameters())
        inputs = {k: v.to(param.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


@dataclass(frozen=True)
class RefineResult:
    """The prompt to use; ``accepted`` is False when the original was kept, ``reason`` says why.

    ``failed`` marks a backend failure (worth retrying later), as opposed to an answer that was rejected.
    """

    prompt: str
    accepted: bool
    reason: str | None = None
    failed: bool = False


def clean_answer(answer: str) -> str:
    """Trim whitespace and wrapping quotes; join lines into one paragraph."""
    text = answer.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return re.sub(r"\s*\n\s*", " ", text)


def check_refinement(answer: str) -> str | None:
    """Why a cleaned answer is unusable (``None`` if it is fine): empty, or mostly non-ASCII letters."""
    letters = [c for c in answer if c.isalpha()]
    if not letters:
        return "empty answer"
    non_ascii = sum(1 for c in letters if not c.isascii())
    if non_ascii / len(letters) > 0.5:
        return f"not English ({non_ascii} of {len(letters)} letters are non-ASCII)"
    return None


def refine_prompt(refiner: PromptRefiner, prompt: str, images: Sequence[Image.Image]) -> RefineResult:
    """Refine ``prompt``; falls back to it (with a logged warning) on an unusable answer or endpoint failure."""
    try:
        answer = refiner.generate(prompt, images)
    except ChatEndpointError as exc:
        log.warning("prompt refinement failed, keeping the original prompt: %s", exc)
        return RefineResult(prompt, False, f"endpoint failed: {exc}", failed=True)
    cleaned = clean_answer(answer)
    problem = check_refinement(cleaned)
    if problem is not None:
        log.warning(
            "refined prompt rejected (%s), keeping the original prompt; answer was %r", problem, answer[:200]
        )
        return RefineResult(prompt, False, problem)
    return RefineResult(cleaned, True)


@dataclass(kw_only=True)
class RefineOptions:
    """Refinement as an optional first step of a generation job (``generate``, ``ui``)."""

    refine: Literal["none", "local", "endpoint"] = field(
        "none",
        help="rewrite the prompt from the references first: with the pipeline's Qwen2.5-VL or an endpoint",
    )
    refine_endpoint: str | None = field(None, help="OpenAI-compatible base URL for --refine endpoint")
    refine_model: str = field("gpt-4o", help="model name for --refine endpoint")
    refine_api_key_env: str = field("OPENAI_API_KEY", help="environment variable with the endpoint's API key")

    def check_refine(self) -> None:
        """The refinement options that need no model, checked before any weights are loaded."""
        if self.refine == "endpoint" and not self.refine_endpoint:
            raise ValueError("--refine endpoint needs --refine-endpoint URL")

    def make_refiner(self, pipe) -> PromptRefiner | None:
        """The configured refiner (``None`` when off); the local one borrows ``pipe``'s Qwen2.5-VL."""
        self.check_refine()
        if self.refine == "none":
            return None
        if self.refine == "endpoint":
            return EndpointRefiner(self.refine_endpoint, self.refine_model, self.refine_api_key_env)
        if pipe.mllm is None or pipe.mllm_processor is None:
            raise ValueError("--refine local needs the pipeline's Qwen2.5-VL (give --mllm)")
        return LocalQwenRefiner(pipe.mllm, pipe.mllm_processor)


# ------------------------------------------------------------------------------------------------ runner


@dataclass
class RefineConfig:
    """Rewrite every prompt of a manifest with a VLM; the original is kept as ``prompt_original``."""

    manifest: Path = field(help="input case manifest (id -> {img_paths, prompt, ...})")
    output: Path = field(help="where the refined manifest is written (re-running resumes it)")
    images_dir: Path | None = field(None, help="base folder of img_paths (default: the manifest's folder)")
    backend: Literal["endpoint", "local"] = field(
        "endpoint", help="an OpenAI-compatible endpoint, or a local Qwen2.5-VL"
    )
    endpoint: str | None = field(None, help="chat-completions base URL, e.g. https://api.openai.com/v1")
    model: str = field("gpt-4o", help="model name sent to the endpoint")
    api_key_env: str = field("OPENAI_API_KEY", help="environment variable holding the endpoint's API key")
    timeout: float = field(120.0, help="seconds per endpoint request")
    retries: int = field(3, help="retries per request on 5xx/429/timeouts")
    mllm_path: Path | None = field(None, help=f"local backend: the {MLLM_SOURCE} folder")
    device: str | None = field(None, help="local backend: torch device (default: cuda if available)")
    max_new_tokens: int = field(512, help="local backend: generation budget")
    max_image_side: int = field(1024, help="references are shrunk to this longer side before sending")

    def __post_init__(self) -> None:
        for name in ("manifest", "output", "images_dir", "mllm_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.backend == "endpoint" and not self.endpoint:
            raise ValueError("backend 'endpoint' needs endpoint (an OpenAI-compatible base URL)")
        if self.backend == "local" and self.mllm_path is None:
            raise ValueError(f"backend 'local' needs mllm_path (a {MLLM_SOURCE} folder)")


def build_refiner(config: RefineConfig) -> PromptRefiner:
    """The configured backend (loads the local model when ``backend='local'``)."""
    if config.backend == "endpoint":
        assert config.endpoint is not None
        return EndpointRefiner(
            config.endpoint,
            config.model,
            config.api_key_env,
            config.timeout,
            config.retries,
            config.max_image_side,
        )
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from bindweave.conditioning.mllm import load_mllm_processor
    from bindweave.eval.scorers.base import require_weights

    assert config.mllm_path is not None
    require_weights("refine", config.mllm_path, MLLM_SOURCE)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = (
        Qwen2_5_VLForConditionalGeneration.from_pretrained(config.mllm_path, dtype=dtype).to(device).eval()
    )
    return LocalQwenRefiner(
        model, load_mllm_processor(config.mllm_path), config.max_new_tokens, config.max_image_side
    )


def _load_images(entry: ManifestEntry, images_dir: Path) -> list[Image.Image]:
    from bindweave.conditioning.references import load_references  # torch: imported when a job runs

    return load_references(resolve_images(entry, images_dir))  # the generator's loading rules (1-4, RGB)


def run_refine(config: RefineConfig, refiner: PromptRefiner | None = None) -> dict[str, Any]:
    """Refine every entry of ``config.manifest`` into ``config.output`` (atomic, resumable).

    Each refined entry keeps its original prompt in the extra field ``prompt_original``. An entry whose
    output already has ``prompt_original`` is not refined again. A rejected answer (empty, not English)
    also marks the entry done, with the prompt unchanged; an endpoint failure does not, so re-running
    retries it. The output is rewritten after every entry, so it is always a complete manifest.
    """
    entries = load_manifest(config.manifest)
    images_dir = config.images_dir or config.manifest.parent
    current: dict[str, ManifestEntry] = dict(entries)
    if config.output.is_file():
        previous = load_manifest(config.output)
        for key, entry in previous.items():
            if key in current and "prompt_original" in entry.extra:
                current[key] = entry
    todo = [key for key in entries if "prompt_original" not in current[key].extra]
    stats = {"refined": 0, "kept_original": 0, "failed": 0, "skipped": len(entries) - len(todo)}
    if todo and refiner is None:
        refiner = build_refiner(config)
    for key in tqdm(todo, desc="Refining prompts", unit="prompt"):
        entry = entries[key]
        result = refine_prompt(refiner, entry.prompt, _load_images(entry, images_dir))
        if not result.failed:
            original = entry.extra.get("prompt_original", entry.prompt)
            current[key] = with_fields(entry, prompt=result.prompt, prompt_original=original)
            stats["refined" if result.accepted else "kept_original"] += 1
        else:
            stats["failed"] += 1
        save_manifest(current, config.output)
    if not todo:
        save_manifest(current, config.output)
    log.info("prompt refinement: %s -> %s", stats, config.output)
    return {"output": str(config.output), **stats}
