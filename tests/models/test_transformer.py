import pytest
import torch
from diffusers import WanTransformer3DModel

from bindweave.models import BindWeaveTransformer3DModel

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    ffn_dim=48,
    num_layers=2,
    image_dim=24,
    added_kv_proj_dim=24,
    mllm_dim=20,
    image_context_tokens=5,
)
EXTRA_KEYS = ("mllm_dim", "image_context_tokens", "num_reference_slots")


def tiny_model(**overrides) -> BindWeaveTransformer3DModel:
    torch.manual_seed(0)
    model = BindWeaveTransformer3DModel(**{**TINY, **overrides}).eval()
    # Non-zero everywhere so that no branch can hide behind zero-initialised weights.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def stock_copy(model: BindWeaveTransformer3DModel) -> WanTransformer3DModel:
    config = {k: v for k, v in model.config.items() if not k.startswith("_") and k not in EXTRA_KEYS}
    stock = WanTransformer3DModel(**config).eval()
    state = {k: v for k, v in model.state_dict().items() if "text_projector" not in k}
    stock.load_state_dict(state, strict=True)
    return stock


def inputs(model, frames=3, h=4, w=6, clip_tokens=None, mllm_tokens=7, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    slots = c.num_reference_slots
    clip_tokens = slots * c.image_context_tokens if clip_tokens is None else clip_tokens
    return dict(
        hidden_states=torch.randn(batch, c.out_channels, frames, h, w, generator=g),
        timestep=torch.full((batch,), 637.0),
        encoder_hidden_states=torch.randn(batch, 512, c.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(batch, clip_tokens, c.image_dim, generator=g),
        mllm_hidden_states=torch.randn(batch, mllm_tokens, c.mllm_dim, generator=g),
        condition=torch.randn(batch, c.in_channels - c.out_channels, slots + frames, h, w, generator=g),
    )


def stock_input(x: dict, slots: int) -> torch.Tensor:
    """What the stock model must see: ``slots`` zero frames before the noise, then the condition channels."""
    b, z, _f, h, w = x["hidden_states"].shape
    padded = torch.cat([torch.zeros(b, z, slots, h, w), x["hidden_states"]], dim=2)
    return torch.cat([padded, x["condition"]], dim=1)


def test_config_defaults_are_the_released_14b_sizes():
    with torch.device("meta"):
        model = BindWeaveTransformer3DModel()
    c = model.config
    assert (c.num_layers, c.num_attention_heads, c.attention_head_dim, c.ffn_dim) == (40, 40, 128, 13824)
    assert (c.in_channels, c.out_channels, c.text_dim, c.image_dim, c.added_kv_proj_dim) == (
        36,
        16,
        4096,
        1280,
        5120,
    )
    assert (c.mllm_dim, c.image_context_tokens, c.num_reference_slots, c.rope_max_seq_len) == (
        3584,
        257,
        4,
        1024,
    )
    assert tuple(c.patch_size) == (1, 2, 2) and c.freq_dim == 256 and c.eps == 1e-6 and c.cross_attn_norm
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if "text_projector" in k}
    assert shapes == {
        "condition_embedder.text_projector.linear_1.weight": (4096, 3584),
        "condition_embedder.text_projector.linear_1.bias": (4096,),
        "condition_embedder.text_projector.linear_2.weight": (4096, 4096),
        "condition_embedder.text_projector.linear_2.bias": (4096,),
    }
    assert isinstance(model.condition_embedder.text_projector.act_1, torch.nn.GELU)
    assert model.condition_embedder.text_projector.act_1.approximate == "tanh"


def test_equals_stock_wan_without_mllm_tokens_and_one_clip_slot():
    """With L = 0 and 257-equivalent image tokens, the 512 split and ours coincide: outputs must be equal."""
    model = tiny_model()
    stock = stock_copy(model)
    x = inputs(model, clip_tokens=model.config.image_context_tokens, mllm_tokens=0)
    ours = model(**x).sample

    slots = model.config.num_reference_slots
    padded = stock_input(x, slots)
    reference = stock(
        padded, x["timestep"], x["encoder_hidden_states"], x["encoder_hidden_states_image"]
    ).sample
    assert ours.shape == x["hidden_states"].shape == (1, 16, 3, 4, 6)
    assert torch.equal(ours, reference[:, :, slots:])


def test_output_shape_and_batch():
    model = tiny_model()
    x = inputs(model, frames=5, h=6, w=8, batch=2)
    out = model(**x, return_dict=False)[0]
    assert out.shape == (2, 16, 5, 6, 8)
    # Each batch element is computed independently of the other.
    single = model(**{k: v[:1] for k, v in x.items()}).sample
    torch.testing.assert_close(out[:1], single, rtol=1e-5, atol=1e-5)


def test_mllm_states_go_through_the_connector_before_t5():
    """Text context = text_embedder([connector(mllm) ; t5]): check by feeding the stock model that context."""
    model = tiny_model()
    stock = stock_copy(model)
    x = inputs(model)
    ours = model(**x).sample
    projected = model.condition_embedder.text_projector(x["mllm_hidden_states"])
    text = torch.cat([projected, x["encoder_hidden_states"]], dim=1)
    slots = model.config.num_reference_slots
    padded = stock_input(x, slots)
    # The stock model with our processors: only the connector placement is under test here.
    for ours_block, stock_block in zip(model.blocks, stock.blocks, strict=True):
        stock_block.attn2.set_processor(ours_block.attn2.processor)
    reference = stock(padded, x["timestep"], text, x["encoder_hidden_states_image"]).sample
    assert torch.equal(ours, reference[:, :, slots:])


def test_reference_slots_take_rope_temporal_positions_0_to_3():
    model = tiny_model()
    captured = []
    model.rope.register_forward_hook(lambda _m, _args, out: captured.append(out))
    frames, h, w = 3, 4, 6
    model(**inputs(model, frames=frames, h=h, w=w))
    cos, _sin = captured[0]
    slots = model.config.num_reference_slots
    ph, pw = h // 2, w // 2
    cos = cos.reshape(slots + frames, ph, pw, -1)
    t_dim = model.rope.t_dim
    table = model.rope.freqs_cos[:, :t_dim]
    for position in range(slots + frames):
        expected = table[position].expand(ph, pw, t_dim)
        assert torch.equal(cos[position, :, :, :t_dim], expected)
    assert cos.shape[0] == 4 + frames


def test_condition_shape_is_checked():
    model = tiny_model()
    x = inputs(model)
    x["condition"] = x["condition"][:, :, 1:]
    with pytest.raises(ValueError, match="condition must have shape"):
        model(**x)


def test_constructor_rejects_inconsistent_channels():
    with pytest.raises(ValueError, match="in_channels must be 2 \\* out_channels \\+ 4"):
        BindWeaveTransformer3DModel(**{**TINY, "in_channels": 16})
