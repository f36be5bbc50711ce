import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from bindweave.models import BindWeaveAttnProcessor

DIM, HEADS, N_IMAGE = 24, 2, 5


def cross_attention(seed=0) -> WanAttention:
    torch.manual_seed(seed)
    attn = WanAttention(dim=DIM, heads=HEADS, dim_head=DIM // HEADS, eps=1e-6, added_kv_proj_dim=DIM,
                        cross_attention_dim_head=DIM // HEADS)  # fmt: skip
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    attn.set_processor(BindWeaveAttnProcessor(N_IMAGE))
    return attn.eval()


def manual(attn: WanAttention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Spec 2.7 written out: image branch on context[:257], text branch on the rest, summed, then to_out."""

    def heads(t):
        return t.unflatten(2, (HEADS, -1)).transpose(1, 2)

    q = heads(attn.norm_q(attn.to_q(x)))
    img, txt = context[:, :N_IMAGE], context[:, N_IMAGE:]
    k_img, v_img = heads(attn.norm_added_k(attn.add_k_proj(img))), heads(attn.add_v_proj(img))
    k_txt, v_txt = heads(attn.norm_k(attn.to_k(txt))), heads(attn.to_v(txt))
    out = F.scaled_dot_product_attention(q, k_img, v_img) + F.scaled_dot_product_attention(q, k_txt, v_txt)
    return attn.to_out[0](out.transpose(1, 2).flatten(2))


def branch_inputs(attn: WanAttention):
    seen = {}
    attn.add_k_proj.register_forward_hook(lambda _m, args, _o: seen.__setitem__("image", args[0].clone()))
    attn.to_k.register_forward_hook(lambda _m, args, _o: seen.__setitem__("text", args[0].clone()))
    return seen


@torch.no_grad()
def test_matches_the_spec_computation():
    attn = cross_attention()
    x, context = torch.randn(2, 10, DIM), torch.randn(2, 4 * N_IMAGE + 7 + 512, DIM)
    torch.testing.assert_close(attn(x, context), manual(attn, x, context), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_split_is_after_image_context_tokens_not_512_from_the_end():
    attn = cross_attention()
    seen = branch_inputs(attn)
    x = torch.randn(1, 10, DIM)
    context = torch.randn(1, 4 * N_IMAGE + 7 + 512, DIM)
    base = attn(x, context)
    image_in, text_in = seen["image"], seen["text"]
    assert image_in.shape[1] == N_IMAGE and text_in.shape[1] == context.shape[1] - N_IMAGE

    # Token 0 feeds the image branch only.
    perturbed = context.clone()
    perturbed[:, 0] += 1.0
    out0 = attn(x, perturbed)
    assert not torch.equal(seen["image"], image_in) and torch.equal(seen["text"], text_in)
    assert not torch.allclose(out0, base)

    # The first token past the split (another reference's CLIP token) feeds the text branch only.
    perturbed = context.clone()
    perturbed[:, N_IMAGE] += 1.0
    out1 = attn(x, perturbed)
    assert torch.equal(seen["image"], image_in) and not torch.equal(seen["text"], text_in)
    assert not torch.allclose(out1, base)


@torch.no_grad()
def test_differs_from_the_stock_512_split_on_bindweave_context():
    attn = cross_attention()
    x, context = torch.randn(1, 10, DIM), torch.randn(1, 4 * N_IMAGE + 7 + 512, DIM)
    ours = attn(x, context)
    attn.set_processor(WanAttnProcessor())
    assert not torch.allclose(attn(x, context), ours)


@torch.no_grad()
def test_equals_stock_when_the_splits_coincide():
    attn = cross_attention()
    x, context = torch.randn(1, 10, DIM), torch.randn(1, N_IMAGE + 512, DIM)
    ours = attn(x, context)
    attn.set_processor(WanAttnProcessor())
    assert torch.equal(attn(x, context), ours)


@torch.no_grad()
def test_fused_projections_give_the_same_output():
    attn = cross_attention()
    x, context = torch.randn(1, 10, DIM), torch.randn(1, 3 * N_IMAGE + 512, DIM)
    unfused = attn(x, context)
    attn.fuse_projections()
    torch.testing.assert_close(attn(x, context), unfused, rtol=1e-5, atol=1e-5)


def test_rejects_self_attention_and_masks():
    attn = cross_attention()
    with pytest.raises(ValueError, match="cross-attention"):
        attn(torch.randn(1, 10, DIM), None)
    with pytest.raises(ValueError, match="no attention mask"):
        attn(torch.randn(1, 10, DIM), torch.randn(1, N_IMAGE + 3, DIM), torch.ones(1, 1, 10, N_IMAGE + 3))
    with pytest.raises(ValueError, match="expected more than"):
        attn(torch.randn(1, 10, DIM), torch.randn(1, N_IMAGE, DIM))
