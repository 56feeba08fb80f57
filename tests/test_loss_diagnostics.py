"""hopfield_diagnostics and CloobLoss.diagnostics against the float64 reference and their limits."""
import pytest
import torch
import torch.nn.functional as F

import open_clip_cloob.loss as loss_module
from cloob_reference import reference_hopfield_diagnostics, reference_spread, unit_rows
from open_clip_cloob import CloobLoss, hopfield_diagnostics

KEYS = {
    "attended_patterns_image_from_images", "attended_patterns_text_from_images",
    "attended_patterns_image_from_texts", "attended_patterns_text_from_texts",
    "mean_cosine_images", "mean_cosine_texts", "positive_minus_negative",
    "spread_images", "spread_texts", "beta_images", "beta_texts",
}
ATTENDED = sorted(k for k in KEYS if k.startswith("attended_patterns"))


@pytest.mark.parametrize("n,d,beta", [(2, 3, 8.0), (9, 5, 1.0), (16, 8, 14.3)])
def test_matches_float64_reference(n, d, beta):
    # Rows of different lengths: cosines and the retrievals' scores use the unit rows.
    x = unit_rows(n, d, seed=n) * torch.linspace(0.5, 2.0, n, dtype=torch.float64)[:, None]
    y = unit_rows(n, d, seed=n + 1) + 0.5 * unit_rows(n, d, seed=n)
    got = hopfield_diagnostics(x, y, beta)
    want = reference_hopfield_diagnostics(x, y, beta)
    assert got.keys() == KEYS and all(type(v) is float for v in got.values())
    # A spread is the square root of a variance: a variance at rounding level (n = 2: both ordered
    # pairs have the same dot product, σ = 0) becomes ~1e-8.
    spreads = {"spread_images", "spread_texts"}
    assert {k: got[k] for k in spreads} == pytest.approx({k: want[k] for k in spreads}, rel=1e-10, abs=1e-7)
    assert {k: got[k] for k in KEYS - spreads} == pytest.approx({k: want[k] for k in KEYS - spreads}, rel=1e-10, abs=1e-12)


def test_chunked_blocks_give_the_same_values(monkeypatch):
    x, y = unit_rows(23, 6, seed=1), unit_rows(23, 6, seed=2)
    whole = hopfield_diagnostics(x, y, 8.0)
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 50)  # blocks of 2 rows
    assert hopfield_diagnostics(x, y, 8.0) == pytest.approx(whole, rel=1e-12, abs=1e-14)


def test_small_beta_attends_to_all_patterns():
    x, y = unit_rows(12, 5, seed=3), unit_rows(12, 5, seed=4)
    got = hopfield_diagnostics(x, y, 1e-9)
    assert [got[k] for k in ATTENDED] == pytest.approx([12.0] * 4, rel=1e-7)


def test_large_beta_with_distinct_states_attends_to_one_pattern():
    x, y = unit_rows(10, 6, seed=5), unit_rows(10, 6, seed=6)
    got = hopfield_diagnostics(x, y, 1e4)
    # States = memory: each state's own pattern wins by β·(1 − max cosine to another row).
    assert got["attended_patterns_image_from_images"] == pytest.approx(1.0, abs=1e-9)
    assert got["attended_patterns_text_from_texts"] == pytest.approx(1.0, abs=1e-9)
    # Any state with a unique nearest stored pattern ends up attending to it alone.
    assert 1.0 <= got["attended_patterns_text_from_images"] < 1.01


def test_identical_embeddings():
    x = F.normalize(torch.randn(1, 8, generator=torch.Generator().manual_seed(7)), dim=-1).expand(6, 8)
    got = hopfield_diagnostics(x, x, 8.0)
    assert got["mean_cosine_images"] == pytest.approx(1.0, abs=1e-6)
    assert got["mean_cosine_texts"] == pytest.approx(1.0, abs=1e-6)
    assert got["positive_minus_negative"] == pytest.approx(0.0, abs=1e-6)
    assert [got[k] for k in ATTENDED] == pytest.approx([6.0] * 4, rel=1e-6)  # all scores equal


def test_matched_orthogonal_pairs():
    x = torch.eye(5, dtype=torch.float64)
    got = hopfield_diagnostics(x, x, 8.0)
    assert got["mean_cosine_images"] == 0.0 and got["positive_minus_negative"] == 1.0


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_and_autocast_inputs_computed_in_float32(half):
    x, y = unit_rows(8, 4, seed=8).to(half).requires_grad_(), unit_rows(8, 4, seed=9).to(half)
    with torch.autocast("cpu", dtype=half):
        got = hopfield_diagnostics(x, y, 8.0)
    assert got == pytest.approx(hopfield_diagnostics(x.detach().float(), y.float(), 8.0), rel=1e-6, abs=1e-7)


def test_module_diagnostics_use_its_beta():
    x, y = unit_rows(7, 4, seed=10).requires_grad_(), unit_rows(7, 4, seed=11)
    assert CloobLoss(hopfield_beta=3.0).diagnostics(x, y) == hopfield_diagnostics(x, y, 3.0)


@pytest.mark.parametrize("x,y,beta,message", [
    (torch.zeros(1, 3), torch.zeros(1, 3), 8.0, "at least 2"),
    (torch.zeros(4, 3), torch.zeros(3, 3), 8.0, r"shape \[batch, dim\]"),
    (torch.zeros(4, 3), torch.zeros(4, 3), 0.0, "hopfield_beta"),
])
def test_bad_input_raises(x, y, beta, message):
    with pytest.raises(ValueError, match=message):
        hopfield_diagnostics(x, y, beta)


def test_beta_from_spread_matches_the_reference_with_each_memorys_beta():
    x, y = unit_rows(11, 5, seed=7), unit_rows(11, 5, seed=8) + 0.3 * unit_rows(11, 5, seed=7)
    y = F.normalize(y, dim=-1)
    got = hopfield_diagnostics(x, y, 8.0, beta_from_spread=2.0)
    spread_x, spread_y = reference_spread(x), reference_spread(y)
    want = reference_hopfield_diagnostics(x, y, 2.0 / spread_x, text_beta=2.0 / spread_y)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_beta_from_spread_keeps_attention_sharp_as_embeddings_become_collinear():
    # x_i = rownorm(c + ε z_i): as ε → 0 the pairwise cosines tend to 1 and their spread to 0.
    center, noise = unit_rows(1, 8, seed=9), unit_rows(32, 8, seed=10)
    attended = {}
    for epsilon in (1e-1, 3e-2, 1e-2):
        x = F.normalize(center + epsilon * noise, dim=-1)
        constant = hopfield_diagnostics(x, x, 8.0)["attended_patterns_image_from_images"]
        adaptive = hopfield_diagnostics(x, x, 8.0, beta_from_spread=2.0)["attended_patterns_image_from_images"]
        attended[epsilon] = (constant, adaptive)
    # A constant β attends ever more uniformly (→ 32 patterns); β = K/σ keeps the same attention.
    assert attended[1e-2][0] > 31.9 and attended[1e-1][0] < attended[1e-2][0]
    assert attended[1e-2][1] == pytest.approx(attended[1e-1][1], rel=0.05) and attended[1e-2][1] < 8
