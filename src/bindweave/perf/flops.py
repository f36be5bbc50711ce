"""Analytic FLOPs of one BindWeave DiT forward, for achieved TFLOP/s and MFU.

Counted: every matrix multiply (2 FLOPs per multiply-add), i.e. the linear layers and the two attention
matmuls (``Q K^T`` and ``P V``). Not counted: norms, softmax, RoPE, modulation and other elementwise
work (a few percent at most), so MFU is slightly underestimated, as is usual.

Shapes, per sample, for the released model at 720p (81 frames) with one 526-token MLLM prompt:

- ``N`` self-attention tokens: ``(slots + F) * h/2 * w/2`` = 25 * 45 * 80 = 90,000;
- image-branch context ``T_i`` = 257 tokens; text-branch context ``T_t`` = 3 * 257 + L + 512 = 1,809;
- per block: self-attention Q/K/V/out ``8 N D^2`` + ``4 N^2 D``; cross-attention Q/out ``4 N D^2``,
  context K/V ``4 (T_i + T_t) D^2``, attention ``4 N (T_i + T_t) D``; FFN ``4 N D F``.

That is ~8.95 PFLOP per forward, 74 % of it in self-attention's ``N^2`` term; the context K/V
projections are 0.1 %.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DiTWorkload", "FlopCount", "dit_forward_flops"]


@dataclass(frozen=True)
class DiTWorkload:
    """What one forward processes, per sample (multiply by ``batch``).

    Attributes:
        tokens: self-attention tokens ``N`` (reference slots included).
        image_branch_tokens: context tokens seen by the image branch (257 in the release).
        clip_tokens: CLIP tokens into the image embedder (slots * 257 = 1028).
        mllm_tokens: MLLM tokens ``L`` into the connector (0 for stock Wan).
        t5_tokens: umT5 tokens (512).
        batch: samples in the forward (2 with batched CFG).
    """

    tokens: int
    image_branch_tokens: int
    clip_tokens: int
    mllm_tokens: int
    t5_tokens: int = 512
    batch: int = 1

    @property
    def context_tokens(self) -> int:
        """Cross-attention context: ``[image (clip_tokens) ; text (L + 512)]``."""
        return self.clip_tokens + self.mllm_tokens + self.t5_tokens


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward, by part (each already multiplied by the batch)."""

    self_attention_projections: int
    self_attention_matmuls: int
    cross_attention_query_out: int
    cross_attention_context_kv: int
    cross_attention_matmuls: int
    feed_forward: int
    embeddings_and_head: int
    connector: int

    @property
    def total(self) -> int:
        return sum(vars(self).values())

    def without_connector(self) -> int:
        """The same forward on stock Wan, which has no MLLM connector."""
        return self.total - self.connector


def dit_forward_flops(config, workload: DiTWorkload) -> FlopCount:
    """FLOPs of one forward of a Wan / BindWeave DiT with ``config`` (a transformer config) on ``workload``."""
    dim = config.num_attention_heads * config.attention_head_dim
    ffn, layers = config.ffn_dim, config.num_layers
    n, b = workload.tokens, workload.batch
    context = workload.context_tokens
    patch = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
    text_tokens = workload.mllm_tokens + workload.t5_tokens
    mllm_dim = getattr(config, "mllm_dim", 0)

    embeddings_and_head = (
        2 * n * config.in_channels * patch * dim  # patch embedding (a strided conv = a linear per patch)
        + 2 * n * dim * config.out_channels * patch  # proj_out
        + 2 * text_tokens * (config.text_dim * dim + dim * dim)  # Wan's text embedder
        + 2 * workload.clip_tokens * (config.image_dim**2 + config.image_dim * dim)  # Wan's image embedder
        + 2 * (config.freq_dim * dim + dim * dim + dim * 6 * dim)  # timestep embedding and projection
    )
    connector = 2 * workload.mllm_tokens * (mllm_dim * config.text_dim + config.text_dim**2)
    return FlopCount(
        self_attention_projections=b * layers * 8 * n * dim * dim,
        self_attention_matmuls=b * layers * 4 * n * n * dim,
        cross_attention_query_out=b * layers * 4 * n * dim * dim,
        cross_attention_context_kv=b * layers * 4 * context * dim * dim,
        cross_attention_matmuls=b * layers * 4 * n * context * dim,
        feed_forward=b * layers * 4 * n * dim * ffn,
        embeddings_and_head=b * embeddings_and_head,
        connector=b * connector,
    )
