"""mPLUG-Owl2's vision side, as Q-Align uses it: the ViT and the visual abstractor (see :mod:`.qalign`).

Parameter names follow the released one-align checkpoint, so :class:`.qalign.MplugOwl2QualityModel` loads
its weights into these modules strictly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Abstractor", "AbstractorAttention", "VisionModel", "sincos_1d", "sincos_2d"]


# ------------------------------------------------------------------------------------- positions


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE's 1-D sin-cos embedding ``(M, dim)``: sines then cosines, frequencies 1 / 10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float32) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float32), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """MAE's 2-D sin-cos embedding with a zero class-token row first: ``(1 + grid**2, dim)``."""
    w, h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


# ------------------------------------------------------------------------------------------ vision


class _VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query_key_value = nn.Linear(dim, 3 * dim)
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.query_key_value(x).reshape(b, s, self.heads, 3, d // self.heads).permute(3, 0, 2, 1, 4)
        scores = qkv[0] @ qkv[1].transpose(-1, -2) * (d // self.heads) ** -0.5  # (B, H, S, S)
        out = (torch.softmax(scores, dim=-1) @ qkv[2]).permute(0, 2, 1, 3).reshape(b, s, d)
        return self.dense(out)


class _QuickGeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))


class _VisionLayer(nn.Module):
    def __init__(self, dim: int, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = _VisionAttention(dim, heads)
        self.post_attention_layernorm = nn.LayerNorm(dim, eps=eps)
        self.mlp = _QuickGeluMLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _VisionEmbeddings(nn.Module):
    def __init__(self, dim: int, image_size: int, patch: int, eps: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = nn.Conv2d(3, dim, patch, patch, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.pre_layernorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (N, P, D)
        x = torch.cat([self.cls_token.expand(len(patches), 1, -1).to(patches.dtype), patches], dim=1)
        x = x + self.position_embedding[:, : x.shape[1]].to(patches.dtype)
        return self.pre_layernorm(x)


class _Layers(nn.Module):
    """Holds ``layers`` (so parameter names read ``encoder.layers.N``, as released)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class VisionModel(nn.Module):
    def __init__(self, cfg: Mapping) -> None:
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-6)
        self.embeddings = _VisionEmbeddings(dim, cfg["image_size"], cfg["patch_size"], eps)
        self.encoder = _Layers(
            [
                _VisionLayer(dim, cfg["intermediate_size"], cfg["num_attention_heads"], eps)
                for _ in range(cfg["num_hidden_layers"])
            ]
        )
        self.post_layernorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)  # (N, 1 + P, D)


# --------------------------------------------------------------------------------------- abstractor


class AbstractorAttention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int, num_queries: int, grid: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.shape = (dim, num_queries, grid)
        self.register_buffer("q_pos_embed", torch.zeros(num_queries, dim))
        self.register_buffer("k_pos_embed", torch.zeros(1 + grid * grid, dim))
        self.reset_positions()

    def reset_positions(self) -> None:
        """The fixed sin-cos positions (float32; the released files also store them)."""
        dim, num_queries, grid = self.shape
        self.q_pos_embed = torch.from_numpy(sincos_1d(dim, np.arange(num_queries))).float()
        self.k_pos_embed = torch.from_numpy(sincos_2d(dim, grid)).float()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).permute(0, 2, 1, 3)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # keys: the queries followed by the vision tokens, (N, Q + 1 + P, D)
        pos = torch.cat([self.q_pos_embed, self.k_pos_embed]).unsqueeze(0).to(queries.dtype)
        k = self._heads(self.key(keys + pos))
        v = self._heads(self.value(keys))
        q = self._heads(self.query(queries + self.q_pos_embed.unsqueeze(0).to(queries.dtype)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        out = (torch.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3)
        return out.reshape(out.shape[0], out.shape[1], -1)


class _AbstractorMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)
        self.w3 = nn.Linear(dim, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(nn.functional.silu(self.w1(x)) * self.w3(x)))


class _AbstractorOutput(nn.Module):
    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.out_proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _AbstractorMLP(dim, hidden, eps)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = residual + self.out_proj(attended)
        return x + self.mlp(self.norm2(x))


class _AbstractorCrossAttention(nn.Module):
    def __init__(self, cfg: Mapping) -> None:
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-6)
        self.attention = AbstractorAttention(
            dim,
            cfg["encoder_hidden_size"],
            cfg["num_attention_heads"],
            cfg["num_learnable_queries"],
            cfg["grid_size"],
        )
        self.output = _AbstractorOutput(dim, cfg["intermediate_size"], eps)
        self.norm1 = nn.LayerNorm(dim)
        self.normk = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        queries = self.norm1(queries)  # (quirk) the residual below is taken after this norm
        keys = torch.cat([queries, self.normk(vision)], dim=1)
        return self.output(self.attention(queries, keys), queries)


class _AbstractorLayer(nn.Module):
    def __init__(self, cfg: Mapping) -> None:
        super().__init__()
        self.crossattention = _AbstractorCrossAttention(cfg)


class Abstractor(nn.Module):
    def __init__(self, cfg: Mapping, text_dim: int) -> None:
        super().__init__()
        self.encoder = _Layers([_AbstractorLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.visual_fc = nn.Linear(cfg["hidden_size"], text_dim)
        self.query_embeds = nn.Parameter(torch.zeros(1, cfg["num_learnable_queries"], cfg["hidden_size"]))
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, text_dim))

    def forward(self, vision: torch.Tensor) -> torch.Tensor:
        x = self.query_embeds.repeat(vision.shape[0], 1, 1)
        for layer in self.encoder.layers:
            x = layer.crossattention(x, vision)
        x = self.visual_fc(x)
        return torch.cat([x, self.vit_eos.repeat(x.shape[0], 1, 1)], dim=1)  # (N, Q + 1, D_text)
