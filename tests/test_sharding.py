"""taskkernels on torch.distributed, two CPU processes (gloo): every op, forward and backward, on
DTensors sharded as its strategy allows (and redistributed where it cannot run), and tensor
parallelism for the BERT, GPT-2, BART and ViT model classes, against one process in float64.

One launch of two processes runs every check (tests/sharding_worker.py); each test below reads
its own results."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

import sharding_worker

TIMEOUT_S = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.fail("torch.distributed is not available in this torch build")
    out = tmp_path_factory.mktemp("sharding") / "results.json"
    context = mp.spawn(sharding_worker.main, args=(2, _free_port(), str(out)), nprocs=2, join=False)
    import time

    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the two sharding processes did not finish within {TIMEOUT_S} s")
    data = json.loads(out.read_text())
    assert "error" not in data, data.get("error")
    return data


OP_CHECKS = [
    "attention over batch", "attention over heads", "attention over heads, bias (Nq, Nk)",
    "attention grouped-query over heads", "attention over the sequence (redistributed)",
    "attention over the sequence: placements", "attention_with_lse over batch",
    "attention dropout over batch (redistributed)", "masked_attention over batch", "masked_attention over heads",
    "patch_embed over batch", "patch_embed over the embedding dim", "depthwise_conv2d over batch",
    "depthwise_conv2d over channels", "depthwise_conv2d_layernorm over batch",
    "depthwise_conv2d_layernorm over channels (redistributed)", "ctc_loss over batch (none)",
    "ctc_loss over batch (mean)", "ctc_loss over batch (sum)", "ctc_loss concatenated targets (redistributed)",
    "batched_linear_sum_assignment over batch",
]


@pytest.mark.parametrize("check", OP_CHECKS)
def test_ops_on_dtensors_equal_one_process(results, check):
    """Outputs and input gradients (float64) equal the single-process op's."""
    assert results[check] <= 1e-12, f"{check}: max error {results[check]}"


def test_ops_ran_sharded(results):
    """The supported placements ran as they came (the output keeps the sharding), not gathered."""
    ran = {k: v for k, v in results.items() if ": ran on " in k}
    assert len(ran) == 13, sorted(ran)
    assert all(v == 0.0 for v in ran.values()), [k for k, v in ran.items() if v]


@pytest.mark.parametrize("family", ["bert", "gpt2", "bart", "vit"])
@pytest.mark.parametrize("what", ["logits", "loss", "gradients", "sharded parameters"])
def test_tensor_parallel_models_equal_one_process(results, family, what):
    key = f"tensor parallel {family}: {what}"
    assert results[key] <= 1e-10, f"{key}: max error {results[key]}"


_IMPORT_ORDER = r"""
import sys, tempfile
import torch
if sys.argv[1] == "dtensor first":
    from torch.distributed.tensor import DTensor
    import taskkernels
else:
    import taskkernels
    assert "torch.distributed.tensor" not in sys.modules, "import taskkernels loaded DTensor"
    from torch.distributed.tensor import DTensor
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
q, k, v = (distribute_tensor(torch.randn(2, 4, 8, 16, dtype=torch.float64), mesh, [Shard(1)]) for _ in range(3))
out = taskkernels.attention(q, k, v)
assert isinstance(out, DTensor) and out.placements == (Shard(1),), out.placements
dist.destroy_process_group()
print("ok", flush=True)
import os
os._exit(0)  # no interpreter teardown (see sharding_worker.py: c10d threads at static destruction)
"""


@pytest.mark.parametrize("order", ["dtensor first", "taskkernels first"])
def test_strategies_registered_in_either_import_order(order):
    """`import taskkernels` does not load DTensor (~0.4 s); its strategies register when DTensor
    loads, before or after taskkernels (without them, the op on DTensors raises)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _IMPORT_ORDER, order], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
