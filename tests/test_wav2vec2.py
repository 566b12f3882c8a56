"""taskkernels.models.Wav2Vec2ForCTC / Wav2Vec2ForSequenceClassification against HF's (random
small configs, nothing downloaded): logits with padded audio, CTC loss and gradients, the
greedy decode, both layer-norm layouts."""

import pytest
import torch

from taskkernels.models import Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification, ctc_greedy_decode
from conftest import DEVICES, assert_close_scaled, assert_same_grads

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")


def config(stable=False, dropout=0.0, **kw):
    base = dict(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4, do_stable_layer_norm=stable,
                feat_extract_norm="layer" if stable else "group", hidden_dropout=dropout, attention_dropout=dropout,
                activation_dropout=dropout, feat_proj_dropout=dropout, final_dropout=dropout, layerdrop=0.0,
                mask_time_prob=0.0, pad_token_id=0, ctc_loss_reduction="mean", classifier_proj_size=24, num_labels=5)
    return transformers.Wav2Vec2Config(**dict(base, **kw))


def audio(device="cpu", B=3, N=1600):
    x = torch.randn(B, N, device=device)
    mask = torch.ones(B, N, dtype=torch.long, device=device)
    mask[1, 1100:] = 0
    mask[2, 700:] = 0
    return x * mask, mask


def ctc_labels(device="cpu"):
    labels = torch.randint(1, 12, (3, 9), device=device)
    labels[1, 6:] = -100
    labels[2, 3:] = -100
    return labels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "stable pre-LN"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ctc_logits_loss_and_gradients_match_hf(device, stable, reduction):
    hf = transformers.Wav2Vec2ForCTC(config(stable, ctc_loss_reduction=reduction)).to(device).train()
    ours = Wav2Vec2ForCTC.from_hf(hf).train()
    assert ours.state_dict().keys() == hf.state_dict().keys()
    x, mask = audio(device)
    labels = ctc_labels(device)
    want, got = hf(x, attention_mask=mask, labels=labels), ours(x, attention_mask=mask, labels=labels)
    valid = torch.arange(got.logits.shape[1], device=device)[None] < got.output_lengths[:, None]
    assert_close_scaled(got.logits[valid], want.logits[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    # "sum" adds the per-sequence losses instead of averaging per target token, so its gradients
    # (and their float32 rounding) are ~20x larger; assert_same_grads's atol scales with them.
    assert_same_grads(ours, hf, rtol=1e-3)


def test_without_attention_mask_and_greedy_decode():
    hf = transformers.Wav2Vec2ForCTC(config()).eval()
    ours = Wav2Vec2ForCTC.from_hf(hf).eval()
    x = torch.randn(2, 1600)
    with torch.no_grad():
        want, got = hf(x).logits, ours(x).logits
    assert_close_scaled(got, want, rtol=1e-4, atol=1e-5)
    ids = ours.decode(got)
    best = want.argmax(-1)
    for b in range(2):  # HF's tokenizer decode rule: merge repeats, drop the pad (blank) token
        expect = [int(t) for i, t in enumerate(best[b]) if (i == 0 or t != best[b, i - 1]) and t != 0]
        assert ids[b] == expect
    assert ctc_greedy_decode(torch.tensor([[[0.0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])) == [[1, 1, 2]]


def test_spec_augment_and_dropout_in_training_only(tmp_path):
    hf = transformers.Wav2Vec2ForCTC(config(dropout=0.1, mask_time_prob=0.3, mask_time_length=2, layerdrop=0.1))
    hf.save_pretrained(tmp_path)
    ours = Wav2Vec2ForCTC.from_pretrained(str(tmp_path))
    x, mask = audio()
    hf.eval(), ours.eval()
    assert_close_scaled(ours(x, attention_mask=mask).logits, hf(x, attention_mask=mask).logits,
                        rtol=1e-4, atol=1e-5)
    ours.train()
    a, b = ours(x, attention_mask=mask).logits, ours(x, attention_mask=mask).logits
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_sequence_classification_matches_hf(device):
    hf = transformers.Wav2Vec2ForSequenceClassification(config()).to(device).train()
    ours = Wav2Vec2ForSequenceClassification.from_hf(hf).train()
    assert ours.state_dict().keys() == hf.state_dict().keys()
    x, mask = audio(device)
    labels = torch.tensor([0, 3, 4], device=device)
    want, got = hf(x, attention_mask=mask, labels=labels), ours(x, attention_mask=mask, labels=labels)
    assert_close_scaled(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-3)


def test_bad_labels_are_named():
    ours = Wav2Vec2ForCTC(config())
    x, mask = audio()
    with pytest.raises(ValueError, match=r"labels must be < vocab_size \(12\)"):
        ours(x, attention_mask=mask, labels=torch.full((3, 4), 12))
