"""The loss's opt-in remedies against the float64 reference: a tensor (learnable) β, one β per memory,
and the Hopfield weight λ of a warm-in, on the direct and the memory-efficient path."""
import math

import pytest
import torch

import open_clip_cloob.loss as loss_module
from cloob_reference import reference_cloob, reference_hopfield_diagnostics, unit_rows
from open_clip_cloob import CloobLoss, cloob_loss, hopfield_retrieval

N, D, INV_TAU = 9, 6, 30.0
PATHS = [False, True]  # memory_efficient


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    # Blocks of at most 2·N elements: the memory-efficient path runs several odd-sized chunks.
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 2 * N)


def _batch(seed=0):
    return unit_rows(N, D, seed=seed), unit_rows(N, D, seed=seed + 100)


def _grads(fn, x, y, *betas):
    """Value and gradients (features, temperature, each β tensor) of ``fn(x, y, scale, *betas)``."""
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    scale = torch.tensor(INV_TAU, dtype=x.dtype, requires_grad=True)
    betas = [torch.tensor(beta, dtype=x.dtype, requires_grad=True) for beta in betas]
    loss = fn(x, y, scale, *betas)
    loss.backward()
    return (loss.detach(), x.grad, y.grad, scale.grad, *(beta.grad for beta in betas))


def _close(got, want, rtol=1e-10, atol=1e-12):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("memory_efficient", PATHS, ids=["direct", "chunked"])
def test_tensor_beta_gives_the_number_betas_loss_and_its_own_gradient(memory_efficient):
    x, y = _batch()
    loss = CloobLoss(memory_efficient=memory_efficient)
    ours = _grads(lambda a, b, s, beta: loss_module._loss(a, b, s, beta, "infoloob", True,
                                                          loss._chunk_size(N, N)), x, y, 5.0)
    want = _grads(lambda a, b, s, beta: reference_cloob(a, b, s, beta), x, y, 5.0)
    _close(ours, want)
    assert ours[-1].abs() > 1e-6  # β does move the loss
    number = _grads(lambda a, b, s: cloob_loss(a, b, s, 5.0, chunk_size=loss._chunk_size(N, N)), x, y)
    _close(ours[:4], number)


@pytest.mark.parametrize("memory_efficient", PATHS, ids=["direct", "chunked"])
@pytest.mark.parametrize("objective", ["infoloob", "infonce"])
def test_one_beta_per_memory_matches_the_reference_with_both_gradients(memory_efficient, objective):
    x, y = _batch(1)
    chunk_size = CloobLoss(memory_efficient=memory_efficient)._chunk_size(N, N)
    ours = _grads(lambda a, b, s, image_beta, text_beta: cloob_loss(
        a, b, s, (image_beta, text_beta), objective=objective, chunk_size=chunk_size), x, y, 3.0, 12.0)
    want = _grads(lambda a, b, s, image_beta, text_beta: reference_cloob(
        a, b, s, image_beta, objective=objective, text_beta=text_beta), x, y, 3.0, 12.0)
    _close(ours, want)
    assert ours[-2] != pytest.approx(float(ours[-1]))  # two βs, two different gradients


def test_chunked_retrieval_gradcheck_in_beta():
    state, memory = unit_rows(5, 4, seed=3), unit_rows(7, 4, seed=4)
    beta = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, m, b: hopfield_retrieval(s, m, b, chunk_size=3),
                                    (state.requires_grad_(), memory.requires_grad_(), beta))


@pytest.mark.parametrize("memory_efficient", PATHS, ids=["direct", "chunked"])
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_hopfield_weight_blends_the_loss_without_and_with_the_retrieval(memory_efficient, weight):
    x, y = _batch(2)
    loss = CloobLoss(hopfield_beta=8.0, memory_efficient=memory_efficient, hopfield_weight=weight)
    ours = _grads(loss, x, y)
    want = _grads(lambda a, b, s: (1 - weight) * reference_cloob(a, b, s, 8.0, hopfield=False)
                  + weight * reference_cloob(a, b, s, 8.0), x, y)
    _close(ours, want)


def test_hopfield_weight_zero_is_the_loss_without_retrieval_and_one_the_papers():
    x, y = _batch(3)
    assert cloob_loss(x, y, INV_TAU, hopfield_weight=0.0) == cloob_loss(x, y, INV_TAU, hopfield=False)
    assert cloob_loss(x, y, INV_TAU, hopfield_weight=1.0) == cloob_loss(x, y, INV_TAU)
    loss = CloobLoss(memory_efficient=False)
    loss.hopfield_weight = 0.0  # what a warm-in's schedule sets before its first step
    assert loss(x, y, INV_TAU) == cloob_loss(x, y, INV_TAU, hopfield=False)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), True])
def test_bad_hopfield_weight_raises(weight):
    x, y = _batch()
    with pytest.raises(ValueError, match="hopfield_weight"):
        cloob_loss(x, y, INV_TAU, hopfield_weight=weight)
    with pytest.raises(ValueError, match="hopfield_weight"):
        CloobLoss(hopfield_weight=weight)
    loss = CloobLoss()
    loss.hopfield_weight = weight
    with pytest.raises(ValueError, match="hopfield_weight"):
        loss(x, y, INV_TAU)


def test_learn_beta_takes_exp_of_the_models_parameters_and_trains_them():
    x, y = _batch(4)
    log_image = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    log_text = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    loss = CloobLoss(hopfield_beta=8.0)
    loss.learn_beta(log_image, log_text)
    value = loss(x, y, INV_TAU)
    value.backward()
    torch.testing.assert_close(value, reference_cloob(x, y, INV_TAU, math.exp(2.0), text_beta=math.exp(1.0)))
    assert log_image.grad is not None and log_text.grad is not None
    want = reference_hopfield_diagnostics(x, y, math.exp(2.0), math.exp(1.0))
    assert loss.diagnostics(x, y) == pytest.approx(want, rel=1e-10, abs=1e-12)

    shared = CloobLoss()
    shared.learn_beta(log_image)
    image_beta, text_beta = shared.betas()
    assert image_beta is text_beta  # one β: the cross-modal retrievals share one similarity product
    torch.testing.assert_close(shared(x, y, INV_TAU), reference_cloob(x, y, INV_TAU, image_beta.detach()))


@pytest.mark.parametrize("keywords", [{"hopfield": False}, {"beta_from_spread": 2.0}])
def test_learn_beta_is_refused_where_beta_has_no_role(keywords):
    with pytest.raises(ValueError, match="learnable β needs"):
        CloobLoss(**keywords).learn_beta(torch.nn.Parameter(torch.tensor(2.0)))


@pytest.mark.parametrize("beta,message", [
    (torch.ones(2), "0-dim floating tensor, got a tensor of shape \\(2,\\)"),
    (torch.tensor(3), "0-dim floating tensor"),
    ((1.0, 2.0, 3.0), "image memory β, text memory β"),
    ((1.0, -2.0), "must be > 0"),
])
def test_bad_betas_raise(beta, message):
    x, y = _batch()
    with pytest.raises(ValueError, match=message):
        cloob_loss(x, y, INV_TAU, beta)


def test_beta_from_spread_refuses_a_tensor_or_per_memory_beta():
    x, y = _batch()
    for beta in (torch.tensor(8.0, dtype=torch.float64), (4.0, 8.0)):
        with pytest.raises(ValueError, match="beta_from_spread replaces one constant hopfield_beta"):
            cloob_loss(x, y, INV_TAU, beta, beta_from_spread=2.0)
