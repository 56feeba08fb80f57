"""Train CLOOB (or CLIP) with OpenCLIP's own training loop.

Drop-in for ``python -m open_clip_train.main``: the same flags, launchers, logs and checkpoints, plus
CLOOB's flags (:mod:`training.params`)::

    python -m training.main --model RN50-cloob --train-data ... --batch-size 128 ...
    torchrun --nproc_per_node 4 -- -m training.main --model RN50-cloob ...
    srun python -u -m training.main --model RN50-cloob ...

Every process (each torchrun or SLURM rank runs this module) parses the command line once into the
run configuration, registers the CLOOB model configs (importing :mod:`open_clip_cloob` does) and the
``--add-model-config`` paths, installs the hooks of :mod:`training.openclip_hooks` and runs
``open_clip_train.main.main``. ``python -m training.params ...`` parses the same command line
without training (a dry run). Needs the ``[train]`` extra (``pip install 'open_clip_cloob[train]'``).
"""
import logging
import os
import sys
from typing import Optional, Sequence

from open_clip_cloob import CheckpointError, add_model_configs, cli
from training.params import parse_args

PROG = "python -m training.main"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run training for ``argv``; returns the process exit status.

    0: done; 75 (:data:`~training.reliability.PREEMPTED_EXIT_CODE`): stopped by SIGUSR1/SIGTERM after
    saving a checkpoint, to be requeued with ``--resume latest``; 1: failed (also when a distributed
    run lost a rank: the message names the ranks and hosts that stopped answering).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # OpenCLIP's training code imports the [train] extra's packages; so do the hooks.
    openclip_main = cli.require("open_clip_train.main", extra="train", purpose=f"{PROG} runs OpenCLIP's training")
    from training.data_checks import BadDataError
    from training.openclip_hooks import install_hooks
    from training.reliability import (
        PREEMPTED_EXIT_CODE, ChangedSettingsError, JoinError, NumericFaultError, Preempted)

    add_model_configs(args.add_model_config)
    run = install_hooks(args)
    try:
        status = openclip_main.main(argv)
    except Preempted as stop:
        logging.warning("Preempted: %s", stop)
        return PREEMPTED_EXIT_CODE
    except (BadDataError, NumericFaultError, CheckpointError, ChangedSettingsError, JoinError, OSError) as error:
        logging.error("%s: %s", type(error).__name__, error)
        return 1
    except RuntimeError as error:
        # A failed collective operation (a peer's connection reset, or --dist-timeout ran out) names
        # the ranks that stopped answering; any other error, or one with every rank alive, goes on.
        lost = run.lost_peers()
        if lost is None:
            raise
        logging.error("Lost %s: %s: %s. The checkpoints written so far are kept: resubmit or requeue the job "
                      "to continue with --resume latest", lost, type(error).__name__, str(error).splitlines()[0])
        return 1
    finally:
        run.close()
        quiet_torch_exit_reports(args.debug)
    # OpenCLIP's main returns None on success and -1 when it refuses to run (e.g. the experiment
    # folder exists); job scripts need that as a failing exit status.
    return 0 if status is None else 1


def quiet_torch_exit_reports(debug: bool) -> None:
    """Put torch's loggers back to WARNING before the process exits, unless ``--debug`` or ``TORCH_LOGS``.

    OpenCLIP's logging setup sets every logger that exists to INFO, torch's included, so at exit
    torch's atexit handlers would print TorchDynamo and FakeTensor statistics, a screenful per
    process even when nothing was compiled. ``TORCH_LOGS`` is torch's own switch for them.
    """
    if debug or os.environ.get("TORCH_LOGS"):
        return
    for name in list(logging.root.manager.loggerDict):
        if name == "torch" or name.startswith("torch."):
            logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG, console_logging=False))  # OpenCLIP sets up the logging of a run
