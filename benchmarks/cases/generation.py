"""Generation cases: ``generate()`` of taskkernels' GPT-2 and BART against HF's ``generate`` on
the same random weights (greedy; BART also with 4 beams), a fixed number of new tokens (no eos in
reach: eos is set outside the vocabulary's likely picks by disabling it). Timed as "forward" (the
whole generation, prefill included); tokens/s = batch x new tokens / time."""

from __future__ import annotations

import torch

from ..harness import Case, Prepared, Provider, pick_cases
from .models import transformers_missing

BASELINE = "hf"
MODES = ("forward",)

# name -> (model, batch, prompt length, new tokens, hidden, layers, heads, beams)
GPU_CASES = {
    "GPT-2 124M, 256 new tokens, batch 1": ("gpt2", 1, 32, 256, 768, 12, 12, 1),
    "GPT-2 124M, 256 new tokens, batch 16": ("gpt2", 16, 32, 256, 768, 12, 12, 1),
    "BART-base, 128 new tokens from 1024, batch 8, greedy": ("bart", 8, 1024, 128, 768, 6, 12, 1),
    "BART-base, 128 new tokens from 1024, batch 8, 4 beams": ("bart", 8, 1024, 128, 768, 6, 12, 4),
}
CPU_CASES = {
    "GPT-2 4 x 256 wide, 64 new tokens, batch 1": ("gpt2", 1, 16, 64, 256, 4, 4, 1),
    "GPT-2 4 x 256 wide, 64 new tokens, batch 8": ("gpt2", 8, 16, 64, 256, 4, 4, 1),
    "BART 2+2 x 256 wide, 32 new tokens from 256, batch 4, 4 beams": ("bart", 4, 256, 32, 256, 2, 4, 4),
}
QUICK_CASES = {"tiny GPT-2, 4 new tokens": ("gpt2", 2, 4, 4, 32, 1, 2, 1)}
HEADLINE = {"cuda": ["GPT-2 124M, 256 new tokens, batch 1"], "cpu": ["GPT-2 4 x 256 wide, 64 new tokens, batch 1"]}


def _inputs(kind, B, prompt, new, hidden, layers, heads, beams, dtype, device):
    import transformers

    from taskkernels import models

    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, eos_token_id=None, bos_token_id=None)
        hf = transformers.GPT2LMHeadModel(cfg)
        ours_cls = models.GPT2LMHeadModel
    else:
        cfg = transformers.BartConfig(d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                                      encoder_attention_heads=heads, decoder_attention_heads=heads,
                                      encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden, dropout=0.0,
                                      attention_dropout=0.0, activation_dropout=0.0, forced_eos_token_id=None)
        hf = transformers.BartForConditionalGeneration(cfg)
        ours_cls = models.BartForConditionalGeneration
    hf = hf.to(device=device, dtype=dtype).eval()
    ours = ours_cls.from_hf(hf).eval()
    ids = torch.randint(3, cfg.vocab_size, (B, prompt), device=device)
    mask = torch.ones_like(ids)
    # generate() kwargs both accept; eos off so that every sequence runs the full length
    kw = dict(attention_mask=mask, max_new_tokens=new, pad_token_id=1, eos_token_id=[])
    if kind == "bart":
        kw["num_beams"] = beams
    return dict(hf=hf, ours=ours, ids=ids, kw=kw)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16])
    return [Case(name, dtype, lambda a=args, dtype=dtype: _inputs(*a, dtype, device))
            for name, args in table.items() for dtype in dtypes]


def _generate(key):
    def prepare(inp):
        model = inp[key]
        extra = dict(do_sample=False) if key == "hf" else {}
        return Prepared(lambda: model.generate(inp["ids"], **inp["kw"], **extra), [])

    return prepare


def providers(device: torch.device) -> list[Provider]:
    missing = transformers_missing()
    return [Provider("taskkernels", _generate("ours"), unavailable=missing),
            Provider(BASELINE, _generate("hf"), unavailable=missing)]
