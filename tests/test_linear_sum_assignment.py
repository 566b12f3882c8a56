"""taskkernels.linear_sum_assignment (scipy drop-in) and batched_linear_sum_assignment against
scipy.optimize.linear_sum_assignment."""

import numpy as np
import pytest
import torch

import taskkernels
from conftest import DEVICES, requires_cuda
from taskkernels import reference

scipy_opt = pytest.importorskip("scipy.optimize", reason="scipy is the reference")
hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


def assert_optimal(cost, maximize=False):
    rows, cols = taskkernels.linear_sum_assignment(cost, maximize=maximize)
    ref_rows, ref_cols = scipy_opt.linear_sum_assignment(cost, maximize=maximize)
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert len(rows) == len(ref_rows) == min(cost.shape)
    assert np.all(np.diff(rows) > 0), "row_ind must be strictly ascending"
    assert len(set(cols.tolist())) == len(cols), "a column is used twice"
    total, ref_total = cost[rows, cols].sum(), cost[ref_rows, ref_cols].sum()
    assert abs(total - ref_total) <= 1e-9 * max(1.0, abs(ref_total)), (total, ref_total)
    return rows, cols


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, 9), (9, 3), (100, 1), (100, 50), (50, 100), (300, 300)], ids=str)
@pytest.mark.parametrize("maximize", [False, True])
def test_random_matches_scipy_and_indices_when_unique(shape, maximize):
    cost = np.random.default_rng().normal(size=shape)  # continuous: the optimum is unique
    rows, cols = assert_optimal(cost, maximize)
    ref_rows, ref_cols = scipy_opt.linear_sum_assignment(cost, maximize=maximize)
    assert np.array_equal(rows, ref_rows) and np.array_equal(cols, ref_cols)


def test_large():
    assert_optimal(np.random.default_rng().random((1000, 1000)))


@pytest.mark.parametrize("shape", [(30, 30), (20, 45), (45, 20)], ids=str)
def test_integer_costs_with_many_ties(shape):
    assert_optimal(np.random.default_rng().integers(0, 4, size=shape).astype(np.float64))
    assert_optimal(np.random.default_rng().integers(0, 4, size=shape))  # integer dtype accepted


def test_all_equal_and_empty():
    assert_optimal(np.full((7, 5), 3.0))
    for shape in [(0, 0), (0, 5), (5, 0)]:
        rows, cols = taskkernels.linear_sum_assignment(np.zeros(shape))
        assert len(rows) == len(cols) == 0


def test_forbidden_entries():
    rng = np.random.default_rng()
    cost = rng.random((20, 30))
    cost[rng.random(cost.shape) < 0.5] = np.inf
    try:
        scipy_opt.linear_sum_assignment(cost)
    except ValueError:
        with pytest.raises(ValueError, match="infeasible"):
            taskkernels.linear_sum_assignment(cost)
    else:
        rows, cols = assert_optimal(cost)
        assert np.isfinite(cost[rows, cols]).all()
    maxi = np.where(np.isinf(cost), -np.inf, cost)
    try:
        scipy_opt.linear_sum_assignment(maxi, maximize=True)
    except ValueError:
        pytest.skip("random instance infeasible for maximize")
    assert_optimal(maxi, maximize=True)


def test_infeasible_and_invalid_are_refused():
    with pytest.raises(ValueError, match="infeasible"):
        taskkernels.linear_sum_assignment(np.array([[1.0, np.inf], [2.0, np.inf]]))
    with pytest.raises(ValueError, match="invalid numeric entries"):
        taskkernels.linear_sum_assignment(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="invalid numeric entries"):
        taskkernels.linear_sum_assignment(np.array([[1.0, -np.inf], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="2-D"):
        taskkernels.linear_sum_assignment(np.zeros(5))
    with pytest.raises(TypeError, match="Cannot cast array data from dtype\\('<U1'\\)"):
        taskkernels.linear_sum_assignment(np.array([["a", "b"]]))


# Every input class scipy documents or meets, accepted or rejected: (name, factory).
SCIPY_INPUTS = {
    "list": lambda: [[1, 2, 5], [3, 4, 0]],
    "tuple": lambda: ((1, 2), (3, 4)),
    "list of strings of numbers": lambda: [["1", "2.5"], ["3", "4"]],
    "list of arrays": lambda: [np.array([1, 2]), np.array([3, 4])],
    "list with None": lambda: [[1, None], [2, 3]],
    "list of bools": lambda: [[True, False], [False, True]],
    "int64": lambda: np.array([[1, 2], [3, 4]]),
    "uint8": lambda: np.array([[1, 2], [3, 4]], np.uint8),
    "uint64 large": lambda: np.array([[2**64 - 1, 1], [1, 0]], np.uint64),
    "int64 huge": lambda: np.array([[2**62, 1], [1, 2**62]], np.int64),
    "bool": lambda: np.array([[True, False], [False, True]]),
    "float16": lambda: np.array([[1, 2], [3, 4]], np.float16),
    "float32 fortran": lambda: np.asfortranarray(np.random.default_rng(0).random((4, 3), np.float32)),
    "matrix": lambda: np.matrix([[1, 2], [3, 4]]),
    "masked array": lambda: np.ma.array([[1, 2], [3, 4]], mask=[[0, 1], [0, 0]]),
    "memoryview": lambda: memoryview(np.arange(6.0).reshape(2, 3)),
    "empty rows": lambda: np.zeros((0, 3)),
    "empty columns": lambda: np.zeros((3, 0)),
    "empty nested list": lambda: [[]],
    "inf allowed": lambda: [[np.inf, 1], [1, 2]],
    "torch float32": lambda: torch.tensor([[1.0, 2], [3, 4]]),
    "torch int64": lambda: torch.tensor([[1, 2], [3, 4]]),
    "torch bool": lambda: torch.tensor([[True, False], [False, True]]),
    # rejected
    "1-D": lambda: [1, 2, 3],
    "3-D": lambda: np.zeros((2, 2, 2)),
    "0-D": lambda: 5,
    "empty list": lambda: [],
    "None": lambda: None,
    "ragged": lambda: [[1, 2], [3]],
    "string": lambda: "abc",
    "list of strings": lambda: [["a", "b"], ["c", "d"]],
    "list of complex": lambda: [[1j, 2], [3, 4]],
    "numeric-string array": lambda: np.array([["1", "2"], ["3", "4"]]),
    "bytes array": lambda: np.array([[b"1", b"2"], [b"3", b"4"]]),
    "complex array": lambda: np.array([[1, 2], [3, 4]], complex),
    "1-D complex array": lambda: np.array([1j]),
    "longdouble array": lambda: np.array([[1, 2], [3, 4]], np.longdouble),
    "object array of numbers": lambda: np.array([[1, 2], [3, 4]], object),
    "object array mixed": lambda: np.array([[1, "a"], [3, 4]], object),
    "datetime64": lambda: np.array([[1, 2], [3, 4]], "datetime64[s]"),
    "timedelta64": lambda: np.array([[1, 2], [3, 4]], "timedelta64[s]"),
    "structured": lambda: np.zeros((2, 2), dtype=[("a", "i4")]),
    "NaN": lambda: [[np.nan, 1], [1, 2]],
    "minus inf": lambda: [[-np.inf, 1], [1, 2]],
    "infeasible": lambda: [[np.inf, np.inf], [1, 2]],
}


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name", SCIPY_INPUTS)
def test_scipy_contract_for_every_input_class(name, maximize):
    """The same results where scipy accepts the input, the same exception type where it refuses."""
    try:
        expected = scipy_opt.linear_sum_assignment(SCIPY_INPUTS[name](), maximize=maximize)
    except Exception as error:  # noqa: BLE001 (the type is what is compared)
        with pytest.raises(type(error)):
            taskkernels.linear_sum_assignment(SCIPY_INPUTS[name](), maximize=maximize)
        return
    rows, cols = taskkernels.linear_sum_assignment(SCIPY_INPUTS[name](), maximize=maximize)
    assert rows.dtype == expected[0].dtype and cols.dtype == expected[1].dtype
    assert np.array_equal(rows, expected[0]) and np.array_equal(cols, expected[1])


def test_accepts_non_contiguous_lists_and_tensors():
    cost = np.random.default_rng().random((40, 30))
    expected = scipy_opt.linear_sum_assignment(cost.T)
    for view in (cost.T, np.asfortranarray(cost).T, cost.T.tolist(), torch.from_numpy(cost).T):
        rows, cols = taskkernels.linear_sum_assignment(view)
        assert np.array_equal(rows, expected[0]) and np.array_equal(cols, expected[1])


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=12),
               elements=st.one_of(st.integers(-5, 5).map(float), st.floats(-1e3, 1e3, allow_nan=False))),
    st.booleans(),
)
def test_property_total_cost_equals_scipy(cost, maximize):
    assert_optimal(cost, maximize)


# ---- batched op ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_batched_matches_reference(dtype):
    B, N, M = 16, 100, 50
    cost = torch.randn(B, N, M, dtype=dtype)
    num_targets = torch.randint(0, M + 1, (B,))
    num_targets[0], num_targets[1] = 0, 1
    ours = taskkernels.batched_linear_sum_assignment(cost, num_targets)
    assert ours.shape == (B, N) and ours.dtype == torch.int64
    ref = reference.batched_linear_sum_assignment(cost, num_targets)
    assert torch.equal(ours, ref)  # continuous costs: unique optimum
    for b in range(B):
        assigned = ours[b][ours[b] >= 0]
        assert len(assigned) == min(N, int(num_targets[b])) and len(set(assigned.tolist())) == len(assigned)
        assert all(int(c) < int(num_targets[b]) for c in assigned)


def test_batched_more_targets_than_queries_and_maximize():
    cost = torch.randn(4, 10, 30, dtype=torch.float64)
    for maximize in (False, True):
        ours = taskkernels.batched_linear_sum_assignment(cost, maximize=maximize)
        assert torch.equal(ours, reference.batched_linear_sum_assignment(cost, maximize=maximize))
        assert (ours >= 0).all()


def test_batched_errors_name_the_argument():
    with pytest.raises(RuntimeError, match=r"cost must be 3-D \(B, N, M\)"):
        taskkernels.batched_linear_sum_assignment(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match=r"num_targets\[1\] must be in \[0, M = 4\], got 5"):
        taskkernels.batched_linear_sum_assignment(torch.randn(2, 3, 4), torch.tensor([1, 5]))
    with pytest.raises(RuntimeError, match=r"num_targets must have shape \(B,\) = \(2,\)"):
        taskkernels.batched_linear_sum_assignment(torch.randn(2, 3, 4), torch.tensor([1, 2, 3]))
    bad = torch.randn(3, 4, 4)
    bad[2, 1, 1] = float("nan")
    with pytest.raises(RuntimeError, match=r"cost\[2\] contains invalid entries"):
        taskkernels.batched_linear_sum_assignment(bad)
    inf = torch.randn(2, 2, 2)
    inf[1, :, 0] = float("inf")
    with pytest.raises(RuntimeError, match=r"cost\[1\] is infeasible"):
        taskkernels.batched_linear_sum_assignment(inf)


def test_batched_opcheck_and_compile():
    cost = torch.randn(3, 7, 5)
    num_targets = torch.tensor([5, 0, 3])
    torch.library.opcheck(torch.ops.taskkernels.batched_linear_sum_assignment.default, (cost, num_targets, False))
    compiled = torch.compile(lambda c, n: taskkernels.batched_linear_sum_assignment(c * 2, n), fullgraph=True)
    assert torch.equal(compiled(cost, num_targets), taskkernels.batched_linear_sum_assignment(cost * 2, num_targets))


# ---- batched op on CUDA (one thread block per problem, no host synchronization) -------------
def _solved_cost(cost, assignment):
    """Total cost of each problem's assignment, in float64."""
    rows = assignment >= 0
    picked = torch.gather(cost.double(), 2, assignment.clamp(min=0)[..., None])[..., 0]
    return (picked * rows).sum(1)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(16, 100, 50), (8, 100, 1), (4, 30, 30), (4, 20, 45), (2, 900, 60)], ids=str)
def test_cuda_equals_cpu(dtype, shape):
    B, N, M = shape
    cost = torch.randn(B, N, M, dtype=torch.float64).to(dtype)
    num_targets = torch.randint(0, M + 1, (B,))
    num_targets[0] = M
    cpu = taskkernels.batched_linear_sum_assignment(cost, num_targets)
    gpu = taskkernels.batched_linear_sum_assignment(cost.cuda(), num_targets.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.int64 and gpu.shape == (B, N)
    # Same total cost always; the same indices where the optimum is unique (float64/float32 draws;
    # fp16/bf16 round the costs onto a grid where ties happen).
    torch.testing.assert_close(_solved_cost(cost, gpu.cpu()), _solved_cost(cost, cpu), rtol=1e-12, atol=1e-9)
    if dtype in (torch.float64, torch.float32):
        assert torch.equal(gpu.cpu(), cpu)


@requires_cuda
@pytest.mark.parametrize("shape", [(6, 30, 30), (6, 20, 45), (6, 45, 20)], ids=str)
def test_cuda_integer_ties_and_maximize(shape):
    cost = torch.randint(0, 5, shape).double()
    for maximize in (False, True):
        ref = reference.batched_linear_sum_assignment(cost, maximize=maximize)
        gpu = taskkernels.batched_linear_sum_assignment(cost.cuda(), maximize=maximize).cpu()
        assert torch.equal(_solved_cost(cost, gpu), _solved_cost(cost, ref))
        for row in gpu:  # a valid assignment: min(N, M) distinct columns
            used = row[row >= 0]
            assert len(used) == min(shape[1:]) and len(set(used.tolist())) == len(used)


@requires_cuda
def test_cuda_large_forbidden_and_non_contiguous():
    cost = torch.rand(1, 1000, 1000, dtype=torch.float64)
    assert torch.equal(taskkernels.batched_linear_sum_assignment(cost.cuda()).cpu(),
                       taskkernels.batched_linear_sum_assignment(cost))
    forbidden = torch.rand(3, 40, 40, dtype=torch.float64)
    forbidden[torch.rand_like(forbidden) < 0.5] = float("inf")
    forbidden[:, torch.arange(40), torch.arange(40)] = 1.0  # keeps each problem feasible
    assert torch.equal(taskkernels.batched_linear_sum_assignment(forbidden.cuda()).cpu(),
                       taskkernels.batched_linear_sum_assignment(forbidden))
    strided = torch.randn(4, 50, 100, dtype=torch.float64).transpose(1, 2)  # (4, 100, 50), not contiguous
    assert torch.equal(taskkernels.batched_linear_sum_assignment(strided.cuda()).cpu(),
                       taskkernels.batched_linear_sum_assignment(strided.contiguous()))


@requires_cuda
def test_cuda_deterministic_and_int32_counts():
    cost = torch.randn(64, 100, 30, device="cuda")
    counts = torch.randint(0, 31, (64,), device="cuda", dtype=torch.int32)
    first = taskkernels.batched_linear_sum_assignment(cost, counts)
    assert torch.equal(first, taskkernels.batched_linear_sum_assignment(cost, counts.long()))
    assert torch.equal(first, taskkernels.batched_linear_sum_assignment(cost, counts))


@requires_cuda
def test_cuda_unsolved_problems_are_reported_in_place_or_raised():
    cost = torch.randn(4, 5, 5, device="cuda", dtype=torch.float64)
    cost[1, 2, 3] = float("nan")
    cost[2, :, 0] = float("inf")
    counts = torch.tensor([5, 5, 5, 6], device="cuda")
    got = taskkernels.batched_linear_sum_assignment(cost, counts).cpu()
    assert (got[1] == -2).all() and (got[2] == -3).all() and (got[3] == -4).all()
    assert torch.equal(got[0], taskkernels.batched_linear_sum_assignment(cost[:1].cpu())[0])
    with pytest.raises(RuntimeError, match=r"cost\[1\] contains invalid entries"):
        taskkernels.batched_linear_sum_assignment(cost, counts, check=True)
    with pytest.raises(RuntimeError, match=r"cost\[0\] is infeasible"):
        taskkernels.batched_linear_sum_assignment(cost[2:3], check=True)
    with pytest.raises(RuntimeError, match=r"num_targets must be on the device of cost \(cuda:0\), got cpu"):
        taskkernels.batched_linear_sum_assignment(cost, counts.cpu())


def test_raise_on_unsolved_turns_the_cuda_codes_into_the_cpu_errors():
    taskkernels.raise_on_unsolved(torch.tensor([[0, -1], [1, 0]]))  # -1 (unassigned row) is fine
    taskkernels.raise_on_unsolved(torch.empty(0, 3, dtype=torch.int64))
    for code, message in [(-2, r"cost\[1\] contains invalid entries \(NaN, or -inf\)"),
                          (-3, r"cost\[1\] is infeasible"), (-4, r"num_targets\[1\] must be in \[0, M\]")]:
        with pytest.raises(RuntimeError, match=message):
            taskkernels.raise_on_unsolved(torch.tensor([[0, 1], [code, code], [-2, -2]]))


@requires_cuda
def test_cuda_opcheck_and_compile():
    cost = torch.randn(3, 7, 5, device="cuda")
    num_targets = torch.tensor([5, 0, 3], device="cuda")
    torch.library.opcheck(torch.ops.taskkernels.batched_linear_sum_assignment.default, (cost, num_targets, False))
    compiled = torch.compile(lambda c, n: taskkernels.batched_linear_sum_assignment(c * 2, n), fullgraph=True)
    assert torch.equal(compiled(cost, num_targets), taskkernels.batched_linear_sum_assignment(cost * 2, num_targets))


# ---- DETR's matcher --------------------------------------------------------------------------
def _detr_batch(B, N, C, counts):
    logits = torch.randn(B, N, C + 1)
    boxes = torch.cat([torch.rand(B, N, 2) * 0.8 + 0.1, torch.rand(B, N, 2) * 0.3 + 0.05], -1)
    targets = [dict(class_labels=torch.randint(0, C, (m,)),
                    boxes=torch.cat([torch.rand(m, 2) * 0.8 + 0.1, torch.rand(m, 2) * 0.3 + 0.05], -1)) for m in counts]
    return logits, boxes, targets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("counts", [[3, 0, 7, 1], [50] * 4, [1], [12, 30]], ids=str)
def test_hungarian_match_equals_hf(counts, device):
    pytest.importorskip("transformers", reason="HF's matcher is the reference")
    from transformers.loss.loss_for_object_detection import HungarianMatcher

    logits, boxes, targets = _detr_batch(len(counts), 100, 91, counts)
    hf = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)(dict(logits=logits, pred_boxes=boxes), targets)
    logits, boxes = logits.to(device), boxes.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    ours = taskkernels.hungarian_match(logits, boxes, targets, cost_class=1, cost_bbox=5, cost_giou=2)
    assert len(ours) == len(hf)
    for (i, j), (hi, hj) in zip(ours, hf):
        assert i.dtype == torch.int64 and j.dtype == torch.int64
        assert torch.equal(i, hi) and torch.equal(j, hj)


def test_hungarian_cost_matches_hf_terms():
    pytest.importorskip("transformers", reason="HF's box ops are the reference")
    from transformers.loss.loss_for_object_detection import center_to_corners_format, generalized_box_iou

    logits, boxes, targets = _detr_batch(2, 20, 5, [4, 6])
    cost, counts = taskkernels.hungarian_cost(logits, boxes, targets, 1, 5, 2)
    assert cost.shape == (2, 20, 6) and counts.tolist() == [4, 6]
    for b, t in enumerate(targets):
        m = len(t["boxes"])
        prob = logits[b].softmax(-1)
        expected = (5 * torch.cdist(boxes[b], t["boxes"], p=1) - prob[:, t["class_labels"]]
                    - 2 * generalized_box_iou(center_to_corners_format(boxes[b]), center_to_corners_format(t["boxes"])))
        torch.testing.assert_close(cost[b, :, :m], expected)
