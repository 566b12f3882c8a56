"""MaskedCrossAttention against HF's Mask2Former decoder (transformers from PyPI, random weights)."""

import copy

import pytest
import torch

from taskkernels.models import MaskedCrossAttention, use_masked_attention
from conftest import assert_same_grads

transformers = pytest.importorskip("transformers")
from transformers.models.mask2former.modeling_mask2former import (  # noqa: E402
    Mask2FormerConfig,
    Mask2FormerMaskedAttentionDecoder,
    Mask2FormerMaskedAttentionDecoderLayer,
)


def small_config(**kw):
    kw = dict(hidden_dim=64, num_attention_heads=4, dim_feedforward=128, decoder_layers=4, mask_feature_size=64,
              num_queries=20, dropout=0.0, **kw)
    return Mask2FormerConfig(**kw)


def decoder_inputs(config, B=2, sizes=((4, 4), (8, 8), (16, 16))):
    E, Q = config.hidden_dim, config.num_queries
    enc = [torch.randn(h * w, B, E) for h, w in sizes]
    pos = [torch.randn(h * w, B, E) for h, w in sizes]
    pixel = torch.randn(B, config.mask_feature_size, 32, 32)
    return dict(inputs_embeds=torch.randn(Q, B, E), multi_stage_positional_embeddings=pos, pixel_embeddings=pixel,
                encoder_hidden_states=enc, query_position_embeddings=torch.randn(Q, B, E),
                feature_size_list=[torch.Size(s) for s in sizes], return_dict=True)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_matches_hf(pre_norm):
    """HF's whole masked-attention decoder (mask predictor, fully-blocked-row rule, every layer)
    with our cross-attention swapped in gives HF's outputs."""
    config = small_config(pre_norm=pre_norm)
    hf = Mask2FormerMaskedAttentionDecoder(config).eval()
    ours = use_masked_attention(copy.deepcopy(hf))
    assert all(isinstance(layer.cross_attn, MaskedCrossAttention) for layer in ours.layers)
    assert ours.state_dict().keys() == hf.state_dict().keys()
    inputs = decoder_inputs(config)
    with torch.no_grad():
        want, got = hf(**inputs), ours(**inputs)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-4, atol=1e-4)
    for a, b in zip(got.masks_queries_logits, want.masks_queries_logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_decoder_training_gradients_match_hf():
    config = small_config()
    hf = Mask2FormerMaskedAttentionDecoder(config).train()
    ours = use_masked_attention(copy.deepcopy(hf)).train()
    inputs = decoder_inputs(config)
    for model in (hf, ours):
        out = model(**inputs)
        loss = out.last_hidden_state.square().mean() + sum(m.sigmoid().mean() for m in out.masks_queries_logits)
        loss.backward()
    assert_same_grads(ours, hf, rtol=1e-3, atol=1e-5)


def test_layer_with_mask_logits_and_per_image_mask():
    """The layer-level call: HF's (B * heads, Q, HW) mask, the (B, Q, HW) mask and the logits agree."""
    config = small_config()
    mha = Mask2FormerMaskedAttentionDecoderLayer(config).cross_attn.eval()
    ours = MaskedCrossAttention.from_hf(mha).eval()
    Q, B, HW, E, H = 20, 2, 100, 64, 4
    query, key, value = torch.randn(Q, B, E), torch.randn(HW, B, E), torch.randn(HW, B, E)
    logits = torch.randn(B, Q, HW)
    logits[1, 3] = -1.0  # fully blocked: cleared before HF's call, as HF's decoder does
    blocked = logits.sigmoid() < 0.5
    blocked_hf = blocked & ~blocked.all(-1, keepdim=True)
    with torch.no_grad():
        want, _ = mha(query, key, value, attn_mask=blocked_hf.repeat_interleave(H, 0))
        for kw in (dict(attn_mask=blocked.repeat_interleave(H, 0)), dict(attn_mask=blocked), dict(mask_logits=logits)):
            got, weights = ours(query, key, value, **kw)
            assert weights is None
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_errors_are_named():
    ours = MaskedCrossAttention(64, 4)
    q, kv = torch.randn(20, 2, 64), torch.randn(100, 2, 64)
    per_head = torch.rand(8, 20, 100) < 0.5
    with pytest.raises(ValueError, match="attn_mask differs between heads"):
        ours(q, kv, kv, attn_mask=per_head)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(B \* num_heads, Q, HW\) = \(8, 20, 100\)"):
        ours(q, kv, kv, attn_mask=per_head[:, :, :99])
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        ours(q, kv, kv, attn_mask=per_head.float())
    ours.dropout = 0.1
    with pytest.raises(NotImplementedError, match="attention dropout"):
        ours.train()(q, kv, kv)
    with pytest.raises(ValueError, match="no Mask2FormerMaskedAttentionDecoderLayer"):
        use_masked_attention(torch.nn.Linear(2, 2))
