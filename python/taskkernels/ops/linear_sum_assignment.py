"""Exact linear sum assignment: a scipy drop-in on numpy arrays and a batched torch op."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import _C

__all__ = ["linear_sum_assignment", "batched_linear_sum_assignment"]


def linear_sum_assignment(cost_matrix, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Drop-in for ``scipy.optimize.linear_sum_assignment``.

    Args:
        cost_matrix: (n, m) array-like (numpy array, nested lists, or a torch tensor, which is
            copied to the CPU) of real numbers, rectangular either way. ``inf`` (``-inf`` when
            maximizing) forbids a pair.
        maximize: find the maximum-weight assignment instead.

    Returns:
        ``(row_ind, col_ind)``, int64 arrays of length ``min(n, m)``, ``row_ind`` ascending: the
        optimal assignment pairs row ``row_ind[k]`` with column ``col_ind[k]``.

    Raises:
        ValueError: not 2-D, non-numeric or invalid entries (NaN, or the wrong-signed inf), or no
            complete assignment avoids the forbidden pairs ("cost matrix is infeasible").
    """
    if isinstance(cost_matrix, torch.Tensor):
        cost_matrix = cost_matrix.detach().to("cpu", torch.float64).numpy()
    cost = np.asarray(cost_matrix)
    if cost.dtype.kind not in "biuf":
        raise ValueError(f"expected a matrix containing numerical entries, got dtype {cost.dtype}")
    return _C.linear_sum_assignment(cost, bool(maximize))


def batched_linear_sum_assignment(
    cost: Tensor, num_targets: Tensor | None = None, maximize: bool = False
) -> Tensor:
    """Solves B assignment problems in one call; the result is on the cost's device.

    On CUDA tensors the solve runs on the CPU for now (one copy and synchronization, as in HF's
    matcher); a CUDA solver that keeps everything on the device is planned.

    Args:
        cost: (B, N, M) floating tensor. Problem b uses the first ``num_targets[b]`` columns.
        num_targets: (B,) int64/int32 with values in [0, M], or None (all M columns).
        maximize: maximum-weight assignment instead.

    Returns:
        (B, N) int64: the column assigned to each row, or -1 for a row left unassigned (when a
        problem has fewer columns than rows). Per image, ``rows = (a >= 0).nonzero()`` and
        ``cols = a[rows]`` give scipy's ``(row_ind, col_ind)``.

    Raises a RuntimeError naming the batch entry on NaN or an infeasible problem.
    """
    return torch.ops.taskkernels.batched_linear_sum_assignment(cost, num_targets, maximize)


@torch.library.register_fake("taskkernels::batched_linear_sum_assignment")
def _batched_lsa_fake(cost, num_targets=None, maximize=False):
    torch._check(cost.dim() == 3, lambda: f"taskkernels.batched_linear_sum_assignment: cost must be 3-D (B, N, M), got shape {tuple(cost.shape)}")
    if num_targets is not None:
        torch._check(tuple(num_targets.shape) == (cost.shape[0],),
                     lambda: f"taskkernels.batched_linear_sum_assignment: num_targets must have shape (B,) = ({cost.shape[0]},), got {tuple(num_targets.shape)}")
    return cost.new_empty(cost.shape[:2], dtype=torch.int64)


@torch.library.impl("taskkernels::batched_linear_sum_assignment", "CUDA")
def _batched_lsa_cuda_via_host(cost, num_targets=None, maximize=False):
    """Until the CUDA solver lands: solve on the CPU and return the result on the cost's device
    (one device-to-host copy and synchronization, as HF's matcher does). Same results."""
    cpu = torch.ops.taskkernels.batched_linear_sum_assignment(
        cost.cpu(), None if num_targets is None else num_targets.cpu(), maximize)
    return cpu.to(cost.device)
