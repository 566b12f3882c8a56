"""taskkernels.models.ViTEmbeddings against Hugging Face's ViTEmbeddings (random config, nothing
downloaded)."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")
from transformers import ViTConfig  # noqa: E402
from transformers.models.vit.modeling_vit import ViTEmbeddings as HFViTEmbeddings  # noqa: E402

from taskkernels.models import ViTEmbeddings  # noqa: E402
from conftest import DEVICES, assert_close_scaled, assert_same_grads  # noqa: E402


def config(**kw):
    base = dict(image_size=64, patch_size=16, num_channels=3, hidden_size=48, hidden_dropout_prob=0.0)
    return ViTConfig(**dict(base, **kw))


@pytest.mark.parametrize("use_mask_token", [False, True])
def test_same_state_dict_keys(use_mask_token):
    hf = HFViTEmbeddings(config(), use_mask_token=use_mask_token)
    ours = ViTEmbeddings(config(), use_mask_token=use_mask_token)
    assert set(ours.state_dict()) == set(hf.state_dict())
    for k, v in hf.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [dict(), dict(image_size=48, patch_size=8, num_channels=1, hidden_size=40)], ids=["base", "small"])
def test_matches_hf(device, kw):
    hf = HFViTEmbeddings(config(**kw)).to(device).eval()
    ours = ViTEmbeddings(config(**kw)).to(device).eval()
    ours.load_state_dict(hf.state_dict())
    cfg = config(**kw)
    x = torch.randn(3, cfg.num_channels, cfg.image_size, cfg.image_size, device=device)
    with torch.no_grad():
        assert_close_scaled(ours(x), hf(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_from_hf_and_training_gradients(device):
    hf = HFViTEmbeddings(config()).to(device).train()
    ours = ViTEmbeddings.from_hf(hf).train()
    x = torch.randn(2, 3, 64, 64, device=device)
    g = torch.randn(2, 17, 48, device=device)
    hf(x).backward(g)
    ours(x).backward(g)
    assert_same_grads(ours, hf, rtol=1e-5)


def test_interpolate_pos_encoding_and_mask_match_hf():
    hf = HFViTEmbeddings(config(), use_mask_token=True).eval()
    torch.nn.init.normal_(hf.mask_token)
    ours = ViTEmbeddings.from_hf(hf).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert_close_scaled(
            ours(x, interpolate_pos_encoding=True), hf(x, interpolate_pos_encoding=True), rtol=1e-5, atol=1e-5
        )
        x = torch.randn(2, 3, 64, 64)
        mask = torch.rand(2, 16) < 0.4
        assert_close_scaled(ours(x, bool_masked_pos=mask), hf(x, bool_masked_pos=mask), rtol=1e-5, atol=1e-5)


def test_wrong_image_size_is_refused_like_hf():
    ours = ViTEmbeddings(config())
    with pytest.raises(ValueError, match="doesn't match model"):
        ours(torch.randn(1, 3, 32, 32))


# ---- the whole classifier ---------------------------------------------------------------------------


def classifier_config(dropout=0.0, **kw):
    base = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, num_labels=5, hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout)
    return ViTConfig(**dict(base, **kw))


@pytest.mark.parametrize("device", DEVICES)
def test_image_classifier_matches_hf_logits_loss_and_gradients(device):
    from taskkernels.models import ViTForImageClassification

    hf = transformers.ViTForImageClassification(classifier_config()).to(device)
    ours = ViTForImageClassification.from_hf(hf)
    assert set(ours.state_dict()) == {k for k, _ in hf.named_parameters()}
    x = torch.randn(3, 3, 32, 32, device=device)
    labels = torch.randint(0, 5, (3,), device=device)
    hf_out, out = hf(pixel_values=x, labels=labels), ours(x, labels=labels)
    assert_close_scaled(out.logits, hf_out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, hf_out.loss, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    hf_out.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-4)


def test_image_classifier_dropout_and_from_pretrained(tmp_path):
    from taskkernels.models import ViTForImageClassification

    hf = transformers.ViTForImageClassification(classifier_config(dropout=0.2))
    hf.save_pretrained(tmp_path)
    ours = ViTForImageClassification.from_pretrained(str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    ours.eval()
    hf.eval()
    assert_close_scaled(ours(x).logits, hf(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    ours.train()
    assert not torch.allclose(ours(x).logits, ours(x).logits)
