"""taskkernels.models.GPT2LMHeadModel against HF's (random small configs, nothing downloaded):
logits, loss, gradients, the KV cache, and generate() (greedy and sampled, left-padded batches)."""

import pytest
import torch

from taskkernels.models import GPT2LMHeadModel, KVCache
from conftest import DEVICES, assert_close_scaled, assert_same_grads

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")

V = 97


def config(dropout=0.0, **kw):
    # A wide initialization so that random models prefer different tokens (greedy runs that
    # repeat one token would compare little).
    base = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, resid_pdrop=dropout,
                embd_pdrop=dropout, attn_pdrop=dropout, initializer_range=0.4, eos_token_id=None, bos_token_id=None)
    return transformers.GPT2Config(**dict(base, **kw))


def pair(device="cpu", **kw):
    hf = transformers.GPT2LMHeadModel(config(**kw)).to(device).eval()
    return hf, GPT2LMHeadModel.from_hf(hf).eval()


def left_padded(B=3, T=12, device="cpu"):
    ids = torch.randint(0, V, (B, T), device=device)
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    mask[1, :4] = 0
    mask[2, :9] = 0
    return ids, mask


def test_same_keys_and_tied_head():
    hf, ours = pair()
    assert ours.state_dict().keys() == hf.state_dict().keys()
    assert ours.lm_head.weight is ours.transformer.wte.weight


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flags", [{}, dict(scale_attn_by_inverse_layer_idx=True), dict(n_inner=48)], ids=str)
def test_logits_match_hf_with_padding(device, flags):
    hf, ours = pair(device, **flags)
    ids, mask = left_padded(device=device)
    with torch.no_grad():
        want, got = hf(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    keep = mask.bool()  # padding positions' outputs are unused (and differ: no key is visible to them)
    assert_close_scaled(got[keep], want[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_and_gradients_match_hf(device):
    hf, ours = pair(device)
    hf.train(), ours.train()
    ids = torch.randint(0, V, (2, 16), device=device)
    labels = ids.clone()
    labels[0, :5] = -100
    want, got = hf(ids, labels=labels), ours(ids, labels=labels)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    want.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-4)


def test_kv_cache_steps_equal_one_pass():
    _, ours = pair()
    ids, mask = left_padded()
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        cache = KVCache(2)
        steps = [ours(ids[:, :7], attention_mask=mask[:, :7], past_key_values=cache).logits]
        for t in range(7, 12):
            steps.append(ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache).logits)
    assert len(cache) == 12
    keep = mask.bool()
    assert_close_scaled(torch.cat(steps, dim=1)[keep], full[keep], rtol=1e-5, atol=1e-5)


def test_cache_under_autograd_keeps_gradients():
    _, ours = pair()
    ids = torch.randint(0, V, (2, 10))
    loss_full = ours(ids).logits.square().mean()
    cache = KVCache(2)
    a = ours(ids[:, :6], use_cache=True, past_key_values=cache).logits
    b = ours(ids[:, 6:], past_key_values=cache).logits
    loss_steps = torch.cat([a, b], dim=1).square().mean()
    g_full = torch.autograd.grad(loss_full, list(ours.parameters()))
    g_steps = torch.autograd.grad(loss_steps, list(ours.parameters()))
    for x, y in zip(g_full, g_steps):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_generation_matches_hf(device):
    hf, ours = pair(device)
    ids, mask = left_padded(device=device)
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    assert got.shape == (3, 24)
    assert len(set(got[:, 12:].flatten().tolist())) > 3  # the random model does not just repeat itself
    assert torch.equal(got, want)


def test_generation_stops_at_eos_like_hf():
    hf, ours = pair()
    ids, mask = left_padded()
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=10, pad_token_id=0)
    eos = int(free[0, 14])  # a token the first sequence produces mid-way: it must end there
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=1)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=1)
    assert torch.equal(got, want)
    assert (got[0, 15:] == 1).all()


@pytest.mark.parametrize("warpers", [dict(top_k=20, top_p=0.9, temperature=0.8), dict(top_k=0, top_p=0.5),
                                     dict(top_k=5, top_p=1.0, temperature=1.5)], ids=str)
def test_sampling_matches_hf_with_the_same_seed(warpers):
    hf, ours = pair()
    ids, mask = left_padded()
    torch.manual_seed(11)
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True, pad_token_id=0, **warpers)
    torch.manual_seed(11)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True, pad_token_id=0, **warpers)
    assert torch.equal(got, want)


def test_dropout_in_training_and_from_pretrained(tmp_path):
    hf = transformers.GPT2LMHeadModel(config(dropout=0.2))
    hf.save_pretrained(tmp_path)
    ours = GPT2LMHeadModel.from_pretrained(str(tmp_path))
    ids = torch.randint(0, V, (2, 10))
    hf.eval(), ours.eval()
    assert_close_scaled(ours(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)
    ours.train()
    assert not torch.allclose(ours(ids).logits, ours(ids).logits)


def test_bad_mask_is_named():
    _, ours = pair()
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, past \+ T\) = \(2, 10\)"):
        ours(torch.randint(0, V, (2, 10)), attention_mask=torch.ones(2, 9))
