"""taskkernels' Mask2Former pieces against HF's (transformers from PyPI, random small configs):
the cross-attention, the decoder, the matcher and the whole model."""

import copy

import pytest
import torch

from taskkernels.models import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerHungarianMatcher,
    Mask2FormerMaskedAttentionDecoder,
    MaskedCrossAttention,
    use_masked_attention,
)
from conftest import assert_close_scaled, assert_same_grads

transformers = pytest.importorskip("transformers")
from transformers import Mask2FormerConfig, SwinConfig  # noqa: E402
from transformers.models.mask2former import modeling_mask2former as hf_m2f  # noqa: E402


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


def to64(v):
    """float64 copies of decoder_inputs' tensors and lists of tensors; the rest unchanged."""
    return v.double() if isinstance(v, torch.Tensor) else [to64(t) for t in v] if isinstance(v, list) else v


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("kind", ["swapped attention", "our decoder"])
def test_decoder_matches_hf(pre_norm, kind):
    """HF's whole masked-attention decoder (mask predictor, fully-blocked-row rule, every layer):
    with our cross-attention swapped in, and our decoder (per-image mask), give HF's outputs."""
    config = small_config(pre_norm=pre_norm)
    # float64: each layer thresholds the previous one's mask logits (sigmoid < 0.5), so in float32
    # a logit within rounding of 0 can block a key on one side only (CI once saw 52 of 2560 outputs
    # 4e-3 apart). float32 parity is the layer and whole-model tests' job.
    hf = hf_m2f.Mask2FormerMaskedAttentionDecoder(config).eval().double()
    if kind == "our decoder":
        ours = Mask2FormerMaskedAttentionDecoder.from_hf(hf)
    else:
        ours = use_masked_attention(copy.deepcopy(hf))
    assert all(isinstance(layer.cross_attn, MaskedCrossAttention) for layer in ours.layers)
    assert ours.state_dict().keys() == hf.state_dict().keys()
    inputs = {k: to64(v) for k, v in decoder_inputs(config).items()}
    with torch.no_grad():
        want, got = hf(**inputs), ours(**inputs)
    assert got.last_hidden_state.dtype == torch.float64
    assert_close_scaled(got.last_hidden_state, want.last_hidden_state, rtol=1e-9, atol=1e-9)
    for a, b in zip(got.masks_queries_logits, want.masks_queries_logits):
        assert_close_scaled(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["swapped attention", "our decoder"])
def test_decoder_training_gradients_match_hf(kind):
    config = small_config()
    hf = hf_m2f.Mask2FormerMaskedAttentionDecoder(config).train()
    ours = (Mask2FormerMaskedAttentionDecoder.from_hf(hf) if kind == "our decoder" else use_masked_attention(copy.deepcopy(hf))).train()
    inputs = decoder_inputs(config)
    for model in (hf, ours):
        out = model(**inputs)
        loss = out.last_hidden_state.square().mean() + sum(m.sigmoid().mean() for m in out.masks_queries_logits)
        loss.backward()
    assert_same_grads(ours, hf, rtol=1e-3)


def test_layer_with_mask_logits_and_per_image_mask():
    """The layer-level call: HF's (B * heads, Q, HW) mask, the (B, Q, HW) mask and the logits agree."""
    config = small_config()
    mha = hf_m2f.Mask2FormerMaskedAttentionDecoderLayer(config).cross_attn.eval()
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
            assert_close_scaled(got, want, rtol=1e-5, atol=1e-5)


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


# ---- the matcher and the whole model -----------------------------------------------------------


def test_matcher_matches_hf():
    B, Q, C = 3, 20, 6
    hf = hf_m2f.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=500)
    ours = Mask2FormerHungarianMatcher.from_hf(hf)
    masks = torch.randn(B, Q, 32, 32)
    classes = torch.randn(B, Q, C + 1)
    counts = [4, 0, 25]  # a normal image, an image with no object, more targets than queries
    mask_labels = [(torch.rand(n, 64, 64) > 0.5).float() for n in counts]
    class_labels = [torch.randint(0, C, (n,)) for n in counts]
    masks[0, 3] = float("nan")  # HF turns NaN costs into the largest float: never preferred
    torch.manual_seed(7)
    want = hf(masks, classes, mask_labels, class_labels)
    torch.manual_seed(7)
    got = ours(masks, classes, mask_labels, class_labels)
    assert len(got) == B
    for (gi, gj), (wi, wj), n in zip(got, want, counts):
        assert gi.dtype == gj.dtype == torch.int64 and len(gi) == min(Q, n)
        assert torch.equal(gi, wi) and torch.equal(gj, wj)


def model_config(**kw):
    backbone = SwinConfig(image_size=128, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    kw = dict(backbone_config=backbone, hidden_dim=32, feature_size=32, mask_feature_size=32, num_queries=12,
              decoder_layers=4, encoder_layers=1, dim_feedforward=64, encoder_feedforward_dim=64, num_attention_heads=4,
              num_labels=5, train_num_points=256, **kw)
    return Mask2FormerConfig(**kw)


def segmentation_batch():
    x = torch.randn(2, 3, 128, 128)
    mask_labels = [(torch.rand(3, 128, 128) > 0.5).float(), (torch.rand(2, 128, 128) > 0.5).float()]
    class_labels = [torch.tensor([0, 2, 4]), torch.tensor([1, 3])]
    return dict(pixel_values=x, mask_labels=mask_labels, class_labels=class_labels)


def test_model_matches_hf_outputs_loss_and_gradients():
    hf = transformers.Mask2FormerForUniversalSegmentation(model_config()).train()
    ours = Mask2FormerForUniversalSegmentation.from_hf(hf).train()
    assert isinstance(ours, transformers.Mask2FormerForUniversalSegmentation)
    assert isinstance(ours.model.transformer_module.decoder, Mask2FormerMaskedAttentionDecoder)
    assert isinstance(ours.criterion.matcher, Mask2FormerHungarianMatcher)
    assert ours.state_dict().keys() == hf.state_dict().keys()
    batch = segmentation_batch()
    torch.manual_seed(3)  # the matcher and the loss sample random points: the same draws for both
    want = hf(**batch)
    torch.manual_seed(3)
    got = ours(**batch)
    assert_close_scaled(got.class_queries_logits, want.class_queries_logits, rtol=1e-4, atol=1e-5)
    assert_close_scaled(got.masks_queries_logits, want.masks_queries_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-4, atol=1e-5)
    got.loss.backward()
    want.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-3)


def test_model_from_config_and_from_pretrained(tmp_path):
    config = model_config()
    built = Mask2FormerForUniversalSegmentation(config)
    assert isinstance(built.model.transformer_module.decoder, Mask2FormerMaskedAttentionDecoder)
    hf = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    hf.save_pretrained(tmp_path)
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(str(tmp_path)).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert_close_scaled(ours(pixel_values=x).masks_queries_logits, hf(pixel_values=x).masks_queries_logits,
                            rtol=1e-4, atol=1e-5)
