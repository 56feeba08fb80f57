"""A view inside the Hopfield step during training, and a loud warning when CLOOB collapses.

:class:`HopfieldMonitor` watches a CLOOB-family training loss through a forward hook, so OpenCLIP's
loop is not touched:

- On OpenCLIP's logging steps (the steps its ``train_one_epoch`` logs: every
  ``--log-every-n-steps``-th of an epoch and its last) it computes the library's
  :func:`open_clip_cloob.hopfield_diagnostics` of the step's global batch (``CloobLoss.diagnostics``:
  a collective, so every rank computes them at the same steps) and the logging rank writes them
  next to OpenCLIP's own metrics: console, tensorboard and wandb as ``train/hopfield/<key>``; with
  ``--hopfield-warmin`` also the step's Hopfield weight λ (``train/hopfield/hopfield_weight``), and
  with ``--learnable-hopfield-beta`` the βs are the learnt ones of the step (``beta_images``, ``beta_texts``).
- On every step it compares the loss with the value of a collapsed model,
  :func:`open_clip_cloob.collapsed_loss` (2·τ·log(N−1) for InfoLOOB: every retrieval the same, a
  state CLOOB may never leave because such a loss has almost no gradient). That comparison stays on the
  device (a few scalar operations, no host synchronisation); the count of consecutive collapsed
  steps after warmup is read on logging steps only. Once it reaches :data:`COLLAPSE_STEPS`, the
  logging rank warns on every logging step (log, ``train/collapse_warning`` = 1 in tensorboard and
  wandb, one line in ``results.jsonl``) with the diagnostics of that step and what to try, until
  the loss leaves the collapsed value (logged too: some runs escape after tens of steps).

A normal step therefore costs a handful of scalar kernels; a logging step O(N²·d) more
(``python -m cloob_tools.bench_train --monitor-overhead`` measures both).
"""
import argparse
import inspect
import json
import logging
import os
from typing import Any, Dict, Mapping, Optional

import torch

from open_clip_cloob import CloobLoss, collapsed_loss
from open_clip_cloob.settings import LOSS_VARIANTS

# Consecutive steps after warmup at the collapsed value before the warning: long enough that a
# healthy run passing by it early (an untrained model sits near it) does not trigger it.
COLLAPSE_STEPS = 30
# |loss − collapsed| ≤ this × collapsed counts as collapsed; the collapsed runs studied sat within
# 1e-5 of it, healthy ones leave it by more than 1e-3 within tens of steps (docs/study/).
COLLAPSE_RELATIVE_TOLERANCE = 1e-4
DIAGNOSTIC_PREFIX = "train/hopfield/"
COLLAPSE_TAG = "train/collapse_warning"
# What a collapsed run can try, from docs/study/ (where each was measured).
COLLAPSE_ADVICE = ("a longer --warmup (the collapse starts in the first steps at full learning rate), a lower "
                   "--lr, or --hopfield-beta-from-spread 2 (β set from the batch's similarity spread, an "
                   "opt-in remedy); see docs/study/earlier-report.md")


def is_logging_step(step_in_epoch: int, steps_per_epoch: int, log_every_n_steps: int) -> bool:
    """Whether OpenCLIP's ``train_one_epoch`` logs after the step ``step_in_epoch`` (0-based) of an epoch."""
    return step_in_epoch % log_every_n_steps == 0 or step_in_epoch + 1 == steps_per_epoch


class HopfieldMonitor:
    """Diagnostics on logging steps and the collapse warning for one run's ``CloobLoss``.

    Args:
        loss: the run's training loss, watched through a forward hook (its ``diagnostics`` use the
            loss's own β and memory).
        args: the run configuration (``loss``, ``batch_size``, ``accum_freq``, ``world_size``,
            ``warmup``, ``log_every_n_steps``, ``rank``, ``wandb``, ``checkpoint_path``, ``save_logs``,
            ``hopfield_warmin``).
    """

    def __init__(self, loss: CloobLoss, args: argparse.Namespace) -> None:
        self.args = args
        self._global_batch = args.batch_size * args.accum_freq * args.world_size
        # collapsed_loss is proportional to τ: scaling by the step's 1/τ stays on the device.
        self._collapsed_at_unit_inv_tau = collapsed_loss(self._global_batch, 1.0, LOSS_VARIANTS[args.loss]["objective"])
        self._collapsed_steps: Optional[torch.Tensor] = None  # consecutive, on the loss's device
        self._warned = False
        self._warned_at: Optional[int] = None  # the first warning of the current collapse
        self._calls = 0
        self._epoch = 0
        self._first_step = 0
        self._steps_per_epoch = 1
        self._tb_writer: Any = None
        self._signature = inspect.signature(loss.forward)
        loss.register_forward_hook(self._after_loss, with_kwargs=True)

    @property
    def master(self) -> bool:
        return self.args.rank == 0

    def begin_epoch(self, epoch: int, first_step: int, steps_per_epoch: int, tb_writer: Any = None) -> None:
        """An epoch starts at its step ``first_step`` (> 0 when resumed inside it)."""
        self._epoch, self._first_step, self._steps_per_epoch = epoch, first_step, steps_per_epoch
        self._tb_writer = tb_writer
        self._calls = 0

    def _after_loss(self, loss: CloobLoss, args: Any, kwargs: Mapping[str, Any], output: Any) -> None:
        """Forward hook of the training loss: one call per micro-batch, ``accum_freq`` per step."""
        call, self._calls = self._calls, self._calls + 1
        if (call + 1) % self.args.accum_freq:
            return  # the step's last call sees all of its micro-batches' features
        step_in_epoch = self._first_step + call // self.args.accum_freq
        step = self._epoch * self._steps_per_epoch + step_in_epoch
        inputs = self._signature.bind(*args, **kwargs).arguments
        value = output["cloob_loss"] if isinstance(output, Mapping) else output
        self._count_collapsed(value.detach(), inputs["logit_scale"], after_warmup=step >= self.args.warmup)
        if is_logging_step(step_in_epoch, self._steps_per_epoch, self.args.log_every_n_steps):
            diagnostics = loss.diagnostics(inputs["image_features"], inputs["text_features"])
            if self.args.hopfield_warmin:
                diagnostics["hopfield_weight"] = loss.hopfield_weight
            self._log(step, diagnostics)

    def _count_collapsed(self, value: torch.Tensor, logit_scale: Any, after_warmup: bool) -> None:
        collapsed = self._collapsed_at_unit_inv_tau / torch.as_tensor(logit_scale, device=value.device).detach()
        near = (value - collapsed).abs() <= COLLAPSE_RELATIVE_TOLERANCE * collapsed
        if not after_warmup or self._collapsed_steps is None:
            self._collapsed_steps = torch.zeros((), dtype=torch.long, device=value.device)
        if after_warmup:
            self._collapsed_steps = (self._collapsed_steps + 1) * near

    def _log(self, step: int, diagnostics: Dict[str, float]) -> None:
        collapsed_steps = int(self._collapsed_steps) if self._collapsed_steps is not None else 0
        if not self.master:
            return
        logging.info("Hopfield step %d: %s", step, " ".join(f"{key} {value:.4g}" for key, value in diagnostics.items()))
        collapsed = collapsed_steps >= COLLAPSE_STEPS
        scalars = {DIAGNOSTIC_PREFIX + key: value for key, value in diagnostics.items()}
        scalars[COLLAPSE_TAG] = float(collapsed)
        if self._tb_writer is not None:
            for name, value in scalars.items():
                self._tb_writer.add_scalar(name, value, step)
        if self.args.wandb:
            import wandb
            wandb.log(scalars, step=step)
        if collapsed:
            self._warn(step, collapsed_steps, diagnostics)
        elif self._warned_at is not None:
            logging.warning("Step %d: the loss has left its collapsed value (collapse warned at step %d)",
                            step, self._warned_at)
            self._warned_at = None

    def _warn(self, step: int, collapsed_steps: int, diagnostics: Dict[str, float]) -> None:
        n = self._global_batch
        logging.warning(
            "COLLAPSE at step %d: for the last %d steps the %s loss sat at its collapsed value, every scored "
            "similarity equal (2·τ·log of the denominator's terms, N = %d); mean cosine of the batch's images "
            "%.4f, texts %.4f, positive − negative similarity %.2e, the image retrieval attends to %.1f of %d "
            "patterns. There the loss has almost no gradient and a run may stay for good. Try %s.",
            step, collapsed_steps, self.args.loss, n,
            diagnostics["mean_cosine_images"], diagnostics["mean_cosine_texts"],
            diagnostics["positive_minus_negative"], diagnostics["attended_patterns_image_from_images"], n,
            COLLAPSE_ADVICE)
        if self.args.save_logs and not self._warned:  # one line per run
            entry = {"collapse_warning": {"step": step, "collapsed_steps": collapsed_steps, **diagnostics},
                     "epoch": self._epoch}
            with open(os.path.join(self.args.checkpoint_path, "results.jsonl"), "a+") as f:
                f.write(json.dumps(entry) + "\n")
        self._warned = True
        if self._warned_at is None:
            self._warned_at = step
