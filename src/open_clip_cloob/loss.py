"""CLOOB's loss (Fürst et al., NeurIPS 2022) and the paper's ablations, as pure functions and one module.

Notation (shapes in brackets): X [N, d] image and Y [N, d] text embeddings with unit rows, N the
global batch, ``inv_tau`` = 1/τ the inverse temperature (OpenCLIP's exponentiated ``logit_scale``),
β the Hopfield inverse temperature. For anchors A and candidates B (row i of both is a pair):

    InfoLOOB  ℓ_LOOB(A, B) = (1/N) Σ_i [ −inv_tau A_i·B_i + log Σ_{j≠i} exp(inv_tau A_i·B_j) ]
    InfoNCE   ℓ_NCE(A, B)  = (1/N) Σ_i [ −inv_tau A_i·B_i + log Σ_j   exp(inv_tau A_i·B_j) ]
    Hop(S, M) = rownorm(softmax_rows(β S Mᵀ) M)
    U_x = Hop(X, X),  U_y = Hop(Y, X),  V_x = Hop(X, Y),  V_y = Hop(Y, Y)

The paper's 2×2 ablation grid (InfoLOOB or InfoNCE, with or without the Hopfield retrieval) is one
formula with ℓ the chosen objective; the sum of two terms and the factor τ are the same everywhere,
so every variant is on CLOOB's scale:

    hopfield=True   L = τ · [ ℓ(U_x, U_y) + ℓ(V_y, V_x) ]    ("cloob", "cloob-infonce")
    hopfield=False  L = τ · [ ℓ(X, Y)     + ℓ(Y, X)     ]    ("infoloob"; with InfoNCE = 2τ·ClipLoss)

Only training uses the Hopfield step; inference uses the plain embeddings, exactly like CLIP.

Two opt-in remedies, not the paper's method, keep the paper's loss as an end point: a Hopfield
weight λ ∈ [0, 1] blends the two rows, L = (1 − λ) · L_hopfield=False + λ · L_hopfield=True (a
warm-in raises λ from 0 to 1 over the first steps), and β may be a tensor, even one per memory
(β of the retrievals from image memory, β of those from text memory), through which the loss is
differentiable, so a model can learn it.

Layout: each primitive has one home holding its direct and chunked (memory-efficient) forms side
by side: the retrieval (:func:`hopfield_retrieval`, ``_ChunkedRetrieval``, and
:func:`cross_hopfield_retrieval`, which shares X·Yᵀ between two retrievals) and the contrastive
score (``_contrastive`` and ``_ChunkedContrastive``, InfoLOOB and InfoNCE differing only in whether
the positive is left out; public as :func:`info_loob` and :func:`info_nce`; and
``_contrastive_both_ways``, which shares X·Yᵀ between ℓ(X, Y) and ℓ(Y, X) like ``ClipLoss``). A variant is a small
function that returns the two (anchors, candidates) pairs to score (``_retrieval_pairs``,
``_embedding_pairs``); ``_loss`` is the one implementation behind the pure function
:func:`cloob_loss` and every mode of :class:`CloobLoss`. Diagnostics of the Hopfield step
(:func:`hopfield_diagnostics`) and the value of a collapsed model (:func:`collapsed_loss`) close it.
"""
import inspect
import logging
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from open_clip.loss import gather_features

# The variants (settings.LOSS_VARIANTS: --loss name -> CloobLoss keywords), the objectives and the
# defaults live in the torch-free settings module, with the checks of every number the loss takes.
from .settings import (DEFAULT_HOPFIELD_BETA, LEAVES_OUT_POSITIVE, check_fraction, check_int_at_least,
                       check_objective, check_optional_positive, check_positive)

_logger = logging.getLogger(__name__)

# Largest [rows, memory] block the chunked path materialises (64 MiB in float32). The automatic
# choice uses the direct path while its biggest matrix stays within this budget.
CHUNK_ELEMENTS = 1 << 24
_NORMALIZE_EPS = 1e-12  # F.normalize's default

Pairs = Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
Gather = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
# A Hopfield β: a number, or a 0-dim tensor (learnable: the loss is differentiable in it).
Beta = Union[float, torch.Tensor]
# β of every retrieval, or (β of the retrievals from image memory, β of those from text memory).
Betas = Union[Beta, Tuple[Beta, Beta]]


def _chunks(n: int, chunk_size: int):
    return (slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size))


def chunk_rows(n_memory: int) -> int:
    """Rows per chunk so that a [rows, n_memory] block holds at most ``CHUNK_ELEMENTS`` (≥ 1 row)."""
    return max(1, CHUNK_ELEMENTS // n_memory)


def _softmax_rows_(scores: torch.Tensor) -> torch.Tensor:
    """Turn [r, m] scores into row softmax probabilities in place; return the [r] row log-sum-exps."""
    row_max = scores.amax(dim=1, keepdim=True)
    row_sum = scores.sub_(row_max).exp_().sum(dim=1, keepdim=True)
    scores.div_(row_sum)
    return (row_max + row_sum.log()).squeeze(1)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n, 1] row-wise dot products of two [n, d] tensors, without an [n, d] temporary."""
    return torch.einsum("ij,ij->i", a, b).unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# The Hopfield retrieval: direct and chunked


class _ChunkedRetrieval(torch.autograd.Function):
    """rownorm(softmax_rows(β S Mᵀ) M), ``chunk_size`` state rows at a time; backward recomputes
    each block from the saved row log-sum-exps (FlashAttention's scheme) instead of storing [n, m].
    The row normalisation is part of the function so that autograd keeps no [n, d] temporaries."""

    @staticmethod
    def forward(ctx, state, memory, beta, chunk_size):
        # A tensor β (learnable) is read once per call: the block products take a number.
        beta = float(beta)
        retrieved = state.new_empty(state.shape[0], memory.shape[1])
        lse = state.new_empty(state.shape[0])
        for rows in _chunks(state.shape[0], chunk_size):
            probs = torch.mm(state[rows], memory.T).mul_(beta)
            lse[rows] = _softmax_rows_(probs)
            torch.mm(probs, memory, out=retrieved[rows])
            del probs  # freed before the next block is allocated: one block alive, not two
        # As F.normalize: divide by max(‖o‖, eps).
        norms = retrieved.norm(dim=1, keepdim=True).clamp_min_(_NORMALIZE_EPS)
        unit = retrieved.div_(norms)
        ctx.save_for_backward(state, memory, unit, norms, lse)
        ctx.beta, ctx.chunk_size = beta, chunk_size
        return unit

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_unit):
        state, memory, unit, norms, lse = ctx.saved_tensors
        beta = ctx.beta
        # ∂L/∂β = Σ_ij ∂L/∂Z_ij (S Mᵀ)_ij for the scores Z = β S Mᵀ; only for a β that needs it.
        grad_beta = state.new_zeros(()) if ctx.needs_input_grad[2] else None
        # Through u = o / ‖o‖: dO = (dU − u (dU·u)) / ‖o‖ (rows clamped at eps: dU / eps). Built in
        # place, and row dot products via einsum: no [n, d] temporaries at the memory peak.
        # A clamped norm is a constant: no radial term (masked, not branched on: no host sync).
        radial = _row_dot(grad_unit, unit).masked_fill_(norms <= _NORMALIZE_EPS, 0)
        grad_out = torch.mul(unit, radial).neg_().add_(grad_unit).div_(norms)
        # Through softmax: dScores = P ∘ (dP − rowsum(dP ∘ P)), with rowsum(dP ∘ P) = dO_i · O_i.
        delta = _row_dot(grad_out, unit).mul_(norms)
        grad_state = torch.empty_like(state)
        grad_memory = torch.zeros_like(memory)
        for rows in _chunks(state.shape[0], ctx.chunk_size):
            probs = torch.addmm(lse[rows, None], state[rows], memory.T, beta=-1, alpha=beta).exp_()
            grad_memory.addmm_(probs.T, grad_out[rows])  # memory as values
            grad_scores = torch.mm(grad_out[rows], memory.T).sub_(delta[rows]).mul_(probs)
            if grad_beta is not None:
                grad_beta += torch.einsum("ij,ij->", grad_scores, torch.mm(state[rows], memory.T))
            torch.mm(grad_scores, memory, out=grad_state[rows]).mul_(beta)
            grad_memory.addmm_(grad_scores.T, state[rows], alpha=beta)  # memory as keys
            del probs, grad_scores  # freed before the next blocks are allocated
        return grad_state, grad_memory, grad_beta, None


def hopfield_retrieval(
        state: torch.Tensor,
        memory: torch.Tensor,
        beta: Beta,
        chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """One update step of a modern Hopfield network whose stored patterns are ``memory``.

    ``Hop(S, M) = rownorm(softmax_rows(β · S Mᵀ) · M)``: every state pattern retrieves a
    softmax-weighted average of the stored patterns (the softmax runs over the stored-pattern
    index), which is then L2-normalised again.

    Args:
        state: [n, d] state patterns (queries).
        memory: [m, d] stored patterns (keys and values at once).
        beta: inverse temperature β > 0 of the softmax: a number, or a 0-dim tensor (differentiable;
            its value is not checked, which would synchronise with the device).
        chunk_size: None computes the [n, m] attention at once. An int processes that many state
            rows at a time and recomputes them in backward: memory O((n + m)·d + chunk_size·m),
            about 7 instead of 6 [n, m, d] matrix products for forward + backward (one more for
            the gradient of a tensor β).

    Returns:
        [n, d] retrieved patterns with unit rows.
    """
    _check_beta("beta", beta)
    if chunk_size is not None:
        _check_chunk_size(chunk_size)
        return _ChunkedRetrieval.apply(state, memory, beta, chunk_size)
    return F.normalize(torch.softmax(beta * (state @ memory.T), dim=-1) @ memory, dim=-1)


def cross_hopfield_retrieval(
        image: torch.Tensor, text: torch.Tensor, beta: Beta,
        text_memory_beta: Optional[Beta] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(Hop(Y, X), Hop(X, Y))`` from one similarity product: Y Xᵀ and X Yᵀ are transposes.

    Args:
        image: [n, d] image patterns X (states of the second retrieval, memory of the first).
        text: [n, d] text patterns Y.
        beta: inverse temperature β > 0 (of both retrievals, or of Hop(Y, X) with ``text_memory_beta``);
            a number or a 0-dim tensor, as in :func:`hopfield_retrieval`.
        text_memory_beta: β of Hop(X, Y), the retrieval from text memory; default ``beta``.

    Returns:
        [n, d] texts retrieved from image memory, [n, d] images retrieved from text memory.
    """
    _check_beta("beta", beta)
    if text_memory_beta is not None:
        _check_beta("text_memory_beta", text_memory_beta)
    if text_memory_beta is None or _same_beta(beta, text_memory_beta):
        scores = beta * (text @ image.T)  # [n_text, n_image]
        text_from_images = torch.softmax(scores, dim=1) @ image
        image_from_texts = torch.softmax(scores, dim=0).T @ text
    else:
        similarities = text @ image.T
        text_from_images = torch.softmax(beta * similarities, dim=1) @ image
        image_from_texts = torch.softmax(text_memory_beta * similarities, dim=0).T @ text
    return F.normalize(text_from_images, dim=-1), F.normalize(image_from_texts, dim=-1)


# ---------------------------------------------------------------------------------------------
# The contrastive score, InfoLOOB or InfoNCE: direct and chunked


class _ChunkedContrastive(torch.autograd.Function):
    """InfoLOOB (``leave_out_positive``) or InfoNCE, ``chunk_size`` anchors at a time. The loss is a
    mean, so its gradient is a fixed direction times the scalar upstream gradient: forward
    accumulates that direction (O((n + m)·d) memory) while each block of probabilities is at hand,
    and backward only scales it. This saves recomputing the blocks (1 product) in backward."""

    @staticmethod
    def forward(ctx, anchors, candidates, inv_tau, offset, chunk_size, leave_out_positive):
        n = anchors.shape[0]
        own_candidates = candidates[offset:offset + n]
        positives = (anchors * own_candidates).sum(dim=1)
        lse = anchors.new_empty(n)
        with_grad = any(ctx.needs_input_grad[:3])
        if with_grad:
            # ∂ℓ/∂A_i = (inv_tau/n)(Σ_j P_ij B_j − B_p(i)), ∂ℓ/∂B_j = (inv_tau/n)(Σ_i P_ij A_i − A_p⁻¹(j)),
            # ∂ℓ/∂inv_tau = (1/n) Σ_i (Σ_j P_ij A_i·B_j − A_i·B_p(i)); P = softmax over the
            # denominator's candidates (j ≠ p(i) for InfoLOOB, all j for InfoNCE).
            grad_anchors = -own_candidates.clone()
            grad_candidates = torch.zeros_like(candidates)
            grad_candidates[offset:offset + n] -= anchors
            grad_inv_tau = -positives.sum()
        for rows in _chunks(n, chunk_size):
            similarities = torch.mm(anchors[rows], candidates.T)
            probs = similarities * inv_tau
            if leave_out_positive:
                _mask_positives(probs, rows.start + offset)
            lse[rows] = _softmax_rows_(probs)
            if with_grad:
                grad_inv_tau += torch.einsum("ij,ij->", probs, similarities)
                grad_anchors[rows].addmm_(probs, candidates)
                grad_candidates.addmm_(probs.T, anchors[rows])
            del similarities, probs  # freed before the next blocks are allocated
        if with_grad:
            ctx.save_for_backward(grad_anchors.mul_(inv_tau / n), grad_candidates.mul_(inv_tau / n), grad_inv_tau / n)
        return (lse - inv_tau * positives).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_anchors, grad_candidates, grad_inv_tau = ctx.saved_tensors
        return grad_anchors * grad_loss, grad_candidates * grad_loss, grad_inv_tau * grad_loss, None, None, None


def _mask_positives(logits: torch.Tensor, first_positive: int) -> torch.Tensor:
    """Set logits[i, first_positive + i] to −inf in place (the left-out positives) and return it."""
    logits.diagonal(first_positive).fill_(float("-inf"))
    return logits


def _contrastive(
        anchors: torch.Tensor,
        candidates: torch.Tensor,
        inv_tau: Union[torch.Tensor, float],
        positive_offset: int,
        chunk_size: Optional[int],
        leave_out_positive: bool,
) -> torch.Tensor:
    """InfoLOOB (``leave_out_positive``) or InfoNCE: see :func:`info_loob` and :func:`info_nce`."""
    inv_tau = torch.as_tensor(inv_tau, dtype=anchors.dtype, device=anchors.device)
    if chunk_size is not None:
        _check_chunk_size(chunk_size)
        return _ChunkedContrastive.apply(anchors, candidates, inv_tau, positive_offset, chunk_size, leave_out_positive)
    n = anchors.shape[0]
    positives = inv_tau * (anchors * candidates[positive_offset:positive_offset + n]).sum(dim=1)
    logits = inv_tau * (anchors @ candidates.T)
    if leave_out_positive:
        _mask_positives(logits, positive_offset)
    return (torch.logsumexp(logits, dim=1) - positives).mean()


def _contrastive_both_ways(
        a: torch.Tensor, b: torch.Tensor, inv_tau: torch.Tensor, leave_out_positive: bool) -> torch.Tensor:
    """``ℓ(A, B) + ℓ(B, A)`` of two [n, d] batches from one product, as ClipLoss: B Aᵀ = (A Bᵀ)ᵀ."""
    positives = inv_tau * (a * b).sum(dim=1)
    logits = inv_tau * (a @ b.T)
    if leave_out_positive:
        _mask_positives(logits, 0)
    return (torch.logsumexp(logits, dim=1) + torch.logsumexp(logits, dim=0) - 2 * positives).mean()


def info_loob(
        anchors: torch.Tensor,
        candidates: torch.Tensor,
        inv_tau: Union[torch.Tensor, float],
        positive_offset: int = 0,
        chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """InfoLOOB ("leave one out bound") of anchors against candidates, averaged over anchors.

    ``ℓ(A, B) = (1/n) Σ_i [ −inv_tau · A_i·B_p(i) + log Σ_{j≠p(i)} exp(inv_tau · A_i·B_j) ]``
    with positive ``p(i) = positive_offset + i``. Unlike InfoNCE the positive is left out of the
    denominator, so the loss keeps its gradient when a positive is already close (no saturation),
    and it is not bounded below.

    Args:
        anchors: [n, d] anchor patterns.
        candidates: [m, d] candidate patterns, m ≥ positive_offset + n and m ≥ 2. With
            ``positive_offset = 0`` and m = n this is the plain N x N case; a rank of a
            ``local_loss`` run passes its own anchors, the global candidates and its row offset.
        inv_tau: inverse temperature 1/τ (scalar).
        positive_offset: index of the first anchor's positive among the candidates.
        chunk_size: None computes the [n, m] logits at once; an int processes that many anchors at
            a time (memory O((n + m)·d + chunk_size·m)) and accumulates the gradient on the way,
            the 3 [n, m, d] products of the direct path (forward + backward), none repeated.

    Returns:
        Scalar loss.
    """
    _check_inv_tau(inv_tau)
    return _contrastive(anchors, candidates, inv_tau, positive_offset, chunk_size, leave_out_positive=True)


def info_nce(
        anchors: torch.Tensor,
        candidates: torch.Tensor,
        inv_tau: Union[torch.Tensor, float],
        positive_offset: int = 0,
        chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """InfoNCE of anchors against candidates, averaged over anchors: :func:`info_loob` with the
    positive kept in the denominator.

    ``ℓ(A, B) = (1/n) Σ_i [ −inv_tau · A_i·B_p(i) + log Σ_j exp(inv_tau · A_i·B_j) ]`` with
    ``p(i) = positive_offset + i``: the cross-entropy of the logits ``inv_tau · A Bᵀ`` against
    the positives, one direction of OpenCLIP's ``ClipLoss``. It is ≥ 0 and saturates: its gradient
    vanishes as a positive's similarity dominates the row. Arguments and return as :func:`info_loob`.
    """
    _check_inv_tau(inv_tau)
    return _contrastive(anchors, candidates, inv_tau, positive_offset, chunk_size, leave_out_positive=False)


# ---------------------------------------------------------------------------------------------
# The variants: which (anchors, candidates) pairs are scored; the one implementation of the loss


class _Batch(NamedTuple):
    """What a rank scores: states (its own rows with ``local_loss``, else the global batch) and the
    global batch as memory and candidates, each [rows, d]."""
    image_states: torch.Tensor
    text_states: torch.Tensor
    image_memory: torch.Tensor
    text_memory: torch.Tensor


def _retrieval_pairs(
        batch: _Batch, betas: Tuple[Beta, Beta], chunk_size: Optional[int],
        gather_candidates: Optional[Gather]) -> Pairs:
    """CLOOB's pairs ``(U_x, U_y), (V_y, V_x)``: the states' four Hopfield retrievals from the memory.

    ``betas``: β of the retrievals from image memory and from text memory (:func:`memory_betas`).
    ``gather_candidates`` is None when the states are the whole batch (the memory); for a rank's
    own states (``local_loss``) it all-gathers the retrieved candidates U_y, V_x to the global batch.
    """
    image_beta, text_beta = betas
    if chunk_size is None and gather_candidates is None:
        image_from_images = hopfield_retrieval(batch.image_memory, batch.image_memory, image_beta)  # U_x
        text_from_images, image_from_texts = cross_hopfield_retrieval(  # U_y, V_x
            batch.image_memory, batch.text_memory, image_beta, text_beta)
        text_from_texts = hopfield_retrieval(batch.text_memory, batch.text_memory, text_beta)  # V_y
    else:
        # Four separate calls rather than stacked [x; y] states: each call saves its own inputs
        # for backward, where a stacked copy would add [2N, d] tensors to the memory peak.
        image_from_images = hopfield_retrieval(batch.image_states, batch.image_memory, image_beta, chunk_size)
        text_from_images = hopfield_retrieval(batch.text_states, batch.image_memory, image_beta, chunk_size)
        image_from_texts = hopfield_retrieval(batch.image_states, batch.text_memory, text_beta, chunk_size)
        text_from_texts = hopfield_retrieval(batch.text_states, batch.text_memory, text_beta, chunk_size)
    if gather_candidates is not None:
        text_from_images, image_from_texts = gather_candidates(text_from_images, image_from_texts)
    return (image_from_images, text_from_images), (text_from_texts, image_from_texts)


def _embedding_pairs(
        batch: _Batch, betas: None, chunk_size: Optional[int],
        gather_candidates: Optional[Gather]) -> Pairs:
    """The plain embeddings' pairs ``(X, Y), (Y, X)``; the candidates are the (gathered) batch itself."""
    return (batch.image_states, batch.text_memory), (batch.text_states, batch.image_memory)


def similarity_spread(patterns: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the pairwise dot products ``p_i·p_j``, i ≠ j, of [n, d] patterns, n ≥ 2.

    Computed in O(n·d²) without forming [n, n], and from the centred patterns so that nearly
    collinear ones (cosines all close to 1) keep their precision: with ``p_i = m + q_i`` (m the mean
    pattern), ``p_i·p_j = m·m + t_ij``, ``t_ij = a_i + a_j + q_i·q_j``, ``a_i = m·q_i``; since
    ``Σ_i q_i = 0``, ``Σ_{i≠j} t_ij = −Σ_i |q_i|²`` and
    ``Σ_{i≠j} t_ij² = 2n Σ_i a_i² + ‖QᵀQ‖_F² − Σ_i (2a_i + |q_i|²)²``. For unit rows these are
    cosines. Returns a 0-dim tensor (no gradient).
    """
    with torch.no_grad():
        n = patterns.shape[0]
        pairs = n * (n - 1)
        mean = patterns.mean(dim=0)
        centred = patterns - mean
        projections = centred @ mean  # a_i
        squared_norms = (centred * centred).sum(dim=1)  # |q_i|²
        gram = centred.T @ centred
        total = -squared_norms.sum()
        total_square = (2 * n * (projections * projections).sum() + (gram * gram).sum()
                        - (2 * projections + squared_norms).square().sum())
        return (total_square / pairs - (total / pairs) ** 2).clamp_min(0).sqrt()


# σ below this is a memory of (numerically) identical patterns: attention is uniform at any β.
_MIN_SPREAD = 1e-6


def memory_betas(image_memory: torch.Tensor, text_memory: torch.Tensor, hopfield_beta: Betas,
                 beta_from_spread: Optional[float] = None) -> Tuple[Beta, Beta]:
    """β of the retrievals from image memory and from text memory, [N, d] unit rows each.

    The paper's β is a constant: ``(hopfield_beta, hopfield_beta)``; a pair ``hopfield_beta`` is
    already (β of the image memory, β of the text memory) and is returned as it is (numbers or
    0-dim tensors; a tensor is not read). With ``beta_from_spread`` = K
    (an opt-in remedy, not the paper's method) each memory M gets ``β_M = K / σ(M)``,
    σ = :func:`similarity_spread`, recomputed from the batch on every call without gradient: the
    scores β·s_i·m_j a retrieval's softmax sees then have spread K whatever the embeddings' spread,
    so nearly collinear embeddings (σ → 0) never make the attention uniform, the state in which
    every retrieval is the batch mean and the loss has almost no gradient. Costs O(N·d²) and one
    host synchronisation per call. It replaces a constant β only: a tensor β cannot be combined with it.
    """
    betas = _check_betas(hopfield_beta)
    check_optional_positive("beta_from_spread", beta_from_spread)
    if beta_from_spread is None:
        return betas
    if any(isinstance(beta, torch.Tensor) for beta in betas) or betas[0] != betas[1]:
        raise ValueError("beta_from_spread replaces one constant hopfield_beta; it cannot be combined with a "
                         "tensor (learnable) or per-memory hopfield_beta")
    spreads = torch.stack([similarity_spread(image_memory), similarity_spread(text_memory)])
    image_beta, text_beta = (beta_from_spread / spreads.clamp_min(_MIN_SPREAD)).tolist()
    return image_beta, text_beta


def _score(pairs: Pairs, inv_tau: torch.Tensor, offset: int, chunk_size: Optional[int],
           leave_out_positive: bool) -> torch.Tensor:
    """``ℓ(A₁, B₁) + ℓ(A₂, B₂)`` of the two (anchors, candidates) pairs, anchors from row ``offset``."""
    (first_anchors, first_candidates), (second_anchors, second_candidates) = pairs
    if chunk_size is None and first_anchors is second_candidates and first_candidates is second_anchors:
        # ℓ(A, B) + ℓ(B, A) on the whole batch: one [N, N] product serves both directions.
        return _contrastive_both_ways(first_anchors, first_candidates, inv_tau, leave_out_positive)
    return (_contrastive(first_anchors, first_candidates, inv_tau, offset, chunk_size, leave_out_positive)
            + _contrastive(second_anchors, second_candidates, inv_tau, offset, chunk_size, leave_out_positive))


def _loss(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: Union[torch.Tensor, float],
        hopfield_beta: Betas,
        objective: str,
        hopfield: bool,
        chunk_size: Optional[int],
        gather: Optional[Gather] = None,
        local_rank: Optional[int] = None,
        beta_from_spread: Optional[float] = None,
        hopfield_weight: float = 1.0,
) -> torch.Tensor:
    """``τ · [ℓ(A₁, B₁) + ℓ(A₂, B₂)]`` of one process: the implementation behind :func:`cloob_loss`
    and :class:`CloobLoss`, in float32 (or the inputs' wider dtype) even under autocast.

    ``gather`` is None for one process holding the whole batch; otherwise it all-gathers two
    [n, d] tensors of every rank to [n·world_size, d], which become the memory and candidates.
    ``local_rank`` (with ``gather``) scores only that rank's own anchors (``local_loss``).
    ``beta_from_spread``: see :func:`memory_betas`. With ``hopfield``, ``hopfield_weight`` λ blends
    the plain pairs' loss and the retrievals' loss, (1 − λ) · L_plain + λ · L_hopfield; only the
    terms whose weight is not 0 are computed.
    """
    # Softmax and logsumexp over a large batch lose too much in half precision.
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        image = image_features.to(dtype)
        text = text_features.to(dtype)
        inv_tau = torch.as_tensor(logit_scale, device=image.device).to(dtype)
        image_memory, text_memory = (image, text) if gather is None else gather(image, text)
        local = local_rank is not None
        batch = _Batch(*((image, text) if local else (image_memory, text_memory)), image_memory, text_memory)
        offset = local_rank * image.shape[0] if local else 0
        leave_out_positive = LEAVES_OUT_POSITIVE[objective]
        weight = hopfield_weight if hopfield else 0.0
        loss = 0
        if weight < 1:
            plain = _score(_embedding_pairs(batch, None, chunk_size, None), inv_tau, offset, chunk_size,
                           leave_out_positive)
            loss = plain if weight == 0 else (1 - weight) * plain
        if weight > 0:
            betas = memory_betas(image_memory, text_memory, hopfield_beta, beta_from_spread)
            pairs = _retrieval_pairs(batch, betas, chunk_size, gather if local else None)
            retrieved = _score(pairs, inv_tau, offset, chunk_size, leave_out_positive)
            loss = retrieved if weight == 1 else loss + weight * retrieved
        return loss / inv_tau


def _check_beta(name: str, beta: Beta) -> None:
    """A number must be a finite β > 0; a tensor must be 0-dim and floating, its value is not read
    (that would synchronise with the device on every step)."""
    if isinstance(beta, torch.Tensor):
        if beta.ndim != 0 or not beta.is_floating_point():
            raise ValueError(f"{name} must be a number or a 0-dim floating tensor, got a tensor of shape "
                             f"{tuple(beta.shape)} and dtype {beta.dtype}")
    else:
        check_positive(name, beta)


def _check_betas(hopfield_beta: Betas) -> Tuple[Beta, Beta]:
    """``hopfield_beta`` as (β of the image memory, β of the text memory), each checked by :func:`_check_beta`."""
    if isinstance(hopfield_beta, tuple):
        if len(hopfield_beta) != 2:
            raise ValueError(f"hopfield_beta as a tuple must be (image memory β, text memory β), got "
                             f"{len(hopfield_beta)} values")
        image_beta, text_beta = hopfield_beta
    else:
        image_beta = text_beta = hopfield_beta
    _check_beta("hopfield_beta", image_beta)
    _check_beta("hopfield_beta", text_beta)
    return image_beta, text_beta


def _same_beta(first: Beta, second: Beta) -> bool:
    """Whether two βs are known to be equal without reading a tensor: the same object, or equal numbers."""
    if first is second:
        return True
    return not isinstance(first, torch.Tensor) and not isinstance(second, torch.Tensor) and first == second


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive number of rows, got {chunk_size!r}")


def _check_inv_tau(inv_tau: Union[torch.Tensor, float]) -> None:
    """A Python number must be a finite 1/τ > 0; a tensor (the model's, on the device) is not read:
    that would synchronise with the device on every step."""
    if not isinstance(inv_tau, torch.Tensor):
        check_positive("inv_tau", inv_tau)


def _check_features(image_features: torch.Tensor, text_features: torch.Tensor, world_size: int) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "image_features and text_features must both have shape [batch, dim]; got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    if image_features.shape[0] * world_size < 2:
        raise ValueError(
            f"the loss needs a global batch of at least 2 (a pair has no negative otherwise); "
            f"got {image_features.shape[0]} x {world_size} rank(s)")


def cloob_loss(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        inv_tau: Union[torch.Tensor, float],
        hopfield_beta: Betas = DEFAULT_HOPFIELD_BETA,
        objective: str = "infoloob",
        hopfield: bool = True,
        chunk_size: Optional[int] = None,
        beta_from_spread: Optional[float] = None,
        hopfield_weight: float = 1.0,
) -> torch.Tensor:
    """CLOOB loss (or an ablation of it) of one process holding the whole batch.

    ``hopfield=True``: ``τ · [ℓ(U_x, U_y) + ℓ(V_y, V_x)]``; ``hopfield=False``:
    ``τ · [ℓ(X, Y) + ℓ(Y, X)]``, with ℓ = :func:`info_loob` or :func:`info_nce` (module docstring).
    The defaults are the paper's CLOOB. OpenCLIP's ``ClipLoss`` is ``½[ℓ_NCE(X, Y) + ℓ_NCE(Y, X)]``
    without τ, so ``objective="infonce", hopfield=False`` gives ``2τ · ClipLoss``.

    Args:
        image_features: [N, d] L2-normalised image embeddings X.
        text_features: [N, d] L2-normalised text embeddings Y (row i pairs with image i).
        inv_tau: inverse temperature 1/τ (OpenCLIP's exponentiated ``logit_scale``).
        hopfield_beta: Hopfield inverse temperature β > 0 (unused with ``hopfield=False``): a
            number, a 0-dim tensor (the loss is differentiable in it: a learnable β), or a pair
            (β of the retrievals from image memory, β of those from text memory) of either.
        objective: ``"infoloob"`` or ``"infonce"``.
        hopfield: score the Hopfield retrievals (True) or the embeddings themselves (False).
        chunk_size: None computes [N, N] matrices at once; an int computes every retrieval and
            score that many rows at a time (memory linear in N, see :class:`CloobLoss`).
        beta_from_spread: None (the paper) or K > 0: β of each memory from its similarity spread,
            replacing ``hopfield_beta`` (:func:`memory_betas`).
        hopfield_weight: λ in [0, 1], with ``hopfield=True``: ``(1 − λ) · τ [ℓ(X, Y) + ℓ(Y, X)] +
            λ · τ [ℓ(U_x, U_y) + ℓ(V_y, V_x)]``. 1 (default) is the paper's loss, 0 the loss without
            the retrieval; a warm-in raises it from 0 to 1.

    Returns:
        Scalar loss in float32 (or in the inputs' dtype when wider), also under autocast.
    """
    _check_betas(hopfield_beta)
    check_optional_positive("beta_from_spread", beta_from_spread)
    check_fraction("hopfield_weight", hopfield_weight)
    check_objective(objective)
    _check_inv_tau(inv_tau)
    _check_features(image_features, text_features, world_size=1)
    return _loss(image_features, text_features, inv_tau, hopfield_beta, objective, hopfield, chunk_size,
                 beta_from_spread=beta_from_spread, hopfield_weight=hopfield_weight)


def _gather_keywords(use_horovod: bool) -> Dict[str, bool]:
    """The Horovod keyword for OpenCLIP's ``gather_features``: 3.3 takes ``use_horovod``, its
    development branch (4.x) dropped the parameter, and with it Horovod."""
    if "use_horovod" in inspect.signature(gather_features).parameters:
        return {"use_horovod": use_horovod}
    if use_horovod:
        raise ValueError("use_horovod=True, but this OpenCLIP's open_clip.loss.gather_features has no "
                         "use_horovod parameter (Horovod support was removed): launch with torchrun or SLURM")
    return {}


class CloobLoss(nn.Module):
    """CLOOB loss, or an ablation of it, with the constructor and ``forward`` signature of OpenCLIP's
    ``ClipLoss``.

    ``objective`` and ``hopfield`` pick the corner of the paper's grid (``settings.LOSS_VARIANTS``
    maps the ``--loss`` names to them); every variant runs in every mode and on both paths below.

    Under data parallelism every rank's features are gathered first (OpenCLIP's
    ``gather_features``) and the Hopfield memory is the global batch, so the loss value is the
    one a single process computes on the concatenated global batch:

    - default (``local_loss=False``): every rank computes the full N x N loss. Without
      ``gather_with_grad`` only the rank's own rows carry gradient, so DDP's averaged gradient is
      the single-process gradient divided by ``world_size``, as with ``ClipLoss``; with
      ``gather_with_grad`` it is the single-process gradient.
    - ``local_loss=True``: a rank retrieves only for its own rows (states) from the global memory,
      gathers the retrieved candidates, and scores its own anchors against them: O(N_local·N·d)
      work per rank. Each rank's value covers its own anchors; the mean over ranks is the global
      loss. Use it with ``gather_with_grad`` for the exact gradient.

    Args:
        hopfield_beta: Hopfield inverse temperature β > 0 (paper: 8 for CC3M).
        local_loss, gather_with_grad, rank, world_size: as in ``ClipLoss``.
        cache_labels: accepted for ``ClipLoss`` compatibility; CLOOB has no label tensor to cache.
        use_horovod: as in OpenCLIP 3.3's ``ClipLoss``; OpenCLIP versions whose ``gather_features``
            has no ``use_horovod`` work too (with False), decided once here.
        memory_efficient: True computes every retrieval and score in row chunks (retrievals
            recompute their blocks in backward; InfoLOOB and InfoNCE accumulate their gradient in
            forward), never holding a [rows, N] block above ``CHUNK_ELEMENTS``
            (memory linear in N); False materialises the [N, N] matrices (and computes X Yᵀ once
            for both cross-modal retrievals, or for both directions without Hopfield); None
            (default) picks the chunked path once a [rows, N] matrix of the direct path would
            exceed ``CHUNK_ELEMENTS``.
        objective: ``"infoloob"`` (CLOOB) or ``"infonce"``.
        hopfield: score the Hopfield retrievals (True, CLOOB) or the plain embeddings (False).
        beta_from_spread: None (the paper's constant β) or K > 0: each memory's β from its
            similarity spread every step, K / σ (:func:`memory_betas`), replacing ``hopfield_beta``.
        hopfield_weight: λ in [0, 1] of :func:`cloob_loss` (1: the paper's loss). A warm-in sets the
            attribute of that name before each step.

    A learnable β lives in the model, where the optimizer and DDP see it: :meth:`learn_beta` hands
    the loss the model's log-β parameters, and β = exp(log β) replaces ``hopfield_beta`` from then
    on (one shared β, or one per memory).
    """

    def __init__(
            self,
            hopfield_beta: float = DEFAULT_HOPFIELD_BETA,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            cache_labels: bool = False,
            rank: int = 0,
            world_size: int = 1,
            use_horovod: bool = False,
            memory_efficient: Optional[bool] = None,
            objective: str = "infoloob",
            hopfield: bool = True,
            beta_from_spread: Optional[float] = None,
            hopfield_weight: float = 1.0,
    ):
        super().__init__()
        check_positive("hopfield_beta", hopfield_beta)
        check_fraction("hopfield_weight", hopfield_weight)
        check_objective(objective)
        check_optional_positive("beta_from_spread", beta_from_spread)
        check_int_at_least("world_size", world_size, 1)
        if not 0 <= check_int_at_least("rank", rank, 0) < world_size:
            raise ValueError(f"rank must be below world_size {world_size}, got {rank}")
        self.hopfield_beta = float(hopfield_beta)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.memory_efficient = memory_efficient
        self.objective = objective
        self.hopfield = hopfield
        self.beta_from_spread = beta_from_spread
        self.hopfield_weight = float(hopfield_weight)
        self.log_betas: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._gather_keywords = _gather_keywords(use_horovod)
        if local_loss and world_size > 1 and not gather_with_grad:
            _logger.warning(
                "CloobLoss(local_loss=True, gather_with_grad=False): as with ClipLoss, gradients from "
                "other ranks' anchors are dropped; add --gather-with-grad for the exact gradient.")

    def learn_beta(self, log_beta_image: torch.Tensor, log_beta_text: Optional[torch.Tensor] = None) -> None:
        """Take β from now on as exp of the model's 0-dim log-β parameter(s), differentiably.

        Args:
            log_beta_image: log β of the retrievals from image memory, and from text memory too
                when ``log_beta_text`` is None (one shared β).
            log_beta_text: log β of the retrievals from text memory (one β per memory).
        """
        if not self.hopfield or self.beta_from_spread is not None:
            raise ValueError("a learnable β needs a loss with the Hopfield retrieval and no beta_from_spread")
        for name, value in (("log_beta_image", log_beta_image), ("log_beta_text", log_beta_text)):
            if value is not None:
                _check_beta(name, value)
        self.log_betas = (log_beta_image, log_beta_image if log_beta_text is None else log_beta_text)

    def betas(self) -> Betas:
        """The β the next forward uses: ``hopfield_beta``, or (image memory, text memory) exp(log β) tensors."""
        if self.log_betas is None:
            return self.hopfield_beta
        image, text = self.log_betas
        image_beta = image.exp()
        return image_beta, image_beta if text is image else text.exp()

    def _gather(self, first: torch.Tensor, second: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """All-gather two [n, d] tensors to [n·world_size, d], keeping this rank's rows' gradient."""
        return gather_features(
            first, second, local_loss=False, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size, **self._gather_keywords)

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: Union[torch.Tensor, float],
            logit_bias: Optional[torch.Tensor] = None,
            output_dict: bool = False,
            **kwargs,
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """The loss of this rank.

        Args:
            image_features: [n, d] this rank's L2-normalised image embeddings.
            text_features: [n, d] this rank's L2-normalised text embeddings.
            logit_scale: inverse temperature 1/τ, already exponentiated (OpenCLIP's model output).
            logit_bias: must be None; CLOOB has no logit bias (a SigLIP-style model is a mistake).
            output_dict: return ``{"cloob_loss": L}`` (every variant) instead of the scalar, as
                OpenCLIP's loop expects.
            kwargs: further model outputs, ignored.
        """
        if logit_bias is not None:
            raise ValueError("CloobLoss got a logit_bias: CLOOB has none; use a model without logit bias")
        _check_features(image_features, text_features, self.world_size)
        distributed = self.world_size > 1
        local = distributed and self.local_loss
        n_memory = image_features.shape[0] * self.world_size
        chunk_size = self._chunk_size(image_features.shape[0] if local else n_memory, n_memory)
        loss = _loss(
            image_features, text_features, logit_scale, self.betas(), self.objective, self.hopfield,
            chunk_size, gather=self._gather if distributed else None, local_rank=self.rank if local else None,
            beta_from_spread=self.beta_from_spread, hopfield_weight=check_fraction("hopfield_weight",
                                                                                   self.hopfield_weight))
        return {"cloob_loss": loss} if output_dict else loss

    def diagnostics(self, image_features: torch.Tensor, text_features: torch.Tensor) -> Dict[str, float]:
        """:func:`hopfield_diagnostics` of the global batch, the memory the loss's retrievals use.

        Call it only on logging steps: it costs an all-gather without gradient plus O(N²·d) work.
        With ``world_size > 1`` it is a collective: every rank must call it at the same step (not
        only the one that logs), and every rank gets the same values.

        Args:
            image_features: [n, d] this rank's image embeddings.
            text_features: [n, d] this rank's text embeddings.
        """
        _check_features(image_features, text_features, self.world_size)
        with torch.no_grad():
            image, text = image_features.detach(), text_features.detach()
            if self.world_size > 1:
                image, text = self._gather(image, text)
            betas = self.betas()
            if isinstance(betas, tuple):
                betas = tuple(beta.detach() for beta in betas)
            return hopfield_diagnostics(image, text, betas, self.beta_from_spread)

    def _chunk_size(self, n_states: int, n_memory: int) -> Optional[int]:
        """Rows per chunk for the memory-efficient path, or None for the direct path."""
        use_chunks = self.memory_efficient
        if use_chunks is None:
            use_chunks = n_states * n_memory > CHUNK_ELEMENTS
        return chunk_rows(n_memory) if use_chunks else None


# ---------------------------------------------------------------------------------------------
# Diagnostics: what the Hopfield step sees in a batch, and the loss of a collapsed model


def _mean_attended_patterns(state: torch.Tensor, memory: torch.Tensor, beta: float) -> torch.Tensor:
    """``mean_i exp(H_i)``, ``H_i = −Σ_j P_ij log P_ij``, ``P = softmax_rows(β S Mᵀ)``, in row blocks."""
    total = state.new_zeros(())
    for rows in _chunks(state.shape[0], chunk_rows(memory.shape[0])):
        log_probs = torch.log_softmax(beta * (state[rows] @ memory.T), dim=1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=1)
        total += entropy.exp().sum()
    return total / state.shape[0]


def _mean_off_diagonal_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(1 / (n(n−1))) Σ_{i≠j} a_i·b_j`` of two [n, d] tensors in O(n·d):
    ``(Σ_i a_i)·(Σ_j b_j) − Σ_i a_i·b_i``."""
    n = a.shape[0]
    return (a.sum(dim=0) @ b.sum(dim=0) - (a * b).sum()) / (n * (n - 1))


@torch.no_grad()
def hopfield_diagnostics(
        image_features: torch.Tensor, text_features: torch.Tensor, hopfield_beta: Betas,
        beta_from_spread: Optional[float] = None) -> Dict[str, float]:
    """Diagnostics of the Hopfield step on one batch, for logging steps (nothing runs otherwise).

    Rows are L2-normalised first (OpenCLIP's features already are); x_i, y_i are the unit image and
    text embeddings, N the batch. For each of the four retrievals Hop(S, M) of the loss, with
    ``P = softmax_rows(β S Mᵀ)``, the effective number of attended stored patterns is
    ``mean_i exp(−Σ_j P_ij log P_ij)``: N for uniform attention (β → 0), 1 when every state
    attends to one pattern (large β with distinct states = memory). Work O(N²·d) in [rows, N]
    blocks of at most ``CHUNK_ELEMENTS``, without gradient; one host sync.

    Args:
        image_features: [N, d] image embeddings X, N ≥ 2.
        text_features: [N, d] text embeddings Y (row i pairs with image i).
        hopfield_beta: Hopfield inverse temperature β > 0, or (image memory β, text memory β); numbers
            or 0-dim tensors (read here).
        beta_from_spread: None, or K: each memory's β from its spread (:func:`memory_betas`).

    Returns:
        ``attended_patterns_image_from_images`` (U_x = Hop(X, X)),
        ``attended_patterns_text_from_images`` (U_y = Hop(Y, X)),
        ``attended_patterns_image_from_texts`` (V_x = Hop(X, Y)),
        ``attended_patterns_text_from_texts`` (V_y = Hop(Y, Y)), each in [1, N];
        ``mean_cosine_images`` = mean_{i≠j} x_i·x_j and ``mean_cosine_texts`` = mean_{i≠j} y_i·y_j
        (1 for a collapsed batch); ``positive_minus_negative`` = mean_i x_i·y_i − mean_{i≠j} x_i·y_j
        (0 when pairs are no more similar than non-pairs); ``spread_images`` = σ(X) and
        ``spread_texts`` = σ(Y) (:func:`similarity_spread`); ``beta_images``, ``beta_texts``: the β of
        the retrievals from each memory (``hopfield_beta``, or K / σ with ``beta_from_spread``).
        β·σ ≪ 1 means nearly uniform attention: every retrieval is close to the batch mean.
    """
    _check_betas(hopfield_beta)
    check_optional_positive("beta_from_spread", beta_from_spread)
    _check_features(image_features, text_features, world_size=1)
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        x = F.normalize(image_features.to(dtype), dim=-1)
        y = F.normalize(text_features.to(dtype), dim=-1)
        image_beta, text_beta = memory_betas(x, y, hopfield_beta, beta_from_spread)
        values = {
            "attended_patterns_image_from_images": _mean_attended_patterns(x, x, image_beta),
            "attended_patterns_text_from_images": _mean_attended_patterns(y, x, image_beta),
            "attended_patterns_image_from_texts": _mean_attended_patterns(x, y, text_beta),
            "attended_patterns_text_from_texts": _mean_attended_patterns(y, y, text_beta),
            "mean_cosine_images": _mean_off_diagonal_dot(x, x),
            "mean_cosine_texts": _mean_off_diagonal_dot(y, y),
            "positive_minus_negative": (x * y).sum(dim=1).mean() - _mean_off_diagonal_dot(x, y),
            "spread_images": similarity_spread(x),
            "spread_texts": similarity_spread(y),
        }
    diagnostics = dict(zip(values, torch.stack(list(values.values())).tolist()))
    return {**diagnostics, "beta_images": float(image_beta), "beta_texts": float(text_beta)}


def collapsed_loss(batch_size: int, inv_tau: float, objective: str = "infoloob") -> float:
    """The loss when every similarity it scores is equal: 2·τ·log(N−1) for InfoLOOB, 2·τ·log N for InfoNCE.

    That is the value of a collapsed model (identical retrievals, e.g. identical embeddings) and
    near it sits an untrained one whose embeddings are nearly collinear, with or without the
    Hopfield step (τ · [ℓ + ℓ], each ℓ the log of its number of denominator terms). With
    ``local_loss`` every rank's value is the same. OpenCLIP's ``ClipLoss`` (no τ, averaged
    directions) collapses to log N instead.

    Args:
        batch_size: the global batch N ≥ 2 the loss sees (per rank × world size × accum_freq).
        inv_tau: inverse temperature 1/τ.
        objective: ``"infoloob"`` or ``"infonce"``.
    """
    check_objective(objective)
    check_int_at_least("batch_size", batch_size, 2)
    check_positive("inv_tau", inv_tau)
    denominator_terms = batch_size - 1 if LEAVES_OUT_POSITIVE[objective] else batch_size
    return 2 * math.log(denominator_terms) / inv_tau
