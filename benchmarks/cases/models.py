"""Whole-model cases: taskkernels' model classes against Hugging Face's (default SDPA attention),
same random weights (``from_hf``) and dtype, dropout off. Forward in eval mode; forward+backward
is a training step's gradient computation over every parameter. BERT with padded batches
(lengths spread from half to full), GPT-2 on full sequences (causal), BART on padded sources with
teacher-forced targets, Wav2Vec2 (CTC loss included) on padded audio, DETR (loss with the
matcher included) on padded images, GLPN (SiLog loss included), ViT and ConvNeXt on 224px
images; Mask2Former's masked-attention decoder (9 layers, 100 queries, hidden 256, 8 heads) on
random pixel-decoder features of an image of the given size (levels at 1/32, 1/16, 1/8; mask
features at 1/4)."""

from __future__ import annotations

import torch

from ..harness import Case, Prepared, Provider, pick_cases

BASELINE = "hf"
MODES = ("forward", "forward+backward")

# name -> (model, batch, sequence or image size, hidden, layers, heads); for ConvNeXt, hidden is
# the first stage's width (then x2, x4, x8) and layers the four stages' depths; for BART, size is
# (source, target) lengths and layers the depth of the encoder and of the decoder.
GPU_CASES = {
    "BERT-base 512 padded, batch 32": ("bert", 32, 512, 768, 12, 12),
    "ViT-B/16 224px, batch 64": ("vit", 64, 224, 768, 12, 12),
    "ConvNeXt-T 224px, batch 64": ("convnext", 64, 224, 96, (3, 3, 9, 3), 0),
    "GPT-2 124M 1024 tokens, batch 8": ("gpt2", 8, 1024, 768, 12, 12),
    "BART-base 1024 in, 128 out, batch 8": ("bart", 8, (1024, 128), 768, 6, 12),
    "Wav2Vec2-base CTC, 15 s audio, batch 16": ("wav2vec2", 16, 240000, 768, 12, 12),
    "DETR-R50 800x1066 with loss, batch 16": ("detr", 16, (800, 1066), 256, 6, 8),
    "GLPN 480x640 with loss, batch 8": ("glpn", 8, (480, 640), 0, 0, 0),
    "Mask2Former decoder 1024px, batch 8": ("m2f-decoder", 8, 1024, 256, 10, 8),
}
CPU_CASES = {
    "BERT 4 x 256 wide, 256 padded, batch 8": ("bert", 8, 256, 256, 4, 4),
    "ViT 4 x 384 wide, 224px, batch 8": ("vit", 8, 224, 384, 4, 6),
    "ConvNeXt 48 wide (1, 1, 3, 1), 224px, batch 8": ("convnext", 8, 224, 48, (1, 1, 3, 1), 0),
    "GPT-2 4 x 256 wide, 256 tokens, batch 4": ("gpt2", 4, 256, 256, 4, 4),
    "BART 2+2 x 256 wide, 256 in, 64 out, batch 4": ("bart", 4, (256, 64), 256, 2, 4),
    "Wav2Vec2 4 x 256 wide CTC, 4 s audio, batch 4": ("wav2vec2", 4, 64000, 256, 4, 4),
    "DETR small ResNet 256x320 with loss, batch 2": ("detr", 2, (256, 320), 128, 2, 8),
    "GLPN 224x320 with loss, batch 2": ("glpn", 2, (224, 320), 0, 0, 0),
    "Mask2Former decoder 384px, batch 2": ("m2f-decoder", 2, 384, 256, 10, 8),
}
QUICK_CASES = {"tiny BERT, batch 2": ("bert", 2, 16, 32, 1, 2)}
HEADLINE = {"cuda": list(GPU_CASES), "cpu": list(CPU_CASES)}  # one case per model family already
# The headline times whole models in forward (inference): their training steps would more than
# double its time on a 2-core CPU (nine models, up to ~3 s a step there); --all times both.
HEADLINE_MODE = "forward"


def _pair(kind, size, hidden, layers, heads, dtype, device):
    import transformers

    from taskkernels import models

    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=4 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "m2f-decoder":
        from transformers.models.mask2former import modeling_mask2former as m2f

        cfg = transformers.Mask2FormerConfig(hidden_dim=hidden, mask_feature_size=hidden, num_attention_heads=heads,
                                             decoder_layers=layers, num_queries=100, dropout=0.0)
        hf = m2f.Mask2FormerMaskedAttentionDecoder(cfg).to(device=device, dtype=dtype)
        return hf, models.Mask2FormerMaskedAttentionDecoder.from_hf(hf)
    if kind == "detr":
        big = hidden >= 256
        backbone = transformers.ResNetConfig(
            layer_type="bottleneck" if big else "basic", depths=[3, 4, 6, 3] if big else [1, 1, 1, 1],
            hidden_sizes=[256, 512, 1024, 2048] if big else [32, 64, 128, 256], out_features=["stage4"])
        cfg = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                                      d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                                      encoder_attention_heads=heads, decoder_attention_heads=heads,
                                      encoder_ffn_dim=8 * hidden, decoder_ffn_dim=8 * hidden, num_labels=91,
                                      dropout=0.0, attention_dropout=0.0)
        hf = transformers.DetrForObjectDetection(cfg).to(device=device, dtype=dtype)
        return hf, models.DetrForObjectDetection.from_hf(hf)
    if kind == "glpn":
        cfg = transformers.GLPNConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
        hf = transformers.GLPNForDepthEstimation(cfg).to(device=device, dtype=dtype)
        return hf, models.GLPNForDepthEstimation.from_hf(hf)
    if kind == "wav2vec2":
        cfg = transformers.Wav2Vec2Config(vocab_size=32, hidden_size=hidden, num_hidden_layers=layers,
                                          num_attention_heads=heads, intermediate_size=4 * hidden, hidden_dropout=0.0,
                                          attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                                          final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, pad_token_id=0)
        hf = transformers.Wav2Vec2ForCTC(cfg).to(device=device, dtype=dtype)
        return hf, models.Wav2Vec2ForCTC.from_hf(hf)
    if kind == "bart":
        cfg = transformers.BartConfig(d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                                      encoder_attention_heads=heads, decoder_attention_heads=heads,
                                      encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden, dropout=0.0,
                                      attention_dropout=0.0, activation_dropout=0.0)
        hf = transformers.BartForConditionalGeneration(cfg).to(device=device, dtype=dtype)
        return hf, models.BartForConditionalGeneration.from_hf(hf)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max(1024, size),
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        hf = transformers.GPT2LMHeadModel(cfg).to(device=device, dtype=dtype)
        return hf, models.GPT2LMHeadModel.from_hf(hf)
    if kind == "convnext":
        cfg = transformers.ConvNextConfig(hidden_sizes=[hidden * m for m in (1, 2, 4, 8)], depths=list(layers),
                                          num_labels=1000)
        hf = transformers.ConvNextForImageClassification(cfg)
        ours = models.ConvNextForImageClassification
    elif kind == "bert":
        cfg = transformers.BertConfig(vocab_size=30522, max_position_embeddings=max(512, size), num_labels=2, **common)
        hf = transformers.BertForSequenceClassification(cfg)
        ours = models.BertForSequenceClassification
    else:
        cfg = transformers.ViTConfig(image_size=size, patch_size=16, num_labels=1000, **common)
        hf = transformers.ViTForImageClassification(cfg)
        ours = models.ViTForImageClassification
    hf = hf.to(device=device, dtype=dtype)
    return hf, ours.from_hf(hf)


def _inputs(kind, B, size, hidden, layers, heads, dtype, device):
    hf, ours = _pair(kind, size, hidden, layers, heads, dtype, device)
    if kind == "detr":  # images padded to the batch's size (pixel mask), 1-20 boxes each
        H, W = size
        mask = torch.ones(B, H, W, dtype=torch.long, device=device)
        mask[B // 2:, :, int(W * 0.75):] = 0
        labels = [dict(class_labels=torch.randint(0, 91, (n,), device=device),
                       boxes=(torch.rand(n, 4, device=device) * 0.5 + 0.25).to(dtype))
                  for n in torch.randint(1, 21, (B,)).tolist()]
        args = dict(pixel_values=torch.randn(B, 3, H, W, device=device, dtype=dtype), pixel_mask=mask, labels=labels)
        return dict(hf=hf, ours=ours, args=args, output=lambda out: out.loss)
    if kind == "glpn":
        H, W = size
        args = dict(pixel_values=torch.randn(B, 3, H, W, device=device, dtype=dtype),
                    labels=torch.rand(B, H, W, device=device, dtype=dtype) * 5 + 0.5)
        return dict(hf=hf, ours=ours, args=args, output=lambda out: out.loss)
    if kind == "wav2vec2":  # padded audio (lengths from 60% to full), transcripts of ~1 label per 4 frames
        lengths = torch.linspace(int(size * 0.6), size, B).long()
        mask = (torch.arange(size)[None] < lengths[:, None]).long().to(device)
        labels = torch.randint(1, 32, (B, size // 1280), device=device)
        args = dict(input_values=torch.randn(B, size, device=device, dtype=dtype) * mask, attention_mask=mask,
                    labels=labels)
        return dict(hf=hf, ours=ours, args=args, output=lambda out: out.loss)
    if kind == "gpt2":
        args = dict(input_ids=torch.randint(0, 50257, (B, size), device=device))
    elif kind == "bart":
        src, tgt = size
        lengths = torch.linspace(src // 2, src, B).long()
        mask = (torch.arange(src)[None] < lengths[:, None]).long().to(device)
        args = dict(input_ids=torch.randint(3, 50265, (B, src), device=device), attention_mask=mask,
                    decoder_input_ids=torch.randint(3, 50265, (B, tgt), device=device))
    elif kind == "bert":
        lengths = torch.linspace(size // 2, size, B).long()
        mask = (torch.arange(size)[None] < lengths[:, None]).long()
        args = dict(input_ids=(torch.randint(1, 30522, (B, size)) * mask).to(device), attention_mask=mask.to(device))
    elif kind == "m2f-decoder":
        sizes = [(size // s, size // s) for s in (32, 16, 8)]
        feats = [torch.randn(h * w, B, hidden, device=device, dtype=dtype) for h, w in sizes]
        pos = [torch.randn(h * w, B, hidden, device=device, dtype=dtype) for h, w in sizes]
        args = dict(inputs_embeds=torch.randn(100, B, hidden, device=device, dtype=dtype),
                    multi_stage_positional_embeddings=pos, encoder_hidden_states=feats,
                    pixel_embeddings=torch.randn(B, hidden, size // 4, size // 4, device=device, dtype=dtype),
                    query_position_embeddings=torch.randn(100, B, hidden, device=device, dtype=dtype),
                    feature_size_list=[torch.Size(s) for s in sizes], return_dict=True)
        return dict(hf=hf, ours=ours, args=args, output=lambda out: out.masks_queries_logits[-1])
    else:
        args = dict(pixel_values=torch.randn(B, 3, size, size, device=device, dtype=dtype))
    return dict(hf=hf, ours=ours, args=args)


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    table, dtypes = pick_cases(device, quick, GPU_CASES, CPU_CASES, QUICK_CASES, [torch.bfloat16])
    return [Case(name, dtype, lambda a=args, dtype=dtype: _inputs(*a, dtype, device))
            for name, args in table.items() for dtype in dtypes]


def _model(key):
    def prepare(inp):
        model = inp[key]
        output = inp.get("output", lambda out: out.logits)
        return Prepared(lambda: output(model(**inp["args"])), [p for p in model.parameters() if p.requires_grad])

    return prepare


def transformers_missing() -> str | None:
    """Why the HF comparisons cannot run here (None when transformers is installed)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed"
    return None


def providers(device: torch.device) -> list[Provider]:
    missing = transformers_missing()
    return [
        Provider("taskkernels", _model("ours"), unavailable=missing),
        Provider(BASELINE, _model("hf"), unavailable=missing),
    ]
