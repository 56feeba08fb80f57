"""The memory-efficient (chunked) CLOOB path against the direct one: values, gradients, memory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import open_clip_cloob.loss as loss_module
from cloob_reference import reference_cloob, reference_spread, unit_rows
from open_clip_cloob import CloobLoss, cloob_loss, hopfield_retrieval, info_loob, info_nce, memory_betas

REPO = Path(__file__).resolve().parents[1]


def _value_and_grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    # A fixed random upstream gradient checks every output element, not only their sum.
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    (out * upstream).sum().backward()
    return [out.detach()] + [leaf.grad for leaf in leaves]


def _assert_all_close(got, want, **tol):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("n,m,d,chunk", [(2, 2, 3, 1), (7, 7, 5, 3), (10, 13, 4, 4), (33, 33, 16, 32), (5, 9, 8, 100)])
def test_chunked_retrieval_matches_direct(n, m, d, chunk):
    state, memory = unit_rows(n, d, seed=1), unit_rows(m, d, seed=2)
    direct = _value_and_grads(lambda s, mem: hopfield_retrieval(s, mem, 8.0), state, memory)
    chunked = _value_and_grads(lambda s, mem: hopfield_retrieval(s, mem, 8.0, chunk_size=chunk), state, memory)
    _assert_all_close(chunked, direct, rtol=1e-12, atol=1e-12)


def test_chunked_retrieval_of_a_near_zero_pattern_has_f_normalize_gradient():
    # State 0 weighs two nearly opposite stored patterns about equally: it retrieves a pattern of
    # norm ~5e-14, which F.normalize clamps at eps = 1e-12 (a constant: gradient dU / eps, no
    # radial term); state 1 retrieves a pattern of unit scale.
    memory = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1e-13, 0.0]], dtype=torch.float64)
    state = torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.0, 0.8]], dtype=torch.float64)
    direct = _value_and_grads(lambda s, mem: hopfield_retrieval(s, mem, 2.0), state, memory)
    chunked = _value_and_grads(lambda s, mem: hopfield_retrieval(s, mem, 2.0, chunk_size=1), state, memory)
    assert 0 < direct[0][0].norm() < 1 and direct[0][1].norm() == pytest.approx(1.0)
    _assert_all_close(chunked, direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("score", [info_loob, info_nce], ids=lambda f: f.__name__)
@pytest.mark.parametrize("n,m,offset,chunk", [(2, 2, 0, 1), (7, 7, 0, 3), (4, 12, 8, 3), (5, 15, 5, 2), (16, 16, 0, 5)])
def test_chunked_score_matches_direct(score, n, m, offset, chunk):
    anchors, candidates = unit_rows(n, 6, seed=3), unit_rows(m, 6, seed=4)
    inv_tau = torch.tensor(30.0, dtype=torch.float64)
    direct = _value_and_grads(lambda a, b, t: score(a, b, t, offset), anchors, candidates, inv_tau)
    chunked = _value_and_grads(lambda a, b, t: score(a, b, t, offset, chunk_size=chunk), anchors, candidates, inv_tau)
    _assert_all_close(chunked, direct, rtol=1e-12, atol=1e-12)


def test_chunked_gradcheck_float64():
    state, memory = unit_rows(5, 4, seed=5).requires_grad_(), unit_rows(6, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, m: hopfield_retrieval(s, m, 3.0, chunk_size=2), (state, memory))
    a, b = unit_rows(3, 4, seed=7).requires_grad_(), unit_rows(7, 4, seed=8).requires_grad_()
    inv_tau = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    for score in (info_loob, info_nce):
        assert torch.autograd.gradcheck(lambda a, b, t: score(a, b, t, 2, chunk_size=2), (a, b, inv_tau))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows, so that small batches exercise several (odd-sized) chunks."""
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 64)


@pytest.mark.parametrize("n", [2, 9, 16, 31])
def test_memory_efficient_cloob_matches_float64_reference(small_chunks, n):
    x, y = unit_rows(n, 8, seed=n), unit_rows(n, 8, seed=n + 1)
    scale = torch.tensor(30.0, dtype=torch.float64)
    chunked = _value_and_grads(CloobLoss(memory_efficient=True), x, y, scale)
    reference = _value_and_grads(lambda a, b, s: reference_cloob(a, b, s, 8.0), x, y, scale)
    _assert_all_close(chunked, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("objective,hopfield", [("infonce", True), ("infoloob", False), ("infonce", False)])
@pytest.mark.parametrize("n", [2, 11])
def test_memory_efficient_variant_matches_float64_reference(small_chunks, n, objective, hopfield):
    x, y = unit_rows(n, 8, seed=n), unit_rows(n, 8, seed=n + 1)
    scale = torch.tensor(30.0, dtype=torch.float64)
    loss_fn = CloobLoss(memory_efficient=True, objective=objective, hopfield=hopfield)
    chunked = _value_and_grads(loss_fn, x, y, scale)
    reference = _value_and_grads(
        lambda a, b, s: reference_cloob(a, b, s, 8.0, objective=objective, hopfield=hopfield), x, y, scale)
    _assert_all_close(chunked, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("objective,hopfield", [("infoloob", True), ("infonce", False)])
def test_functional_chunk_size_is_the_memory_efficient_module(small_chunks, objective, hopfield):
    x, y = unit_rows(11, 8, seed=11), unit_rows(11, 8, seed=12)
    module = CloobLoss(memory_efficient=True, objective=objective, hopfield=hopfield)(x, y, 30.0)
    functional = cloob_loss(x, y, 30.0, 8.0, objective, hopfield, chunk_size=loss_module.chunk_rows(11))
    assert functional == module


@pytest.mark.parametrize("chunk_size", [0, -3])
def test_bad_chunk_size_raises(chunk_size):
    x = unit_rows(4, 3, seed=13)
    for compute in (lambda: cloob_loss(x, x, 30.0, chunk_size=chunk_size),
                    lambda: hopfield_retrieval(x, x, 8.0, chunk_size=chunk_size),
                    lambda: info_nce(x, x, 30.0, chunk_size=chunk_size)):
        with pytest.raises(ValueError, match=f"chunk_size must be None or a positive number of rows, got {chunk_size}"):
            compute()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_memory_efficient_cloob_matches_direct_in_float32_and_autocast(small_chunks, precision):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    x, y = unit_rows(37, 32, seed=9).to(dtype), unit_rows(37, 32, seed=10).to(dtype)
    scale = torch.tensor(30.0)

    def run(memory_efficient):
        def loss(a, b, s):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                return CloobLoss(memory_efficient=memory_efficient)(a, b, s)
        return _value_and_grads(loss, x, y, scale)

    (value, *grads), (direct_value, *direct_grads) = run(True), run(False)
    # Both paths compute in float32; they differ only in summation order (chunked softmax and
    # accumulation), which float32 resolves to ~1e-6 relative.
    torch.testing.assert_close(value, direct_value, rtol=2e-5, atol=1e-6)
    # Gradients come back in the features' dtype: in bf16 a 1e-6 difference can flip one rounding,
    # one bf16 ulp (2^-8 relative).
    tolerance = dict(rtol=2e-5, atol=1e-6) if precision == "fp32" else dict(rtol=2 ** -8, atol=1e-6)
    _assert_all_close(grads, direct_grads, **tolerance)


def test_automatic_choice_switches_to_chunks_above_the_budget(small_chunks):
    loss = CloobLoss()
    assert loss._chunk_size(8, 8) is None  # 64 elements fit the budget
    assert loss._chunk_size(9, 9) == 7  # 81 do not: 64 // 9 rows per chunk
    assert CloobLoss(memory_efficient=False)._chunk_size(100, 100) is None
    assert CloobLoss(memory_efficient=True)._chunk_size(2, 2) == 32


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_beta_from_spread_is_cloob_with_each_memorys_beta_k_over_its_spread(small_chunks, memory_efficient):
    x = unit_rows(9, 6, seed=21)
    y = F.normalize(unit_rows(9, 6, seed=22) + 0.5 * x, dim=-1)
    scale = torch.tensor(30.0, dtype=torch.float64)
    image_beta, text_beta = 3.0 / reference_spread(x), 3.0 / reference_spread(y)
    assert memory_betas(x, y, 8.0, 3.0) == pytest.approx((image_beta, text_beta), rel=1e-10)
    assert memory_betas(x, y, 8.0) == (8.0, 8.0)
    # β is a constant of the step (computed without gradient): the reference with fixed βs.
    got = _value_and_grads(CloobLoss(beta_from_spread=3.0, memory_efficient=memory_efficient), x, y, scale)
    want = _value_and_grads(lambda a, b, s: reference_cloob(a, b, s, image_beta, text_beta=text_beta), x, y, scale)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert cloob_loss(x, y, scale, beta_from_spread=3.0) == pytest.approx(got[0].item(), rel=1e-12)



# Peak memory above the inputs of the CPU cases, all in one fresh interpreter (cloob_tools.bench_loss.run_case
# resets the kernel's high-water mark VmHWM before each). A fixed glibc mmap threshold returns every
# freed block of 64 KiB or more to the system at once, so a case neither reuses memory an earlier
# case left in the heap nor leaves any to the next; without it glibc raises the threshold
# dynamically and keeps blocks of up to 32 MiB.
_PEAKS_SCRIPT = """
import json, sys
from cloob_tools import bench_loss
for case in json.loads(sys.argv[1]):
    result = bench_loss.run_case(*case, "cpu", "fp32", repeats=1, max_warmup_seconds=0)
    print(json.dumps(result["peak_mib"]))
"""
MEMORY_DIM = 16
FLOAT32_MIB = 4 / 2 ** 20


def _cpu_peaks_mib(cases):
    """Peak MiB of each (impl, N) case at d = 16, in order; a small warm-up case first, so that code
    and buffers the first pass of a loss loads do not count as growth."""
    cases = [[impl, n, MEMORY_DIM] for impl, n in [("cloob-direct", 256), ("cloob-chunked", 256), *cases]]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-c", _PEAKS_SCRIPT, json.dumps(cases)],
                               capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [float(line) for line in completed.stdout.split()][2:]


@pytest.mark.slow
def test_chunked_peak_memory_grows_linearly_not_quadratically():
    direct_2k, direct_4k, chunked_4k, chunked_8k = _cpu_peaks_mib(
        [("cloob-direct", 2048), ("cloob-direct", 4096), ("cloob-chunked", 4096), ("cloob-chunked", 8192)])
    print(f"peak MiB above the inputs: direct {direct_2k:.1f} (N=2048) -> {direct_4k:.1f} (N=4096), "
          f"chunked {chunked_4k:.1f} (N=4096) -> {chunked_8k:.1f} (N=8192)")
    # Growth between two sizes, so that what every case holds alike (code, thread buffers) cancels.
    # The measurement sees quadratic growth: the direct path keeps several [N, N] float32 matrices
    # for backward; at least two of them grow by (4096² − 2048²) elements each (96 MiB).
    assert direct_4k - direct_2k > 2 * (4096 ** 2 - 2048 ** 2) * FLOAT32_MIB, (direct_2k, direct_4k)
    # Chunked, from N = 4096 on (where blocks reach CHUNK_ELEMENTS): blocks keep their size and only
    # O(N·d) tensors grow (a few MiB at d = 16). One [N, N] matrix would add (8192² − 4096²) floats,
    # 192 MiB: a quarter of that is the bound.
    assert chunked_8k - chunked_4k < (8192 ** 2 - 4096 ** 2) * FLOAT32_MIB / 4, (chunked_4k, chunked_8k)
