"""taskkernels.models.ConvNextLayer against Hugging Face's ConvNextLayer (random config, nothing
downloaded)."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")
from transformers import ConvNextConfig  # noqa: E402
from transformers.models.convnext.modeling_convnext import ConvNextLayer as HFConvNextLayer  # noqa: E402

from taskkernels.models import ConvNextLayer  # noqa: E402
from conftest import DEVICES, assert_same_grads  # noqa: E402


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
    torch.testing.assert_close(out, out_hf, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    out_hf.backward(g)
    out.backward(g)
    torch.testing.assert_close(x_ours.grad, x_hf.grad, rtol=1e-4, atol=1e-4)
    assert_same_grads(ours, hf, rtol=1e-4, atol=1e-4)


def test_drop_path_in_training_only():
    ours = ConvNextLayer.from_hf(hf_layer())
    ours.drop_path = 0.5
    x = torch.randn(64, 24, 7, 7)
    ours.eval()
    torch.testing.assert_close(ours(x), ours(x))
    ours.train()
    dropped = ((ours(x) - x).flatten(1).abs().amax(1) == 0).float().mean().item()
    assert 0.25 < dropped < 0.75  # about half the samples keep only the residual
