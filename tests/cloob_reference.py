"""An independent float64 reference of the CLOOB loss, written straight from the spec's formulas
(cloob-spec.md §2) with explicit sums and loops, sharing no code with ``open_clip_cloob.loss``."""
import torch


def reference_hopfield(state, memory, beta):
    """Hop(S, M) = rownorm(softmax_rows(β S Mᵀ) M), one state pattern at a time."""
    rows = []
    for s in state:
        weights = torch.exp(beta * (memory @ s))
        weights = weights / weights.sum()
        retrieved = (weights[:, None] * memory).sum(dim=0)
        rows.append(retrieved / torch.sqrt((retrieved * retrieved).sum()))
    return torch.stack(rows)


def reference_info_loob(anchors, candidates, inv_tau, anchor_indices=None):
    """(1/|I|) Σ_{i∈I} [−inv_tau A_i·B_i + log Σ_{j≠i} exp(inv_tau A_i·B_j)], I = all rows by default."""
    n = candidates.shape[0]
    anchor_indices = range(n) if anchor_indices is None else anchor_indices
    terms = []
    for i in anchor_indices:
        negatives = [torch.exp(inv_tau * (anchors[i] @ candidates[j])) for j in range(n) if j != i]
        terms.append(-inv_tau * (anchors[i] @ candidates[i]) + torch.log(torch.stack(negatives).sum()))
    return torch.stack(terms).sum() / len(terms)


def reference_cloob(x, y, inv_tau, beta, anchor_indices=None):
    """τ [ℓ(U_x, U_y) + ℓ(V_y, V_x)] with U_x = Hop(X, X), U_y = Hop(Y, X), V_x = Hop(X, Y), V_y = Hop(Y, Y)."""
    u_x, u_y = reference_hopfield(x, x, beta), reference_hopfield(y, x, beta)
    v_x, v_y = reference_hopfield(x, y, beta), reference_hopfield(y, y, beta)
    loob = (reference_info_loob(u_x, u_y, inv_tau, anchor_indices)
            + reference_info_loob(v_y, v_x, inv_tau, anchor_indices))
    return loob / inv_tau


def unit_rows(n, d, seed, dtype=torch.float64):
    """[n, d] random rows of unit length."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)
