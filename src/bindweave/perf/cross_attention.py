"""Two exact speed-ups of BindWeave's cross-attention, as one attention processor.

Both rest on one property of cross-attention: the keys and values of the context depend on the context
only, never on the timestep or the video tokens.

1. **Context K/V reuse.** The context (CLIP tokens, connector(MLLM), umT5) is the same at every sampling
   step, so every block's context projections are too. :class:`ContextKVCache` keeps them for the length of
   one sampling run. A hit needs a context bitwise equal to the one the projections were computed from,
   so reuse can never change the result, whatever the caller passes.

2. **Batched CFG with unequal MLLM lengths.** The positive and negative MLLM states differ in length
   (e.g. 526 vs 532 tokens). Batching the two branches pads the shorter one, but padded rows go through the
   connector and Wan's text embedder and come out as real keys, which the query would attend to. The
   released model uses no attention mask, so instead each sample's text branch attends only to its own
   tokens: :class:`ContextPadding` says where the padding rows are and the text-branch attention drops them
   per sample. Everything else (self-attention, FFN, projections) runs on the batch of 2.

:class:`FastBindWeaveAttnProcessor` overrides only the base processor's ``context_kv`` and
``text_attention``, so it computes exactly what :class:`~bindweave.models.attention.BindWeaveAttnProcessor`
does (bitwise, tested) when neither option is active; :func:`install_fast_cross_attention` swaps it into every block through diffusers' ``set_processor``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention

from ..models.attention import BindWeaveAttnProcessor, ContextKV
from ..models.transformer import BindWeaveTransformer3DModel

__all__ = [
    "ContextKV",
    "ContextKVCache",
    "ContextPadding",
    "FastBindWeaveAttnProcessor",
    "context_kv_cache",
    "fast_processors",
    "install_fast_cross_attention",
    "padded_context",
]


@dataclass(frozen=True)
class ContextPadding:
    """Padding rows of a batch of contexts: sample ``b`` holds padding at tokens ``[starts[b], stop)``.

    Coordinates are context tokens (image tokens included). The rows must lie in the text branch.
    """

    starts: tuple[int, ...]
    stop: int

    def __post_init__(self) -> None:
        if any(start > self.stop for start in self.starts):
            raise ValueError(f"padding starts {self.starts} must not exceed its stop {self.stop}")


@dataclass
class _CacheEntry:
    context: torch.Tensor  # (B, T, D) clone of the context the projections were computed from
    last_seen: weakref.ref  # the context object of the latest forward: the other blocks match it by identity
    kv: dict[int, ContextKV] = field(default_factory=dict)  # block index -> projections


class ContextKVCache:
    """Every block's context projections, for the distinct contexts seen during one sampling run.

    The blocks of one forward all receive the same context tensor, so a forward costs one bitwise
    comparison (``O(T * D)``, against the ``O(T * D^2)`` projections it saves) and identity checks after.
    Only valid while the weights do not change: :func:`context_kv_cache` scopes it to one run.

    Args:
        max_contexts: contexts kept at once (cond, uncond and their batch make 3); the oldest is dropped.
    """

    def __init__(self, max_contexts: int = 4):
        if max_contexts < 1:
            raise ValueError(f"max_contexts must be >= 1, got {max_contexts}")
        self.max_contexts = max_contexts
        self._entries: list[_CacheEntry] = []
        self.hits = 0
        self.misses = 0

    def projections(self, context: torch.Tensor) -> dict[int, ContextKV]:
        """The per-block projections stored for ``context`` (empty when it was never seen)."""
        for entry in self._entries:
            if entry.last_seen() is context:
                return entry.kv
        for entry in self._entries:
            if _bitwise_equal(entry.context, context):
                entry.last_seen = weakref.ref(context)
                return entry.kv
        entry = _CacheEntry(context=context.detach().clone(), last_seen=weakref.ref(context))
        self._entries = [*self._entries, entry][-self.max_contexts :]
        return entry.kv


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class FastBindWeaveAttnProcessor(BindWeaveAttnProcessor):
    """BindWeave cross-attention with optional context K/V reuse and per-sample context padding.

    Args:
        image_context_tokens: leading context tokens seen by the image branch (as the base processor).
        block_index: this block's index, the key of its projections in a :class:`ContextKVCache`.

    Attributes set for a scope by :func:`context_kv_cache` and :func:`padded_context`:
        kv_cache: where to find and keep context projections, or ``None``.
        context_padding: padding rows of the current batch of contexts, or ``None``.
    """

    def __init__(self, image_context_tokens: int = 257, block_index: int = 0):
        super().__init__(image_context_tokens)
        self.block_index = block_index
        self.kv_cache: ContextKVCache | None = None
        self.context_padding: ContextPadding | None = None

    def context_kv(self, attn: WanAttention, context: torch.Tensor) -> ContextKV:
        """The base projections, reused from :attr:`kv_cache` for a context seen before in this run."""
        if self.kv_cache is None:
            return super().context_kv(attn, context)
        stored = self.kv_cache.projections(context)
        if self.block_index in stored:
            self.kv_cache.hits += 1
        else:
            self.kv_cache.misses += 1
            stored[self.block_index] = super().context_kv(attn, context)
        return stored[self.block_index]

    def text_attention(self, query: torch.Tensor, kv: ContextKV) -> torch.Tensor:
        """Text-branch attention; with padding, each sample attends to its own real tokens only."""
        if self.context_padding is None:
            return super().text_attention(query, kv)
        key, value = kv.text_key, kv.text_value  # (B, T_text, H, Dh)
        padding = self.context_padding
        if len(padding.starts) != query.shape[0]:
            raise ValueError(
                f"context padding is for {len(padding.starts)} samples, the batch has {query.shape[0]}"
            )
        stop = padding.stop - self.image_context_tokens
        outputs = []
        for b, start in enumerate(padding.starts):
            start -= self.image_context_tokens
            if start < 0:
                raise ValueError("context padding must lie in the text branch, after the image-branch tokens")
            key_b = torch.cat([key[b : b + 1, :start], key[b : b + 1, stop:]], dim=1)  # (1, T_b, H, Dh)
            value_b = torch.cat([value[b : b + 1, :start], value[b : b + 1, stop:]], dim=1)
            outputs.append(
                dispatch_attention_fn(
                    query[b : b + 1], key_b, value_b, backend=self._attention_backend, parallel_config=None
                )
            )
        return torch.cat(outputs, dim=0)  # (B, N, H, Dh)


def install_fast_cross_attention(
    transformer: BindWeaveTransformer3DModel,
) -> list[FastBindWeaveAttnProcessor]:
    """Give every block's cross-attention a :class:`FastBindWeaveAttnProcessor` (idempotent).

    The attention backend and parallel config already set on the replaced processors carry over, so this
    may run before or after ``set_attention_backend`` / ``enable_parallelism``.
    """
    processors = []
    for index, block in enumerate(transformer.blocks):
        current = block.attn2.processor
        if not isinstance(current, FastBindWeaveAttnProcessor):
            if not isinstance(current, BindWeaveAttnProcessor):
                raise TypeError(
                    f"blocks.{index}.attn2 has {type(current).__name__}, not a BindWeave processor"
                )
            fast = FastBindWeaveAttnProcessor(current.image_context_tokens, block_index=index)
            fast._attention_backend = current._attention_backend
            fast._parallel_config = current._parallel_config
            block.attn2.set_processor(fast)
            current = fast
        processors.append(current)
    return processors


def fast_processors(transformer: torch.nn.Module) -> list[FastBindWeaveAttnProcessor]:
    """The installed :class:`FastBindWeaveAttnProcessor` of every block (empty when not installed)."""
    return [
        module.processor
        for module in transformer.modules()
        if isinstance(getattr(module, "processor", None), FastBindWeaveAttnProcessor)
    ]


@contextmanager
def context_kv_cache(transformer: torch.nn.Module) -> Iterator[ContextKVCache]:
    """Reuse each block's context projections across the forwards inside the ``with`` (one sampling run).

    The weights must not change inside: the cache is dropped on exit, so a later run (e.g. a validation
    pass after more training steps) computes its projections afresh.
    """
    processors = fast_processors(transformer)
    if not processors:
        raise ValueError("context K/V reuse needs install_fast_cross_attention(transformer) first")
    cache = ContextKVCache()
    for processor in processors:
        processor.kv_cache = cache
    try:
        yield cache
    finally:
        for processor in processors:
            processor.kv_cache = None


@contextmanager
def padded_context(transformer: torch.nn.Module, padding: ContextPadding) -> Iterator[None]:
    """Make the forwards inside the ``with`` ignore the context rows that ``padding`` names, per sample."""
    processors = fast_processors(transformer)
    if not processors:
        raise ValueError(
            "a batch of contexts with padding rows needs install_fast_cross_attention(transformer) first; "
            "the stock processor would attend to the padding"
        )
    for processor in processors:
        processor.context_padding = padding
    try:
        yield
    finally:
        for processor in processors:
            processor.context_padding = None
