"""taskkernels on torch.distributed: DTensor sharding strategies for every op (registered when
DTensor is loaded: at ``import taskkernels`` if ``torch.distributed.tensor`` already is, else as
soon as it is first imported, so that programs that never use DTensor do not pay its ~0.4 s of
import time) and tensor-parallel plans for the transformer model classes.

Sharding: each op (and its backward op) declares the placements it can run on as they come:

==============================  ==========================================================
op                              runs sharded over
==============================  ==========================================================
attention (+ backward)          batch (q, k, v, key padding, a bias with a batch dimension)
                                or heads (q, k, v, a bias with a heads dimension; k/v heads
                                of grouped-query attention when both head counts divide
                                the mesh); replicated with dropout (the mask is keyed by
                                the global element index)
masked_attention (+ backward)   batch, or heads (the per-image mask replicated)
pack_attention_mask             batch or queries
patch_embed (+ backward)        batch, or the embedding dimension (weight sharded by rows,
                                bias, [CLS] and position embeddings by their last dim)
depthwise_conv2d (+ backwards)  batch or channels
depthwise_conv2d_layernorm      batch (the LayerNorm reduces over channels)
ctc_nll (ctc_loss)              batch (padded (B, S) targets; concatenated targets replicate)
batched_linear_sum_assignment   batch
==============================  ==========================================================

Any other placement is redistributed by DTensor to one of these (ultimately to replicated), so a
result is never computed on a layout the kernel cannot serve. Weight gradients of batch-sharded
ops come out as partial sums (``Partial``), reduced where DTensor needs them.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

import torch
from torch import nn

__all__ = ["gpt2_linear_to_conv1d", "parallelize_transformer", "register_sharding_strategies"]

_registered = False
_DTENSOR = "torch.distributed.tensor"


class _LoaderThen(importlib.abc.Loader):
    """A module's own loader, then `then()` once the module has run."""

    def __init__(self, loader, then):
        self._loader, self._then = loader, then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._then()

    def __getattr__(self, name):  # get_code, is_package, resource readers, ...: the loader's own
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then()` right after module `name` is first imported (found by the other finders)."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the finders below find the real module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThen(spec.loader, self.then)
        return spec


def _register_quietly():
    try:
        register_sharding_strategies()
    except Exception as e:  # never break the user's import of torch.distributed.tensor
        warnings.warn(f"taskkernels: DTensor sharding strategies not registered: {e!r}", RuntimeWarning, stacklevel=2)


def register_when_dtensor_loads() -> None:
    """Registers the sharding strategies now if ``torch.distributed.tensor`` is loaded, else right
    after its first import (called by ``import taskkernels``)."""
    if _registered or not torch.distributed.is_available():
        return
    if _DTENSOR in sys.modules:
        register_sharding_strategies()
    elif not any(isinstance(f, _AfterImport) and f.name == _DTENSOR for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_DTENSOR, _register_quietly))


def _sharding_api():
    from torch.distributed.tensor import Partial, Replicate, Shard
    from torch.distributed.tensor.experimental import register_sharding

    return register_sharding, Replicate, Shard, Partial


def register_sharding_strategies() -> bool:
    """Registers the DTensor sharding strategies of every taskkernels op (idempotent; done when
    DTensor loads, see :func:`register_when_dtensor_loads`). Returns whether they are registered."""
    global _registered
    if _registered:
        return True
    if not torch.distributed.is_available():
        return False
    register_sharding, R, S, P = _sharding_api()
    ops = torch.ops.taskkernels

    def opt(spec, placement):
        """The placement of an optional tensor argument (None when it is absent)."""
        return None if spec is None else placement

    def dim_or_replicate(spec, dim_from_end):
        """Shard(d) for the dimension ``dim_from_end`` counted from the last one (-1 = last) if the
        tensor has it with a size above one, else Replicate (a broadcast dimension)."""
        if spec is None:
            return None
        d = spec.ndim + dim_from_end
        return S(d) if d >= 0 and spec.shape[d] > 1 else R()

    def mesh_size(spec):
        return spec.mesh.size()

    # ---- attention ------------------------------------------------------------------------------
    def heads_shardable(q, k):
        # Grouped-query attention maps query head h to key/value head h // (H // Hk): each rank's
        # query heads must read its own key/value heads, so both counts must split evenly.
        H, Hk, n = q.shape[1], k.shape[1], mesh_size(q)
        return H == Hk or (H % n == 0 and Hk % n == 0)

    @register_sharding(ops.attention.default)
    def attention_strategy(q, k, v, causal=False, key_padding_mask=None, attn_bias=None, scale=None,
                           dropout_p=0.0, seed=None):
        def inputs(qkv, kpm, bias):
            return [qkv, qkv, qkv, None, opt(key_padding_mask, kpm), bias, None, None, opt(seed, R())]

        strategies = [([R(), R()], inputs(R(), R(), opt(attn_bias, R())))]
        if dropout_p == 0.0:
            strategies.append(([S(0), S(0)], inputs(S(0), S(0), dim_or_replicate(attn_bias, -4))))
            if heads_shardable(q, k):
                strategies.append(([S(1), S(1)], inputs(S(1), R(), dim_or_replicate(attn_bias, -3))))
        return strategies

    @register_sharding(ops.attention_backward.default)
    def attention_backward_strategy(grad_out, q, k, v, out, lse, causal, key_padding_mask, attn_bias, scale,
                                    need_bias_grad, dropout_p=0.0, seed=None):
        full_dbias = need_bias_grad and attn_bias is not None

        def placements(t, kpm, bias, dbias):
            return ([t, t, t, dbias if full_dbias else R()],
                    [t] * 6 + [None, opt(key_padding_mask, kpm), bias, None, None, None, opt(seed, R())])

        strategies = [placements(R(), R(), opt(attn_bias, R()), R())]
        if dropout_p == 0.0:
            strategies.append(placements(S(0), S(0), dim_or_replicate(attn_bias, -4), S(0)))
            if heads_shardable(q, k):
                strategies.append(placements(S(1), R(), dim_or_replicate(attn_bias, -3), S(1)))
        return strategies

    @register_sharding(ops.masked_attention.default)
    def masked_attention_strategy(q, k, v, mask_bits, scale=None):
        return [([t, t], [t, t, t, bits, None]) for t, bits in ((R(), R()), (S(0), S(0)), (S(1), R()))]

    @register_sharding(ops.masked_attention_backward.default)
    def masked_attention_backward_strategy(grad_out, q, k, v, out, lse, mask_bits, scale):
        return [([t, t, t], [t] * 6 + [bits, None]) for t, bits in ((R(), R()), (S(0), S(0)), (S(1), R()))]

    @register_sharding(ops.pack_attention_mask.default)
    def pack_strategy(mask=None, mask_logits=None):
        return [([t], [opt(mask, t), opt(mask_logits, t)]) for t in (R(), S(0), S(1))]

    # ---- patch_embed ----------------------------------------------------------------------------
    @register_sharding(ops.patch_embed.default)
    def patch_embed_strategy(pixel_values, weight, bias=None, cls_token=None, pos_embed=None, allow_tf32=False):
        def params(t, by_last):
            def last(spec):  # the embedding dimension: the last of cls_token / pos_embed
                return None if spec is None else S(spec.ndim - 1) if by_last else R()

            return [t, opt(bias, t), last(cls_token), last(pos_embed), None]

        return [
            ([R()], [R()] + params(R(), False)),
            ([S(0)], [S(0)] + params(R(), False)),  # over batch
            ([S(2)], [R()] + params(S(0), True)),  # over the embedding dimension
        ]

    @register_sharding(ops.patch_embed_backward.default)
    def patch_embed_backward_strategy(grad_out, pixel_values, weight, has_cls, need_pixel_values, need_weight,
                                      need_bias, need_cls_token, need_pos_embed, allow_tf32=False):
        needs = (need_pixel_values, need_weight, need_bias, need_cls_token and has_cls, need_pos_embed)

        def outs(*placements):  # an output not asked for is an empty tensor: replicated
            return [p if need else R() for p, need in zip(placements, needs)]

        flags = [None] * 7
        return [
            (outs(R(), R(), R(), R(), R()), [R(), R(), R()] + flags),
            (outs(S(0), P(), P(), P(), P()), [S(0), S(0), R()] + flags),  # over batch
            (outs(P(), S(0), S(0), S(0), S(1)), [S(2), R(), S(0)] + flags),  # over the embedding dim
        ]

    # ---- depthwise convolution -------------------------------------------------------------------
    @register_sharding(ops.depthwise_conv2d.default)
    def dwconv_strategy(x, weight, bias, padding):
        return [([R()], [R(), R(), opt(bias, R()), None]),
                ([S(0)], [S(0), R(), opt(bias, R()), None]),
                ([S(1)], [S(1), S(0), opt(bias, S(0)), None])]

    @register_sharding(ops.depthwise_conv2d_backward_input.default)
    def dwconv_backward_input_strategy(grad_out, weight, padding, channels_last):
        return [([R()], [R(), R(), None, None]), ([S(0)], [S(0), R(), None, None]), ([S(1)], [S(1), S(0), None, None])]

    @register_sharding(ops.depthwise_conv2d_backward_weight.default)
    def dwconv_backward_weight_strategy(grad_out, x, kernel_size, padding, need_bias):
        return [([R(), R()], [R(), R(), None, None, None]),
                ([P(), P() if need_bias else R()], [S(0), S(0), None, None, None]),
                ([S(0), S(0) if need_bias else R()], [S(1), S(1), None, None, None])]

    @register_sharding(ops.depthwise_conv2d_layernorm.default)
    def fused_strategy(x, weight, bias, ln_weight, ln_bias, eps, padding):
        def params(t):
            return [t, opt(bias, t), opt(ln_weight, t), opt(ln_bias, t), None, None]

        return [([R()] * 4, [R()] + params(R())), ([S(0)] * 4, [S(0)] + params(R()))]

    @register_sharding(ops.depthwise_conv2d_layernorm_backward.default)
    def fused_backward_strategy(grad_out, x, weight, ln_weight, conv, mean, rstd, padding, need_x, need_weight,
                                need_bias, need_ln_weight, need_ln_bias):
        needs = (need_weight, need_bias, need_ln_weight, need_ln_bias)
        flags = [None] * 6
        return [
            ([R()] * 5, [R(), R(), R(), opt(ln_weight, R()), R(), R(), R()] + flags),
            ([S(0) if need_x else R()] + [P() if need else R() for need in needs],
             [S(0), S(0), R(), opt(ln_weight, R()), S(0), S(0), S(0)] + flags),
        ]

    # ---- CTC and assignment ----------------------------------------------------------------------
    @register_sharding(ops.ctc_nll.default)
    def ctc_strategy(input, targets, input_lengths, target_lengths, blank, from_logits, batch_first, zero_infinity,
                     need_grad, max_target_length):
        flags = [None] * 6
        strategies = [([R(), R()], [R(), R(), R(), R()] + flags)]
        if targets.ndim == 2:  # padded (B, S): each batch entry's targets in its row
            b = S(0) if batch_first else S(1)
            strategies.append(([S(0), b if need_grad else R()], [b, S(0), S(0), S(0)] + flags))
        return strategies

    @register_sharding(ops.batched_linear_sum_assignment.default)
    def lsa_strategy(cost, num_targets=None, maximize=False):
        return [([t], [t, opt(num_targets, t), None]) for t in (R(), S(0))]

    _registered = True
    return True


# ---- tensor parallelism for the transformer model classes ---------------------------------------
def parallelize_transformer(model: nn.Module, mesh) -> nn.Module:
    """Tensor parallelism (Megatron-style) for ``taskkernels.models`` BERT, GPT-2, BART and ViT,
    in place: in every attention block the query/key/value projections are split by columns
    (each rank computes its share of the heads, whose attention runs locally on our kernel) and
    the output projection by rows (one all-reduce); the MLPs likewise. Embeddings, LayerNorms and
    heads stay replicated. ``mesh``: a 1-D DeviceMesh whose size divides the number of heads.

    Returns the model. Its parameters become DTensors; inputs are ordinary tensors, the same on
    every rank, and so are the outputs. GPT-2's Conv1D layers become nn.Linear layers ((out, in)
    weights) and the fused q/k/v projection's rows are regrouped by rank: load a checkpoint
    before parallelizing, and map parameters back with :func:`gpt2_linear_to_conv1d`.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from .models.bart import BartAttention, BartDecoderLayer, BartEncoderLayer
    from .models.bert import BertLayer
    from .models.gpt2 import GPT2Block
    from .models.vit import ViTLayer

    n = mesh.size()
    colwise, rowwise = ColwiseParallel(), RowwiseParallel()

    def split_heads(attn, heads_attr):
        heads = getattr(attn, heads_attr)
        if heads % n:
            raise ValueError(f"taskkernels.distributed.parallelize_transformer: {type(attn).__name__} has {heads} "
                             f"heads, which the mesh's {n} ranks cannot split evenly")
        setattr(attn, heads_attr, heads // n)

    found = False
    for module in list(model.modules()):
        if isinstance(module, BertLayer):
            split_heads(module.attention.self, "heads")
            parallelize_module(module, mesh, {
                "attention.self.query": colwise, "attention.self.key": colwise, "attention.self.value": colwise,
                "attention.output.dense": rowwise,
                "intermediate.dense": colwise, "output.dense": rowwise,
            })
            found = True
        elif isinstance(module, ViTLayer):
            split_heads(module.attention, "heads")
            parallelize_module(module, mesh, {
                "attention.q_proj": colwise, "attention.k_proj": colwise, "attention.v_proj": colwise,
                "attention.o_proj": rowwise, "mlp.fc1": colwise, "mlp.fc2": rowwise,
            })
            found = True
        elif isinstance(module, BartAttention):
            split_heads(module, "heads")
            parallelize_module(module, mesh, {"q_proj": colwise, "k_proj": colwise, "v_proj": colwise,
                                              "out_proj": rowwise})
            found = True
        elif isinstance(module, GPT2Block):
            split_heads(module.attn, "heads")
            _parallelize_gpt2(module.attn, module.mlp, mesh)
            found = True
        elif isinstance(module, (BartEncoderLayer, BartDecoderLayer)):
            parallelize_module(module, mesh, {"fc1": colwise, "fc2": rowwise})
    if not found:
        raise ValueError(f"taskkernels.distributed.parallelize_transformer: no attention block of "
                         f"{type(model).__name__} known (BERT, GPT-2, BART and ViT model classes of taskkernels.models)")
    return model


def _conv1d_as_linear(conv: nn.Module, groups: int = 1, ranks: int = 1) -> nn.Linear:
    """GPT-2's Conv1D (weight stored (in, out)) as an nn.Linear ((out, in)), which the tensor-
    parallel styles shard. With ``groups`` > 1 the output features are ``groups`` blocks (q, k, v)
    whose rows are regrouped by rank ([q_0 k_0 v_0 | q_1 k_1 v_1 | ...]), so that a column split
    gives each rank its own heads of every block."""
    n_in, n_out = conv.weight.shape
    weight, bias = conv.weight.detach().t(), conv.bias.detach()
    if groups > 1:
        weight = weight.reshape(groups, ranks, n_out // (groups * ranks), n_in).transpose(0, 1).reshape(n_out, n_in)
        bias = bias.reshape(groups, ranks, -1).transpose(0, 1).reshape(n_out)
    linear = nn.Linear(n_in, n_out, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


def gpt2_linear_to_conv1d(name: str, tensor: torch.Tensor, ranks: int) -> torch.Tensor:
    """A parameter (or gradient) of a tensor-parallel GPT-2, gathered (``full_tensor()``), in the
    layout of the original Conv1D parameter ``name`` (for checkpoints and comparisons)."""
    if name.endswith("c_attn.weight") or name.endswith("c_attn.bias"):
        n_out = tensor.shape[0]
        rest = tensor.shape[1:]
        tensor = tensor.reshape(ranks, 3, n_out // (3 * ranks), *rest).transpose(0, 1).reshape(n_out, *rest)
    return tensor.t() if name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc")) else tensor


def _parallelize_gpt2(attn: nn.Module, mlp: nn.Module, mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    n = mesh.size()
    attn.c_attn = _conv1d_as_linear(attn.c_attn, groups=3, ranks=n)
    attn.c_proj = _conv1d_as_linear(attn.c_proj)
    mlp.c_fc, mlp.c_proj = _conv1d_as_linear(mlp.c_fc), _conv1d_as_linear(mlp.c_proj)
    parallelize_module(attn, mesh, {"c_attn": ColwiseParallel(), "c_proj": RowwiseParallel()})
    parallelize_module(mlp, mesh, {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()})
