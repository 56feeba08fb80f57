"""Schedules CLOOB adds to OpenCLIP's: the learning rate's cosine restarts (beside ``cosine``,
``const``, ``const-cooldown``) and the Hopfield warm-in's weight.

A learning-rate schedule follows OpenCLIP's convention: a factory taking the optimizer, the base
learning rate, the warmup length and the total number of steps returns ``adjust(step) -> lr``, which
also writes the rate into every parameter group.
"""
import math
from typing import Callable

from open_clip_train.scheduler import _warmup_lr, assign_learning_rate
from torch.optim import Optimizer


def hopfield_warmin_weight(step: int, warmin_steps: int) -> float:
    """The Hopfield weight λ of ``--hopfield-warmin`` at optimizer step ``step`` (0-based):
    ``λ = min(1, step / warmin_steps)``; 1 (the paper's loss) when ``warmin_steps`` is 0."""
    if warmin_steps < 0 or step < 0:
        raise ValueError(f"step and warmin_steps must be >= 0, got {step} and {warmin_steps}")
    return 1.0 if warmin_steps == 0 else min(1.0, step / warmin_steps)


def cosine_restarts_lr(
    optimizer: Optimizer,
    base_lr: float,
    warmup_length: int,
    steps: int,
    cycles: int = 1,
) -> Callable[[int], float]:
    """Linear warmup, then a cosine schedule with ``cycles`` hard restarts (CLOOB's CC recipe).

    After warmup, with post-warmup progress ``p = (step - warmup) / (steps - warmup)``:
    ``lr = base_lr · 0.5 · (1 + cos(π · ((cycles · p) mod 1)))`` while ``p < 1``, and 0 afterwards.
    ``cycles = 1`` is OpenCLIP's ``cosine`` schedule. The warmup is OpenCLIP's:
    ``base_lr · (step + 1) / warmup``.
    """
    if cycles < 1:
        raise ValueError(f"cycles must be at least 1, got {cycles}")
    decay_steps = max(1, steps - warmup_length)

    def _lr_adjuster(step: int) -> float:
        if step < warmup_length:
            lr = _warmup_lr(base_lr, warmup_length, step)
        else:
            progress = (step - warmup_length) / decay_steps
            lr = 0.0 if progress >= 1 else base_lr * 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0)))
        assign_learning_rate(optimizer, lr)
        return lr

    return _lr_adjuster
