"""DETR (attention through the HF attention interface, our matcher in the loss) and GLPN (our
efficient attention and depthwise 3x3) against HF's (random small configs, nothing downloaded),
and the HF attention-interface function on its own."""

import copy

import pytest
import torch

from taskkernels import reference
from taskkernels.models import DetrForObjectDetection, DetrHungarianMatcher, GLPNForDepthEstimation, hf_attention
from conftest import DEVICES, assert_close_scaled, assert_same_grads

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")


# ---- the attention-interface function -----------------------------------------------------------
class _Module(torch.nn.Module):
    is_causal = False


@pytest.mark.parametrize("mask_kind", ["none", "padding (B,1,1,Nk)", "padding expanded", "general bool", "additive float"])
def test_attention_interface_masks(mask_kind):
    B, H, Nq, Nk, D = 2, 3, 7, 9, 16
    q, k, v = torch.randn(B, H, Nq, D), torch.randn(B, H, Nk, D), torch.randn(B, H, Nk, D)
    keep = torch.rand(B, Nk) > 0.3
    keep[:, 0] = True
    mask, bias = None, None
    if mask_kind.startswith("padding"):
        mask = keep[:, None, None, :]
        if mask_kind.endswith("expanded"):
            mask = mask.expand(B, 1, Nq, Nk)
        bias = torch.zeros(B, 1, Nq, Nk).masked_fill(~mask, float("-inf"))
    elif mask_kind == "general bool":
        mask = torch.rand(B, 1, Nq, Nk) > 0.3
        mask[..., 0] = True
        bias = torch.zeros(B, 1, Nq, Nk).masked_fill(~mask, float("-inf"))
    elif mask_kind == "additive float":
        mask = bias = torch.randn(B, 1, Nq, Nk)
    out, weights = hf_attention.attention_forward(_Module(), q, k, v, mask, scaling=0.3)
    assert weights is None and out.shape == (B, Nq, H, D)
    want = reference.attention(q.double(), k.double(), v.double(), scale=0.3,
                               attn_bias=None if bias is None else bias.double())
    torch.testing.assert_close(out.double(), want.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_attention_interface_refuses_what_it_cannot_do():
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(NotImplementedError, match="softcap"):
        hf_attention.attention_forward(_Module(), q, q, q, None, softcap=30.0)
    k = torch.randn(1, 2, 5, 8)
    with pytest.raises(NotImplementedError, match="causal call with Nq != Nk"):
        hf_attention.attention_forward(_Module(), q, k, k, None, is_causal=True)


# ---- DETR ----------------------------------------------------------------------------------------
def detr_config(**kw):
    backbone = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                                         layer_type="basic", out_features=["stage4"])
    base = dict(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12, num_labels=5, dropout=0.0,
                attention_dropout=0.0, auxiliary_loss=True)
    return transformers.DetrConfig(**dict(base, **kw))


def detr_batch(device="cpu"):
    x = torch.randn(2, 3, 64, 96, device=device)
    pixel_mask = torch.ones(2, 64, 96, dtype=torch.long, device=device)
    pixel_mask[1, :, 60:] = 0  # a narrower image padded to the batch's width
    labels = [dict(class_labels=torch.tensor([0, 3, 4], device=device), boxes=torch.rand(3, 4, device=device) * 0.5 + 0.25),
              dict(class_labels=torch.tensor([2], device=device), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3]], device=device))]
    return dict(pixel_values=x, pixel_mask=pixel_mask, labels=labels)


@pytest.mark.parametrize("device", DEVICES)
def test_detr_matches_hf_outputs_loss_and_gradients(device):
    hf = transformers.DetrForObjectDetection(detr_config()).to(device).train()
    ours = DetrForObjectDetection.from_hf(hf).train()
    assert isinstance(ours, transformers.DetrForObjectDetection) and ours.config._attn_implementation == "taskkernels"
    assert hf.config._attn_implementation != "taskkernels"  # the original is left alone
    assert ours.state_dict().keys() == hf.state_dict().keys()
    batch = detr_batch(device)
    want, got = hf(**batch), ours(**batch)
    assert_close_scaled(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    assert_close_scaled(got.pred_boxes, want.pred_boxes, rtol=1e-4, atol=1e-5)
    assert set(got.loss_dict) == set(want.loss_dict) and "loss_giou_1" in got.loss_dict
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    # DETR's gradients reach ~1e3 (the loss sums terms over every decoder layer's queries);
    # assert_same_grads's atol scales with each parameter's largest.
    assert_same_grads(ours, hf, rtol=1e-3)


def test_detr_matcher_matches_hf():
    from transformers.loss.loss_for_object_detection import HungarianMatcher

    outputs = dict(logits=torch.randn(3, 20, 6), pred_boxes=torch.rand(3, 20, 4) * 0.5 + 0.25)
    targets = [dict(class_labels=torch.randint(0, 5, (n,)), boxes=torch.rand(n, 4) * 0.5 + 0.25) for n in (4, 0, 9)]
    want = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)(outputs, targets)
    got = DetrHungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)(outputs, targets)
    for (gi, gj), (wi, wj) in zip(got, want):
        assert torch.equal(gi, wi) and torch.equal(gj, wj)


def test_detr_from_config_and_from_pretrained(tmp_path):
    config = detr_config()
    assert DetrForObjectDetection(config).config._attn_implementation == "taskkernels"
    hf = transformers.DetrForObjectDetection(config).eval()
    hf.save_pretrained(tmp_path)
    ours = DetrForObjectDetection.from_pretrained(str(tmp_path)).eval()
    batch = detr_batch()
    with torch.no_grad():
        assert_close_scaled(ours(batch["pixel_values"], pixel_mask=batch["pixel_mask"]).logits,
                            hf(batch["pixel_values"], pixel_mask=batch["pixel_mask"]).logits, rtol=1e-4, atol=1e-5)


# ---- GLPN ----------------------------------------------------------------------------------------
def glpn_config(**kw):
    base = dict(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[16, 32, 48, 64],
                patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2],
                decoder_hidden_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    return transformers.GLPNConfig(**dict(base, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_glpn_matches_hf_depth_loss_and_gradients(device):
    hf = transformers.GLPNForDepthEstimation(glpn_config()).to(device).train()
    ours = GLPNForDepthEstimation.from_hf(hf).train()
    assert ours.state_dict().keys() == hf.state_dict().keys()
    assert type(ours.glpn.encoder.block[0][0].attention.self).__module__ == "taskkernels.models.glpn"
    x = torch.randn(2, 3, 64, 96, device=device)
    depth = torch.rand(2, 64, 96, device=device) * 5 + 0.5
    want, got = hf(x, labels=depth), ours(x, labels=depth)
    assert_close_scaled(got.predicted_depth, want.predicted_depth, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-3)


def test_glpn_from_pretrained_and_refusals(tmp_path):
    hf = transformers.GLPNForDepthEstimation(glpn_config()).eval()
    hf.save_pretrained(tmp_path)
    ours = GLPNForDepthEstimation.from_pretrained(str(tmp_path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close_scaled(ours(x).predicted_depth, hf(x).predicted_depth, rtol=1e-4, atol=1e-5)
    with pytest.raises(NotImplementedError, match="output_attentions"):
        ours(x, output_attentions=True)
