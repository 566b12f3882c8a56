"""taskkernels.models BERT classes against Hugging Face's, on small random configs (nothing
downloaded): same state-dict keys, logits and losses on padded batches, training-step gradients,
dropout in training, save_pretrained -> from_pretrained."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")
from transformers import BertConfig  # noqa: E402

from taskkernels import models  # noqa: E402
from conftest import DEVICES, assert_close_scaled, assert_same_grads  # noqa: E402

HEADS = ["BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering"]


def config(dropout=0.0, **kw):
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, num_labels=3, hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout)
    return BertConfig(**dict(base, **kw))


def batch(B=3, N=20, device="cpu"):
    """Padded like a tokenizer's output: ragged lengths, token types, padding = 0."""
    lengths = torch.tensor([N, N - 7, 5][:B])
    mask = (torch.arange(N)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 99, (B, N)) * mask
    types = (torch.arange(N)[None] >= lengths[:, None] // 2).long() * mask
    return ids.to(device), mask.to(device), types.to(device)


def pair(name, cfg, device="cpu"):
    hf = getattr(transformers, name)(cfg).to(device)
    ours = getattr(models, name).from_hf(hf)
    return hf, ours


@pytest.mark.parametrize("name", HEADS)
def test_same_state_dict_keys(name):
    hf = getattr(transformers, name)(config())
    ours = getattr(models, name)(config())
    hf_keys = {k for k, _ in hf.named_parameters()}
    assert set(ours.state_dict()) == hf_keys


def labels_for(name, B, N, device):
    if name == "BertForSequenceClassification":
        return dict(labels=torch.randint(0, 3, (B,), device=device))
    if name == "BertForTokenClassification":
        labels = torch.randint(0, 3, (B, N), device=device)
        labels[:, -3:] = -100  # ignored positions
        return dict(labels=labels)
    return dict(start_positions=torch.tensor([1, 4, 30][:B], device=device),  # 30: outside -> ignored
                end_positions=torch.tensor([3, 9, 2][:B], device=device))


def outputs(name, out):
    if name == "BertForQuestionAnswering":
        return out.start_logits, out.end_logits
    return (out.logits,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", HEADS)
def test_matches_hf_logits_loss_and_gradients(device, name):
    hf, ours = pair(name, config(num_labels=2 if name == "BertForQuestionAnswering" else 3), device)
    ids, mask, types = batch(device=device)
    lab = labels_for(name, *ids.shape, device)
    hf_out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, **lab)
    out = ours(ids, attention_mask=mask, token_type_ids=types, **lab)
    valid = mask.bool()
    for a, b in zip(outputs(name, out), outputs(name, hf_out)):
        if a.dim() == 2 and a.shape == mask.shape:  # per-token outputs: padding positions are not compared
            a, b = a[valid], b[valid]
        elif a.dim() == 3:
            a, b = a[valid], b[valid]
        assert_close_scaled(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, hf_out.loss, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    hf_out.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-4)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_sequence_classification_losses(problem):
    num_labels = 1 if problem == "regression" else 3
    hf, ours = pair("BertForSequenceClassification", config(num_labels=num_labels, problem_type=problem))
    ids, mask, types = batch()
    labels = torch.rand(3, num_labels) if problem != "regression" else torch.randn(3)
    torch.testing.assert_close(ours(ids, mask, types, labels=labels).loss,
                               hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss)


def test_dropout_in_training_only():
    _, ours = pair("BertForSequenceClassification", config(dropout=0.3))
    ids, mask, types = batch()
    ours.eval()
    torch.testing.assert_close(ours(ids, mask, types).logits, ours(ids, mask, types).logits)
    ours.train()
    assert not torch.allclose(ours(ids, mask, types).logits, ours(ids, mask, types).logits)


def test_from_pretrained_local_directory(tmp_path):
    hf = transformers.BertForTokenClassification(config())
    hf.save_pretrained(tmp_path)
    ours = models.BertForTokenClassification.from_pretrained(str(tmp_path))
    ids, mask, types = batch()
    hf.eval()
    ours.eval()
    assert_close_scaled(ours(ids, mask, types).logits[mask.bool()],
                        hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[mask.bool()],
                               rtol=1e-5, atol=1e-5)
