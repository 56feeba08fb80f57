"""The CLOOB loss: modern Hopfield retrieval followed by InfoLOOB (Fürst et al., NeurIPS 2022).

Notation (shapes in brackets): X [N, d] image and Y [N, d] text embeddings with unit rows, N the
global batch, ``inv_tau`` = 1/τ the inverse temperature (OpenCLIP's exponentiated ``logit_scale``),
β the Hopfield inverse temperature. The loss is

    U_x = Hop(X, X),  U_y = Hop(Y, X),  V_x = Hop(X, Y),  V_y = Hop(Y, Y)
    L   = τ · [ ℓ(U_x, U_y) + ℓ(V_y, V_x) ]

with ``Hop`` = :func:`hopfield_retrieval` and ``ℓ`` = :func:`info_loob`. Only training uses the
Hopfield step; inference uses the plain embeddings, exactly like CLIP.
"""
import logging
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from open_clip.loss import gather_features

_logger = logging.getLogger(__name__)


# Largest [rows, memory] block the chunked path materialises (64 MiB in float32). The automatic
# choice uses the direct path while its biggest matrix stays within this budget.
CHUNK_ELEMENTS = 1 << 24
_NORMALIZE_EPS = 1e-12  # F.normalize's default


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


class _ChunkedRetrieval(torch.autograd.Function):
    """rownorm(softmax_rows(β S Mᵀ) M), ``chunk_size`` state rows at a time; backward recomputes
    each block from the saved row log-sum-exps (FlashAttention's scheme) instead of storing [n, m].
    The row normalisation is part of the function so that autograd keeps no [n, d] temporaries."""

    @staticmethod
    def forward(ctx, state, memory, beta, chunk_size):
        retrieved = state.new_empty(state.shape[0], memory.shape[1])
        lse = state.new_empty(state.shape[0])
        for rows in _chunks(state.shape[0], chunk_size):
            probs = torch.mm(state[rows], memory.T).mul_(beta)
            lse[rows] = _softmax_rows_(probs)
            torch.mm(probs, memory, out=retrieved[rows])
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
            torch.mm(grad_scores, memory, out=grad_state[rows]).mul_(beta)
            grad_memory.addmm_(grad_scores.T, state[rows], alpha=beta)  # memory as keys
        return grad_state, grad_memory, None, None


class _ChunkedInfoLoob(torch.autograd.Function):
    """InfoLOOB, ``chunk_size`` anchors at a time. The loss is a mean, so its gradient is a fixed
    direction times the scalar upstream gradient: forward accumulates that direction (O((n + m)·d)
    memory) while each block of probabilities is at hand, and backward only scales it. This saves
    recomputing the blocks (1 product) in backward."""

    @staticmethod
    def forward(ctx, anchors, candidates, inv_tau, offset, chunk_size):
        n = anchors.shape[0]
        own_candidates = candidates[offset:offset + n]
        positives = (anchors * own_candidates).sum(dim=1)
        lse = anchors.new_empty(n)
        with_grad = any(ctx.needs_input_grad[:3])
        if with_grad:
            # ∂ℓ/∂A_i = (inv_tau/n)(Σ_j P_ij B_j − B_p(i)), ∂ℓ/∂B_j = (inv_tau/n)(Σ_i P_ij A_i − A_p⁻¹(j)),
            # ∂ℓ/∂inv_tau = (1/n) Σ_i (Σ_j P_ij A_i·B_j − A_i·B_p(i)); P = softmax over j ≠ p(i).
            grad_anchors = -own_candidates.clone()
            grad_candidates = torch.zeros_like(candidates)
            grad_candidates[offset:offset + n] -= anchors
            grad_inv_tau = -positives.sum()
        for rows in _chunks(n, chunk_size):
            similarities = torch.mm(anchors[rows], candidates.T)
            probs = _mask_positives(similarities * inv_tau, rows.start + offset)
            lse[rows] = _softmax_rows_(probs)
            if with_grad:
                grad_inv_tau += torch.einsum("ij,ij->", probs, similarities)
                grad_anchors[rows].addmm_(probs, candidates)
                grad_candidates.addmm_(probs.T, anchors[rows])
        if with_grad:
            ctx.save_for_backward(grad_anchors.mul_(inv_tau / n), grad_candidates.mul_(inv_tau / n), grad_inv_tau / n)
        return (lse - inv_tau * positives).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_anchors, grad_candidates, grad_inv_tau = ctx.saved_tensors
        return grad_anchors * grad_loss, grad_candidates * grad_loss, grad_inv_tau * grad_loss, None, None


def _mask_positives(logits: torch.Tensor, first_positive: int) -> torch.Tensor:
    """Set logits[i, first_positive + i] to −inf in place (the left-out positives) and return it."""
    logits.diagonal(first_positive).fill_(float("-inf"))
    return logits


def hopfield_retrieval(
        state: torch.Tensor,
        memory: torch.Tensor,
        beta: float,
        chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """One update step of a modern Hopfield network whose stored patterns are ``memory``.

    ``Hop(S, M) = rownorm(softmax_rows(β · S Mᵀ) · M)``: every state pattern retrieves a
    softmax-weighted average of the stored patterns (the softmax runs over the stored-pattern
    index), which is then L2-normalised again.

    Args:
        state: [n, d] state patterns (queries).
        memory: [m, d] stored patterns (keys and values at once).
        beta: inverse temperature β > 0 of the softmax.
        chunk_size: None computes the [n, m] attention at once. An int processes that many state
            rows at a time and recomputes them in backward: memory O((n + m)·d + chunk_size·m),
            about 7 instead of 6 [n, m, d] matrix products for forward + backward.

    Returns:
        [n, d] retrieved patterns with unit rows.
    """
    if chunk_size is not None:
        return _ChunkedRetrieval.apply(state, memory, beta, chunk_size)
    return F.normalize(torch.softmax(beta * (state @ memory.T), dim=-1) @ memory, dim=-1)


def cross_hopfield_retrieval(
        image: torch.Tensor, text: torch.Tensor, beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(Hop(Y, X), Hop(X, Y))`` from one similarity product: Y Xᵀ and X Yᵀ are transposes.

    Args:
        image: [n, d] image patterns X (states of the second retrieval, memory of the first).
        text: [n, d] text patterns Y.
        beta: inverse temperature β > 0.

    Returns:
        [n, d] texts retrieved from image memory, [n, d] images retrieved from text memory.
    """
    scores = beta * (text @ image.T)  # [n_text, n_image]
    text_from_images = torch.softmax(scores, dim=1) @ image
    image_from_texts = torch.softmax(scores, dim=0).T @ text
    return F.normalize(text_from_images, dim=-1), F.normalize(image_from_texts, dim=-1)


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
    inv_tau = torch.as_tensor(inv_tau, dtype=anchors.dtype, device=anchors.device)
    if chunk_size is not None:
        return _ChunkedInfoLoob.apply(anchors, candidates, inv_tau, positive_offset, chunk_size)
    n = anchors.shape[0]
    positives = inv_tau * (anchors * candidates[positive_offset:positive_offset + n]).sum(dim=1)
    logits = _mask_positives(inv_tau * (anchors @ candidates.T), positive_offset)
    return (torch.logsumexp(logits, dim=1) - positives).mean()


def cloob_loss(
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        inv_tau: Union[torch.Tensor, float],
        hopfield_beta: float = 8.0,
) -> torch.Tensor:
    """CLOOB loss of one process holding the whole batch: ``τ · [ℓ(U_x, U_y) + ℓ(V_y, V_x)]``.

    Args:
        image_features: [N, d] L2-normalised image embeddings X.
        text_features: [N, d] L2-normalised text embeddings Y (row i pairs with image i).
        inv_tau: inverse temperature 1/τ (OpenCLIP's exponentiated ``logit_scale``).
        hopfield_beta: Hopfield inverse temperature β.

    Returns:
        Scalar loss in float32 (or in the inputs' dtype when wider), also under autocast.
    """
    return CloobLoss(hopfield_beta=hopfield_beta)(image_features, text_features, inv_tau)


class CloobLoss(nn.Module):
    """CLOOB loss with the constructor and ``forward`` signature of OpenCLIP's ``ClipLoss``.

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
        local_loss, gather_with_grad, rank, world_size, use_horovod: as in ``ClipLoss``.
        cache_labels: accepted for ``ClipLoss`` compatibility; CLOOB has no label tensor to cache.
        memory_efficient: True computes every retrieval and InfoLOOB in row chunks (retrievals
            recompute their blocks in backward; InfoLOOB accumulates its gradient in forward),
            never holding a [rows, N] block above ``CHUNK_ELEMENTS``
            (memory linear in N); False materialises the [N, N] matrices (and computes X Yᵀ once
            for both cross-modal retrievals); None (default) picks the chunked path once a
            [rows, N] matrix of the direct path would exceed ``CHUNK_ELEMENTS``.
    """

    def __init__(
            self,
            hopfield_beta: float = 8.0,
            local_loss: bool = False,
            gather_with_grad: bool = False,
            cache_labels: bool = False,
            rank: int = 0,
            world_size: int = 1,
            use_horovod: bool = False,
            memory_efficient: Optional[bool] = None,
    ):
        super().__init__()
        if not hopfield_beta > 0:
            raise ValueError(f"hopfield_beta must be > 0, got {hopfield_beta}")
        self.hopfield_beta = float(hopfield_beta)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.memory_efficient = memory_efficient
        if local_loss and world_size > 1 and not gather_with_grad:
            _logger.warning(
                "CloobLoss(local_loss=True, gather_with_grad=False): as with ClipLoss, gradients from "
                "other ranks' anchors are dropped; add --gather-with-grad for the exact gradient.")

    def _gather(self, first: torch.Tensor, second: torch.Tensor):
        """All-gather two [n, d] tensors to [n·world_size, d], keeping this rank's rows' gradient."""
        return gather_features(
            first, second, local_loss=False, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size, use_horovod=self.use_horovod)

    def forward(
            self,
            image_features: torch.Tensor,
            text_features: torch.Tensor,
            logit_scale: Union[torch.Tensor, float],
            logit_bias: Optional[torch.Tensor] = None,
            output_dict: bool = False,
            **kwargs,
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """CLOOB loss of this rank.

        Args:
            image_features: [n, d] this rank's L2-normalised image embeddings.
            text_features: [n, d] this rank's L2-normalised text embeddings.
            logit_scale: inverse temperature 1/τ, already exponentiated (OpenCLIP's model output).
            logit_bias: must be None; CLOOB has no logit bias (a SigLIP-style model is a mistake).
            output_dict: return ``{"cloob_loss": L}`` instead of the scalar, as OpenCLIP's loop expects.
            kwargs: further model outputs, ignored.
        """
        if logit_bias is not None:
            raise ValueError("CloobLoss got a logit_bias: CLOOB has none; use a model without logit bias")
        if image_features.ndim != 2 or image_features.shape != text_features.shape:
            raise ValueError(
                "image_features and text_features must both have shape [batch, dim]; got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
        local_batch = image_features.shape[0]
        if local_batch * self.world_size < 2:
            raise ValueError(
                f"CLOOB needs a global batch of at least 2 (InfoLOOB has no negative otherwise); "
                f"got {local_batch} x {self.world_size} rank(s)")

        # The loss runs in float32 or wider even under fp16/bf16 autocast: softmax and logsumexp
        # over a large batch lose too much in half precision.
        dtype = torch.promote_types(image_features.dtype, torch.float32)
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            image = image_features.to(dtype)
            text = text_features.to(dtype)
            inv_tau = torch.as_tensor(logit_scale, device=image.device).to(dtype)
            loss = self._loss(image, text, inv_tau)
        return {"cloob_loss": loss} if output_dict else loss

    def _loss(self, image: torch.Tensor, text: torch.Tensor, inv_tau: torch.Tensor) -> torch.Tensor:
        distributed = self.world_size > 1
        image_memory, text_memory = self._gather(image, text) if distributed else (image, text)
        local = distributed and self.local_loss
        image_states, text_states = (image, text) if local else (image_memory, text_memory)

        beta = self.hopfield_beta
        chunk_size = self._chunk_size(image_states.shape[0], image_memory.shape[0])
        if chunk_size is None and not local:
            image_from_images = hopfield_retrieval(image_memory, image_memory, beta)  # U_x
            text_from_images, image_from_texts = cross_hopfield_retrieval(image_memory, text_memory, beta)  # U_y, V_x
            text_from_texts = hopfield_retrieval(text_memory, text_memory, beta)  # V_y
        else:
            # Four separate calls rather than stacked [x; y] states: each call saves its own inputs
            # for backward, where a stacked copy would add [2N, d] tensors to the memory peak.
            image_from_images = hopfield_retrieval(image_states, image_memory, beta, chunk_size)
            text_from_images = hopfield_retrieval(text_states, image_memory, beta, chunk_size)
            image_from_texts = hopfield_retrieval(image_states, text_memory, beta, chunk_size)
            text_from_texts = hopfield_retrieval(text_states, text_memory, beta, chunk_size)

        offset = 0
        if local:
            # Candidates are global: gather the retrieved patterns (with gradient when asked).
            text_from_images, image_from_texts = self._gather(text_from_images, image_from_texts)
            offset = self.rank * image.shape[0]
        loss = (info_loob(image_from_images, text_from_images, inv_tau, offset, chunk_size)
                + info_loob(text_from_texts, image_from_texts, inv_tau, offset, chunk_size))
        return loss / inv_tau

    def _chunk_size(self, n_states: int, n_memory: int) -> Optional[int]:
        """Rows per chunk for the memory-efficient path, or None for the direct path."""
        use_chunks = self.memory_efficient
        if use_chunks is None:
            use_chunks = n_states * n_memory > CHUNK_ELEMENTS
        return chunk_rows(n_memory) if use_chunks else None
