"""taskkernels.models.ConvNextLayer and ConvNextForImageClassification against Hugging Face's
(random configs, nothing downloaded)."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")
from transformers import ConvNextConfig  # noqa: E402
from transformers.models.convnext.modeling_convnext import ConvNextLayer as HFConvNextLayer  # noqa: E402

from taskkernels.models import ConvNextLayer  # noqa: E402
from conftest import DEVICES, assert_close_scaled, assert_same_grads  # noqa: E402


def hf_layer(dim=24, scale=1e-6, device="cpu"):
    layer = HFConvNextLayer(ConvNextConfig(layer_scale_init_value=scale), dim).to(device)
    with torch.no_grad():  # layer scale 1e-6 would hide everything after the LayerNorm
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


@pytest.mark.parametrize("scale", [1e-6, 0.0])
def test_same_state_dict_keys(scale):
    hf = HFConvNextLayer(ConvNextConfig(layer_scale_init_value=scale), 24)
    ours = ConvNextLayer(ConvNextConfig(layer_scale_init_value=scale), 24)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in hf.state_dict().items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_hf_forward_and_gradients(device, channels_last):
    hf = hf_layer(device=device)
    ours = ConvNextLayer.from_hf(hf)
    x = torch.randn(2, 24, 14, 14, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_hf, out = hf(x_hf), ours(x_ours)
    assert_close_scaled(out, out_hf, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    out_hf.backward(g)
    out.backward(g)
    assert_close_scaled(x_ours.grad, x_hf.grad, rtol=1e-4, atol=1e-4)
    assert_same_grads(ours, hf, rtol=1e-4)


def test_drop_path_in_training_only():
    ours = ConvNextLayer.from_hf(hf_layer())
    ours.drop_path = 0.5
    x = torch.randn(64, 24, 7, 7)
    ours.eval()
    torch.testing.assert_close(ours(x), ours(x))
    ours.train()
    dropped = ((ours(x) - x).flatten(1).abs().amax(1) == 0).float().mean().item()
    assert 0.25 < dropped < 0.75  # about half the samples keep only the residual


# ---- the whole classifier ---------------------------------------------------------------------------


def classifier_config(**kw):
    base = dict(num_channels=3, patch_size=4, hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 2, 1], num_labels=5,
                layer_scale_init_value=0.5, drop_path_rate=0.0)
    return ConvNextConfig(**dict(base, **kw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused_front", [False, True], ids=["dwconv+layernorm", "fused"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_image_classifier_matches_hf_logits_loss_and_gradients(device, fused_front, channels_last):
    from taskkernels.models import ConvNextForImageClassification

    hf = transformers.ConvNextForImageClassification(classifier_config()).to(device).train()
    ours = ConvNextForImageClassification.from_hf(hf, fused_front=fused_front).train()
    assert set(ours.state_dict()) == set(hf.state_dict())
    x = torch.randn(3, 3, 64, 64, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (3,), device=device)
    hf_out, out = hf(pixel_values=x, labels=labels), ours(x, labels=labels)
    assert_close_scaled(out.logits, hf_out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, hf_out.loss, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    hf_out.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-3)


def test_image_classifier_from_pretrained_and_drop_path(tmp_path):
    from taskkernels.models import ConvNextForImageClassification

    hf = transformers.ConvNextForImageClassification(classifier_config(drop_path_rate=0.3))
    hf.save_pretrained(tmp_path)
    ours = ConvNextForImageClassification.from_pretrained(str(tmp_path))
    x = torch.randn(2, 3, 64, 64)
    hf.eval(), ours.eval()
    assert_close_scaled(ours(x).logits, hf(pixel_values=x).logits, rtol=1e-4, atol=1e-5)
    ours.train()
    # Stochastic depth in training. It draws per sample and layer, so two passes of a batch of 2
    # through 5 layers (rates 0-0.3) can draw the same masks (6% by the rates; 5 of 47 runs here);
    # eight passes all alike: about 1e-6.
    runs = [ours(x).logits for _ in range(8)]
    assert any(not torch.allclose(runs[0], r) for r in runs[1:])
    with pytest.raises(ValueError, match="pixel_values must have 3 channels"):
        ours(torch.randn(2, 4, 64, 64))
