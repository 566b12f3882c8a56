"""One call makes a Hugging Face model run on taskkernels: :func:`optimize` and :func:`restore`.

``taskkernels.optimize(model)`` patches a transformers model in place. The model stays an
instance of its HF class with the same parameters (the very same tensors), state-dict keys and
call, so ``save_pretrained``, ``generate``, ``pipeline``, ``Trainer`` and optimizers built before
the call keep working. What moves onto taskkernels (``ops=`` names):

- ``"attention"``: every module that calls transformers' attention interface (Wav2Vec2, ViT, DETR,
  BERT, GPT-2, BART, the Swin backbone of Mask2Former, and any other model built that way) runs
  :func:`taskkernels.attention` (:mod:`taskkernels.models.hf_attention`); GLPN's efficient
  self-attention, which does not use the interface, gets its forward swapped. A call the kernel
  cannot serve (softcap, sliding window, sinks, ...) runs the model's previous attention (SDPA or
  eager) with a warning.
- ``"patch_embed"``: ViT's embeddings on :func:`taskkernels.patch_embed`.
- ``"depthwise_conv2d"``: ConvNeXt's block front (the fused ``depthwise_conv2d_layernorm`` on CUDA,
  where it pays; the two ops on the CPU, where it measured slower) and GLPN's Mix-FFN 3x3.
- ``"masked_attention"``: Mask2Former's masked cross-attention on :func:`taskkernels.masked_attention`.
- ``"matcher"``: DETR's and Mask2Former's Hungarian matchers on one batched solve.
- ``"ctc_loss"``: Wav2Vec2ForCTC's loss on :func:`taskkernels.ctc_loss_from_logits`.

Modules keep their class: their ``forward`` is replaced per instance (as Liger-Kernel does), and
falls back to the class's own forward, per call, where an input is outside what our op covers.
Loss hooks go through ``model.loss_function``; matchers are swapped as modules. Call it before
``torch.compile`` and before wrapping the model (DDP, FSDP): it patches modules, not graphs.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OPS", "OptimizeReport", "optimize", "restore"]

OPS = ("attention", "patch_embed", "depthwise_conv2d", "masked_attention", "matcher", "ctc_loss")

# The families taskkernels is built and tested for (the seeds' page), by transformers module.
FAMILIES = {"wav2vec2": "Wav2Vec2", "vit": "ViT", "convnext": "ConvNeXt", "detr": "DETR", "mask2former": "Mask2Former",
            "glpn": "GLPN", "bert": "BERT", "gpt2": "GPT-2", "bart": "BART"}

_STATE = "_taskkernels_optimize_state"


@dataclass
class OptimizeReport:
    """What :func:`optimize` did: ``swapped`` and ``skipped`` are lists of (op, where, detail)."""

    model: str
    family: str | None
    ops: tuple
    swapped: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def count(self, op: str) -> int:
        """How many swaps of `op` were made."""
        return sum(1 for o, _, _ in self.swapped if o == op)

    @property
    def by_op(self) -> dict:
        """op -> number of swaps, for the ops that swapped anything."""
        out: dict = {}
        for op, _, _ in self.swapped:
            out[op] = out.get(op, 0) + 1
        return out

    def __str__(self) -> str:
        if not self.swapped:
            family = "" if self.family else " (not one of the families taskkernels covers: " + ", ".join(FAMILIES.values()) + ")"
            lines = [f"taskkernels.optimize: nothing swapped: {self.model}{family}; ops tried: {', '.join(self.ops)}"]
        else:
            parts = ", ".join(f"{op} x{n}" for op, n in self.by_op.items())
            lines = [f"taskkernels.optimize: {self.model}: {parts}"]
            groups: dict = {}
            for op, where, detail in self.swapped:
                groups.setdefault((op, detail), []).append(where)
            for (op, detail), wheres in groups.items():
                shown = ", ".join(wheres[:3]) + (f", ... ({len(wheres)} in all)" if len(wheres) > 3 else "")
                lines.append(f"  swapped  {op}: {detail}: {shown}")
        for op, where, why in self.skipped:
            lines.append(f"  not swapped  {op}: {where}: {why}")
        return "\n".join(lines)


class _State:
    """What restore needs: undo steps in the order they were made, and the report. The steps are
    data, not closures, so a deep copy of an optimized model restores its own modules."""

    def __init__(self, report: OptimizeReport):
        self.report = report
        self.undo: list = []

    def pop(self, obj, key: str) -> None:
        """Undo by removing `key` from obj.__dict__."""
        self.undo.append(("pop", obj, key, None))

    def set(self, obj, attr: str, value) -> None:
        """Undo by setting obj.attr back to `value`."""
        self.undo.append(("set", obj, attr, value))

    def run_undo(self) -> None:
        for kind, obj, key, value in reversed(self.undo):
            if kind == "pop":
                obj.__dict__.pop(key, None)
            else:
                setattr(obj, key, value)
        self.undo.clear()


def _family(model: nn.Module) -> str | None:
    parts = type(model).__module__.split(".")
    if len(parts) >= 3 and parts[0] == "transformers" and parts[1] == "models":
        return FAMILIES.get(parts[2])
    return None


def _is(module: nn.Module, family: str, name: str) -> bool:
    """module is exactly transformers' class `name` of models/`family` (not a subclass elsewhere)."""
    cls = type(module)
    return cls.__name__ == name and cls.__module__ == f"transformers.models.{family}.modeling_{family}"


def _ours(*tensors: Tensor) -> bool:
    """Every tensor on a device our ops run on."""
    return all(t.device.type in ("cpu", "cuda") for t in tensors)


def _bind(state: _State, module: nn.Module, fn) -> str | None:
    """Binds `fn` as module.forward (an instance attribute; a partial, which deep-copies and pickles
    with the module). Returns why not, or None."""
    if "forward" in module.__dict__:
        return "its forward is already replaced on the instance (accelerate hooks or another patch)"
    module.forward = functools.partial(fn, module)
    state.pop(module, "forward")
    return None


def _original(module: nn.Module, *args, **kwargs):
    """The class's own forward (what an unpatched module runs)."""
    return type(module).forward(module, *args, **kwargs)


# ---- attention through transformers' attention interface ---------------------------------------
@functools.lru_cache(maxsize=None)
def _calls_interface(cls) -> bool:
    try:
        return "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def _swap_interface_attention(model, state, report):
    from .models import hf_attention

    modules = [(name, m) for name, m in model.named_modules() if _calls_interface(type(m))]
    if not modules:
        return
    configs: dict = {}
    for name, m in modules:
        config = getattr(m, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            report.skipped.append(("attention", name, "calls the attention interface but holds no config to switch"))
            continue
        configs.setdefault(id(config), (config, []))[1].append((name, m))
    hf_attention.register()
    for config, members in configs.values():
        before = config._attn_implementation
        if before not in (None, "sdpa", "eager", hf_attention.NAME):
            for name, _ in members:
                report.skipped.append(("attention", name, f"the model runs {before!r} attention; taskkernels replaces "
                                                          "'sdpa' and 'eager' only"))
            continue
        fallback = "eager" if before == "eager" else "sdpa"
        config._attn_implementation_internal = hf_attention.NAME
        state.set(config, "_attn_implementation_internal", before)
        for name, m in members:
            m._taskkernels_fallback = fallback
            state.pop(m, "_taskkernels_fallback")
            report.swapped.append(("attention", name, f"{type(m).__name__} through the attention interface "
                                                      f"({fallback} where the kernel cannot serve a call)"))


# ---- GLPN ----------------------------------------------------------------------------------------
def _glpn_attention_forward(self, hidden_states, height, width, output_attentions=False):
    from .ops.attention import attention

    if output_attentions or not _ours(hidden_states) or hidden_states.dim() != 3:
        return _original(self, hidden_states, height, width, output_attentions)
    B, N, E = hidden_states.shape
    H, D = self.num_attention_heads, self.attention_head_size
    q = self.query(hidden_states).view(B, N, H, D).transpose(1, 2)
    kv = hidden_states
    if self.sr_ratio > 1:
        kv = self.sr(kv.permute(0, 2, 1).reshape(B, E, height, width)).reshape(B, E, -1).permute(0, 2, 1)
        kv = self.layer_norm(kv)
    k = self.key(kv).view(B, -1, H, D).transpose(1, 2)
    v = self.value(kv).view(B, -1, H, D).transpose(1, 2)
    out = attention(q, k, v, scale=1.0 / math.sqrt(D), dropout_p=self.dropout.p if self.training else 0.0)
    return (out.transpose(1, 2).reshape(B, N, H * D),)


def _depthwise_ok(conv) -> str | None:
    """Why `conv` is not a stride-1 depthwise convolution our op computes (None when it is)."""
    if not isinstance(conv, nn.Conv2d):
        return f"not an nn.Conv2d ({type(conv).__name__})"
    C, K = conv.in_channels, conv.kernel_size
    if not (conv.groups == C == conv.out_channels and K[0] == K[1] and 1 <= K[0] <= 31):
        return f"not a square depthwise convolution of at most 31x31 (groups {conv.groups}, kernel {K})"
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return "stride, dilation or padding mode other than 1, 1, zeros"
    if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1] or not 0 <= conv.padding[0] < K[0]:
        return f"padding {conv.padding} is not one symmetric size below the kernel's"
    return None


def _glpn_dwconv_forward(self, hidden_states, height, width):
    from .ops.depthwise_conv2d import depthwise_conv2d

    conv = self.dwconv
    if not _ours(hidden_states) or hidden_states.dtype != conv.weight.dtype:
        return _original(self, hidden_states, height, width)
    B, N, C = hidden_states.shape
    x = hidden_states.transpose(1, 2).view(B, C, height, width)  # channels_last strides, no copy
    return depthwise_conv2d(x, conv.weight, conv.bias, padding=conv.padding[0]).flatten(2).transpose(1, 2)


# ---- ConvNeXt ------------------------------------------------------------------------------------
def _convnext_layer_forward(self, features):
    from .ops.depthwise_conv2d import depthwise_conv2d, depthwise_conv2d_layernorm

    conv, norm = self.dwconv, self.layernorm
    if not _ours(features) or features.dtype != conv.weight.dtype:
        return _original(self, features)
    if features.is_cuda and norm.weight is not None and norm.bias is not None:  # one kernel for conv + LayerNorm
        x = depthwise_conv2d_layernorm(features, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps,
                                       padding=conv.padding[0])
    else:  # on the CPU the two ops measured faster than the fused one (README)
        x = norm(depthwise_conv2d(features, conv.weight, conv.bias, padding=conv.padding[0]).permute(0, 2, 3, 1))
    x = self.pwconv2(self.act(self.pwconv1(x)))
    if self.layer_scale_parameter is not None:
        x = self.layer_scale_parameter * x
    return features + self.drop_path(x.permute(0, 3, 1, 2))


# ---- ViT -----------------------------------------------------------------------------------------
def _vit_embeddings_forward(self, pixel_values, bool_masked_pos=None, interpolate_pos_encoding=False):
    from .ops.patch_embed import patch_embed

    proj = self.patch_embeddings.projection
    P = proj.kernel_size[0]
    ok = (pixel_values.dim() == 4 and _ours(pixel_values) and pixel_values.dtype == proj.weight.dtype
          and pixel_values.shape[1] == self.patch_embeddings.num_channels
          and pixel_values.shape[2] % P == 0 and pixel_values.shape[3] % P == 0
          and (interpolate_pos_encoding or tuple(pixel_values.shape[2:]) == tuple(self.image_size))
          and (bool_masked_pos is None or self.mask_token is not None))
    if not ok:  # HF's forward: its own errors, or a size our op does not take
        return _original(self, pixel_values, bool_masked_pos, interpolate_pos_encoding)
    B, _, H, W = pixel_values.shape
    pos = self.position_embeddings
    if interpolate_pos_encoding:  # HF's resize reads only the embeddings' shape
        shape = torch.empty(1, (H // P) * (W // P) + 1, pos.shape[-1], device="meta")
        pos = self.interpolate_pos_encoding(shape, H, W)
    if bool_masked_pos is None:
        x = patch_embed(pixel_values, proj.weight, proj.bias, self.cls_token, pos)
    else:  # mask tokens go in between the projection and the [CLS]/position step, as in HF
        patches = patch_embed(pixel_values, proj.weight, proj.bias)
        mask = bool_masked_pos.unsqueeze(-1).type_as(self.mask_token)
        patches = patches * (1.0 - mask) + self.mask_token.expand_as(patches) * mask
        x = torch.cat((self.cls_token.expand(B, -1, -1), patches), dim=1) + pos
    return self.dropout(x)


def _patch_embed_ok(embeddings) -> str | None:
    proj = getattr(getattr(embeddings, "patch_embeddings", None), "projection", None)
    if not isinstance(proj, nn.Conv2d):
        return "no Conv2d patch projection"
    if not (proj.kernel_size == proj.stride and proj.kernel_size[0] == proj.kernel_size[1]
            and proj.padding == (0, 0) and proj.dilation == (1, 1) and proj.groups == 1):
        return f"the projection is not a square kernel = stride convolution (kernel {proj.kernel_size}, stride {proj.stride})"
    return None


# ---- Mask2Former ---------------------------------------------------------------------------------
def _masked_cross_attention_forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                                    average_attn_weights=True, is_causal=False):
    """nn.MultiheadAttention.forward as Mask2Former's decoder calls it (sequence first, the per-head
    repeated boolean mask), on masked_attention; anything else runs nn.MultiheadAttention's own."""
    from .ops.attention import attention
    from .ops.masked_attention import masked_attention

    Q, B, E = query.shape if query.dim() == 3 else (0, 0, 0)
    H, HW = self.num_heads, key.shape[0]
    per_image = None
    if attn_mask is not None and attn_mask.dtype == torch.bool and tuple(attn_mask.shape) == (B * H, Q, HW):
        per_head = attn_mask.view(B, H, Q, HW)
        if torch.compiler.is_compiling() or torch.equal(per_head, per_head[:, :1].expand_as(per_head)):
            per_image = per_head[:, 0]
    ok = (query.dim() == 3 and key_padding_mask is None and not is_causal and _ours(query, key, value)
          and not (self.training and self.dropout > 0) and (attn_mask is None or per_image is not None))
    if not ok:
        return _original(self, query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                         attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
    wq, wk, wv = self.in_proj_weight.chunk(3)
    bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

    def heads(x, w, b):  # (N, B, E) -> (B, H, N, D), a view of the projection
        return F.linear(x, w, b).view(x.shape[0], B, H, E // H).permute(1, 2, 0, 3)

    q, k, v = heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv)
    out = attention(q, k, v) if per_image is None else masked_attention(q, k, v, per_image)
    return self.out_proj(out.permute(2, 0, 1, 3).reshape(Q, B, E)), None


def _mha_ok(mha) -> str | None:
    if not isinstance(mha, nn.MultiheadAttention):
        return f"not an nn.MultiheadAttention ({type(mha).__name__})"
    if mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        return "not the packed, sequence-first nn.MultiheadAttention without bias_k/bias_v/add_zero_attn Mask2Former builds"
    return None


# ---- losses and matchers -------------------------------------------------------------------------
def ctc_loss_function(logits, labels, logit_lengths, blank_token_id, reduction="mean", zero_infinity=False,
                      ignore_index=-100, **kwargs):
    """transformers' ``ForCTCLoss`` (same arguments and result) on :func:`taskkernels.ctc_loss_from_logits`:
    log_softmax and CTC in one op, the targets kept padded (no flattening, no host sync)."""
    from .ops.ctc_loss import ctc_loss_from_logits

    if not _ours(logits):
        from transformers.loss.loss_ctc import ForCTCLoss

        return ForCTCLoss(logits, labels, logit_lengths, blank_token_id, reduction, zero_infinity, ignore_index, **kwargs)
    labels = labels.to(logits.device)
    valid = (labels != ignore_index) & (labels != blank_token_id)
    # Valid labels first, in order (HF flattens them with masked_select); the rest lies past each length.
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    targets = torch.gather(labels, 1, order).clamp(min=0)
    return ctc_loss_from_logits(logits, targets, logit_lengths, valid.sum(-1), blank=blank_token_id, reduction=reduction,
                                zero_infinity=zero_infinity)


def detr_loss_function(logits, labels, device, pred_boxes, config, *args, **kwargs):
    """transformers' ``ForObjectDetectionLoss`` (same arguments and result) with the matcher on
    :func:`taskkernels.hungarian_match` (:func:`taskkernels.models.detr.detr_loss`)."""
    if not _ours(logits):
        from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

        return ForObjectDetectionLoss(logits, labels, device, pred_boxes, config, *args, **kwargs)
    from .models.detr import detr_loss

    return detr_loss(logits, labels, device, pred_boxes, config, *args, **kwargs)


class _Mask2FormerMatcher(nn.Module):
    """:class:`taskkernels.models.Mask2FormerHungarianMatcher` with the original matcher's costs,
    handing tensors on devices our solver does not run on to the original matcher."""

    def __init__(self, original: nn.Module):
        from .models.mask2former import Mask2FormerHungarianMatcher

        super().__init__()
        self.ours = Mask2FormerHungarianMatcher.from_hf(original)
        self.__dict__["original"] = original  # not a submodule: restore puts it back

    def forward(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels):
        matcher = self.ours if _ours(masks_queries_logits) else self.__dict__["original"]
        return matcher(masks_queries_logits, class_queries_logits, mask_labels, class_labels)


def _set_loss_function(state, model, fn):
    if "_loss_function" in model.__dict__:
        state.set(model, "_loss_function", model.__dict__["_loss_function"])
    else:
        state.pop(model, "_loss_function")
    model.loss_function = fn


# ---- the walk ------------------------------------------------------------------------------------
def _apply(model: nn.Module, ops: tuple, state: _State, report: OptimizeReport) -> None:
    if "attention" in ops:
        _swap_interface_attention(model, state, report)
    for name, m in list(model.named_modules()):
        if "attention" in ops and _is(m, "glpn", "GLPNEfficientSelfAttention"):
            why = _bind(state, m, _glpn_attention_forward)
            (report.skipped if why else report.swapped).append(("attention", name, why or "GLPNEfficientSelfAttention forward"))
        elif "depthwise_conv2d" in ops and _is(m, "glpn", "GLPNDepthWiseConv"):
            why = _depthwise_ok(m.dwconv) or _bind(state, m, _glpn_dwconv_forward)
            (report.skipped if why else report.swapped).append(("depthwise_conv2d", name, why or "GLPNDepthWiseConv forward"))
        elif "depthwise_conv2d" in ops and _is(m, "convnext", "ConvNextLayer"):
            why = _depthwise_ok(m.dwconv)
            if why is None and not (isinstance(m.layernorm, nn.LayerNorm) and getattr(m.layernorm, "data_format", "channels_last") == "channels_last"):
                why = "its LayerNorm is not a channels-last nn.LayerNorm"
            why = why or _bind(state, m, _convnext_layer_forward)
            (report.skipped if why else report.swapped).append(
                ("depthwise_conv2d", name, why or "ConvNextLayer forward (fused with its LayerNorm on CUDA)"))
        elif "patch_embed" in ops and _is(m, "vit", "ViTEmbeddings"):
            why = _patch_embed_ok(m) or _bind(state, m, _vit_embeddings_forward)
            (report.skipped if why else report.swapped).append(("patch_embed", name, why or "ViTEmbeddings forward"))
        elif _is(m, "mask2former", "Mask2FormerMaskedAttentionDecoderLayer"):
            if "masked_attention" in ops:
                why = _mha_ok(m.cross_attn) or _bind(state, m.cross_attn, _masked_cross_attention_forward)
                (report.skipped if why else report.swapped).append(
                    ("masked_attention", f"{name}.cross_attn", why or "nn.MultiheadAttention forward"))
            if "attention" in ops:
                report.skipped.append(("attention", f"{name}.self_attn", "Mask2FormerAttention: the decoder layer always "
                                       "asks it for its attention weights, which our kernel never forms"))
        elif "matcher" in ops and _is(m, "mask2former", "Mask2FormerLoss"):
            if not _is(m.matcher, "mask2former", "Mask2FormerHungarianMatcher"):
                report.skipped.append(("matcher", f"{name}.matcher", f"not HF's matcher ({type(m.matcher).__name__})"))
                continue
            original = m.matcher
            m.matcher = _Mask2FormerMatcher(original)
            state.set(m, "matcher", original)
            report.swapped.append(("matcher", f"{name}.matcher", "Mask2FormerHungarianMatcher: one batched solve"))
        elif "matcher" in ops and _is(m, "detr", "DetrForObjectDetection"):
            _set_loss_function(state, m, detr_loss_function)
            report.swapped.append(("matcher", _where(name, "loss_function"), "DETR's loss with the matcher on hungarian_match"))
        elif "ctc_loss" in ops and _is(m, "wav2vec2", "Wav2Vec2ForCTC"):
            _set_loss_function(state, m, ctc_loss_function)
            report.swapped.append(("ctc_loss", _where(name, "loss_function"), "ForCTCLoss on ctc_loss_from_logits"))


def _where(name: str, attr: str) -> str:
    return f"{name}.{attr}" if name else attr


def optimize(model: nn.Module, *, ops=None) -> OptimizeReport:
    """Moves the hot paths of a Hugging Face model onto taskkernels' ops, in place.

    Args:
        model: a transformers ``PreTrainedModel`` (or any module holding one), on any device and
            dtype: calls on CPU or CUDA tensors run our ops, others run the original code.
        ops: the ops to use, a subset of :data:`OPS` (default all): "attention", "patch_embed",
            "depthwise_conv2d", "masked_attention", "matcher", "ctc_loss".

    Returns:
        An :class:`OptimizeReport` (print it): every swap made, and every candidate left alone with
        the reason. A model with nothing we cover comes back unchanged with a report that says
        "nothing swapped: <class>", and a warning. Calling it again first undoes the previous call.

    :func:`restore` undoes it. Call it before ``torch.compile`` and before DDP/FSDP wrapping.
    """
    if ops is None:
        ops = OPS
    elif isinstance(ops, str):
        ops = (ops,)
    ops = tuple(ops)
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"taskkernels.optimize: unknown ops {unknown}; choose from {list(OPS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"taskkernels.optimize: model must be an nn.Module, got {type(model).__name__}")
    if _STATE in model.__dict__:
        restore(model)
    report = OptimizeReport(model=type(model).__name__, family=_family(model), ops=ops)
    state = _State(report)
    try:
        _apply(model, ops, state, report)
    except Exception:
        state.run_undo()
        raise
    if state.undo:
        model.__dict__[_STATE] = state
    if not report.swapped:
        warnings.warn(str(report), stacklevel=2)
    return report


def restore(model: nn.Module) -> nn.Module:
    """Undoes :func:`optimize`: the model runs its original code again (parameters untouched).
    A model that was not optimized is returned as it is."""
    state = model.__dict__.pop(_STATE, None)
    if state is not None:
        state.run_undo()
    return model

