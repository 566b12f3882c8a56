"""The emulated GPU itself (csrc/emu): each rule a GPU enforces, broken on purpose by a kernel of
csrc/emu/selftest.cu, must fail the launch with a message that says what and where; each emulated
instruction must give the known answer. Runs only on the emulated GPU (scripts/emulate.sh)."""

import numpy as np
import pytest
import torch

import taskkernels
from conftest import EMULATED

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not EMULATED, reason="tests of the emulated GPU; run them with scripts/emulate.sh"),
]

# cudaError_t values (driver_types.h)
SUCCESS, INVALID_VALUE, INVALID_CONFIGURATION, INVALID_HANDLE, LAUNCH_FAILURE = 0, 1, 9, 400, 719


def run(name, data=None):
    data = np.random.default_rng().standard_normal(512).astype(np.float32) if data is None else data
    code, text, out = taskkernels._C._emu_selftest(name, data)
    return code, text, out, data


def test_barrier_divergence_is_reported_with_both_sites():
    code, text, _, _ = run("divergent_barrier")
    assert code == LAUNCH_FAILURE
    assert "different barriers" in text and "divergent_barrier" in text
    assert "threads 0-31" in text and "threads 32-63" in text and "selftest.cu" in text


def test_exit_before_barrier_is_reported():
    code, text, _, _ = run("exit_before_barrier")
    assert code == LAUNCH_FAILURE and "exited" in text and "__syncthreads" in text


def test_warp_collective_missing_a_lane_is_reported():
    code, text, _, _ = run("shuffle_missing_lane")
    assert code == LAUNCH_FAILURE and "__shfl_xor_sync" in text and "exited" in text
    # Whichever the emulator met first: the lane leaving, or a lane waiting for it.
    assert "thread 0 exited" in text or "waits for lane 0 of warp 0, which exited" in text


def test_shuffles_votes_and_block_reductions():
    code, text, out, _ = run("warp_ops")
    assert code == SUCCESS, text
    lanes = np.arange(32)
    np.testing.assert_array_equal(out[:32], lanes ^ 5)
    np.testing.assert_array_equal(out[32:64], np.ones(32))
    np.testing.assert_array_equal(out[64:96], np.full(32, lanes.sum()))
    np.testing.assert_array_equal(out[96:128], 31 - lanes)
    np.testing.assert_array_equal(out[128:160], np.where(lanes + 3 < 32, lanes + 3, lanes))
    np.testing.assert_array_equal(out[160:192], np.full(32, 10))


def test_unwritten_shared_memory_reads_as_poison():
    code, text, out, _ = run("read_unwritten")
    assert code == SUCCESS, text
    assert np.isnan(out[:32]).all()


def test_dynamic_shared_memory_and_the_48k_opt_in():
    code, text, out, _ = run("dynamic_smem")
    assert code == SUCCESS, text
    np.testing.assert_array_equal(out[:64], (np.arange(64) + 1) % 64)
    code, text, _, _ = run("dynamic_smem_over_48k")
    assert code == INVALID_VALUE and "cudaFuncSetAttribute" in text and "50176" in text
    code, text, _, _ = run("dynamic_smem_opt_in")
    assert code == SUCCESS, text
    code, text, _, _ = run("opt_in_over_227k")
    assert code == INVALID_VALUE and "232448" in text


def test_launch_limits():
    code, text, _, _ = run("threads_1025")
    assert code == INVALID_CONFIGURATION and "1024 threads" in text
    code, text, _, _ = run("grid_y_65536")
    assert code == INVALID_CONFIGURATION and "65535" in text


def test_launch_on_another_stream_than_torchs_is_refused():
    code, text, _, _ = run("wrong_stream")
    assert code == INVALID_HANDLE and "current stream" in text


def test_mma_m16n8k16_layout():
    code, text, out, data = run("mma_f16")
    assert code == SUCCESS, text
    a = data[:256].reshape(16, 16).astype(np.float16).astype(np.float64)
    b = data[256:384].reshape(16, 8).astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(out[:128].reshape(16, 8), a @ b, rtol=1e-5, atol=1e-5)


def test_wmma_product_and_an_assumed_fragment_layout_fails():
    code, text, out, data = run("wmma_f16")
    assert code == SUCCESS, text
    a = data[:256].reshape(16, 16).astype(np.float16).astype(np.float64)
    b = data[256:512].reshape(16, 16).astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(out.reshape(16, 16), a @ b, rtol=1e-5, atol=1e-5)
    # Writing fc.x[] as if the layout were known gives a permutation of the right values, in the
    # wrong places (the emulator permutes fragment elements per run).
    code, text, wrong, _ = run("wmma_assumed_layout", data)
    assert code == SUCCESS, text
    np.testing.assert_allclose(np.sort(wrong), np.sort(out), rtol=1e-6)
    assert not np.allclose(wrong, out)


def test_wmma_misaligned_pointer_is_a_fault():
    code, text, _, _ = run("wmma_misaligned")
    assert code == LAUNCH_FAILURE and "256-bit aligned" in text


def ldmatrix_expected(matrices, trans):
    """Register i of lane l as lo + 256 hi for selftest.cu's ldmatrix_layouts: lane 8i + j names row
    (3j + 1) % 8 of the 8x8 matrix 3 - i of m[k][r][c] = 64k + 8r + c."""
    m = np.arange(256).reshape(4, 8, 8)
    seen = np.stack([m[3 - i][[(3 * j + 1) % 8 for j in range(8)]] for i in range(matrices)])
    out = np.zeros((matrices, 32))
    for i in range(matrices):
        mat = seen[i].T if trans else seen[i]
        for lane in range(32):
            r, c = lane // 4, 2 * (lane % 4)
            out[i, lane] = mat[r, c] + 256 * mat[r, c + 1]
    return out.reshape(-1)


def test_ldmatrix_layouts_plain_and_transposed():
    code, text, out, _ = run("ldmatrix_x4")
    assert code == SUCCESS, text
    np.testing.assert_array_equal(out[:128], ldmatrix_expected(4, False))
    np.testing.assert_array_equal(out[128:256], ldmatrix_expected(4, True))
    # .x2 reads matrices 0 and 1 only; lanes 16-31 pass a global address, which it ignores.
    code, text, out, _ = run("ldmatrix_x2")
    assert code == SUCCESS, text
    np.testing.assert_array_equal(out[:64], ldmatrix_expected(2, False))
    np.testing.assert_array_equal(out[64:128], ldmatrix_expected(2, True))


def test_ldmatrix_needs_aligned_shared_rows():
    code, text, _, _ = run("ldmatrix_misaligned")
    assert code == LAUNCH_FAILURE and "lane 5" in text and "16-byte aligned" in text and "ldmatrix" in text
    code, text, _, _ = run("ldmatrix_global")
    assert code == LAUNCH_FAILURE and "not in this block's shared memory" in text


def test_cp_async_zero_fill_and_wait_group():
    data = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    code, text, out, _ = run("cp_async_groups", data)
    assert code == SUCCESS, text
    got = out.view(np.uint8)
    src = data.view(np.uint8)
    for lane in range(17):
        chunk = got[16 * lane : 16 * lane + 16]
        # Source size `lane`: its first bytes copied, the rest zero.
        np.testing.assert_array_equal(chunk[:lane], src[16 * lane : 16 * lane + lane])
        assert not chunk[lane:].any()
    # The second group was still pending at wait_group 1: its destination reads as poison.
    assert (got[272:544] == 0xFF).all()
    # After wait_group 0 it has landed.
    np.testing.assert_array_equal(got[544:816], src[272:544])


def test_cp_async_rejects_what_a_device_rejects():
    code, text, _, _ = run("cp_async_misaligned")
    assert code == LAUNCH_FAILURE and "cp.async" in text and "not 16-byte aligned" in text
    code, text, _, _ = run("cp_async_global_destination")
    assert code == LAUNCH_FAILURE and "not in this block's shared memory" in text
    code, text, _, _ = run("cp_async_source_size_17")
    assert code == LAUNCH_FAILURE and "source size 17" in text


def test_failed_blocks_leave_clean_stacks_for_the_next_launches():
    # A failed block's fibers stop mid-frame and are never resumed; under AddressSanitizer
    # (EMU_CHECK=address) the shadow of their stacks kept those frames' redzones, and a later
    # fault() on the same stacks aborted the process in __asan_handle_no_return (half the runs of
    # this file, 2026-12-02) until the runtime unpoisoned a failed block's stacks.
    for _ in range(6):
        for name in ("divergent_barrier", "shuffle_missing_lane", "cp_async_misaligned", "cp_async_source_size_17"):
            code, text, _, _ = run(name)
            assert code == LAUNCH_FAILURE, (name, text)
    code, text, out, _ = run("warp_ops")
    assert code == SUCCESS, text
    np.testing.assert_array_equal(out[:32], np.arange(32) ^ 5)


def test_cp_async_data_is_shared_only_after_wait_and_barrier():
    data = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    code, text, out, _ = run("cp_async_barrier_after_wait", data)
    assert code == SUCCESS, text
    np.testing.assert_array_equal(out[:64], data[: 4 * 64 : 4][(np.arange(64) + 33) % 64])
    if not taskkernels._C._emu_config()["race_check"]:
        pytest.skip("the race detector is in the race build (EMU_CHECK=race bash scripts/emulate.sh)")
    # Another thread's copy read with no barrier after its wait, or with the barrier before it.
    for name in ("cp_async_no_barrier", "cp_async_barrier_before_wait"):
        code, text, _, _ = run(name, data)
        assert code == LAUNCH_FAILURE and "shared-memory race" in text and "cp_async_neighbour" in text, (name, text)


def test_race_detector_reports_a_missing_barrier():
    if not taskkernels._C._emu_config()["race_check"]:
        pytest.skip("the race detector is in the race build (EMU_CHECK=race bash scripts/emulate.sh)")
    code, text, _, _ = run("missing_barrier")
    assert code == LAUNCH_FAILURE and "shared-memory race" in text and "missing_barrier" in text
    code, text, out, _ = run("with_barrier")
    assert code == SUCCESS, text
    np.testing.assert_array_equal(out[:64], np.ones(64))


def test_the_mode_makes_cuda_tensors_over_host_memory():
    x = torch.randn(3, 5, device="cuda")
    assert x.is_cuda and x.device == torch.device("cuda", 0)
    y = (x * 2).sum(0)
    assert y.is_cuda
    torch.testing.assert_close(y.cpu(), (x.cpu() * 2).sum(0))
    g = torch.zeros(3, device="cuda")
    g[1:] = 1  # in place through a view
    assert g.cpu().tolist() == [0.0, 1.0, 1.0]
