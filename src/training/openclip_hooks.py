"""Every hook ``training.main`` puts into OpenCLIP's training code (``open_clip_train`` 3.3).

OpenCLIP's ``main()`` looks several names up in its module's globals at call time; replacing them
there injects CLOOB without copying OpenCLIP's loop. :data:`HOOKS` lists each replaced name with
the function that must still look it up and the upstream parameters the replacement relies on;
:data:`CALLED` lists the upstream functions this package calls directly. ``tests/test_training_hooks.py``
checks both against the installed OpenCLIP, so an upstream refactor fails loudly instead of silently
training CLIP.

What each hook does (installed by :func:`install_hooks`, per process, before ``main()`` runs):

- ``parse_args``: :func:`training.params.parse_args` (CLOOB flags first, the rest to OpenCLIP's).
- ``create_model_and_transforms``: builds the model with ``init_logit_scale = ln(--init-inv-tau)``
  and freezes ``logit_scale`` unless ``--learnable-inv-tau``, before DDP wraps the model (DDP fails
  on step 2 if a trainable parameter never gets a gradient).
- ``create_loss``: :class:`open_clip_cloob.CloobLoss` for ``--loss cloob``, OpenCLIP's choice otherwise.
- ``cosine_lr``: :func:`training.scheduler.cosine_restarts_lr` when ``--restart-cycles`` > 1.
- ``train_one_epoch``: records the CLOOB settings in the checkpoint. OpenCLIP builds the checkpoint
  dict itself with fixed keys; the only CLOOB-controlled object inside it is the optimizer's state
  dict, so they are stored as ``checkpoint["optimizer"]["cloob"]`` (ignored by
  ``Optimizer.load_state_dict``, so ``--resume`` and OpenCLIP's own tools are unaffected). It also
  runs the epoch through :class:`training.reliability.StepLoader` (step boundaries: non-finite
  steps, ``--save-every-n-steps``, preemption signals; resuming inside the epoch, with the learning
  rate schedule shifted by the steps already done and, for a resampled webdataset, shards drawn
  afresh through :class:`training.reliability.ContinuedDraw`) and puts the non-finite guard on the loss and
  the optimizer.
- ``open_clip_train.data.CsvDataset``: :class:`training.data_checks.CheckedCsvDataset` (structural
  checks at start, broken samples skipped and counted, ``--max-bad-samples``).
- ``open_clip_train.data.get_wds_dataset``: :func:`training.data_checks.check_shards` first; while
  OpenCLIP builds the pipeline, its sample filter ``filter_no_caption_or_no_image``, its exception
  handler ``log_and_continue`` and the handler of its training tar reader
  ``tarfile_to_samples_nothrow`` are those of a :class:`training.data_checks.WebdatasetSampleCheck`
  (broken samples skipped, counted, limited); the originals are put back once it is built. A
  resampled training pipeline's shard sampler (``ResampledShards2``, the pipeline's first stage)
  gets :func:`training.reliability.resampling_seed` as its ``worker_seed``.
- ``open_clip_train.main.get_data``: records each dataset's broken-sample counter and wraps the
  zero-shot image folders in :class:`training.data_checks.SkipUnreadableImages`.
- ``open_clip_train.train.zero_shot_eval``: an evaluation begins; the counts of the evaluation
  datasets restart, and ``broken_train_samples`` (the last epoch, all ranks) and
  ``broken_imagenet-val_samples`` join the metrics ``evaluate()`` logs and writes to ``results.jsonl``.
- ``pt_load`` (``--resume``): :func:`training.reliability.load_checkpoint`, weights_only loading
  that also reads the mid-epoch position of a step checkpoint.
- ``torch.save``: :func:`training.reliability.atomic_save` (temporary file, fsync, rename), so the
  checkpoints OpenCLIP writes at epoch ends are never seen truncated. Process-wide, like DDP below:
  ``main()`` reaches it through ``torch``.
- ``open_clip_train.train.get_clip_metrics``: adds ``cloob_val_loss`` (with ``--loss cloob``), the
  CLOOB loss over the ``--val-data`` batches, and ``broken_val_samples`` to the metrics
  ``evaluate()`` logs, writes to ``results.jsonl`` and sends to tensorboard/wandb.
- ``torch.nn.parallel.DistributedDataParallel``: OpenCLIP passes ``device_ids=[device]`` also for a
  CPU device, which torch rejects; the subclass drops CPU device ids so DDP runs on CPU with gloo
  (a no-op on GPUs). This one is process-wide: ``main()`` reaches it through ``torch``.
"""
import argparse
import contextlib
import dataclasses
import logging
import math
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import open_clip_train.data as openclip_data
import open_clip_train.main as openclip_main
import open_clip_train.train as openclip_train
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from open_clip_cloob import CloobLoss, cloob_loss
from training import params
from training.data_checks import (
    BadSampleCounter, CheckedCsvDataset, SkipUnreadableImages, WebdatasetSampleCheck, check_shards, collate_readable)
from training.reliability import (
    ContinuedDraw, EpochSession, NonFiniteGuard, PreemptionSignal, ResumeState, StepLoader, atomic_save,
    load_checkpoint, resampling_seed, sum_over_ranks)
from training.scheduler import cosine_restarts_lr


@dataclass(frozen=True)
class Hook:
    """A name replaced in ``module``, looked up at call time by the function ``caller``."""

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
    Hook("open_clip_train.data", "tarfile_to_samples_nothrow", "open_clip_train.data.get_wds_dataset",
         ("src", "handler")),
    Hook("open_clip_train.main", "get_data", "open_clip_train.main.main",
         ("args", "preprocess_fns", "epoch", "tokenizer")),
    Hook("open_clip_train.train", "zero_shot_eval", "open_clip_train.train.evaluate",
         ("model", "data", "epoch", "args", "tokenizer")),
    Hook("open_clip_train.main", "pt_load", "open_clip_train.main.main", ("file_path", "map_location")),
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
}

# The originals, captured at import so that installing twice never wraps a replacement.
_openclip_create_model_and_transforms = openclip_main.create_model_and_transforms
_openclip_create_loss = openclip_main.create_loss
_openclip_train_one_epoch = openclip_main.train_one_epoch
_openclip_get_clip_metrics = openclip_train.get_clip_metrics
_openclip_get_wds_dataset = openclip_data.get_wds_dataset
_openclip_tarfile_to_samples_nothrow = openclip_data.tarfile_to_samples_nothrow
_openclip_get_data = openclip_main.get_data
_openclip_zero_shot_eval = openclip_train.zero_shot_eval

CHECKPOINT_KEY = "cloob"
# Optimizers that already carry this package's hooks (train_one_epoch runs once per epoch).
_optimizers_hooked: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()


@dataclass
class RunState:
    """Per-process reliability state shared by the hooks of one run."""

    resume: ResumeState
    preemption: PreemptionSignal
    guard: NonFiniteGuard
    # Broken-sample counters of the datasets, by OpenCLIP's data key ('train', 'val', 'imagenet-val', ...).
    counters: Dict[str, BadSampleCounter] = field(default_factory=dict)
    # Broken training samples of the last epoch, summed over ranks.
    broken_train_samples: Optional[int] = None


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


def create_loss(args: argparse.Namespace) -> torch.nn.Module:
    """CloobLoss for ``--loss cloob``, OpenCLIP's own choice otherwise; logs which and on what batch."""
    if args.loss != "cloob":
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
    return CloobLoss(
        hopfield_beta=args.hopfield_beta,
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        rank=args.rank,
        world_size=args.world_size,
        use_horovod=args.horovod,
    )


def _attach_hooks(optimizer: torch.optim.Optimizer, loss: torch.nn.Module, args: argparse.Namespace,
                  guard: NonFiniteGuard) -> None:
    """Once per run (optimizer): CLOOB settings in the optimizer's state dict, the non-finite guard."""
    if optimizer in _optimizers_hooked:
        return
    settings = params.cloob_settings(args)
    optimizer.register_state_dict_post_hook(
        lambda _optimizer, state_dict: {**state_dict, CHECKPOINT_KEY: settings})
    guard.attach(optimizer, loss)
    _optimizers_hooked.add(optimizer)


def _shifted(scheduler: Callable[[int], float], offset: int) -> Callable[[int], float]:
    """``scheduler`` for an epoch whose first ``offset`` steps were done before a resume."""
    return lambda step: scheduler(step + offset)


@dataclass
class StepOffsetWriter:
    """A tensorboard writer for an epoch whose first ``offset`` steps were done before a resume.

    OpenCLIP numbers the steps of the epoch from its first batch, which is step ``offset`` here.
    """

    writer: Any  # torch.utils.tensorboard.SummaryWriter
    offset: int

    def add_scalar(self, tag: str, value: Any, global_step: int, *args: Any, **kwargs: Any) -> None:
        self.writer.add_scalar(tag, value, global_step + self.offset, *args, **kwargs)


def train_one_epoch(model: torch.nn.Module, data: Dict[str, Any], loss: torch.nn.Module, epoch: int,
                    optimizer: torch.optim.Optimizer, scaler: Any, scheduler: Callable[[int], float],
                    dist_model: Optional[torch.nn.Module], args: argparse.Namespace, tb_writer: Any = None, *,
                    run: RunState) -> None:
    """OpenCLIP's epoch with the CLOOB settings in its checkpoints and :mod:`training.reliability`."""
    _attach_hooks(optimizer, loss, args, run.guard)
    train = data["train"]
    counter = run.counters.get("train")
    if counter is not None:
        counter.reset()
    steps_per_epoch = train.dataloader.num_batches // args.accum_freq
    session = EpochSession(args, epoch, model, optimizer, scaler, run.guard, run.preemption, steps_per_epoch)
    point = run.resume.take(epoch)
    skip = point.step if point is not None else 0
    loader = StepLoader(train.dataloader, args.accum_freq, skip, args.seed + epoch,
                        point.rng_of(args) if point is not None else None, session.on_step_end)
    train = dataclasses.replace(train, dataloader=loader)
    if skip:
        scheduler = _shifted(scheduler, skip)
        if tb_writer is not None:
            tb_writer = StepOffsetWriter(tb_writer, skip)
        if args.dataset_resampled and train.shared_epoch is not None:
            train = dataclasses.replace(train, shared_epoch=ContinuedDraw(train.shared_epoch, skip))
    _openclip_train_one_epoch(
        model, {**data, "train": train}, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
        tb_writer=tb_writer)
    if counter is not None:
        run.broken_train_samples = sum_over_ranks(counter.count)
        logging.info("Epoch %d: %d broken training samples skipped", epoch, run.broken_train_samples)


def _bad_sample_counter(info: Any) -> Optional[BadSampleCounter]:
    """The broken-sample counter of a dataset: on its loader (webdataset) or its dataset (map-style)."""
    loader = info.dataloader
    return getattr(loader, "bad_samples", None) or getattr(getattr(loader, "dataset", None), "bad_samples", None)


def get_data(args: argparse.Namespace, preprocess_fns: Tuple[Callable, Callable], epoch: int = 0,
             tokenizer: Optional[Callable] = None, *, run: RunState) -> Dict[str, Any]:
    """OpenCLIP's datasets; records their broken-sample counters, zero-shot folders skip unreadable images."""
    data = _openclip_get_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    for name in ("imagenet-val", "imagenet-v2"):
        if name in data:
            loader = data[name].dataloader
            dataset = SkipUnreadableImages(loader.dataset, BadSampleCounter(args.max_bad_samples))
            data[name] = dataclasses.replace(data[name], dataloader=DataLoader(
                dataset, batch_size=loader.batch_size, num_workers=loader.num_workers, sampler=data[name].sampler,
                collate_fn=collate_readable))
    run.counters = {name: counter for name, info in data.items() if (counter := _bad_sample_counter(info))}
    return data


def zero_shot_eval(model: torch.nn.Module, data: Dict[str, Any], epoch: int, args: argparse.Namespace,
                   tokenizer: Optional[Callable] = None, *, run: RunState) -> Dict[str, Any]:
    """OpenCLIP's zero-shot evaluation, the first step of ``evaluate()``; adds broken-sample counts.

    A new evaluation pass begins here, so the evaluation datasets' counts restart; the counts of the
    zero-shot folders and of the last training epoch join the returned metrics (``--val-data``'s
    count is added by :func:`get_clip_metrics`, after its pass).
    """
    for name, counter in run.counters.items():
        if name != "train":
            counter.reset()
    metrics = _openclip_zero_shot_eval(model, data, epoch, args, tokenizer=tokenizer)
    if run.broken_train_samples is not None:
        metrics["broken_train_samples"] = run.broken_train_samples
    metrics.update({f"broken_{name}_samples": counter.count for name, counter in run.counters.items()
                    if name.startswith("imagenet")})
    return metrics


@contextlib.contextmanager
def _webdataset_checks(check: WebdatasetSampleCheck) -> Iterator[None]:
    """While OpenCLIP builds one webdataset pipeline, its sample filter and handlers are ``check``'s."""
    replacements = {
        "filter_no_caption_or_no_image": check.select,
        "log_and_continue": check.handle,
        "tarfile_to_samples_nothrow": partial(_openclip_tarfile_to_samples_nothrow, handler=check.handle),
    }
    originals = {name: getattr(openclip_data, name) for name in replacements}
    for name, replacement in replacements.items():
        setattr(openclip_data, name, replacement)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(openclip_data, name, original)


def get_wds_dataset(args: argparse.Namespace, preprocess_img: Callable, is_train: bool, epoch: int = 0,
                    floor: bool = False, tokenizer: Optional[Callable] = None) -> Any:
    """OpenCLIP's webdataset pipeline with checked shards, counted broken samples and a seeded resampler."""
    check_shards(args.train_data if is_train else args.val_data)
    check = WebdatasetSampleCheck(BadSampleCounter(args.max_bad_samples))
    with _webdataset_checks(check):
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


def cloob_val_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    inv_tau: torch.Tensor,
    hopfield_beta: float,
    batch_size: int,
) -> float:
    """CLOOB loss averaged over consecutive batches of ``batch_size`` rows, weighted by their size.

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
        total += cloob_loss(images, texts, inv_tau, hopfield_beta).item() * len(images)
        count += len(images)
    return total / count if count else math.nan


def get_clip_metrics(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, *,
                     run: RunState, hopfield_beta: Optional[float], batch_size: int) -> Dict[str, Any]:
    """OpenCLIP's retrieval metrics, ``cloob_val_loss`` (given ``hopfield_beta``), ``broken_val_samples``.

    ``evaluate()`` calls this after its pass over ``--val-data``, logs the metrics and writes them
    to ``results.jsonl``.
    """
    metrics = _openclip_get_clip_metrics(image_features, text_features, logit_scale)
    if hopfield_beta is not None:
        metrics["cloob_val_loss"] = cloob_val_loss(
            image_features, text_features, logit_scale, hopfield_beta, batch_size)
    if "val" in run.counters:
        metrics["broken_val_samples"] = run.counters["val"].count
    return metrics


def install_hooks(args: argparse.Namespace) -> None:
    """Replace OpenCLIP's names in this process for a run configured by the resolved ``args``.

    Idempotent; the replacements call the originals captured at import. Also installs the
    preemption signal handlers (SIGUSR1, SIGTERM) of this process.
    """
    run = RunState(ResumeState(), PreemptionSignal(), NonFiniteGuard(args.max_nonfinite_steps))
    run.preemption.install()
    openclip_main.parse_args = params.parse_args
    openclip_main.create_model_and_transforms = partial(
        create_model_and_transforms, init_inv_tau=args.init_inv_tau, learnable_inv_tau=args.learnable_inv_tau)
    openclip_main.create_loss = create_loss
    openclip_main.train_one_epoch = partial(train_one_epoch, run=run)
    openclip_main.pt_load = partial(load_checkpoint, resume=run.resume)
    openclip_main.get_data = partial(get_data, run=run)
    openclip_train.zero_shot_eval = partial(zero_shot_eval, run=run)
    openclip_data.CsvDataset = partial(CheckedCsvDataset, max_bad_samples=args.max_bad_samples)
    openclip_data.get_wds_dataset = get_wds_dataset
    torch.save = atomic_save
    torch.nn.parallel.DistributedDataParallel = CpuCapableDistributedDataParallel
    if args.restart_cycles > 1:
        openclip_main.cosine_lr = partial(cosine_restarts_lr, cycles=args.restart_cycles)
    openclip_train.get_clip_metrics = partial(
        get_clip_metrics, run=run, hopfield_beta=args.hopfield_beta if args.loss == "cloob" else None,
        batch_size=args.batch_size)
