"""CloobLoss on a CUDA GPU: values and gradients against float64, memory growth, NCCL collectives.

Marked ``cuda``: skipped where torch sees no GPU; ``scripts/device_check.sh`` runs them on a GPU
machine.

- Direct and chunked paths in float32, TF32 (how ``training.main`` runs: OpenCLIP allows TF32
  matrix products), bf16 and fp16 autocast, against the independent float64 reference on the CPU
  (``tests/cloob_reference.py``), fed exactly the features the GPU got (rounded to their precision).
- The automatic choice at the real chunk budget, as training runs it (bf16, TF32).
- The chunked path's peak CUDA memory grows linearly in N, the direct path's quadratically.
- A one-rank NCCL group: a training step through CloobLoss, the non-finite guard and the
  preemption agreement, whose collectives pick the GPU for NCCL (``training.reliability``).
"""
import contextlib
import functools
import os
import signal

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import open_clip_cloob.loss as loss_module
from cloob_reference import reference_cloob, unit_rows
from open_clip_cloob import CloobLoss
from training.reliability import NonFiniteGuard, PreemptionSignal, any_rank, sum_over_ranks

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda", 0)
N, D, BETA, INV_TAU = 100, 32, 8.0, 30.0
ROWS_PER_CHUNK = 24  # N = 100: four full chunks and a partial one
# Allowed ‖got − ref‖ / ‖ref‖ of (loss value, feature gradients, 1/τ gradient). The loss computes in
# float32 in every case. Measured on the CPU for these inputs: float32 ≤ 7e-7 (1/τ gradient 3e-6);
# TF32 (emulated by rounding the products' operands to 10 mantissa bits) 1e-5 / 1.2e-3 / 4e-4;
# gradients of half-precision features come back in that precision, so their rounding dominates:
# bf16 1.7e-3 (at most 2^-9 per element), fp16 2.0e-4 (at most 2^-12 per element).
PRECISIONS = {  # features' dtype, autocast dtype, TF32 allowed, tolerances
    "fp32": (torch.float32, None, False, (1e-5, 1e-5, 1e-4)),
    "tf32": (torch.float32, None, True, (1e-4, 1e-2, 4e-3)),
    "bf16": (torch.bfloat16, torch.bfloat16, False, (1e-5, 2 ** -8, 1e-4)),
    "fp16": (torch.float16, torch.float16, False, (1e-5, 2 ** -10, 1e-4)),
}


def _pairs(n: int, d: int, seed: int):
    """[n, d] unit image rows and text rows paired with them (positives stand out, as in training)."""
    image = unit_rows(n, d, seed=seed)
    return image, F.normalize(image + 0.3 * unit_rows(n, d, seed=seed + 1), dim=-1)


def _value_and_grads(loss_fn, image, text, inv_tau):
    leaves = [t.detach().clone().requires_grad_() for t in (image, text, inv_tau)]
    value = loss_fn(*leaves)
    value.backward()
    return [value.detach()] + [leaf.grad for leaf in leaves]


def _relative_errors(got, want):
    """‖got − want‖ / ‖want‖ of each pair, in float64 on the CPU (NaN never passes a ≤ test)."""
    return [((g.detach().double().cpu() - w.double()).norm() / w.double().norm()).item() for g, w in zip(got, want)]


def _assert_within(errors, tolerances):
    """``errors`` of (value, d image, d text, d inv_tau) within (value, feature gradient, 1/τ gradient)."""
    value, features, inv_tau = tolerances
    assert all(e <= tol for e, tol in zip(errors, (value, features, features, inv_tau))), (errors, tolerances)


@functools.lru_cache(maxsize=None)
def _reference(dtype: torch.dtype):
    """The float64 reference's value and gradients for the test pairs rounded to ``dtype``."""
    image, text = (t.to(dtype).double() for t in _pairs(N, D, seed=1))
    return _value_and_grads(lambda x, y, s: reference_cloob(x, y, s, BETA), image, text,
                            torch.tensor(INV_TAU, dtype=torch.float64))


@pytest.fixture
def allow_tf32():
    """``allow_tf32(flag)`` sets ``torch.backends.cuda.matmul.allow_tf32`` for one test.

    (A dynamic attribute: monkeypatch would delete it afterwards instead of restoring it.)
    """
    saved = torch.backends.cuda.matmul.allow_tf32

    def allow(flag: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = flag

    yield allow
    allow(saved)


@pytest.mark.parametrize("path", ["direct", "chunked"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_loss_on_cuda_matches_the_float64_reference(monkeypatch, allow_tf32, precision, path):
    dtype, autocast, tf32, tolerances = PRECISIONS[precision]
    allow_tf32(tf32)
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", N * ROWS_PER_CHUNK)
    image, text = (t.to(CUDA, dtype) for t in _pairs(N, D, seed=1))

    def loss(x, y, s):
        with torch.autocast("cuda", dtype=autocast) if autocast else contextlib.nullcontext():
            return CloobLoss(hopfield_beta=BETA, memory_efficient=path == "chunked")(x, y, s)

    got = _value_and_grads(loss, image, text, torch.tensor(INV_TAU, device=CUDA))
    assert got[0].dtype == torch.float32 and got[0].device == CUDA
    assert got[1].dtype == got[2].dtype == dtype
    errors = _relative_errors(got, _reference(dtype))
    print(f"{precision} {path}: relative errors (value, d image, d text, d inv_tau) {errors}")
    _assert_within(errors, tolerances)


def test_chunked_loss_at_the_real_chunk_budget_as_training_runs_it(allow_tf32):
    # N² > CHUNK_ELEMENTS: CloobLoss() picks the chunked path itself, blocks of 2,730 rows.
    n, d = 6144, 64
    assert n * n > loss_module.CHUNK_ELEMENTS >= 2 * n
    allow_tf32(True)
    image, text = (t.to(torch.bfloat16) for t in _pairs(n, d, seed=3))

    def loss(x, y, s):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return CloobLoss(hopfield_beta=BETA)(x, y, s)

    got = _value_and_grads(loss, image.to(CUDA), text.to(CUDA), torch.tensor(INV_TAU, device=CUDA))
    # Reference: the direct path in float64 on the CPU, which test_loss.py holds to 1e-10 of the
    # loop-by-loop reference (too slow at this N).
    want = _value_and_grads(CloobLoss(hopfield_beta=BETA, memory_efficient=False), image.double(), text.double(),
                            torch.tensor(INV_TAU, dtype=torch.float64))
    errors = _relative_errors(got, want)
    print(f"N = {n}, bf16 + TF32, chunked: relative errors {errors}")
    # The 1/τ gradient sums N² float32 terms that nearly cancel: 4.6e-3 on the CPU for these inputs.
    _assert_within(errors, (1e-4, 1e-2, 2e-2))


def _peak_mib(n: int, d: int, memory_efficient: bool) -> float:
    """Peak CUDA memory of one forward + backward above its [n, d] inputs, in MiB."""
    generator = torch.Generator(device=CUDA).manual_seed(n)
    image = F.normalize(torch.randn(n, d, device=CUDA, generator=generator), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(n, d, device=CUDA, generator=generator), dim=-1).requires_grad_()
    torch.cuda.synchronize(CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    before = torch.cuda.memory_allocated(CUDA)
    CloobLoss(hopfield_beta=BETA, memory_efficient=memory_efficient)(image, text, torch.tensor(INV_TAU, device=CUDA)).backward()
    torch.cuda.synchronize(CUDA)
    peak = torch.cuda.max_memory_allocated(CUDA) - before
    del image, text
    torch.cuda.empty_cache()
    return peak / 2 ** 20


def test_chunked_peak_memory_grows_linearly_in_n_the_direct_one_quadratically():
    d = 256
    chunked = {n: _peak_mib(n, d, True) for n in (8192, 16384, 32768, 65536)}
    direct = {n: _peak_mib(n, d, False) for n in (4096, 8192)}
    print(f"peak MiB above the inputs, d = {d}: chunked {chunked}, direct {direct}")
    # The measurement sees quadratic growth: the direct path's [N, N] matrices.
    assert direct[8192] > 3 * direct[4096], direct
    # Chunked blocks hold CHUNK_ELEMENTS at these sizes; everything else is O(N·d). Memory that is
    # a maximum of a + b·N terms (a, b ≥ 0) at most doubles when N doubles; N² would quadruple it.
    sizes = sorted(chunked)
    for small, large in zip(sizes, sizes[1:]):
        assert chunked[large] <= 2 * chunked[small], chunked


@pytest.fixture
def nccl_group():
    """A one-rank NCCL process group on GPU 0 (what a one-GPU job under a launcher has)."""
    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    torch.cuda.set_device(CUDA)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=CUDA)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_training_step_through_nccl_collectives(nccl_group):
    assert dist.get_backend() == "nccl"
    layer = torch.nn.Linear(16, 16).to(CUDA)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    # One rank: CloobLoss gathers nothing (OpenCLIP's ClipLoss neither); its value is the plain one.
    loss_fn = CloobLoss(hopfield_beta=BETA, rank=0, world_size=1)
    guard = NonFiniteGuard(max_consecutive=1)
    guard.attach(optimizer, loss_fn)
    images, texts = (t.float().to(CUDA) for t in _pairs(32, 16, seed=5))

    def step(factor: float) -> torch.Tensor:
        optimizer.zero_grad()
        losses = loss_fn(F.normalize(layer(images), dim=-1) * factor, texts, torch.tensor(INV_TAU, device=CUDA),
                         output_dict=True)
        sum(losses.values()).backward()
        optimizer.step()
        return losses["cloob_loss"].detach()

    before = {name: value.clone() for name, value in layer.state_dict().items()}
    assert torch.isnan(step(float("nan")))
    assert torch.equal(layer.weight, before["weight"])  # the guard dropped the step
    assert guard.end_step(0) is True  # its verdict went through an NCCL all-reduce on the GPU
    value = step(1.0)
    assert guard.end_step(1) is False and not torch.equal(layer.weight, before["weight"])
    plain = CloobLoss(hopfield_beta=BETA)(F.normalize(F.linear(images, before["weight"], before["bias"]), dim=-1),
                                          texts, torch.tensor(INV_TAU, device=CUDA))
    torch.testing.assert_close(value, plain.detach(), rtol=1e-6, atol=1e-7)
    assert any_rank(torch.tensor(True, device=CUDA)) and not any_rank(torch.tensor(False, device=CUDA))
    assert not any_rank(False) and sum_over_ranks(7) == 7


def test_preemption_is_agreed_through_nccl(nccl_group):
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR1, signal.SIGTERM)}
    preemption = PreemptionSignal()
    try:
        preemption.install()
        assert preemption.agreed() is False
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.agreed() is True and preemption.describe() == "SIGUSR1"
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
