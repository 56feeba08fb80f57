"""The run configuration of ``python -m training.main``: CLOOB's flags in front of all of OpenCLIP's.

``training.main`` parses the command line once, here, into one namespace holding OpenCLIP's and
CLOOB's settings; OpenCLIP's ``main()`` receives that same object (its ``parse_args`` hook returns
it) and every hook of :mod:`training.openclip_hooks` reads it, so OpenCLIP's ``params.txt`` (which
dumps every attribute) records the CLOOB settings too. The CLOOB flags are parsed first
(``parse_known_args``); everything else goes to OpenCLIP's strict ``parse_args``. Defaults that
depend on other flags are resolved here, once, and written back, so that ``params.txt`` shows the
values the run used.

The training losses are the library's (:mod:`open_clip_cloob.settings`: its ``LOSS_VARIANTS`` and
OpenCLIP's ``clip``), and so are the defaults and the valid range of every number; a bad value is a
one-line error naming the flag. This module does not import torch, so ``python -m training.params
ARGS`` (the job scripts' ``DRY_RUN=1``) checks a command line anywhere, quickly.
"""
import argparse
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence

from open_clip_train.params import parse_args as openclip_parse_args


def _library_settings() -> ModuleType:
    """:mod:`open_clip_cloob.settings` without running ``open_clip_cloob/__init__.py``, which imports
    torch (it registers the model configs). Registered under its own name, so the package finds this
    module object when it is imported later, and both see one set of facts."""
    name = "open_clip_cloob.settings"
    if name not in sys.modules:
        package = importlib.util.find_spec("open_clip_cloob")
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(package.submodule_search_locations[0], "settings.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


settings = _library_settings()
COSINE_RESTARTS = "cosine-restarts"
# The flags that define the objective and the schedule, stored in checkpoints next to the weights
# (their "cloob" entry) and compared with the command line on --resume.
CLOOB_SETTINGS = ("loss", "hopfield_beta", "hopfield_beta_from_spread", "hopfield_warmin", "learnable_hopfield_beta",
                  "init_inv_tau", "learnable_inv_tau", "restart_cycles")


def _checked(parse: Callable[[str], Any], check: Callable[..., Any], *bounds: Any) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse`` the text (``int`` or ``float``), then ``check("value", parsed,
    *bounds)``, a check of :mod:`open_clip_cloob.settings`; argparse names the flag in the error."""
    def parse_flag(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'an integer' if parse is int else 'a number'}: {text!r}") from None
        try:
            return check("value", value, *bounds)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse_flag


def add_cloob_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add CLOOB's flags (hyphenated, OpenCLIP style) to ``parser``."""
    group = parser.add_argument_group("CLOOB")
    group.add_argument(
        "--loss", choices=settings.LOSSES, default=None,
        help="Training loss, a corner of the paper's ablation grid. 'cloob': modern Hopfield retrieval + "
             "InfoLOOB. 'cloob-infonce': the Hopfield retrievals scored with InfoNCE. 'infoloob': InfoLOOB "
             "on the plain embeddings. 'clip': whatever OpenCLIP picks for the other flags (InfoNCE, "
             "SigLIP, CoCa, distillation). The first three share CLOOB's scale τ·[ℓ + ℓ] and its fixed "
             "1/τ = 30 by default. "
             f"Default: {settings.CLOOB_LOSSES[0]} for '*{settings.CLOOB_MODEL_SUFFIX}' models, "
             f"{settings.OPENCLIP_LOSS} otherwise.")
    group.add_argument(
        "--hopfield-beta", "--scale-hopfield", dest="hopfield_beta",
        type=_checked(float, settings.check_positive), default=settings.DEFAULT_HOPFIELD_BETA,
        help=f"Inverse temperature β > 0 of the Hopfield retrieval (default {settings.DEFAULT_HOPFIELD_BETA:g}, the "
             "paper's CC3M value). --scale-hopfield is the original code's name.")
    group.add_argument(
        "--hopfield-beta-from-spread", type=_checked(float, settings.check_positive), default=None, metavar="K",
        help="Opt-in remedy, not the paper's method: every step, each memory's β = K / σ, σ the spread "
             "(standard deviation) of the batch's pairwise similarities in that memory, replacing "
             "--hopfield-beta; keeps the retrieval from turning into the batch mean when the embeddings "
             f"are nearly collinear (docs/study/). Only with --loss {' or '.join(settings.HOPFIELD_LOSSES)}.")
    group.add_argument(
        "--hopfield-warmin", type=_checked(int, settings.check_int_at_least, 0), default=0, metavar="STEPS",
        help="Opt-in remedy, not the paper's method: phase the Hopfield retrieval in over the first STEPS "
             "optimizer steps, loss = (1 − λ) · (the loss without retrieval) + λ · (the loss with it), "
             "λ = min(1, step / STEPS): plain InfoLOOB (or InfoNCE) at the start, the paper's loss from "
             f"step STEPS on. 0 (default): off. Only with --loss {' or '.join(settings.HOPFIELD_LOSSES)}.")
    group.add_argument(
        "--learnable-hopfield-beta", choices=settings.LEARNABLE_BETA_MODES, default=None,
        help="Opt-in remedy, not the paper's method: learn β, starting from --hopfield-beta, as a model "
             f"parameter ({settings.LEARNABLE_BETA_PARAMETERS[0]} = log β, the name of the authors' first "
             "code) trained by the run's optimizer without weight decay. 'shared': one β for every "
             f"retrieval; 'per-modality': also {settings.LEARNABLE_BETA_PARAMETERS[1]}, β of the retrievals "
             "from text memory, while the first serves those from image memory. Exported weights keep the "
             f"learnt values as metadata. Only with --loss {' or '.join(settings.HOPFIELD_LOSSES)}.")
    group.add_argument(
        "--hopfield-monitor", action=argparse.BooleanOptionalAction, default=True,
        help="With a CLOOB-family loss: log the Hopfield diagnostics of the batch on logging steps "
             "(train/hopfield/*: attended patterns, mean cosines, positive − negative similarity) and "
             "warn when the loss sits at its collapsed value (train/collapse_warning, results.jsonl). "
             "Default: on.")
    group.add_argument(
        "--init-inv-tau", type=_checked(float, settings.check_inv_tau), default=None,
        help=f"Initial inverse temperature 1/τ in [{settings.INV_TAU_RANGE[0]:g}, {settings.INV_TAU_RANGE[1]:g}] "
             f"of a freshly initialised model; replaces the config's init_logit_scale (ln of it). "
             f"Default: {settings.DEFAULT_INV_TAU:g} with a CLOOB loss, the model "
             "config's value otherwise. Pretrained or resumed weights keep their own temperature.")
    group.add_argument(
        "--learnable-inv-tau", action=argparse.BooleanOptionalAction, default=None,
        help="Train the temperature (the model's logit_scale). Default: frozen with a CLOOB loss "
             "(the paper's setting; DDP and the optimizer then leave it alone), learnable otherwise "
             "(OpenCLIP's behaviour).")
    group.add_argument(
        "--restart-cycles", type=_checked(int, settings.check_int_at_least, 1), default=1,
        help=f"Number of cosine cycles after warmup for --lr-scheduler {COSINE_RESTARTS} (the paper's "
             "CC3M recipe: 10). 1 is OpenCLIP's cosine schedule.")
    group.add_argument(
        "--add-model-config", action="append", default=[], metavar="PATH",
        help="Model config JSON file or folder to register in OpenCLIP's factory before the model is "
             "built, in every process (repeatable). The CLOOB configs are always registered.")
    return parser


def add_reliability_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of :mod:`training.reliability` (preemption, step checkpoints, numeric faults)."""
    group = parser.add_argument_group("Reliability")
    group.add_argument(
        "--allow-changed-settings", action="store_true",
        help="With --resume: continue even if the checkpoint was trained with other CLOOB settings (loss, "
             "β, β from the spread, the warm-in, a learnable β, 1/τ and whether it is learnable, restart cycles; "
             "checkpoint['cloob']). Without it such a resume stops before the first step, naming each "
             "difference. The change is logged and the old settings are kept in the checkpoints' "
             "settings history.")
    group.add_argument(
        "--save-every-n-steps", type=_checked(int, settings.check_int_at_least, 0), default=0, metavar="N",
        help="Also write a checkpoint every N optimizer steps (counted over the whole run), inside "
             "epochs: epoch_latest.pt with --save-most-recent, otherwise epoch_E_step_S.pt (older "
             "step checkpoints are deleted, and so is this one once epoch_N.pt, N > E, is written). "
             "--resume latest continues from it at that step. 0: off. "
             "A SIGUSR1 or SIGTERM always writes one and exits with status 75.")
    group.add_argument(
        "--max-nonfinite-steps", type=_checked(int, settings.check_int_at_least, 1), default=20, metavar="N",
        help="Optimizer steps with a non-finite loss or gradient are skipped (weights and optimizer "
             "state untouched); N of them in a row save a checkpoint and stop the run (default 20).")
    group.add_argument(
        "--max-bad-samples", type=_checked(int, settings.check_int_at_least, 0), default=1000, metavar="N",
        help="Broken samples (missing, truncated or corrupt image, empty or non-UTF-8 caption; in "
             "webdataset shards also a sample without image or caption, an unreadable shard) are "
             "skipped, counted (log, results.jsonl) and the first few logged; more than N in one pass "
             "over a dataset (a training epoch of one rank, or one evaluation) stop the run "
             "(default 1000).")
    group.add_argument(
        "--dist-timeout", type=_checked(float, settings.check_positive), default=None, metavar="SECONDS",
        help="Timeout of the distributed process group's operations once its ranks have joined: a "
             "collective operation that waits longer for another rank fails, and every surviving rank "
             "stops with status 1 and a message naming the ranks (and nodes) that stopped responding; "
             "the last checkpoint is kept, a resubmitted or requeued job resumes from it. Set it above "
             "the longest time one rank works alone (the logging rank's evaluation and checkpoint "
             "writing). Default: torch's (30 min for gloo, 10 min for NCCL). docs/clusters.md.")
    group.add_argument(
        "--dist-join-timeout", type=_checked(float, settings.check_positive), default=None, metavar="SECONDS",
        help="How long the ranks of a distributed run wait for each other at the start (the rendezvous "
             "in the store on the first node); a rank that has not joined by then fails the start. "
             "Separate from --dist-timeout, so that a short one does not fail a start in which one "
             "node launches late. Default: torch's (30 min).")
    return parser


def _cloob_parser() -> argparse.ArgumentParser:
    # No abbreviations: a prefix of an OpenCLIP flag must never be taken for a CLOOB flag.
    parser = argparse.ArgumentParser(
        prog="python -m training.main", add_help=False, allow_abbrev=False,
        description=f"OpenCLIP's training with the CLOOB loss. Accepts every OpenCLIP flag; "
                    f"--lr-scheduler also accepts '{COSINE_RESTARTS}'.")
    return add_reliability_args(add_cloob_args(parser))


def is_cloob_model(model_name: str) -> bool:
    """Whether ``model_name`` names a CLOOB architecture (``RN50-cloob``, ...)."""
    return model_name.endswith(settings.CLOOB_MODEL_SUFFIX)


def uses_cloob_loss(args: argparse.Namespace) -> bool:
    """Whether the run trains with the library's ``CloobLoss`` (a variant of ``settings.LOSS_VARIANTS``)."""
    return args.loss in settings.LOSS_VARIANTS


def cloob_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The resolved CLOOB settings of a run, e.g. for its checkpoints."""
    return {name: getattr(args, name) for name in CLOOB_SETTINGS}


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill the flag-dependent defaults in place and reject contradictory combinations."""
    if args.loss is None:
        args.loss = settings.CLOOB_LOSSES[0] if is_cloob_model(args.model) else settings.OPENCLIP_LOSS
    cloob = uses_cloob_loss(args)
    if cloob:
        # These switch OpenCLIP's create_loss to another objective; silently ignoring them would
        # train something the user did not ask for.
        conflicts = [name for name, on in (
            ("--siglip", args.siglip),
            ("--distill-model", args.distill_model is not None),
            ("a CoCa model", "coca" in args.model.lower()),
        ) if on]
        if conflicts:
            parser.error(f"--loss {args.loss} cannot be combined with {', '.join(conflicts)}")
        if args.init_inv_tau is None:
            args.init_inv_tau = settings.DEFAULT_INV_TAU
    if args.learnable_inv_tau is None:
        args.learnable_inv_tau = not cloob
    for flag, on in (("--hopfield-beta-from-spread", args.hopfield_beta_from_spread is not None),
                     ("--hopfield-warmin", args.hopfield_warmin > 0),
                     ("--learnable-hopfield-beta", args.learnable_hopfield_beta is not None)):
        if on and args.loss not in settings.HOPFIELD_LOSSES:
            parser.error(f"{flag} needs a loss with a Hopfield step ({', '.join(settings.HOPFIELD_LOSSES)}), "
                         f"not --loss {args.loss}")
    if args.learnable_hopfield_beta is not None and args.hopfield_beta_from_spread is not None:
        parser.error("--learnable-hopfield-beta and --hopfield-beta-from-spread both set β: choose one")
    if args.hopfield_warmin > 0 and args.skip_scheduler:
        # The warm-in follows the step OpenCLIP hands its learning-rate schedule, which --skip-scheduler skips.
        parser.error("--hopfield-warmin needs the learning-rate schedule: drop --skip-scheduler")
    if args.restart_cycles != 1 and args.lr_scheduler != COSINE_RESTARTS:
        parser.error(f"--restart-cycles needs --lr-scheduler {COSINE_RESTARTS}")
    if args.lr_scheduler == COSINE_RESTARTS:
        # OpenCLIP's main only dispatches its own scheduler names; cosine-restarts runs through its
        # 'cosine' branch, whose factory training.openclip_hooks replaces by cosine_restarts_lr.
        args.lr_scheduler = "cosine"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse ``argv`` into one namespace with OpenCLIP's and CLOOB's settings, defaults resolved."""
    parser = _cloob_parser()
    argv: List[str] = list(argv or [])
    if "-h" in argv or "--help" in argv:
        # OpenCLIP's parser prints its own help and exits; show CLOOB's flags first.
        parser.print_help()
    cloob_args, rest = parser.parse_known_args(argv)
    args = openclip_parse_args(rest)
    for name, value in vars(cloob_args).items():
        setattr(args, name, value)
    _resolve(args, parser)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dry run: print the resolved settings of ``argv``, one ``name: value`` per line, and exit.

    ``python -m training.params ...`` parses exactly like ``python -m training.main ...`` without
    importing torch, so job scripts can be checked anywhere (their ``DRY_RUN=1``).
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for name in sorted(vars(args)):
        logging.info("%s: %s", name, getattr(args, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())

