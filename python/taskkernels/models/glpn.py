"""GLPN on taskkernels: the SegFormer encoder's efficient self-attention (with sequence
reduction) on :func:`taskkernels.attention`, its Mix-FFN depthwise 3x3 on
:func:`taskkernels.depthwise_conv2d`. Patch embeddings, decoder and head stay HF's (no op of
ours in them)."""

from __future__ import annotations


from torch import Tensor, nn

from ..ops.attention import attention
from ..ops.depthwise_conv2d import depthwise_conv2d
from ._heads import ConvertsHF

__all__ = ["GLPNDepthWiseConv", "GLPNEfficientSelfAttention", "GLPNForDepthEstimation"]


class GLPNEfficientSelfAttention(nn.Module):
    """HF's ``GLPNEfficientSelfAttention`` (same keys: query, key, value, and sr + layer_norm for
    sequence reduction ratios above 1) on taskkernels.attention. Attention weights are never
    formed: ``output_attentions=True`` is refused."""

    def __init__(self, hidden_size: int, num_attention_heads: int, sequence_reduction_ratio: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"GLPNEfficientSelfAttention: hidden size {hidden_size} is not a multiple of the "
                             f"number of heads {num_attention_heads}")
        self.heads, self.sr_ratio, self.dropout_p = num_attention_heads, sequence_reduction_ratio, dropout
        self.query, self.key, self.value = (nn.Linear(hidden_size, hidden_size) for _ in range(3))
        if sequence_reduction_ratio > 1:
            self.sr = nn.Conv2d(hidden_size, hidden_size, kernel_size=sequence_reduction_ratio, stride=sequence_reduction_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size)

    @classmethod
    def from_hf(cls, hf: nn.Module) -> "GLPNEfficientSelfAttention":
        p = hf.query.weight
        module = cls(hf.hidden_size, hf.num_attention_heads, hf.sr_ratio, hf.dropout.p).to(device=p.device, dtype=p.dtype)
        module.load_state_dict(hf.state_dict())
        return module

    def forward(self, hidden_states: Tensor, height: int, width: int, output_attentions: bool = False):
        if output_attentions:
            raise NotImplementedError("GLPNEfficientSelfAttention: attention weights are never formed (output_attentions)")
        B, N, E = hidden_states.shape
        kv = hidden_states
        if self.sr_ratio > 1:
            kv = self.sr(hidden_states.transpose(1, 2).reshape(B, E, height, width)).flatten(2).transpose(1, 2)
            kv = self.layer_norm(kv)

        def heads(x: Tensor) -> Tensor:  # (B, n, E) -> (B, H, n, D) view
            return x.view(x.shape[0], x.shape[1], self.heads, E // self.heads).transpose(1, 2)

        out = attention(heads(self.query(hidden_states)), heads(self.key(kv)), heads(self.value(kv)),
                        dropout_p=self.dropout_p if self.training else 0.0)
        return (out.transpose(1, 2).reshape(B, N, E),)


class GLPNDepthWiseConv(nn.Module):
    """HF's ``GLPNDepthWiseConv`` (key ``dwconv``) on taskkernels.depthwise_conv2d. The (B, N, C)
    tokens are read as a channels_last image and come back as (B, N, C) without a copy."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, hidden_states: Tensor, height: int, width: int) -> Tensor:
        B, N, C = hidden_states.shape
        x = hidden_states.transpose(1, 2).view(B, C, height, width)  # channels_last strides
        return depthwise_conv2d(x, self.dwconv.weight, self.dwconv.bias, padding=1).flatten(2).transpose(1, 2)


class GLPNForDepthEstimation(ConvertsHF):
    """HF's ``GLPNForDepthEstimation`` on taskkernels: ``(config)``, ``from_hf`` (a copy) and
    ``from_pretrained`` return an instance of HF's class (same keys, call, outputs and loss) whose
    encoder attention and Mix-FFN depthwise convolutions are ours."""

    hf_class_name = "GLPNForDepthEstimation"

    @staticmethod
    def _convert(model: nn.Module) -> nn.Module:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                kind = type(child).__name__
                if kind == "GLPNEfficientSelfAttention":
                    setattr(module, name, GLPNEfficientSelfAttention.from_hf(child))
                elif kind == "GLPNDepthWiseConv":
                    replacement = GLPNDepthWiseConv(child.dwconv.in_channels).to(child.dwconv.weight)
                    replacement.load_state_dict(child.state_dict())
                    setattr(module, name, replacement)
        return model
