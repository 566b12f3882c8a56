"""``taskkernels.optimize``: a Hugging Face model after one call against the same model as it came
(default SDPA attention), per model family. Both are HF's own class with the same random weights
(the optimized one a deep copy), same dtype, dropout off. Forward in eval mode; forward+backward is
a training step's gradient computation over every parameter. The inputs are those of the model
cases (``benchmarks/cases/models.py``): padded text batches, padded audio with its CTC loss, DETR
with its loss (our matcher), GLPN with its loss, ViT and ConvNeXt images, and Mask2Former's
masked-attention decoder (the part of the model optimize changes) on random pixel-decoder
features. What optimize swaps in each model is in its report (``--cases`` names one family)."""

from __future__ import annotations

import copy

import torch

from ..harness import Case, Provider, pick_cases
from .models import CPU_CASES, GPU_CASES, QUICK_CASES, _model, transformers_missing  # the same cases and providers

BASELINE = "hf"
MODES = ("forward", "forward+backward")

# The whole-model cases of cases/models.py, each model optimize'd instead of rebuilt.
# The headline run times one case (the model cases already time every family once); the others
# run with the full suite or --cases.
HEADLINE = {"cuda": ["BERT-base 512 padded, batch 32"], "cpu": ["BERT 4 x 256 wide, 256 padded, batch 8"]}
HEADLINE_MODE = "forward"  # as the whole models in the headline; training steps with --all


def _hf_model(kind, size, hidden, layers, heads):
    """The HF model (float32, on the CPU) of a case."""
    import transformers

    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "bert":
        return transformers.BertForSequenceClassification(
            transformers.BertConfig(vocab_size=30522, max_position_embeddings=max(512, size), num_labels=2, **common))
    if kind == "vit":
        return transformers.ViTForImageClassification(transformers.ViTConfig(image_size=size, patch_size=16,
                                                                             num_labels=1000, **common))
    if kind == "convnext":
        return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[hidden * m for m in (1, 2, 4, 8)], depths=list(layers), num_labels=1000))
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max(1024, size), resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0))
    if kind == "bart":
        return transformers.BartForConditionalGeneration(transformers.BartConfig(
            d_model=hidden, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
            decoder_attention_heads=heads, encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden, dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0))
    if kind == "wav2vec2":
        return transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(
            vocab_size=32, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, pad_token_id=0))
    if kind == "detr":
        big = hidden >= 256
        backbone = transformers.ResNetConfig(
            layer_type="bottleneck" if big else "basic", depths=[3, 4, 6, 3] if big else [1, 1, 1, 1],
            hidden_sizes=[256, 512, 1024, 2048] if big else [32, 64, 128, 256], out_features=["stage4"])
        return transformers.DetrForObjectDetection(transformers.DetrConfig(
            use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=hidden,
            encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
            encoder_ffn_dim=8 * hidden, decoder_ffn_dim=8 * hidden, num_labels=91, dropout=0.0, attention_dropout=0.0))
    if kind == "glpn":
        return transformers.GLPNForDepthEstimation(transformers.GLPNConfig(
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0))
    if kind == "m2f-decoder":
        from transformers.models.mask2former import modeling_mask2former as m2f

        return m2f.Mask2FormerMaskedAttentionDecoder(transformers.Mask2FormerConfig(
            hidden_dim=hidden, mask_feature_size=hidden, num_attention_heads=heads, decoder_layers=layers,
            num_queries=100, dropout=0.0))
    raise ValueError(f"benchmarks.cases.optimize: unknown model kind {kind!r}")


def _args(kind, B, size, hidden, dtype, device):
    """A batch for the model, and which output to time (logits unless said)."""
    if kind == "bert":
        lengths = torch.linspace(size // 2, size, B).long()
        mask = (torch.arange(size)[None] < lengths[:, None]).long()
        return dict(input_ids=(torch.randint(1, 30522, (B, size)) * mask).to(device), attention_mask=mask.to(device)), None
    if kind == "gpt2":
        return dict(input_ids=torch.randint(0, 50257, (B, size), device=device)), None
    if kind == "bart":
        src, tgt = size
        lengths = torch.linspace(src // 2, src, B).long()
        mask = (torch.arange(src)[None] < lengths[:, None]).long().to(device)
        return dict(input_ids=torch.randint(3, 50265, (B, src), device=device), attention_mask=mask,
                    decoder_input_ids=torch.randint(3, 50265, (B, tgt), device=device)), None
    if kind in ("vit", "convnext"):
        return dict(pixel_values=torch.randn(B, 3, size, size, device=device, dtype=dtype)), None
    loss = lambda out: out.loss  # noqa: E731
    if kind == "wav2vec2":  # padded audio (60% to full length), ~1 label per 4 frames
        lengths = torch.linspace(int(size * 0.6), size, B).long()
        mask = (torch.arange(size)[None] < lengths[:, None]).long().to(device)
        return dict(input_values=torch.randn(B, size, device=device, dtype=dtype) * mask, attention_mask=mask,
                    labels=torch.randint(1, 32, (B, size // 1280), device=device)), loss
    if kind == "detr":
        H, W = size
        mask = torch.ones(B, H, W, dtype=torch.long, device=device)
        mask[B // 2:, :, int(W * 0.75):] = 0
        labels = [dict(class_labels=torch.randint(0, 91, (n,), device=device),
                       boxes=(torch.rand(n, 4, device=device) * 0.5 + 0.25).to(dtype))
                  for n in torch.randint(1, 21, (B,)).tolist()]
        return dict(pixel_values=torch.randn(B, 3, H, W, device=device, dtype=dtype), pixel_mask=mask,
                    labels=labels), loss
    if kind == "glpn":
        H, W = size
        return dict(pixel_values=torch.randn(B, 3, H, W, device=device, dtype=dtype),
                    labels=torch.rand(B, H, W, device=device, dtype=dtype) * 5 + 0.5), loss
    # m2f-decoder: levels at 1/32, 1/16, 1/8 of the image, mask features at 1/4
    sizes = [(size // s, size // s) for s in (32, 16, 8)]

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    return dict(inputs_embeds=rand(100, B, hidden), multi_stage_positional_embeddings=[rand(h * w, B, hidden) for h, w in sizes],
                encoder_hidden_states=[rand(h * w, B, hidden) for h, w in sizes],
                pixel_embeddings=rand(B, hidden, size // 4, size // 4), query_position_embeddings=rand(100, B, hidden),
                feature_size_list=[torch.Size(s) for s in sizes], return_dict=True), \
        (lambda out: out.masks_queries_logits[-1])


def _inputs(kind, B, size, hidden, layers, heads, dtype, device):
    import taskkernels

    hf = _hf_model(kind, size, hidden, layers, heads).to(device=device, dtype=dtype)
    ours = copy.deepcopy(hf)
    report = taskkernels.optimize(ours)
    if not report.swapped:
        raise RuntimeError(f"benchmarks.cases.optimize: {report}")
    args, output = _args(kind, B, size, hidden, dtype, device)
    return dict(hf=hf, ours=ours, args=args, output=output or (lambda out: out.logits), report=str(report))


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16])
    return [Case(name, dtype, lambda a=args, dtype=dtype: _inputs(*a, dtype, device))
            for name, args in table.items() for dtype in dtypes]


def providers(device: torch.device) -> list[Provider]:
    missing = transformers_missing()
    return [
        Provider("taskkernels", _model("ours"), unavailable=missing),
        Provider(BASELINE, _model("hf"), unavailable=missing),
    ]
