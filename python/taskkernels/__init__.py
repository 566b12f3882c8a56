"""taskkernels: hand-written CUDA kernels, with C++ CPU paths, for the hot paths of the models in
Hugging Face's "How Transformers solve tasks".

Every op is a PyTorch custom op in the ``taskkernels`` namespace (``torch.ops.taskkernels.*``), so
autograd, ``torch.compile`` and CPU/CUDA dispatch work as for built-in ops.
"""

import torch  # noqa: F401  (loads libtorch before the extension registers its ops)

from . import _C
from ._cuda import cuda_unavailable_reason
from .ops.attention import attention, attention_with_lse
from .ops.ctc_loss import ctc_loss, ctc_loss_from_logits
from .ops.depthwise_conv2d import depthwise_conv2d, depthwise_conv2d_layernorm
from .ops.hungarian_match import hungarian_cost, hungarian_match
from .ops.linear_sum_assignment import batched_linear_sum_assignment, linear_sum_assignment, raise_on_unsolved
from .ops.masked_attention import masked_attention, pack_attention_mask
from .ops.patch_embed import patch_embed
from .ops.sdpa import scaled_dot_product_attention
from . import _autocast  # noqa: F401,E402  (autocast rules for the ops above)
from .optimize import optimize, restore

__version__ = "0.1.0"


def build_info() -> dict:
    """What this build contains: the torch it was built against, CUDA version, GPU architectures,
    and whether CUDA kernels are compiled in."""
    return dict(_C.build_info())


from . import _cuda as _cuda_setup  # noqa: E402

_cuda_setup.setup()

from . import distributed  # noqa: E402

distributed.register_when_dtensor_loads()  # DTensor sharding of every op, once DTensor is imported

__all__ = [
    "attention",
    "attention_with_lse",
    "batched_linear_sum_assignment",
    "build_info",
    "ctc_loss",
    "ctc_loss_from_logits",
    "cuda_unavailable_reason",
    "depthwise_conv2d",
    "depthwise_conv2d_layernorm",
    "hungarian_cost",
    "hungarian_match",
    "linear_sum_assignment",
    "raise_on_unsolved",
    "masked_attention",
    "optimize",
    "pack_attention_mask",
    "patch_embed",
    "scaled_dot_product_attention",
    "restore",
    "__version__",
]
