"""DDP and FSDP2 (``fully_shard``) training steps of taskkernels.models BERT, ViT, ConvNeXt,
Wav2Vec2ForCTC and DETR on two processes (gloo, localhost): each gives the single-process
full-batch step's loss and gradients.

One launch of two ranks (tests/distributed_training_worker.py) runs all ten checks, in float64,
and reports them back; a run that hangs or fails is ended at a deadline and fails every test
below with the ranks' tracebacks. About 20 s on two CPU cores, most of it the two processes'
imports."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from distributed_training_worker import MODELS

WORLD = 2
DEADLINE_S = 150
# float64 steps that differ only in summation order (the worker's compare: relative to each
# parameter's largest reference gradient): measured up to 5e-12 here; a step that skipped or
# misapplied the reduction is off by O(1).
GRAD_RTOL = 1e-9

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed for multi-process training")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    worker = os.path.join(os.path.dirname(__file__), "distributed_training_worker.py")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env.pop("TASKKERNELS_EMULATOR", None)  # CPU processes: the installed build
    logs = [open(out / f"rank{r}.log", "w+") for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, worker, str(r), str(WORLD), str(out / "init"), str(out)], env=env,
                              stdout=logs[r], stderr=subprocess.STDOUT) for r in range(WORLD)]
    deadline = time.monotonic() + DEADLINE_S
    try:
        # A rank that fails leaves its peer blocked in a collective: end the run at the first failure.
        while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ranks, problems = {}, []
    for r, (p, log) in enumerate(zip(procs, logs)):
        path = out / f"rank{r}.json"
        ranks[r] = json.loads(path.read_text()) if path.exists() else {}
        if p.returncode != 0:
            log.seek(0)
            why = "killed at the deadline or after its peer failed" if p.returncode < 0 else f"exit {p.returncode}"
            problems.append(f"rank {r} ({why}):\n{ranks[r].get('error') or log.read()[-3000:]}")
        log.close()
    models = {name: entry for rank in ranks.values() for name, entry in rank.get("models", {}).items()}
    return models, "\n".join(problems)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
@pytest.mark.parametrize("model", MODELS)
def test_distributed_step_gives_single_process_gradients(report, model, mode):
    models, problems = report
    assert model in models, f"no result for {model}: {problems or 'the worker did not report it'}"
    got = models[model][mode]
    assert got["params_with_grad"] > 0
    assert not got["missing"], f"gradient present on one side only: {got['missing']}"
    assert got["max_rel_err"] <= GRAD_RTOL, (
        f"{model} {mode}: gradient of {got['param']} off by {got['max_rel_err']:.3e} of its size")
    assert abs(got["loss"] - got["ref_loss"]) <= 1e-12 * max(1.0, abs(got["ref_loss"])), got
