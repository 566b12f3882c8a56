"""Exact linear sum assignment: a scipy drop-in on numpy arrays and a batched torch op."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import _C

__all__ = ["linear_sum_assignment", "batched_linear_sum_assignment", "raise_on_unsolved"]


def _as_float64_matrix(cost_matrix) -> np.ndarray:
    """scipy's conversion of the cost matrix, with its exceptions: an array (or an object that
    exposes one: ``__array__``, the array interface, the buffer protocol) is cast to float64 only
    where numpy's 'safe' rule allows it (TypeError otherwise: complex, long double, strings,
    objects, dates); anything else (nested lists, scalars) is converted element by element as
    ``np.asarray(x, dtype=float64)`` converts it (ValueError for a non-numeric string, TypeError
    for a complex number, NaN for None)."""
    if isinstance(cost_matrix, torch.Tensor):  # copied to the CPU; half types have no numpy dtype
        t = cost_matrix.detach().cpu()
        cost_matrix = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()
    arrayish = isinstance(cost_matrix, np.ndarray) or hasattr(cost_matrix, "__array__") or \
        hasattr(cost_matrix, "__array_interface__") or isinstance(cost_matrix, memoryview)
    if not arrayish:
        try:
            memoryview(cost_matrix)
            arrayish = not isinstance(cost_matrix, (bytes, bytearray))
        except TypeError:
            pass
    if not arrayish:
        return np.asarray(cost_matrix, dtype=np.float64)
    array = np.asarray(cost_matrix)
    if not np.can_cast(array.dtype, np.float64, casting="safe"):
        raise TypeError(f"Cannot cast array data from {array.dtype!r} to dtype('float64') according to the rule 'safe'")
    return np.ascontiguousarray(array, dtype=np.float64)


def linear_sum_assignment(cost_matrix, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Drop-in for ``scipy.optimize.linear_sum_assignment``: the same results, and the same
    exception types for every input scipy rejects.

    Args:
        cost_matrix: (n, m) array-like of real numbers, converted as scipy converts it (numpy
            arrays of any real or bool dtype, nested lists, buffers, ``np.matrix``, and torch
            tensors, which are copied to the CPU). Rectangular either way. ``inf`` (``-inf``
            when maximizing) forbids a pair.
        maximize: find the maximum-weight assignment instead.

    Returns:
        ``(row_ind, col_ind)``, int64 arrays of length ``min(n, m)``, ``row_ind`` ascending: the
        optimal assignment pairs row ``row_ind[k]`` with column ``col_ind[k]``.

    Raises:
        TypeError: an array whose dtype does not cast safely to float64 (complex, long double,
            strings, objects, dates), or a complex element in a list.
        ValueError: not 2-D, a non-numeric string in a list, invalid entries (NaN, or the
            wrong-signed inf), or no complete assignment avoids the forbidden pairs ("cost
            matrix is infeasible").
    """
    return _C.linear_sum_assignment(_as_float64_matrix(cost_matrix), bool(maximize))


def batched_linear_sum_assignment(
    cost: Tensor, num_targets: Tensor | None = None, maximize: bool = False, *, check: bool = False
) -> Tensor:
    """Solves B assignment problems in one call; the result is on the cost's device.

    On CUDA one kernel launch solves the whole batch (a thread block per problem) and nothing is
    copied to the host: ``num_targets`` is read on the device, and a problem that cannot be solved
    is reported in its row of the result instead of raising (every entry set to -2: NaN or the
    wrong-signed inf in its cost, -3: infeasible, -4: ``num_targets[b]`` out of range). Pass
    ``check=True`` to raise the CPU's errors there instead (one host synchronization).

    Args:
        cost: (B, N, M) floating tensor, any strides. Problem b uses the first
            ``num_targets[b]`` columns.
        num_targets: (B,) int64/int32 on the cost's device with values in [0, M], or None (all M
            columns).
        maximize: maximum-weight assignment instead.
        check: on CUDA, raise for problems that could not be solved (the CPU always raises).

    Returns:
        (B, N) int64: the column assigned to each row, or -1 for a row left unassigned (when a
        problem has fewer columns than rows). Per image, ``rows = (a >= 0).nonzero()`` and
        ``cols = a[rows]`` give scipy's ``(row_ind, col_ind)``.

    Raises a RuntimeError naming the batch entry on NaN or an infeasible problem.
    """
    assignment = torch.ops.taskkernels.batched_linear_sum_assignment(cost, num_targets, maximize)
    if check and assignment.is_cuda:
        raise_on_unsolved(assignment, maximize)
    return assignment


_UNSOLVED = {
    -2: lambda b, maximize: f"cost[{b}] contains invalid entries (NaN, or {'+inf when maximizing' if maximize else '-inf'})",
    -3: lambda b, maximize: f"cost[{b}] is infeasible: no complete assignment avoids its forbidden (inf) entries",
    -4: lambda b, maximize: f"num_targets[{b}] must be in [0, M]",
}


def raise_on_unsolved(assignment: Tensor, maximize: bool = False) -> None:
    """Raises the CPU solver's RuntimeError for the first problem the CUDA solver reported as
    unsolved (entries below -1); synchronizes with the device when ``assignment`` is on one."""
    if assignment.numel() == 0:
        return
    worst = assignment.min(dim=1).values.cpu()
    failed = (worst < -1).nonzero().flatten()
    if len(failed):
        b = int(failed[0])
        raise RuntimeError(f"taskkernels.batched_linear_sum_assignment: {_UNSOLVED[int(worst[b])](b, maximize)}")


@torch.library.register_fake("taskkernels::batched_linear_sum_assignment")
def _batched_lsa_fake(cost, num_targets=None, maximize=False):
    torch._check(cost.dim() == 3, lambda: f"taskkernels.batched_linear_sum_assignment: cost must be 3-D (B, N, M), got shape {tuple(cost.shape)}")
    if num_targets is not None:
        torch._check(tuple(num_targets.shape) == (cost.shape[0],),
                     lambda: f"taskkernels.batched_linear_sum_assignment: num_targets must have shape (B,) = ({cost.shape[0]},), got {tuple(num_targets.shape)}")
    return cost.new_empty(cost.shape[:2], dtype=torch.int64)


if not _C.build_info()["cuda"]:
    # A build without CUDA kernels, on a CUDA torch: solve on the CPU and return the result on the
    # cost's device (one copy and synchronization, as HF's matcher does), so DETR's matching still
    # runs. Builds with CUDA kernels register the device solver from C++.
    @torch.library.impl("taskkernels::batched_linear_sum_assignment", "CUDA")
    def _batched_lsa_cuda_via_host(cost, num_targets=None, maximize=False):
        cpu = torch.ops.taskkernels.batched_linear_sum_assignment(
            cost.cpu(), None if num_targets is None else num_targets.cpu(), maximize)
        return cpu.to(cost.device)
