"""Comfy-Org's repackaged umT5-XXL text encoder (``umt5_xxl_fp16.safetensors``,
``umt5_xxl_fp8_e4m3fn_scaled.safetensors``) as transformers' ``UMT5EncoderModel``.

ComfyUI's T5 (``comfy/text_encoders/t5.py``) names its modules as transformers does (``shared``,
``encoder.block.N.layer.0.SelfAttention.q``, ``...layer.1.DenseReluDense.wi_0``, ``encoder.final_layer_norm``),
with a relative-attention bias in every block for umT5, so the file's names are the model's. The files carry
no config: the sizes are read from the shapes (what ComfyUI's ``t5xxl_detect`` does), the rest is umT5's
(gated GELU, ``layer_norm_epsilon`` 1e-6, 32 buckets up to distance 128). They may carry the tokenizer's
SentencePiece model as a ``spiece_model`` tensor, which is not a weight and is left out here: the tokenizer
comes from a tokenizer folder (:func:`bindweave.comfyui.assemble.umt5_tokenizer`).
"""

from __future__ import annotations

import os

import torch

from .assign import assign_state_dict
from .reader import ComponentFile

__all__ = ["UMT5_COMPONENT", "load_umt5_file", "umt5_config_from_shapes"]

UMT5_COMPONENT = "umT5 text encoder (Comfy-Org umt5_xxl_*.safetensors)"
_BLOCK = "encoder.block.{}.layer.{}."


def umt5_config_from_shapes(file: ComponentFile):
    """The ``UMT5Config`` the file's shapes say; umT5's own values for what shapes cannot say."""
    from transformers import UMT5Config

    if "shared.weight" not in file.names or _BLOCK.format(0, 0) + "SelfAttention.q.weight" not in file.names:
        raise ValueError(
            f"{file.path} is not a umT5 encoder file: it has no shared.weight / encoder.block.0.layer.0.SelfAttention.q.weight"
        )
    vocab_size, d_model = file.shape("shared.weight")
    buckets, heads = file.shape(_BLOCK.format(0, 0) + "SelfAttention.relative_attention_bias.weight")
    inner = file.shape(_BLOCK.format(0, 0) + "SelfAttention.q.weight")[0]
    layers = len({n.split(".")[2] for n in file.names if n.startswith("encoder.block.")})
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=file.shape(_BLOCK.format(0, 1) + "DenseReluDense.wi_0.weight")[0],
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def load_umt5_file(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``UMT5EncoderModel`` from one ComfyUI umT5 file (fp32 / bf16 / fp16 / fp8 / fp8_scaled), in ``dtype``."""
    from transformers import UMT5EncoderModel

    file = ComponentFile(path, UMT5_COMPONENT, extras=("spiece_model",))
    config = umt5_config_from_shapes(file)
    state = file.state_dict(lambda name: name, dtype)
    return assign_state_dict(
        lambda: UMT5EncoderModel._from_config(config, dtype=dtype), state, file.path, UMT5_COMPONENT
    )
