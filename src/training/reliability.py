"""Preemption, mid-epoch checkpoints and numeric faults for ``training.main``.

:mod:`training.openclip_hooks` wires these pieces into OpenCLIP's loop without copying it:

- :func:`atomic_save` writes training's checkpoints: through
  :func:`open_clip_cloob.checkpoint.save_torch` (temporary file, fsync, rename), so a kill during a
  write never leaves a truncated ``epoch_latest.pt`` / ``epoch_N.pt`` for ``--resume latest``. Once
  ``epoch_N.pt`` is written, the step checkpoints of earlier epochs are deleted.
- :func:`load_checkpoint` is OpenCLIP's ``pt_load`` with :func:`open_clip_cloob.checkpoint.load_torch`
  (``weights_only=True``: a pickle that would run code is refused with
  :class:`~open_clip_cloob.checkpoint.CheckpointError`); :class:`ResumeState` picks up the
  mid-epoch position of a step checkpoint, and :func:`resumed_settings_history` holds a resumed run
  to the CLOOB settings its checkpoint records (``--allow-changed-settings`` to change them).
- :class:`StepLoader` wraps the training dataloader of one epoch. A batch is only requested once the
  previous optimizer step is complete (backward, step, ``logit_scale`` clamp, logging), so the
  request is the step boundary where :class:`EpochSession` checks numeric faults, writes the
  ``--save-every-n-steps`` checkpoint and acts on a preemption signal. On resume it skips the steps
  already done without loading their images.
- :class:`NonFiniteGuard` skips an optimizer step whose loss or gradient is not finite.
- :class:`PeerWatch` keeps a heartbeat of every rank of a distributed run, so that the survivors of a
  failed collective operation (a lost node: ``--dist-timeout`` bounds their wait) name the ranks and
  hosts that stopped answering.

A step checkpoint is OpenCLIP's checkpoint dict (``epoch`` = completed epochs, ``state_dict``,
``optimizer``, ``scaler``) plus the run's CLOOB entries and :data:`RESUME_KEY` = ``{"step": steps
done in the epoch, "rng": random states of each rank}`` (layout: :mod:`open_clip_cloob.checkpoint`);
OpenCLIP's own resume ignores the extra keys and restarts that epoch. Every file is written
atomically (:func:`open_clip_cloob.checkpoint.save_torch`).
"""
import argparse
import atexit
import datetime
import glob
import logging
import os
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import fsspec
import numpy as np
import torch
from torch.distributed import distributed_c10d
from torch.utils.data import BatchSampler, RandomSampler

from open_clip_cloob.checkpoint import HISTORY_KEY, PARTIAL_GLOB, RESUME_KEY, cloob_metadata, load_torch, save_torch

LATEST_CHECKPOINT_NAME = "epoch_latest.pt"  # OpenCLIP's name for --save-most-recent
# Natural sort (OpenCLIP's --resume latest) puts epoch_E_step_S.pt after epoch_E.pt, before epoch_E+1.pt.
STEP_CHECKPOINT_NAME = "epoch_{epoch}_step_{step}.pt"
STEP_CHECKPOINT_GLOB = "epoch_*_step_*.pt"
STEP_CHECKPOINT_PATTERN = re.compile(r"epoch_(\d+)_step_\d+\.pt")
EPOCH_CHECKPOINT_PATTERN = re.compile(r"epoch_(\d+)\.pt")  # OpenCLIP's checkpoint after N completed epochs
# sysexits.h EX_TEMPFAIL: "try again later"; job scripts requeue on it.
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Seconds between two heartbeats of a rank of a distributed run (PeerWatch).
HEARTBEAT_S = 2.0


class ChangedSettingsError(ValueError):
    """``--resume`` of a checkpoint trained with other CLOOB settings, without ``--allow-changed-settings``."""


class Preempted(Exception):
    """A preemption signal arrived; a checkpoint of the current step has been written."""


class NumericFaultError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class JoinError(RuntimeError):
    """The ranks of a distributed run did not all join its rendezvous within the join timeout."""


def atomic_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    """Training's ``torch.save``: :func:`~open_clip_cloob.checkpoint.save_torch` (a path is written atomically).

    After an ``epoch_N.pt``, the step checkpoints it supersedes are deleted
    (:func:`remove_superseded_step_checkpoints`).
    """
    save_torch(obj, f, *args, **kwargs)
    if isinstance(f, (str, os.PathLike)):
        remove_superseded_step_checkpoints(os.fspath(f))


def remove_superseded_step_checkpoints(path: str) -> None:
    """Once ``epoch_N.pt`` is written at ``path``: delete the step checkpoints of earlier epochs next to it.

    ``epoch_E_step_S.pt`` with E < N is older than ``epoch_N.pt``, which ``--resume latest`` takes
    instead; left alone, a run preempted in an epoch keeps that file after it finished. Step
    checkpoints inside epoch N are newer and stay. Any other ``path`` changes nothing.
    """
    saved = EPOCH_CHECKPOINT_PATTERN.fullmatch(os.path.basename(path))
    if saved is None:
        return
    folder = os.path.dirname(path) or "."
    for name in os.listdir(folder):
        step = STEP_CHECKPOINT_PATTERN.fullmatch(name)
        if step is not None and int(step.group(1)) < int(saved.group(1)):
            os.remove(os.path.join(folder, name))
            logging.info("Removed step checkpoint %s: %s supersedes it", name, os.path.basename(path))


@dataclass
class ResumePoint:
    """Where a step checkpoint was taken: inside epoch ``epoch`` (0-based), after ``step`` steps.

    ``rng`` holds the random states of every rank, in rank order.
    """

    epoch: int
    step: int
    rng: List[Dict[str, Any]]

    def rng_of(self, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
        """This rank's random states; ``None`` (with a warning) when the number of ranks changed."""
        if len(self.rng) == args.world_size:
            return self.rng[args.rank]
        logging.warning("The checkpoint was written by %d ranks, this run has %d: random states not restored, "
                        "data augmentation will differ from an uninterrupted run", len(self.rng), args.world_size)
        return None


def load_checkpoint(file_path: str, map_location: Any = None) -> Any:
    """OpenCLIP's ``pt_load`` (local or fsspec paths) with :func:`~open_clip_cloob.checkpoint.load_torch`."""
    with fsspec.open(file_path, "rb") as f:
        return load_torch(f, file_path, map_location)


@dataclass
class ResumeState:
    """The mid-epoch position of the checkpoint being resumed, consumed by the first epoch that runs."""

    point: Optional[ResumePoint] = None

    def read(self, checkpoint: Any) -> None:
        """Take the position of a step checkpoint (:data:`RESUME_KEY`); an epoch-end checkpoint has none."""
        position = checkpoint.get(RESUME_KEY) if isinstance(checkpoint, dict) else None
        self.point = None if position is None else ResumePoint(checkpoint["epoch"], position["step"], position["rng"])
        if self.point is not None:
            logging.info("Resuming inside epoch %d after %d steps", self.point.epoch, self.point.step)

    def take(self, epoch: int) -> Optional[ResumePoint]:
        """The position to resume in ``epoch``, once; ``None`` when the epoch starts from its beginning."""
        point, self.point = self.point, None
        return point if point is not None and point.epoch == epoch else None


def changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> List[Tuple[str, Any, Any]]:
    """``(name, recorded value, current value)`` of each setting in ``current`` that ``recorded`` has
    with another value; a setting ``recorded`` lacks (an earlier version did not record it) is not one."""
    return [(name, recorded[name], value) for name, value in current.items()
            if name in recorded and recorded[name] != value]


def resumed_settings_history(checkpoint: Mapping[str, Any], source: str, current: Mapping[str, Any],
                             allow_changes: bool) -> List[Dict[str, Any]]:
    """Check the CLOOB settings ``current`` of a run resuming ``checkpoint`` (read from ``source``)
    against the ones it records; returns the run's settings history (:data:`HISTORY_KEY`).

    Equal settings continue the checkpoint's history. Changed ones raise
    :class:`ChangedSettingsError` naming each setting with both values, unless ``allow_changes``:
    then they are logged, and the recorded settings join the history, up to the resume position.
    A checkpoint recording no settings (OpenCLIP's own) cannot be checked; that is logged.
    """
    recorded = cloob_metadata(checkpoint, source)
    history = list(checkpoint.get(HISTORY_KEY) or [])
    if not recorded:
        logging.warning("%s records no CLOOB settings: the command line's are not checked against it", source)
        return history
    unrecorded = [name for name in current if name not in recorded]
    if unrecorded:
        logging.info("%s does not record %s (written by an earlier version): not compared", source,
                     ", ".join(unrecorded))
    changes = changed_settings(recorded, current)
    if not changes:
        return history
    described = "; ".join(f"{name} {old!r} in the checkpoint, {new!r} now" for name, old, new in changes)
    if not allow_changes:
        raise ChangedSettingsError(
            f"{source} was trained with other CLOOB settings than this command line's: {described}. Resume "
            "with the checkpoint's values, or add --allow-changed-settings to continue with the new ones "
            "(the checkpoints then keep the old ones in their settings history)")
    logging.warning("Resuming %s with changed CLOOB settings (--allow-changed-settings): %s", source, described)
    position = checkpoint.get(RESUME_KEY) or {}
    return history + [{"settings": dict(recorded), "until_epoch": int(checkpoint["epoch"]),
                       "until_step": int(position.get("step", 0)), "checkpoint": source}]


def rng_state() -> Dict[str, Any]:
    """Every random state data augmentation may draw from, as plain lists and numbers.

    Plain Python objects load with ``weights_only=True`` and travel through ``all_gather_object``.
    """
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [device_state.tolist() for device_state in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(device_state, dtype=torch.uint8) for device_state in state["cuda"]])


def _all_reduce_int(value: Union[int, torch.Tensor], op: Any) -> int:
    """``value`` (an int, or a one-element tensor on any device) reduced with ``op`` over all ranks.

    ``value`` itself without a process group. One host synchronisation: a tensor is reduced where
    it lies (moved to the CPU for gloo) and read once.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return int(value)
    device = torch.cuda.current_device() if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.as_tensor(value).to(device=device, dtype=torch.int64).reshape(1)
    torch.distributed.all_reduce(tensor, op=op)
    return int(tensor.item())


def any_rank(flag: Union[bool, torch.Tensor]) -> bool:
    """Whether ``flag`` (a bool, or a one-element bool tensor) holds on any rank; every rank must call this.

    Decisions that change the control flow (skip a step, save, stop) must be the same on all ranks,
    or the next collective operation hangs.
    """
    return bool(_all_reduce_int(flag, torch.distributed.ReduceOp.MAX))


def sum_over_ranks(value: int) -> int:
    """The sum of ``value`` over all ranks; every rank must call this at the same point."""
    return _all_reduce_int(value, torch.distributed.ReduceOp.SUM)


def init_process_group_with_timeouts(backend: Optional[str] = None, init_method: Optional[str] = None,
                                     world_size: int = -1, rank: int = -1, *,
                                     join_timeout: Optional[datetime.timedelta] = None,
                                     timeout: Optional[datetime.timedelta] = None) -> None:
    """``torch.distributed.init_process_group`` with one timeout for the ranks to join, another after.

    The rendezvous (``init_method``, default ``env://``) waits up to ``join_timeout`` for every rank
    to join the store; the process group's collective operations and its store then time out after
    ``timeout``. torch takes one timeout for both, so a short one, chosen to notice a lost rank soon,
    would also fail a start in which one node's processes launch late (a node still cleaning up a
    requeued job, a cold file system). ``None``: torch's defaults (30 min to join; 30 min for gloo's,
    10 min for NCCL's operations). A rank that does not see every rank join in time raises
    :class:`JoinError`, naming the rendezvous.
    """
    url, join_timeout = init_method or "env://", join_timeout or torch.distributed.constants.default_pg_timeout
    try:
        store, rank, world_size = next(torch.distributed.rendezvous(url, rank, world_size, timeout=join_timeout))
    except torch.distributed.DistError as error:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}" if url == "env://" else url
        reason = str(error).splitlines()[0].rstrip(".")
        raise JoinError(f"not every rank joined the rendezvous at {where} within {join_timeout.total_seconds():g} s "
                        f"(--dist-join-timeout): {type(error).__name__}: {reason}; check that every node started "
                        "its task") from error
    if timeout is not None:
        store.set_timeout(timeout)
    # The prefix init_process_group gives the store it creates: keys of the store's other users
    # (torchrun's agent) stay apart. Called in distributed_c10d: training.openclip_hooks puts this
    # function in torch.distributed's namespace while OpenCLIP initialises.
    distributed_c10d.init_process_group(backend, store=torch.distributed.PrefixStore("default_pg", store),
                                        world_size=world_size, rank=rank, timeout=timeout)


class PeerWatch:
    """Which ranks of a distributed run still answer: a heartbeat of every rank in the rendezvous store.

    Each rank records its host name and, from a daemon thread, counts a heartbeat every ``interval``
    seconds under its rank in ``store`` (for training, the default process group's store: the TCP
    store of the rendezvous, on rank 0's node). When a collective operation fails, because a peer's
    connection was reset or the process group's timeout (``--dist-timeout``) ran out, a surviving
    rank calls :meth:`describe_lost`: the ranks whose count stood still for two intervals, with their
    hosts; a store that does not answer within its timeout (the process group's) means that rank 0,
    which serves it, is lost. The store is not the process group's transport, so this works for gloo
    and NCCL alike; each user gets a connection of its own (``Store.clone``).
    """

    def __init__(self, store: Any, rank: int, world_size: int, interval: float = HEARTBEAT_S) -> None:
        self.store, self.rank, self.world_size, self.interval = store, rank, world_size, interval
        store.set(f"host/{rank}", socket.gethostname())
        store.add(f"beat/{rank}", 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(store.clone(),), name="peer-heartbeat", daemon=True)
        self._thread.start()
        # Whoever started it, the heartbeat ends before the interpreter does (see stop()).
        atexit.register(self.stop)

    @classmethod
    def of_process_group(cls, rank: int, world_size: int) -> "PeerWatch":
        """The watch of the default process group's ranks, in its store (``cloob_peers/`` keys)."""
        store = torch.distributed.distributed_c10d._get_default_store()
        return cls(torch.distributed.PrefixStore("cloob_peers", store), rank, world_size)

    def _beat(self, store: Any) -> None:
        while not self._stop.wait(self.interval):
            try:
                store.add(f"beat/{self.rank}", 1)
            except RuntimeError:  # the store is gone (rank 0 ended or is lost): describe_lost says so
                return

    def stop(self) -> None:
        """End the heartbeat (a stopped rank looks lost to the others) before the process exits.

        Waits up to two intervals for the thread: one still inside a call into the store when the
        interpreter exits aborts the process ("terminate called without an active exception",
        status 134). Also registered to run at exit, so no caller can forget it.
        """
        self._stop.set()
        self._thread.join(timeout=2 * self.interval)

    def describe_lost(self) -> Optional[str]:
        """The ranks that stopped answering, with their hosts; ``None`` when every rank still beats.

        Takes two heartbeat intervals (and up to the store's timeout when the store does not answer).
        """
        try:
            store = self.store.clone()
            before = [store.add(f"beat/{rank}", 0) for rank in range(self.world_size)]
            time.sleep(2 * self.interval + 0.5)
            after = [store.add(f"beat/{rank}", 0) for rank in range(self.world_size)]
            lost = [rank for rank in range(self.world_size) if after[rank] == before[rank] and rank != self.rank]
            hosts = {rank: store.get(f"host/{rank}").decode() if store.check([f"host/{rank}"]) else "?"
                     for rank in lost}
        except RuntimeError as error:  # DistStoreError and the transport's errors
            return (f"rank 0 (it serves the rendezvous store, which does not answer: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''})")
        if not lost:
            return None
        return ", ".join(f"rank {rank} (host {hosts[rank]})" for rank in lost)


class PreemptionSignal:
    """Remembers that SIGUSR1 or SIGTERM arrived; acted on at the next step boundary."""

    def __init__(self) -> None:
        self.received: Optional[int] = None

    def install(self) -> None:
        """Handle :data:`PREEMPTION_SIGNALS` in this process (the handler only records the signal)."""
        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def describe(self) -> str:
        """The signal's name, or that another rank received one."""
        return signal.Signals(self.received).name if self.received is not None else "signal on another rank"

    def agreed(self) -> bool:
        """Whether any rank received a signal: all ranks stop at the same step."""
        return any_rank(self.received is not None)

    def ignore_further(self) -> None:
        """Ignore :data:`PREEMPTION_SIGNALS` from now on: the checkpoint is written, the process exits.

        A launcher that sees one worker exit sends SIGTERM to the others (torchrun within 0.1 s) while
        they are still shutting down; Python restores the default action while it finalizes, so that
        SIGTERM would turn their exit status 75 into "killed by SIGTERM". ``SIG_IGN`` survives
        finalization. SIGKILL still ends a process whose shutdown hangs.
        """
        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


class NonFiniteGuard:
    """Skips optimizer steps with a non-finite loss or gradient and counts them.

    The loss hook reports each loss; an optimizer step pre-hook drops every gradient (AdamW and SGD
    leave a parameter without gradient untouched, state included) when the loss or gradient norm is
    not finite. Under AMP the GradScaler skips inf/NaN gradients itself and then never calls
    ``optimizer.step``; a non-finite *loss* still counts as a bad step there, so a run whose loss is
    permanently NaN stops instead of shrinking the loss scale forever.
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0
        self._losses: List[torch.Tensor] = []
        # The pre-hook's verdict, already agreed by all ranks; None when the optimizer did not step
        # (GradScaler skipped it, identically on every rank since gradients are all-reduced).
        self._verdict: Optional[bool] = None

    def attach(self, optimizer: torch.optim.Optimizer, loss: torch.nn.Module) -> None:
        """Guard ``optimizer``'s steps and watch ``loss`` (a module returning a dict of losses)."""
        optimizer.register_step_pre_hook(self.before_optimizer_step)
        loss.register_forward_hook(self._record_losses)

    def _record_losses(self, _loss: torch.nn.Module, _inputs: Any, losses: Dict[str, torch.Tensor]) -> None:
        """Loss forward hook: remember the (micro-batch) losses of the current step, checked when it ends."""
        self._losses.extend(value.detach() for value in losses.values())

    def _loss_bad(self) -> torch.Tensor:
        """Whether a loss of the current step is not finite, as a bool tensor (no host synchronisation)."""
        if not self._losses:
            return torch.tensor(False)
        return ~torch.isfinite(torch.stack(self._losses)).all()

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Optimizer step pre-hook: drop all gradients when the loss or the gradient norm is not finite."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad = self._loss_bad()
        if params:
            bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in params]))
        self._verdict = any_rank(bad)  # the step's only host synchronisation and collective of the guard
        if self._verdict:
            for p in params:
                p.grad = None

    def end_step(self, global_step: int) -> bool:
        """Account for the step that just ended; True when the run must stop."""
        # Reuse the pre-hook's agreed verdict when it ran: one synchronisation and collective per step.
        bad = self._verdict if self._verdict is not None else any_rank(self._loss_bad())
        self._losses, self._verdict = [], None
        if not bad:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped += 1
        logging.warning("Step %d: non-finite loss or gradient, optimizer step skipped (%d in a row, %d in total)",
                        global_step, self.consecutive, self.skipped)
        return self.consecutive >= self.max_consecutive


_END = object()


class _SkipFirst:
    """A sampler without its first ``count`` indices (same length, so the batch count stays put)."""

    def __init__(self, sampler: Any, count: int) -> None:
        self.sampler, self.count = sampler, count

    def __iter__(self) -> Iterator[int]:
        iterator = iter(self.sampler)
        for _ in range(self.count):
            next(iterator, None)
        return iterator

    def __len__(self) -> int:
        return len(self.sampler)


# Bit fields of a resampled webdataset's shard-sampling seed: run seed, rank and dataloader worker
# above bit 48; below it the value of OpenCLIP's shared epoch, which the sampler adds (an epoch, plus
# the steps already done << 24 in an epoch resumed from a step checkpoint).
_DRAW_STEP_SHIFT = 24
_DRAW_WORKER_SHIFT = 48


def resampling_seed(seed: int, rank: int) -> int:
    """Shard-sampling seed of this dataloader worker of ``rank`` (``worker_seed`` of ``ResampledShards2``).

    OpenCLIP's own seed is ``rank * 1000`` without dataloader workers, whatever the epoch (the same
    shards every epoch), and otherwise depends on the dataloader's base seed; this one is a function
    of ``--seed``, rank, worker and (added by the sampler) the shared epoch value only.
    """
    worker = torch.utils.data.get_worker_info()
    worker_id = worker.id if worker is not None else 0
    return ((seed << 24 | rank) << 16 | worker_id) << _DRAW_WORKER_SHIFT


def sample_shuffle_seed(seed: int, rank: int) -> int:
    """Seed of the sample shuffle of ``rank``'s webdataset training pipeline (a function of ``--seed``
    and the rank only; webdataset's own seeds itself from the clock and the process id, so that the
    batch order of a run could not be repeated)."""
    return seed << 16 | rank


@dataclass
class ContinuedDraw:
    """The shared epoch of a resampled webdataset resumed after ``steps_done`` steps of an epoch.

    ``set_value(epoch)`` (OpenCLIP's ``DataInfo.set_epoch``) stores a value that gives the shard
    sampler a seed of its own: the resumed steps draw fresh samples instead of replaying the draws
    that began the interrupted epoch.
    """

    shared_epoch: Any  # OpenCLIP's SharedEpoch
    steps_done: int

    def set_value(self, epoch: int) -> None:
        logging.info("Resampled webdataset: the rest of epoch %d draws its shards afresh (resumed after %d steps)",
                     epoch, self.steps_done)
        self.shared_epoch.set_value(epoch + (self.steps_done << _DRAW_STEP_SHIFT))

    def get_value(self) -> int:
        return self.shared_epoch.get_value()


class StepLoader:
    """One epoch of the training dataloader, calling ``on_step_end(steps_done)`` at step boundaries.

    ``skip_steps`` steps (resume) are left out: a map-style loader skips their indices in the
    sampler, so their images are never read and the rest comes in the original order; another
    loader (webdataset) just yields that many fewer batches. ``epoch_seed`` seeds a plain
    ``RandomSampler`` so the order is a function of seed and epoch, not of the global generator.
    ``rng`` (resume) is restored after the loader's iterator is created, before the first batch.
    """

    def __init__(self, loader: Any, accum_freq: int, skip_steps: int, epoch_seed: int,
                 rng: Optional[Dict[str, Any]], on_step_end: Callable[[int], None]) -> None:
        self.loader, self.accum_freq, self.skip_steps = loader, accum_freq, skip_steps
        self.epoch_seed, self.rng, self.on_step_end = epoch_seed, rng, on_step_end
        self.num_batches, self.num_samples = loader.num_batches, loader.num_samples
        self.first_batch = skip_steps * accum_freq  # the index in the epoch of the first batch served

    def _batch_sampler(self) -> Optional[BatchSampler]:
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        return batch_sampler if isinstance(batch_sampler, BatchSampler) else None

    def __iter__(self) -> Iterator[Any]:
        batch_sampler = self._batch_sampler()
        original = batch_sampler.sampler if batch_sampler is not None else None
        if isinstance(original, RandomSampler):
            original.generator = torch.Generator().manual_seed(self.epoch_seed)
        if original is not None and self.first_batch:
            # Installed for the whole epoch: the batch sampler reads it lazily, at its first batch.
            batch_sampler.sampler = _SkipFirst(original, self.first_batch * batch_sampler.batch_size)
        try:
            iterator = iter(self.loader)
            if self.rng is not None:
                set_rng_state(self.rng)
            yield from self._batches(iterator, self.num_batches - self.first_batch)
        finally:
            if original is not None:
                batch_sampler.sampler = original

    def _batches(self, iterator: Iterator[Any], limit: int) -> Iterator[Any]:
        # The boundary comes before the next batch is fetched: fetching reads images and draws
        # augmentation randomness, which belongs to the next step (and its checkpoint's RNG state).
        yielded, reported = 0, None
        while yielded < limit:
            if yielded and yielded % self.accum_freq == 0:
                reported = self.skip_steps + yielded // self.accum_freq
                self.on_step_end(reported)
            batch = next(iterator, _END)
            if batch is _END:
                break
            yield batch
            yielded += 1
        if self.skip_steps + yielded // self.accum_freq != reported:
            self.on_step_end(self.skip_steps + yielded // self.accum_freq)

    def __len__(self) -> int:
        return self.num_batches


@dataclass
class EpochSession:
    """What happens at the step boundaries of one epoch: fault check, periodic save, preemption."""

    args: argparse.Namespace
    epoch: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    guard: NonFiniteGuard
    preemption: PreemptionSignal
    steps_per_epoch: int
    entries: Callable[[], Mapping[str, Any]]  # the run's CLOOB checkpoint entries (settings, loss state)

    def on_step_end(self, steps_done: int) -> None:
        """Called once the ``steps_done``-th optimizer step of the epoch is complete."""
        global_step = self.epoch * self.steps_per_epoch + steps_done
        if steps_done and self.guard.end_step(global_step - 1):
            path = self.save(steps_done)
            raise NumericFaultError(
                f"{self.guard.consecutive} consecutive steps had a non-finite loss or gradient (the last "
                f"{global_step - 1}); none of them changed the weights, saved in {path}. Lower --lr, use "
                "--grad-clip-norm or --precision amp_bf16/fp32, or check the data.")
        every = self.args.save_every_n_steps
        saved = bool(every) and global_step % every == 0
        path = self.save(steps_done) if saved else None
        # All ranks agree on the signal, so they all call save() (which synchronises them) or none does.
        if self.preemption.agreed():
            if not saved:
                path = self.save(steps_done)
            self.preemption.ignore_further()
            raise Preempted(f"{self.preemption.describe()}: step {global_step} (epoch {self.epoch}, step "
                            f"{steps_done}) saved {f'in {path}' if path else 'by the logging rank'}; "
                            "continue with --resume latest")

    def save(self, steps_done: int) -> Optional[str]:
        """Write a step checkpoint on the logging rank, the other ranks wait; returns its path there."""
        path = None
        states = [rng_state()]
        if self.args.distributed:
            states = [None] * self.args.world_size
            torch.distributed.all_gather_object(states, rng_state())
        if self.args.save_logs:
            model = getattr(self.model, "_orig_mod", self.model)  # torch.compile keeps the weights there
            checkpoint = {
                "epoch": self.epoch,
                "name": self.args.name,
                "state_dict": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                **self.entries(),
                RESUME_KEY: {"step": steps_done, "rng": states},
            }
            if self.scaler is not None:
                checkpoint["scaler"] = self.scaler.state_dict()
            path = write_step_checkpoint(checkpoint, self.args)
        if self.args.distributed:
            torch.distributed.barrier()
        return path


def write_step_checkpoint(checkpoint: Dict[str, Any], args: argparse.Namespace) -> str:
    """Write ``checkpoint`` where ``--resume latest`` finds it and drop older step checkpoints.

    With ``--save-most-recent`` that is ``epoch_latest.pt`` (the only file resume looks at then),
    otherwise ``epoch_E_step_S.pt``, which sorts after ``epoch_E.pt`` and before ``epoch_E+1.pt``.
    """
    if args.save_most_recent:
        name = LATEST_CHECKPOINT_NAME
    else:
        name = STEP_CHECKPOINT_NAME.format(epoch=checkpoint["epoch"], step=checkpoint[RESUME_KEY]["step"])
    path = os.path.join(args.checkpoint_path, name)
    atomic_save(checkpoint, path)
    # Older step checkpoints, and the remains of writes a kill cut short (only this process writes here).
    stale = glob.glob(os.path.join(args.checkpoint_path, STEP_CHECKPOINT_GLOB))
    stale += glob.glob(os.path.join(args.checkpoint_path, PARTIAL_GLOB))
    for old in stale:
        if old != path:
            os.remove(old)
    logging.info("Saved step checkpoint %s", path)
    return path
