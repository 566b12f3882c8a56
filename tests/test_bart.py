"""taskkernels.models.BartForConditionalGeneration against HF's (random small configs, nothing
downloaded): logits with padded sources, loss and gradients, the decoder's KV cache, and
generate() ids (greedy and beam search) identical to HF's."""

import pytest
import torch

from taskkernels.models import BartForConditionalGeneration
from conftest import DEVICES, assert_close_scaled, assert_same_grads

transformers = pytest.importorskip("transformers", reason="transformers is needed for the HF comparison")

V = 60


def config(dropout=0.0, **kw):
    # init_std wide enough that greedy and beam search make different, varied choices.
    base = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, init_std=0.3)
    return transformers.BartConfig(**dict(base, **kw))


def pair(device="cpu", **kw):
    hf = transformers.BartForConditionalGeneration(config(**kw)).to(device).eval()
    return hf, BartForConditionalGeneration.from_hf(hf).eval()


def source(device="cpu"):
    ids = torch.randint(3, V, (3, 11), device=device)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def test_same_keys_and_tied_embeddings():
    hf, ours = pair()
    assert ours.state_dict().keys() == hf.state_dict().keys()
    shared = ours.model.shared.weight
    assert ours.lm_head.weight is shared and ours.model.encoder.embed_tokens.weight is shared
    assert ours.model.decoder.embed_tokens.weight is shared


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_embedding", [False, True])
def test_logits_match_hf_with_padded_sources(device, scale_embedding):
    hf, ours = pair(device, scale_embedding=scale_embedding)
    ids, mask = source(device)
    dec = torch.randint(3, V, (3, 6), device=device)
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 4:] = 0  # right-padded decoder inputs
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    assert_close_scaled(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_and_gradients_match_hf(device):
    hf, ours = pair(device)
    hf.train(), ours.train()
    ids, mask = source(device)
    labels = torch.randint(3, V, (3, 7), device=device)
    labels[1, 5:] = -100
    want, got = hf(ids, attention_mask=mask, labels=labels), ours(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    want.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, hf, rtol=1e-4)


def test_kv_cache_steps_equal_one_pass():
    _, ours = pair()
    ids, mask = source()
    dec = torch.randint(3, V, (3, 6))
    with torch.no_grad():
        full = ours(ids, attention_mask=mask, decoder_input_ids=dec).logits
        out = ours(ids, attention_mask=mask, decoder_input_ids=dec[:, :2], use_cache=True)
        steps, cache, enc = [out.logits], out.past_key_values, out.encoder_last_hidden_state
        for t in range(2, 6):
            steps.append(ours(attention_mask=mask, decoder_input_ids=dec[:, t:t + 1], encoder_outputs=enc,
                              past_key_values=cache).logits)
    assert len(cache) == 6
    assert_close_scaled(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


GENERATION = [
    dict(num_beams=1),
    dict(num_beams=4),
    dict(num_beams=3, length_penalty=2.0),
    dict(num_beams=4, early_stopping=True),
    dict(num_beams=4, early_stopping="never", length_penalty=0.5),
    dict(num_beams=2, eos_token_id=[2, 7]),
]


@pytest.mark.parametrize("kw", GENERATION, ids=str)
def test_generation_matches_hf(kw):
    hf, ours = pair()
    for _ in range(3):  # a few random sources per setting
        ids, mask = source()
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, **kw)
        got = ours.generate(ids, attention_mask=mask, max_new_tokens=12, **kw)
        assert torch.equal(got, want), (got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_generation_matches_hf_on_device(device):
    hf, ours = pair(device)
    ids, mask = source(device)
    for nb in (1, 4):
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=10, num_beams=nb, do_sample=False)
        assert torch.equal(ours.generate(ids, attention_mask=mask, max_new_tokens=10, num_beams=nb), want)


def test_dropout_in_training_and_from_pretrained(tmp_path):
    hf = transformers.BartForConditionalGeneration(config(dropout=0.2))
    hf.save_pretrained(tmp_path)
    ours = BartForConditionalGeneration.from_pretrained(str(tmp_path))
    ids, mask = source()
    hf.eval(), ours.eval()
    assert_close_scaled(ours(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits,
                        rtol=1e-5, atol=2e-5)
    ours.train()
    assert not torch.allclose(ours(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits)
