"""cosine-restarts: checked against Hugging Face's hard-restarts schedule and OpenCLIP's cosine; the warm-in's weight."""
import pytest
import torch
from open_clip_train.scheduler import cosine_lr
from transformers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

from training.scheduler import cosine_restarts_lr, hopfield_warmin_weight

BASE_LR, WARMUP, STEPS = 1e-3, 20, 250


def _optimizer(lr: float = BASE_LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _reference_lrs(cycles: int) -> list:
    """Learning rates of transformers' LambdaLR schedule at steps 0..STEPS+4 (an independent implementation)."""
    optimizer = _optimizer()
    schedule = get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, WARMUP, STEPS, num_cycles=cycles)
    lrs = []
    for _ in range(STEPS + 5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


@pytest.mark.parametrize("cycles", [1, 3, 10])
def test_after_warmup_matches_transformers_hard_restarts(cycles):
    adjust = cosine_restarts_lr(_optimizer(), BASE_LR, WARMUP, STEPS, cycles=cycles)
    reference = _reference_lrs(cycles)
    for step in range(WARMUP, STEPS + 5):
        assert adjust(step) == pytest.approx(reference[step], abs=1e-12), step


def test_restarts_are_hard_and_the_schedule_ends_at_zero():
    cycles = 5
    adjust = cosine_restarts_lr(_optimizer(), BASE_LR, 0, 100, cycles=cycles)
    starts = [adjust(step) for step in range(0, 100, 100 // cycles)]
    assert starts == pytest.approx([BASE_LR] * cycles)
    assert adjust(19) < 0.01 * BASE_LR  # end of the first cycle
    assert adjust(100) == adjust(1000) == 0.0


def test_one_cycle_is_openclips_cosine_including_warmup():
    ours = cosine_restarts_lr(_optimizer(), BASE_LR, WARMUP, STEPS, cycles=1)
    openclip = cosine_lr(_optimizer(), BASE_LR, WARMUP, STEPS)
    for step in range(STEPS):
        assert ours(step) == pytest.approx(openclip(step), abs=1e-15), step


def test_writes_the_rate_into_every_parameter_group():
    optimizer = torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}],
        lr=0.5)
    lr = cosine_restarts_lr(optimizer, BASE_LR, WARMUP, STEPS, cycles=10)(WARMUP + 7)
    assert [group["lr"] for group in optimizer.param_groups] == [lr, lr]


def test_rejects_zero_cycles():
    with pytest.raises(ValueError):
        cosine_restarts_lr(_optimizer(), BASE_LR, WARMUP, STEPS, cycles=0)


def test_hopfield_warmin_weight_rises_linearly_to_one_and_stays():
    assert [hopfield_warmin_weight(step, 4) for step in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert hopfield_warmin_weight(0, 0) == 1.0  # off: the paper's loss from the first step
    with pytest.raises(ValueError, match=">= 0"):
        hopfield_warmin_weight(-1, 4)
