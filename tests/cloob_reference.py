"""An independent float64 reference of the CLOOB loss, its ablations and its diagnostics, written
straight from the paper's formulas (as the loss module's docstring states them) with explicit sums
and loops, sharing no code with ``open_clip_cloob.loss``."""
import math

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


def reference_info_nce(anchors, candidates, inv_tau, anchor_indices=None):
    """(1/|I|) Σ_{i∈I} [−inv_tau A_i·B_i + log Σ_j exp(inv_tau A_i·B_j)], the positive included."""
    n = candidates.shape[0]
    anchor_indices = range(n) if anchor_indices is None else anchor_indices
    terms = []
    for i in anchor_indices:
        everyone = [torch.exp(inv_tau * (anchors[i] @ candidates[j])) for j in range(n)]
        terms.append(-inv_tau * (anchors[i] @ candidates[i]) + torch.log(torch.stack(everyone).sum()))
    return torch.stack(terms).sum() / len(terms)


def reference_cloob(x, y, inv_tau, beta, anchor_indices=None, objective="infoloob", hopfield=True, text_beta=None):
    """τ [ℓ(U_x, U_y) + ℓ(V_y, V_x)] with U_x = Hop(X, X), U_y = Hop(Y, X), V_x = Hop(X, Y), V_y = Hop(Y, Y);
    without ``hopfield`` τ [ℓ(X, Y) + ℓ(Y, X)]; ℓ = InfoLOOB or InfoNCE (``objective``). ``beta`` is
    the β of the retrievals from image memory X, ``text_beta`` (default ``beta``) from text memory Y."""
    score = {"infoloob": reference_info_loob, "infonce": reference_info_nce}[objective]
    text_beta = beta if text_beta is None else text_beta
    if hopfield:
        u_x, u_y = reference_hopfield(x, x, beta), reference_hopfield(y, x, beta)
        v_x, v_y = reference_hopfield(x, y, text_beta), reference_hopfield(y, y, text_beta)
    else:
        u_x, u_y, v_x, v_y = x, y, x, y
    return (score(u_x, u_y, inv_tau, anchor_indices) + score(v_y, v_x, inv_tau, anchor_indices)) / inv_tau


def reference_spread(patterns):
    """Standard deviation (population) of p_i·p_j over the ordered pairs i ≠ j."""
    n = patterns.shape[0]
    dots = [(patterns[i] @ patterns[j]).item() for i in range(n) for j in range(n) if i != j]
    mean = sum(dots) / len(dots)
    return math.sqrt(sum((dot - mean) ** 2 for dot in dots) / len(dots))


def reference_hopfield_diagnostics(x, y, beta, text_beta=None):
    """The diagnostics of ``hopfield_diagnostics`` by their definitions, pair by pair."""
    x = torch.stack([row / torch.sqrt((row * row).sum()) for row in x])
    y = torch.stack([row / torch.sqrt((row * row).sum()) for row in y])
    n = x.shape[0]

    text_beta = beta if text_beta is None else text_beta

    def attended(states, memory, beta):
        counts = []
        for s in states:
            weights = torch.stack([torch.exp(beta * (s @ m)) for m in memory])
            p = weights / weights.sum()
            counts.append(math.exp(-sum(p_j * math.log(p_j) for p_j in p.tolist())))
        return sum(counts) / n

    def mean_off_diagonal(a, b):
        return sum((a[i] @ b[j]).item() for i in range(n) for j in range(n) if i != j) / (n * (n - 1))

    return {
        "attended_patterns_image_from_images": attended(x, x, beta),
        "attended_patterns_text_from_images": attended(y, x, beta),
        "attended_patterns_image_from_texts": attended(x, y, text_beta),
        "attended_patterns_text_from_texts": attended(y, y, text_beta),
        "mean_cosine_images": mean_off_diagonal(x, x),
        "mean_cosine_texts": mean_off_diagonal(y, y),
        "positive_minus_negative": sum((x[i] @ y[i]).item() for i in range(n)) / n - mean_off_diagonal(x, y),
        "spread_images": reference_spread(x),
        "spread_texts": reference_spread(y),
        "beta_images": beta,
        "beta_texts": text_beta,
    }


def unit_rows(n, d, seed, dtype=torch.float64):
    """[n, d] random rows of unit length."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)
