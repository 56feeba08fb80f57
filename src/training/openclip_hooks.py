"""Every hook ``training.main`` puts into OpenCLIP's training code (``open_clip_train`` 3.3).

OpenCLIP's ``main()`` looks several names up in its module's globals at call time; replacing them
there injects CLOOB without copying OpenCLIP's loop. :data:`HOOKS` lists each replaced name with
the function that must still look it up and the upstream parameters the replacement relies on;
:data:`CALLED` lists the upstream functions this package calls directly. ``tests/test_training_hooks.py``
checks both against the installed OpenCLIP, so an upstream refactor fails loudly instead of silently
training CLIP.

One run, one configuration. ``training.main`` parses the command line once
(:func:`training.params.parse_args`); the ``parse_args`` hook hands OpenCLIP's ``main()`` that same
namespace, so the object OpenCLIP fills in (rank, world size, device, paths) and the one every hook
reads are one: :attr:`Run.args`. A :class:`Run` holds it with the state the hooks share (resume
position, preemption signal, non-finite guard, broken-sample counters, the training loss), and the
hooks are its methods. State outside the :class:`Run` exists only where OpenCLIP's design forces it:

- the hooked names themselves: ``main()`` and its helpers look them up in their modules' globals at
  call time, so the hooks are bound methods of the run stored there (per process);
- ``torch.save`` and ``torch.nn.parallel.DistributedDataParallel``: ``main()`` reaches them through
  the ``torch`` module, so they are replaced process-wide; ``torch.distributed.init_process_group``
  too, but only while OpenCLIP's ``init_distributed_device`` runs;
- OpenCLIP's originals, captured at import (``_openclip_*``), so that installing twice never wraps
  a hook;
- while OpenCLIP builds one webdataset pipeline, three names of ``open_clip_train.data`` point at
  that pipeline's :class:`~training.data_checks.WebdatasetSampleCheck` (put back once it is built),
  and the pipeline's shard sampler gets this run's seed as its ``worker_seed`` (an attribute
  OpenCLIP's sampler reads per worker).

What each hook does (installed by :func:`install_hooks`, per process, before ``main()`` runs):

- ``parse_args``: returns :attr:`Run.args` (the command line is not parsed a second time).
- ``create_model_and_transforms``: builds the model with ``init_logit_scale = ln(--init-inv-tau)``
  and freezes ``logit_scale`` unless ``--learnable-inv-tau``, before DDP wraps the model (DDP fails
  on step 2 if a trainable parameter never gets a gradient); with ``--learnable-hopfield-beta`` it
  adds the log-β parameter(s) (``settings.LEARNABLE_BETA_PARAMETERS``) to the model, so that
  OpenCLIP's optimizer (without weight decay, as for every 0-dim parameter), DDP's gradient average
  and the checkpoints include them; ``create_loss`` hands them to the loss.
- ``create_loss``: the ``CloobLoss`` of a CLOOB-family ``--loss`` (its keywords are the library's
  ``LOSS_VARIANTS[name]``) or OpenCLIP's own choice for ``--loss clip``; a resumed checkpoint's
  loss state is loaded into it, and (``--hopfield-monitor``) a
  :class:`training.monitor.HopfieldMonitor` watches it: Hopfield diagnostics on the steps OpenCLIP's
  ``train_one_epoch`` logs (it mirrors that loop's logging condition), the collapse warning.
- ``cosine_lr``: :func:`training.scheduler.cosine_restarts_lr` when ``--restart-cycles`` > 1.
- the ``scheduler`` argument of ``train_one_epoch`` (``--hopfield-warmin``): OpenCLIP calls it at the
  start of every step with the global step; the wrapper first sets the loss's ``hopfield_weight``
  (:func:`training.scheduler.hopfield_warmin_weight`), so a resumed run continues the warm-in where
  it stopped.
- ``train_one_epoch``: runs the epoch through :class:`training.reliability.StepLoader` (step
  boundaries: non-finite steps, ``--save-every-n-steps``, preemption signals; resuming inside the
  epoch and, for a resampled webdataset, drawing shards afresh through
  :class:`training.reliability.ContinuedDraw`), puts the non-finite guard on the loss and the
  optimizer, and tells the monitor where the epoch starts and OpenCLIP's tensorboard writer.
- ``enumerate`` (a builtin that ``open_clip_train.train`` looks up like a global): numbers the
  batches of a :class:`~training.reliability.StepLoader` resumed inside an epoch from the first one
  it serves, so OpenCLIP computes the real step for the learning-rate schedule, the console
  progress (samples, percent), tensorboard and wandb alike. Other iterables count as usual.
- ``open_clip_train.data.CsvDataset``: :class:`training.data_checks.CheckedCsvDataset` (structural
  checks at start, broken samples skipped and counted, ``--max-bad-samples``).
- ``open_clip_train.data.get_wds_dataset``: :func:`training.data_checks.check_shards` first; while
  OpenCLIP builds the pipeline, its sample filter ``filter_no_caption_or_no_image``, its exception
  handler ``log_and_continue`` and the handler of its training tar reader
  ``tarfile_to_samples_nothrow`` are those of a :class:`training.data_checks.WebdatasetSampleCheck`
  (broken samples skipped, counted, limited), and a training pipeline's sample shuffle
  (``webdataset.shuffle``, which seeds itself from the clock and the process id) gets a random
  generator seeded by :func:`training.reliability.sample_shuffle_seed`, so that ``--seed`` fixes the
  batch order; the originals are put back once it is built. A resampled training pipeline's shard
  sampler (``ResampledShards2``, the pipeline's first stage) gets
  :func:`training.reliability.resampling_seed` as its ``worker_seed``.
- ``open_clip_train.main.get_data``: records each dataset's broken-sample counter and wraps the
  zero-shot image folders in :class:`training.data_checks.SkipUnreadableImages`.
- ``open_clip_train.train.zero_shot_eval``: an evaluation begins; the counts of the evaluation
  datasets restart, and ``broken_train_samples`` (the last epoch, all ranks) and
  ``broken_imagenet-val_samples`` join the metrics ``evaluate()`` logs and writes to ``results.jsonl``.
- ``init_distributed_device``: OpenCLIP's, with ``torch.distributed.init_process_group`` replaced by
  :func:`training.reliability.init_process_group_with_timeouts` while it runs, which gives the
  rendezvous ``--dist-join-timeout`` and the process group ``--dist-timeout`` (OpenCLIP passes no
  timeout); then every rank of a distributed run starts its heartbeat in the process group's store
  (:class:`training.reliability.PeerWatch`), so that after a failed collective operation
  ``training.main`` names the ranks that were lost.
- ``pt_load`` (``--resume``): :func:`training.reliability.load_checkpoint` (weights_only loading);
  compares the CLOOB settings a training checkpoint records with the command line's and stops on a
  difference unless ``--allow-changed-settings`` (:func:`training.reliability.resumed_settings_history`);
  reads the mid-epoch position of a step checkpoint, the loss state and the settings history.
- ``torch.save``: adds CLOOB's entries to OpenCLIP's training checkpoints (the settings as
  ``checkpoint["cloob"]``, the loss state as ``checkpoint["cloob_loss_state"]``, earlier settings as
  ``checkpoint["cloob_settings_history"]``; layout in
  :mod:`open_clip_cloob.checkpoint`) and writes through :func:`training.reliability.atomic_save`, so
  the checkpoints OpenCLIP writes at epoch ends are never seen truncated and supersede the step
  checkpoints of earlier epochs.
- ``open_clip_train.train.get_clip_metrics``: adds the validation loss of a CLOOB-family
  ``--loss`` (``cloob_val_loss`` for ``--loss cloob``) over the ``--val-data`` batches, and
  ``broken_val_samples``, to the metrics ``evaluate()`` logs, writes to ``results.jsonl`` and sends
  to tensorboard/wandb.
- ``torch.nn.parallel.DistributedDataParallel``: OpenCLIP passes ``device_ids=[device]`` also for a
  CPU device, which torch rejects; the subclass drops CPU device ids so DDP runs on CPU with gloo
  (a no-op on GPUs).
"""
import argparse
import builtins
import contextlib
import dataclasses
import datetime
import logging
import math
import random
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import open_clip_train.data as openclip_data
import open_clip_train.main as openclip_main
import open_clip_train.train as openclip_train
import torch
import webdataset
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from open_clip_cloob import CloobLoss
from open_clip_cloob.checkpoint import HISTORY_KEY, LOSS_STATE_KEY, META_KEY
from open_clip_cloob.settings import LEARNABLE_BETA_PARAMETERS, LOSS_VARIANTS
from training import params
from training.monitor import HopfieldMonitor
from training.data_checks import (
    BadSampleCounter, CheckedCsvDataset, SkipUnreadableImages, WebdatasetSampleCheck, check_shards, collate_readable)
from training.reliability import (
    ContinuedDraw, EpochSession, NonFiniteGuard, PeerWatch, PreemptionSignal, ResumeState, StepLoader, atomic_save,
    init_process_group_with_timeouts, load_checkpoint, resumed_settings_history, resampling_seed, sample_shuffle_seed,
    sum_over_ranks)
from training.scheduler import cosine_restarts_lr, hopfield_warmin_weight


@dataclass(frozen=True)
class Hook:
    """A name replaced in ``module``, looked up at call time by the function ``caller``.

    The upstream object is ``module.name``, or the builtin of that name where the module has none.
    """

    module: str
    name: str
    caller: str
    params: Tuple[str, ...]  # parameters of the upstream object the replacement relies on, in order


HOOKS: Tuple[Hook, ...] = (
    Hook("open_clip_train.main", "parse_args", "open_clip_train.main.main", ("args",)),
    Hook("open_clip_train.main", "create_model_and_transforms", "open_clip_train.main.main",
         ("model_name", "pretrained", "model_kwargs")),
    Hook("open_clip_train.main", "create_loss", "open_clip_train.main.main", ("args",)),
    Hook("open_clip_train.main", "cosine_lr", "open_clip_train.main.main",
         ("optimizer", "base_lr", "warmup_length", "steps")),
    Hook("open_clip_train.main", "train_one_epoch", "open_clip_train.main.main",
         ("model", "data", "loss", "epoch", "optimizer", "scaler", "scheduler", "dist_model", "args",
          "tb_writer")),
    Hook("open_clip_train.train", "enumerate", "open_clip_train.train.train_one_epoch", ("iterable", "start")),
    Hook("open_clip_train.train", "get_clip_metrics", "open_clip_train.train.evaluate",
         ("image_features", "text_features", "logit_scale")),
    Hook("torch.nn.parallel", "DistributedDataParallel", "open_clip_train.main.main",
         ("module", "device_ids")),
    Hook("open_clip_train.data", "CsvDataset", "open_clip_train.data.get_csv_dataset",
         ("input_filename", "transforms", "img_key", "caption_key", "sep", "tokenizer")),
    Hook("open_clip_train.data", "get_wds_dataset", "open_clip_train.data.get_dataset_fn",
         ("args", "preprocess_img", "is_train", "epoch", "floor", "tokenizer")),
    Hook("open_clip_train.data", "filter_no_caption_or_no_image", "open_clip_train.data.get_wds_dataset",
         ("sample",)),
    Hook("open_clip_train.data", "log_and_continue", "open_clip_train.data.get_wds_dataset", ("exn",)),
    Hook("webdataset", "shuffle", "open_clip_train.data.get_wds_dataset", ("bufsize", "initial", "rng")),
    Hook("open_clip_train.data", "tarfile_to_samples_nothrow", "open_clip_train.data.get_wds_dataset",
         ("src", "handler")),
    Hook("open_clip_train.main", "get_data", "open_clip_train.main.main",
         ("args", "preprocess_fns", "epoch", "tokenizer")),
    Hook("open_clip_train.train", "zero_shot_eval", "open_clip_train.train.evaluate",
         ("model", "data", "epoch", "args", "tokenizer")),
    Hook("open_clip_train.main", "pt_load", "open_clip_train.main.main", ("file_path", "map_location")),
    Hook("open_clip_train.main", "init_distributed_device", "open_clip_train.main.main", ("args",)),
    # Replaced only while OpenCLIP's init_distributed_device runs (_process_group_timeouts).
    Hook("torch.distributed", "init_process_group", "open_clip_train.distributed.init_distributed_device_so",
         ("backend", "init_method", "timeout", "world_size", "rank", "store")),
    Hook("torch", "save", "open_clip_train.main.main", ("obj", "f")),
)

# Upstream functions called directly (dotted name -> parameters relied on, in order).
CALLED: Dict[str, Tuple[str, ...]] = {
    "open_clip_train.main.main": ("args",),
    "open_clip_train.params.parse_args": ("args",),
    "open_clip_train.scheduler.assign_learning_rate": ("optimizer", "new_lr"),
    "open_clip_train.scheduler._warmup_lr": ("base_lr", "warmup_length", "step"),
    "open_clip.create_loss": ("args",),
    "open_clip.add_model_config": ("path",),
    "open_clip_train.data.expand_urls": ("urls", "weights"),
    # Its instance is the first stage of a resampled pipeline; worker_seed() + epoch seeds its draws.
    "open_clip_train.data.ResampledShards2": ("urls", "weights", "nshards", "worker_seed", "deterministic", "epoch"),
    # init_process_group_with_timeouts: the rendezvous of init_process_group, with its own timeout.
    "torch.distributed.rendezvous": ("url", "rank", "world_size"),
    # The store of the default process group, where training.reliability.PeerWatch keeps its heartbeats.
    "torch.distributed.distributed_c10d._get_default_store": (),
}

# The originals, captured at import so that installing twice never wraps a replacement.
_openclip_create_model_and_transforms = openclip_main.create_model_and_transforms
_openclip_create_loss = openclip_main.create_loss
_openclip_train_one_epoch = openclip_main.train_one_epoch
_openclip_get_clip_metrics = openclip_train.get_clip_metrics
_openclip_get_wds_dataset = openclip_data.get_wds_dataset
_openclip_tarfile_to_samples_nothrow = openclip_data.tarfile_to_samples_nothrow
_webdataset_shuffle = webdataset.shuffle
_openclip_get_data = openclip_main.get_data
_openclip_zero_shot_eval = openclip_train.zero_shot_eval
_openclip_init_distributed_device = openclip_main.init_distributed_device
_torch_init_process_group = torch.distributed.init_process_group

# The keys of the checkpoint dict OpenCLIP's main() saves for training (epoch ends, epoch_latest.pt).
_OPENCLIP_TRAINING_CHECKPOINT = frozenset(("epoch", "state_dict", "optimizer"))


class CpuCapableDistributedDataParallel(DistributedDataParallel):
    """DDP accepting OpenCLIP's ``device_ids=[cpu]``: torch wants ``None`` for a CPU module."""

    def __init__(self, module: torch.nn.Module, device_ids: Optional[Sequence[Any]] = None, *args, **kwargs):
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


def create_model_and_transforms(*args: Any, init_inv_tau: Optional[float], learnable_inv_tau: bool,
                                **kwargs: Any) -> Tuple[torch.nn.Module, Callable, Callable]:
    """OpenCLIP's factory with the CLOOB temperature: initial value and whether it trains."""
    if init_inv_tau is not None:
        kwargs["init_logit_scale"] = math.log(init_inv_tau)
    model, preprocess_train, preprocess_val = _openclip_create_model_and_transforms(*args, **kwargs)
    model.logit_scale.requires_grad_(learnable_inv_tau)
    return model, preprocess_train, preprocess_val


def add_learnable_beta(model: torch.nn.Module, beta: float, mode: str) -> List[torch.nn.Parameter]:
    """Register the 0-dim log-β parameter(s) of ``--learnable-hopfield-beta`` on ``model``, set to ln ``beta``.

    ``mode`` 'shared' adds ``LEARNABLE_BETA_PARAMETERS[0]``; 'per-modality' both (image memory, text
    memory). Returns them in that order.
    """
    names = LEARNABLE_BETA_PARAMETERS[:2 if mode == "per-modality" else 1]
    reference = model.logit_scale
    parameters = []
    for name in names:
        parameter = torch.nn.Parameter(torch.tensor(math.log(beta), dtype=reference.dtype, device=reference.device))
        model.register_parameter(name, parameter)
        parameters.append(parameter)
    return parameters


def build_cloob_loss(args: argparse.Namespace, distributed: bool = True) -> CloobLoss:
    """The ``CloobLoss`` of ``args.loss`` (the library's ``LOSS_VARIANTS[args.loss]``) with ``--hopfield-beta``.

    ``distributed``: with the run's data-parallel settings (training); otherwise for one process
    holding every feature (the validation loss).
    """
    data_parallel = dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, rank=args.rank,
                         world_size=args.world_size, use_horovod=args.horovod) if distributed else {}
    return CloobLoss(hopfield_beta=args.hopfield_beta, beta_from_spread=args.hopfield_beta_from_spread,
                     **data_parallel, **LOSS_VARIANTS[args.loss])


def create_loss(args: argparse.Namespace) -> torch.nn.Module:
    """The ``CloobLoss`` of a CLOOB-family ``--loss``, OpenCLIP's own choice otherwise; logs which and on what batch."""
    if not params.uses_cloob_loss(args):
        loss = _openclip_create_loss(args)
        logging.info("Loss: OpenCLIP's %s", type(loss).__name__)
        return loss
    # With --accum-freq the loss sees the features of all micro-batches at once.
    global_batch = args.batch_size * args.accum_freq * args.world_size
    logging.info(
        "Loss: CloobLoss (hopfield_beta %g, inv_tau %s, %s) over a global batch of %d = %d per rank x "
        "accum_freq %d x world_size %d", args.hopfield_beta, args.init_inv_tau,
        "learnable" if args.learnable_inv_tau else "frozen", global_batch, args.batch_size,
        args.accum_freq, args.world_size)
    logging.info("Loss variant: --loss %s = %s, beta_from_spread %s", args.loss,
                 ", ".join(f"{key} {value!r}" for key, value in LOSS_VARIANTS[args.loss].items()),
                 args.hopfield_beta_from_spread)
    return build_cloob_loss(args)


def validation_loss(loss: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                    inv_tau: torch.Tensor, batch_size: int) -> float:
    """``loss`` averaged over consecutive batches of ``batch_size`` rows, weighted by their size.

    ``evaluate()`` concatenates the validation features in loader order, so the chunks are its
    batches, and the value is comparable to OpenCLIP's ``clip_val_loss`` (averaged the same way) and
    to the training loss at the same batch size. A trailing batch of one row has no negative and is
    left out.
    """
    total, count = 0.0, 0
    for start in range(0, len(image_features), batch_size):
        images = image_features[start:start + batch_size]
        if len(images) < 2:
            continue
        texts = text_features[start:start + batch_size]
        total += loss(images, texts, inv_tau).item() * len(images)
        count += len(images)
    return total / count if count else math.nan


def enumerate_batches(iterable: Iterable[Any], start: int = 0) -> Iterator[Tuple[int, Any]]:
    """``enumerate`` for ``open_clip_train.train``: a :class:`StepLoader` counts from its first batch.

    A loader resumed after S steps of an epoch serves batch ``S * accum_freq`` first; numbering it
    so makes every step OpenCLIP derives from the index the real one.
    """
    first = iterable.first_batch if isinstance(iterable, StepLoader) else 0
    return builtins.enumerate(iterable, start + first)


@contextlib.contextmanager
def _while_building_webdataset(check: WebdatasetSampleCheck, shuffle_seed: int) -> Iterator[None]:
    """While OpenCLIP builds one webdataset pipeline, its sample filter and handlers are ``check``'s and
    its sample shuffle draws from a generator seeded with ``shuffle_seed``."""
    replacements = {
        (openclip_data, "filter_no_caption_or_no_image"): check.select,
        (openclip_data, "log_and_continue"): check.handle,
        (openclip_data, "tarfile_to_samples_nothrow"): partial(_openclip_tarfile_to_samples_nothrow,
                                                                handler=check.handle),
        (webdataset, "shuffle"): partial(_webdataset_shuffle, rng=random.Random(shuffle_seed)),
    }
    originals = {(module, name): getattr(module, name) for module, name in replacements}
    for (module, name), replacement in replacements.items():
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


@contextlib.contextmanager
def _process_group_timeouts(join_seconds: Optional[float], seconds: Optional[float]) -> Iterator[None]:
    """While OpenCLIP initialises the process group, ``init_process_group`` is
    :func:`training.reliability.init_process_group_with_timeouts`: the ranks wait ``join_seconds`` for
    each other, then collective operations time out after ``seconds`` (OpenCLIP passes no timeout;
    ``None``: torch's defaults).
    """
    torch.distributed.init_process_group = partial(
        init_process_group_with_timeouts,
        join_timeout=None if join_seconds is None else datetime.timedelta(seconds=join_seconds),
        timeout=None if seconds is None else datetime.timedelta(seconds=seconds))
    try:
        yield
    finally:
        torch.distributed.init_process_group = _torch_init_process_group


def get_wds_dataset(args: argparse.Namespace, preprocess_img: Callable, is_train: bool, epoch: int = 0,
                    floor: bool = False, tokenizer: Optional[Callable] = None) -> Any:
    """OpenCLIP's webdataset pipeline with checked shards, counted broken samples, a seeded sample
    shuffle and a seeded resampler."""
    check_shards(args.train_data if is_train else args.val_data)
    check = WebdatasetSampleCheck(BadSampleCounter(args.max_bad_samples))
    with _while_building_webdataset(check, sample_shuffle_seed(args.seed, args.rank)):
        info = _openclip_get_wds_dataset(
            args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
    info.dataloader.bad_samples = check.bad_samples
    if is_train and args.dataset_resampled:
        resampled_shards(info).worker_seed = partial(resampling_seed, args.seed, args.rank)
    return info


def resampled_shards(info: Any) -> Any:
    """The ``ResampledShards2`` that starts a resampled webdataset pipeline built by OpenCLIP."""
    # WebLoader(DataLoader(DataPipeline(ResampledShards2, ...)))
    shards = info.dataloader.pipeline[0].dataset.pipeline[0]
    if not isinstance(shards, openclip_data.ResampledShards2):
        raise RuntimeError(f"open_clip_train's resampled pipeline starts with {type(shards).__name__}, not "
                           "ResampledShards2: update training.openclip_hooks.get_wds_dataset")
    return shards


def _bad_sample_counter(info: Any) -> Optional[BadSampleCounter]:
    """The broken-sample counter of a dataset: on its loader (webdataset) or its dataset (map-style)."""
    loader = info.dataloader
    return getattr(loader, "bad_samples", None) or getattr(getattr(loader, "dataset", None), "bad_samples", None)


class Run:
    """One training run in this process: its configuration and the state its hooks share.

    Args:
        args: the run configuration, :func:`training.params.parse_args`'s namespace; OpenCLIP's
            ``main()`` gets this object and fills in its runtime attributes (rank, world size, ...).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.resume = ResumeState()
        self.preemption = PreemptionSignal()
        self.guard = NonFiniteGuard(args.max_nonfinite_steps)
        # Broken-sample counters of the datasets, by OpenCLIP's data key ('train', 'val', 'imagenet-val', ...).
        self.counters: Dict[str, BadSampleCounter] = {}
        # Broken training samples of the last epoch, summed over ranks.
        self.broken_train_samples: Optional[int] = None
        self.loss: Optional[torch.nn.Module] = None
        self.log_betas: List[torch.nn.Parameter] = []  # --learnable-hopfield-beta's model parameters
        self.monitor: Optional[HopfieldMonitor] = None
        self._loss_state: Optional[Dict[str, Any]] = None  # of a resumed checkpoint, until the loss exists
        # The settings this run's weights were trained with before the current ones (HISTORY_KEY).
        self.settings_history: List[Dict[str, Any]] = []
        self._guarded: Optional[torch.optim.Optimizer] = None
        self.peers: Optional[PeerWatch] = None  # a distributed run's heartbeats (not with Horovod)

    def install(self) -> None:
        """Replace OpenCLIP's names in this process by this run's hooks; install the preemption handlers."""
        self.preemption.install()
        openclip_main.parse_args = self.parse_args
        openclip_main.create_model_and_transforms = self.create_model_and_transforms
        openclip_main.create_loss = self.create_loss
        openclip_main.train_one_epoch = self.train_one_epoch
        openclip_main.pt_load = self.pt_load
        openclip_main.get_data = self.get_data
        openclip_main.init_distributed_device = self.init_distributed_device
        openclip_train.enumerate = enumerate_batches
        openclip_train.zero_shot_eval = self.zero_shot_eval
        openclip_train.get_clip_metrics = self.get_clip_metrics
        openclip_data.CsvDataset = self.csv_dataset
        openclip_data.get_wds_dataset = get_wds_dataset
        torch.save = self.save
        torch.nn.parallel.DistributedDataParallel = CpuCapableDistributedDataParallel
        if self.args.restart_cycles > 1:
            openclip_main.cosine_lr = self.cosine_lr

    def parse_args(self, args: Any = None) -> argparse.Namespace:
        """OpenCLIP's ``parse_args``: the run configuration, parsed once by ``training.main``."""
        return self.args

    def init_distributed_device(self, args: argparse.Namespace) -> torch.device:
        """OpenCLIP's ``init_distributed_device`` with ``--dist-join-timeout`` and ``--dist-timeout``; a
        distributed run's ranks start their heartbeats (:class:`~training.reliability.PeerWatch`)."""
        with _process_group_timeouts(args.dist_join_timeout, args.dist_timeout):
            device = _openclip_init_distributed_device(args)
        if args.distributed and not args.horovod:
            self.peers = PeerWatch.of_process_group(args.rank, args.world_size)
        return device

    def close(self) -> None:
        """The run ends in this process: stop its heartbeats."""
        if self.peers is not None:
            self.peers.stop()

    def lost_peers(self) -> Optional[str]:
        """After a failed collective operation: the ranks that stopped answering (``None``: none, or not distributed)."""
        return self.peers.describe_lost() if self.peers is not None else None

    def create_model_and_transforms(self, *args: Any, **kwargs: Any) -> Tuple[torch.nn.Module, Callable, Callable]:
        """OpenCLIP's model factory with ``--init-inv-tau``, ``--learnable-inv-tau`` and ``--learnable-hopfield-beta``."""
        model, preprocess_train, preprocess_val = create_model_and_transforms(
            *args, init_inv_tau=self.args.init_inv_tau, learnable_inv_tau=self.args.learnable_inv_tau, **kwargs)
        if self.args.learnable_hopfield_beta is not None:
            self.log_betas = add_learnable_beta(model, self.args.hopfield_beta, self.args.learnable_hopfield_beta)
        return model, preprocess_train, preprocess_val

    def create_loss(self, args: argparse.Namespace) -> torch.nn.Module:
        """:func:`create_loss`, kept for the checkpoints; a resumed checkpoint's loss state goes into it."""
        self.loss = create_loss(args)
        if self.log_betas:
            self.loss.learn_beta(*self.log_betas)
        if params.uses_cloob_loss(args) and args.hopfield_monitor:
            self.monitor = HopfieldMonitor(self.loss, args)
        if self._loss_state is not None:
            self.loss.load_state_dict(self._loss_state)
            self._loss_state = None
        return self.loss

    def cosine_lr(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_length: int,
                  steps: int) -> Callable[[int], float]:
        """OpenCLIP's ``cosine`` schedule with ``--restart-cycles`` hard restarts."""
        return cosine_restarts_lr(optimizer, base_lr, warmup_length, steps, cycles=self.args.restart_cycles)

    def checkpoint_entries(self) -> Dict[str, Any]:
        """CLOOB's entries of this run's checkpoints: the settings and, when it has any, the loss state
        and the settings history."""
        entries: Dict[str, Any] = {META_KEY: params.cloob_settings(self.args)}
        loss_state = self.loss.state_dict() if self.loss is not None else {}
        if loss_state:
            entries[LOSS_STATE_KEY] = loss_state
        if self.settings_history:
            entries[HISTORY_KEY] = self.settings_history
        return entries

    def save(self, obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        """``torch.save``: OpenCLIP's training checkpoints get CLOOB's entries; paths are written atomically."""
        if isinstance(obj, dict) and _OPENCLIP_TRAINING_CHECKPOINT <= obj.keys():
            obj = {**obj, **self.checkpoint_entries()}
        atomic_save(obj, f, *args, **kwargs)

    def pt_load(self, file_path: str, map_location: Any = None) -> Dict[str, Any]:
        """OpenCLIP's ``pt_load`` (``--resume``), weights_only; holds a training checkpoint to its CLOOB
        settings, keeps its mid-epoch position, loss state and settings history."""
        checkpoint = load_checkpoint(file_path, map_location)
        if isinstance(checkpoint, dict) and "epoch" in checkpoint:  # OpenCLIP's test for a training checkpoint
            self.settings_history = resumed_settings_history(
                checkpoint, file_path, params.cloob_settings(self.args), self.args.allow_changed_settings)
        self.resume.read(checkpoint)
        self._loss_state = checkpoint.get(LOSS_STATE_KEY) if isinstance(checkpoint, dict) else None
        return checkpoint

    def train_one_epoch(self, model: torch.nn.Module, data: Dict[str, Any], loss: torch.nn.Module, epoch: int,
                        optimizer: torch.optim.Optimizer, scaler: Any, scheduler: Callable[[int], float],
                        dist_model: Optional[torch.nn.Module], args: argparse.Namespace, tb_writer: Any = None) -> None:
        """OpenCLIP's epoch with :mod:`training.reliability`'s step boundaries, resume and fault guard."""
        if optimizer is not self._guarded:  # the same optimizer every epoch: attach once
            self.guard.attach(optimizer, loss)
            self._guarded = optimizer
        train = data["train"]
        counter = self.counters.get("train")
        if counter is not None:
            counter.reset()
        steps_per_epoch = train.dataloader.num_batches // args.accum_freq
        session = EpochSession(args, epoch, model, optimizer, scaler, self.guard, self.preemption, steps_per_epoch,
                               self.checkpoint_entries)
        point = self.resume.take(epoch)
        skip = point.step if point is not None else 0
        if self.monitor is not None:
            self.monitor.begin_epoch(epoch, skip, steps_per_epoch, tb_writer)
        loader = StepLoader(train.dataloader, args.accum_freq, skip, args.seed + epoch,
                            point.rng_of(args) if point is not None else None, session.on_step_end)
        train = dataclasses.replace(train, dataloader=loader)
        if skip and args.dataset_resampled and train.shared_epoch is not None:
            train = dataclasses.replace(train, shared_epoch=ContinuedDraw(train.shared_epoch, skip))
        if args.hopfield_warmin:
            scheduler = self._warming_in(scheduler)
        _openclip_train_one_epoch(
            model, {**data, "train": train}, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
            tb_writer=tb_writer)
        if counter is not None:
            self.broken_train_samples = sum_over_ranks(counter.count)
            logging.info("Epoch %d: %d broken training samples skipped", epoch, self.broken_train_samples)

    def _warming_in(self, scheduler: Callable[[int], float]) -> Callable[[int], float]:
        """``scheduler`` that first sets the loss's Hopfield weight of ``--hopfield-warmin`` for the step."""
        def schedule(step: int) -> float:
            self.loss.hopfield_weight = hopfield_warmin_weight(step, self.args.hopfield_warmin)
            return scheduler(step)
        return schedule

    def csv_dataset(self, input_filename: str, transforms: Callable, img_key: str, caption_key: str,
                    sep: str = "\t", tokenizer: Optional[Callable] = None) -> CheckedCsvDataset:
        """OpenCLIP's ``CsvDataset``: :class:`~training.data_checks.CheckedCsvDataset` with ``--max-bad-samples``."""
        return CheckedCsvDataset(input_filename, transforms, img_key, caption_key, sep, tokenizer,
                                 max_bad_samples=self.args.max_bad_samples)

    def get_data(self, args: argparse.Namespace, preprocess_fns: Tuple[Callable, Callable], epoch: int = 0,
                 tokenizer: Optional[Callable] = None) -> Dict[str, Any]:
        """OpenCLIP's datasets; records their broken-sample counters, zero-shot folders skip unreadable images."""
        data = _openclip_get_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        for name in ("imagenet-val", "imagenet-v2"):
            if name in data:
                loader = data[name].dataloader
                dataset = SkipUnreadableImages(loader.dataset, BadSampleCounter(args.max_bad_samples))
                data[name] = dataclasses.replace(data[name], dataloader=DataLoader(
                    dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                    sampler=data[name].sampler, collate_fn=collate_readable))
        self.counters = {name: counter for name, info in data.items() if (counter := _bad_sample_counter(info))}
        return data

    def zero_shot_eval(self, model: torch.nn.Module, data: Dict[str, Any], epoch: int, args: argparse.Namespace,
                       tokenizer: Optional[Callable] = None) -> Dict[str, Any]:
        """OpenCLIP's zero-shot evaluation, the first step of ``evaluate()``; adds broken-sample counts.

        A new evaluation pass begins here, so the evaluation datasets' counts restart; the counts of
        the zero-shot folders and of the last training epoch join the returned metrics (``--val-data``'s
        count is added by :meth:`get_clip_metrics`, after its pass).
        """
        for name, counter in self.counters.items():
            if name != "train":
                counter.reset()
        metrics = _openclip_zero_shot_eval(model, data, epoch, args, tokenizer=tokenizer)
        if self.broken_train_samples is not None:
            metrics["broken_train_samples"] = self.broken_train_samples
        metrics.update({f"broken_{name}_samples": counter.count for name, counter in self.counters.items()
                        if name.startswith("imagenet")})
        return metrics

    def get_clip_metrics(self, image_features: torch.Tensor, text_features: torch.Tensor,
                         logit_scale: torch.Tensor) -> Dict[str, Any]:
        """OpenCLIP's retrieval metrics, the CLOOB-family validation loss and ``broken_val_samples``.

        With a CLOOB-family loss also ``val_hopfield_<key>``: the Hopfield diagnostics of the first
        validation batch (``--batch-size`` rows, the batch the validation loss starts with).

        ``evaluate()`` calls this after its pass over ``--val-data``, logs the metrics and writes them
        to ``results.jsonl``.
        """
        metrics = _openclip_get_clip_metrics(image_features, text_features, logit_scale)
        if params.uses_cloob_loss(self.args):
            loss = build_cloob_loss(self.args, distributed=False)  # the paper's weight 1, even in a warm-in
            if self.log_betas:
                loss.learn_beta(*self.log_betas)
            metrics[f"{self.args.loss}_val_loss"] = validation_loss(
                loss, image_features, text_features, logit_scale, self.args.batch_size)
            if len(image_features) >= 2:
                first = slice(0, self.args.batch_size)
                metrics.update({f"val_hopfield_{key}": value for key, value in
                                loss.diagnostics(image_features[first], text_features[first]).items()})
        if "val" in self.counters:
            metrics["broken_val_samples"] = self.counters["val"].count
        return metrics


def install_hooks(args: argparse.Namespace) -> Run:
    """Install the hooks of a run configured by the resolved ``args`` in this process; returns the run.

    Idempotent: the hooks call OpenCLIP's originals captured at import.
    """
    run = Run(args)
    run.install()
    return run
