"""CloobLoss, its ablation variants, hopfield_retrieval, info_loob and info_nce against the float64
reference and the method's properties."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import open_clip_cloob.loss as loss_module
from cloob_reference import (
    reference_cloob, reference_hopfield, reference_info_loob, reference_info_nce, reference_spread, unit_rows)
from open_clip_cloob import (LOSS_VARIANTS, CloobLoss, cloob_loss, collapsed_loss, hopfield_retrieval, info_loob,
                             info_nce, similarity_spread)

CASES = [  # N, d, beta, inv_tau
    (2, 3, 8.0, 30.0),
    (5, 8, 1.0, 1.0),
    (7, 16, 14.3, 14.3),
    (16, 32, 8.0, 100.0),
    (12, 4, 0.5, 30.0),
]


def _loss_and_grads(fn, x, y, inv_tau):
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    scale = torch.tensor(inv_tau, dtype=x.dtype, requires_grad=True)
    loss = fn(x, y, scale)
    loss.backward()
    return loss.detach(), x.grad, y.grad, scale.grad


@pytest.mark.parametrize("n,d,beta,inv_tau", CASES)
def test_float64_matches_reference(n, d, beta, inv_tau):
    x, y = unit_rows(n, d, seed=n), unit_rows(n, d, seed=n + 100)
    ours = _loss_and_grads(CloobLoss(hopfield_beta=beta), x, y, inv_tau)
    ref = _loss_and_grads(lambda a, b, s: reference_cloob(a, b, s, beta), x, y, inv_tau)
    assert ours[0].dtype == torch.float64
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,d,beta,inv_tau", CASES)
def test_float32_matches_float64_reference(n, d, beta, inv_tau):
    x, y = unit_rows(n, d, seed=n), unit_rows(n, d, seed=n + 100)
    ours = _loss_and_grads(CloobLoss(hopfield_beta=beta), x.float(), y.float(), inv_tau)
    ref = _loss_and_grads(lambda a, b, s: reference_cloob(a, b, s, beta), x, y, inv_tau)
    assert ours[0].dtype == torch.float32
    # float32 rounding of inv_tau·similarity (up to 100) through exp/log: ~1e-5 relative.
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_functional_matches_module():
    x, y = unit_rows(9, 6, seed=1), unit_rows(9, 6, seed=2)
    assert cloob_loss(x, y, 30.0, 8.0) == CloobLoss(hopfield_beta=8.0)(x, y, torch.tensor(30.0, dtype=x.dtype))


def test_building_blocks_match_reference():
    s, m = unit_rows(5, 7, seed=3), unit_rows(9, 7, seed=4)
    torch.testing.assert_close(hopfield_retrieval(s, m, 3.0), reference_hopfield(s, m, 3.0), rtol=1e-12, atol=1e-12)
    a, b = unit_rows(9, 7, seed=5), unit_rows(9, 7, seed=6)
    torch.testing.assert_close(info_loob(a, b, 20.0), reference_info_loob(a, b, 20.0), rtol=1e-12, atol=1e-12)


def test_info_loob_offset_scores_a_slice_of_anchors_against_all_candidates():
    a, b = unit_rows(8, 5, seed=7), unit_rows(8, 5, seed=8)
    torch.testing.assert_close(info_loob(a[3:6], b, 10.0, positive_offset=3),
                               reference_info_loob(a, b, 10.0, anchor_indices=[3, 4, 5]), rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    x, y = unit_rows(4, 5, seed=9).requires_grad_(), unit_rows(4, 5, seed=10).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(CloobLoss(hopfield_beta=3.0), (x, y, scale))


# ---------------------------------------------------------------------------------------------
# Properties of the method


def test_permutation_of_both_modalities_leaves_loss_unchanged():
    x, y = unit_rows(11, 6, seed=11), unit_rows(11, 6, seed=12)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(perm, torch.arange(11))
    torch.testing.assert_close(cloob_loss(x[perm], y[perm], 30.0), cloob_loss(x, y, 30.0), rtol=1e-12, atol=1e-12)


def test_retrieval_small_beta_tends_to_normalised_mean_of_memory():
    s, m = unit_rows(6, 5, seed=13), unit_rows(10, 5, seed=14)
    mean = F.normalize(m.mean(dim=0), dim=0).expand(6, -1)
    torch.testing.assert_close(hopfield_retrieval(s, m, 1e-9), mean, rtol=0, atol=1e-8)
    assert not torch.allclose(hopfield_retrieval(s, m, 1.0), mean, atol=1e-3)


def test_retrieval_large_beta_with_state_equal_memory_returns_state():
    m = unit_rows(10, 5, seed=15)
    torch.testing.assert_close(hopfield_retrieval(m, m, 1e4), m, rtol=0, atol=1e-10)


def test_zero_similarities_give_log_n_minus_one():
    n, d = 6, 12
    a = torch.eye(d, dtype=torch.float64)[:n]
    b = torch.eye(d, dtype=torch.float64)[n:2 * n]
    torch.testing.assert_close(info_loob(a, b, 30.0), torch.tensor(math.log(n - 1), dtype=torch.float64))


@pytest.mark.parametrize("n", [2, 64, 512])
def test_collinear_embeddings_give_the_zero_similarity_value(n):
    # Identical embeddings make every retrieval identical: positives and negatives score alike,
    # which is where an untrained model starts (spec: 0.416 for N = 512, inv_tau = 30).
    x = F.normalize(torch.ones(n, 16), dim=-1)
    expected = 2 * math.log(n - 1) / 30.0
    torch.testing.assert_close(cloob_loss(x, x, 30.0).item(), expected, rtol=1e-5, atol=1e-6)
    if n == 512:
        assert round(expected, 3) == 0.416


@pytest.mark.parametrize("delta", [0.1, 5.0, 100.0])
def test_raising_a_positive_lowers_loss_by_delta_over_n_without_saturation(delta):
    # Orthogonal anchors let B_i move along A_i: A_i·B_i rises by delta, every A_j·B_i (j != i) stays.
    n, d, inv_tau = 6, 10, 30.0
    anchors = torch.eye(d, dtype=torch.float64)[:n]
    candidates = unit_rows(n, d, seed=16)
    raised = candidates.clone()
    raised[2] += delta * anchors[2]
    before = info_loob(anchors, candidates, inv_tau) / inv_tau
    after = info_loob(anchors, raised, inv_tau) / inv_tau
    torch.testing.assert_close(before - after, torch.tensor(delta / n, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_loss_goes_negative_for_well_separated_pairs():
    x = torch.eye(8, dtype=torch.float64)  # x_i = y_i, all pairs orthogonal
    loss = cloob_loss(x, x, 30.0, 50.0)
    # Hop returns X itself, so L = 2 (τ log(N-1) - 1) = 2 (log 7 / 30 - 1).
    torch.testing.assert_close(loss, torch.tensor(2 * (math.log(7) / 30 - 1), dtype=torch.float64))
    assert loss < 0


# ---------------------------------------------------------------------------------------------
# Precision and input checks


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_autocast_inputs_are_computed_in_float32(half):
    x, y = unit_rows(32, 16, seed=17).to(half), unit_rows(32, 16, seed=18).to(half)
    with torch.autocast("cpu", dtype=half):
        got = cloob_loss(x, y, torch.tensor(30.0))
    want = cloob_loss(x.float(), y.float(), torch.tensor(30.0))
    assert got.dtype == torch.float32
    # The same inputs in float32: only summation order differs. Half-precision internals would be
    # off by ~1e-2 (bf16 keeps 8 bits of mantissa).
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_autocast_gradients_reach_half_precision_features():
    x = unit_rows(8, 4, seed=19).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cloob_loss(x, x.detach(), torch.tensor(30.0)).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_output_dict_key():
    x = unit_rows(4, 3, seed=20)
    out = CloobLoss()(x, x, torch.tensor(30.0, dtype=x.dtype), output_dict=True)
    assert list(out) == ["cloob_loss"]


@pytest.mark.parametrize("x,y,message", [
    (torch.zeros(4, 3), torch.zeros(5, 3), r"same shape|shape \[batch, dim\]"),
    (torch.zeros(4), torch.zeros(4), r"shape \[batch, dim\]"),
    (torch.zeros(1, 3), torch.zeros(1, 3), "at least 2"),
])
def test_bad_features_raise(x, y, message):
    with pytest.raises(ValueError, match=message):
        CloobLoss()(x, y, torch.tensor(30.0))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="hopfield_beta"):
        CloobLoss(hopfield_beta=beta)


def test_logit_bias_is_refused():
    x = unit_rows(4, 3, seed=21)
    with pytest.raises(ValueError, match="logit_bias"):
        CloobLoss()(x, x, torch.tensor(30.0), logit_bias=torch.tensor(-10.0))


# ---------------------------------------------------------------------------------------------
# The paper's ablation grid: InfoLOOB or InfoNCE, with or without the Hopfield retrieval

VARIANTS = [  # objective, hopfield: the three new corners (the default is tested above)
    ("infonce", True),
    ("infoloob", False),
    ("infonce", False),
]


def _variant_id(variant):
    return f"{variant[0]}-{'hopfield' if variant[1] else 'plain'}"


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
@pytest.mark.parametrize("n,d,beta,inv_tau", CASES[:3])
def test_variant_float64_matches_reference(variant, n, d, beta, inv_tau):
    objective, hopfield = variant
    x, y = unit_rows(n, d, seed=n), unit_rows(n, d, seed=n + 100)
    ours = _loss_and_grads(CloobLoss(hopfield_beta=beta, objective=objective, hopfield=hopfield), x, y, inv_tau)
    ref = _loss_and_grads(
        lambda a, b, s: reference_cloob(a, b, s, beta, objective=objective, hopfield=hopfield), x, y, inv_tau)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_variant_float32_matches_float64_reference(variant):
    objective, hopfield = variant
    x, y = unit_rows(16, 32, seed=1), unit_rows(16, 32, seed=2)
    ours = _loss_and_grads(CloobLoss(objective=objective, hopfield=hopfield), x.float(), y.float(), 30.0)
    ref = _loss_and_grads(lambda a, b, s: reference_cloob(a, b, s, 8.0, objective=objective, hopfield=hopfield),
                          x, y, 30.0)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_variant_gradcheck_float64(variant):
    objective, hopfield = variant
    x, y = unit_rows(3, 4, seed=9).requires_grad_(), unit_rows(3, 4, seed=10).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(CloobLoss(hopfield_beta=3.0, objective=objective, hopfield=hopfield), (x, y, scale))


@pytest.mark.parametrize("variant", VARIANTS + [("infoloob", True)], ids=_variant_id)
def test_variant_functional_matches_module(variant):
    objective, hopfield = variant
    x, y = unit_rows(9, 6, seed=1), unit_rows(9, 6, seed=2)
    module = CloobLoss(hopfield_beta=4.0, objective=objective, hopfield=hopfield)
    assert cloob_loss(x, y, 30.0, 4.0, objective, hopfield) == module(x, y, torch.tensor(30.0, dtype=x.dtype))


def test_loss_variants_name_the_grid_corners():
    assert dict(LOSS_VARIANTS) == {
        "cloob": {"objective": "infoloob", "hopfield": True},
        "cloob-infonce": {"objective": "infonce", "hopfield": True},
        "infoloob": {"objective": "infoloob", "hopfield": False},
        "infonce": {"objective": "infonce", "hopfield": False},
    }
    x, y = unit_rows(6, 4, seed=3), unit_rows(6, 4, seed=4)
    assert CloobLoss(**LOSS_VARIANTS["cloob"])(x, y, 30.0) == CloobLoss()(x, y, 30.0)  # the defaults are CLOOB
    values = {name: CloobLoss(**kwargs)(x, y, 30.0).item() for name, kwargs in LOSS_VARIANTS.items()}
    assert len(set(values.values())) == 4, values
    # The fourth corner is OpenCLIP's ClipLoss on CLOOB's scale: 2τ · ClipLoss.
    clip = ClipLoss()(x.float(), y.float(), torch.tensor(30.0)).item()
    assert values["infonce"] == pytest.approx(2 * clip / 30.0, rel=1e-5)


@pytest.mark.parametrize("n,d,inv_tau", [(2, 3, 1.0), (8, 16, 30.0), (13, 5, 100.0)])
def test_infonce_without_hopfield_is_two_tau_times_openclip_clip_loss(n, d, inv_tau):
    x, y = unit_rows(n, d, seed=n), unit_rows(n, d, seed=n + 1)
    ours = _loss_and_grads(CloobLoss(objective="infonce", hopfield=False), x, y, inv_tau)
    clip = _loss_and_grads(lambda a, b, s: 2 / s * ClipLoss()(a, b, s), x, y, inv_tau)
    for got, want in zip(ours, clip):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_info_nce_matches_reference_with_and_without_offset():
    a, b = unit_rows(9, 7, seed=5), unit_rows(9, 7, seed=6)
    torch.testing.assert_close(info_nce(a, b, 20.0), reference_info_nce(a, b, 20.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info_nce(a[3:6], b, 10.0, positive_offset=3),
                               reference_info_nce(a, b, 10.0, anchor_indices=[3, 4, 5]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("i", [0, 4, 8])
def test_info_nce_of_one_anchor_is_softplus_of_its_info_loob(i):
    # log(e^p + Σ_{j≠i} e^{s_j}) − p = log(1 + e^{log Σ_{j≠i} e^{s_j} − p}): InfoNCE = softplus(InfoLOOB).
    a, b = unit_rows(9, 4, seed=7), unit_rows(9, 4, seed=8)
    anchor = a[i:i + 1]
    torch.testing.assert_close(info_nce(anchor, b, 30.0, i), F.softplus(info_loob(anchor, b, 30.0, i)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_variant_permutation_of_both_modalities_leaves_loss_unchanged(variant):
    objective, hopfield = variant
    x, y = unit_rows(11, 6, seed=11), unit_rows(11, 6, seed=12)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cloob_loss(x[perm], y[perm], 30.0, 8.0, objective, hopfield),
                               cloob_loss(x, y, 30.0, 8.0, objective, hopfield), rtol=1e-12, atol=1e-12)


def test_info_nce_saturates_where_info_loob_does_not():
    # InfoLOOB's non-saturation, contrasted with InfoNCE's saturation: raising one positive by delta lowers τ·ℓ_LOOB by
    # exactly delta/n, while τ·ℓ_NCE gains ever less (its positive term cancels in the softmax).
    n, d, inv_tau = 6, 10, 30.0
    anchors = torch.eye(d, dtype=torch.float64)[:n]
    candidates = unit_rows(n, d, seed=16)
    gains = {}
    for name, score in [("loob", info_loob), ("nce", info_nce)]:
        values = []
        for delta in [0.0, 0.1, 0.2, 10.0, 10.1]:
            raised = candidates.clone()
            raised[2] += delta * anchors[2]
            values.append((score(anchors, raised, inv_tau) / inv_tau).item())
        gains[name] = (values[0] - values[1], values[1] - values[2], values[3] - values[4])
    assert gains["loob"] == pytest.approx((0.1 / n,) * 3, rel=1e-9)
    assert 0 < gains["nce"][0] < 0.1 / n and gains["nce"][2] < 1e-12
    assert gains["nce"][1] < gains["nce"][0]


def test_unknown_objective_raises():
    with pytest.raises(ValueError, match="objective must be one of infoloob, infonce; got 'info-loob'"):
        CloobLoss(objective="info-loob")
    with pytest.raises(ValueError, match="objective must be one of infoloob, infonce; got 'InfoNCE'"):
        cloob_loss(unit_rows(3, 2, seed=0), unit_rows(3, 2, seed=1), 30.0, objective="InfoNCE")


# ---------------------------------------------------------------------------------------------
# The value of a collapsed model


def test_collapsed_loss_formula():
    assert collapsed_loss(512, 30.0) == pytest.approx(2 * math.log(511) / 30)
    assert round(collapsed_loss(512, 30.0), 3) == 0.416  # 2·log(511)/30, the value of a collapsed batch of 512
    assert collapsed_loss(512, 30.0, "infonce") == pytest.approx(2 * math.log(512) / 30)
    assert collapsed_loss(2, 10.0) == 0.0


@pytest.mark.parametrize("variant", VARIANTS + [("infoloob", True)], ids=_variant_id)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["direct", "chunked"])
def test_identical_embeddings_give_the_collapsed_loss(variant, memory_efficient, monkeypatch):
    objective, hopfield = variant
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 64)
    x = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=-1).expand(40, 16)
    loss_fn = CloobLoss(objective=objective, hopfield=hopfield, memory_efficient=memory_efficient)
    torch.testing.assert_close(loss_fn(x, x, 30.0).item(), collapsed_loss(40, 30.0, objective), rtol=1e-5, atol=1e-6)
    # Pairs as similar as non-pairs, with the pairs' own similarity different from 1: the same value.
    y = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)), dim=-1).expand(40, 16)
    torch.testing.assert_close(loss_fn(x, y, 30.0).item(), collapsed_loss(40, 30.0, objective), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,message", [((1, 30.0), "batch_size must be at least 2"),
                                          ((8, 30.0, "nce"), "objective must be one of")])
def test_collapsed_loss_bad_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        collapsed_loss(*args)


@pytest.mark.parametrize("n,d", [(2, 3), (7, 4), (13, 6)])
def test_similarity_spread_matches_the_pairwise_definition(n, d):
    patterns = unit_rows(n, d, seed=n) * torch.linspace(0.5, 1.5, n, dtype=torch.float64)[:, None]
    assert similarity_spread(patterns).item() == pytest.approx(reference_spread(patterns), rel=1e-10, abs=1e-14)


def test_beta_from_spread_must_be_positive():
    with pytest.raises(ValueError, match="beta_from_spread"):
        CloobLoss(beta_from_spread=0.0)
