"""Train CLOOB (or CLIP) with OpenCLIP's own training loop.

Drop-in for ``python -m open_clip_train.main``: the same flags, launchers, logs and checkpoints, plus
CLOOB's flags (:mod:`training.params`)::

    python -m training.main --model RN50-cloob --train-data ... --batch-size 128 ...
    torchrun --nproc_per_node 4 -- -m training.main --model RN50-cloob ...
    srun python -u -m training.main --model RN50-cloob ...

Every process (each torchrun or SLURM rank runs this module) registers the CLOOB model configs
(importing :mod:`open_clip_cloob` does), registers ``--add-model-config`` paths, installs the hooks of
:mod:`training.openclip_hooks`, and runs ``open_clip_train.main.main``. ``python -m training.params ...``
parses the same command line without training (a dry run).
"""
import logging
import os
import sys
from typing import Optional, Sequence

import open_clip
import open_clip_train.main as openclip_main

import open_clip_cloob  # noqa: F401  (registers the CLOOB model configs on import)
from open_clip_cloob.convert import CheckpointError
from training.data_checks import BadDataError
from training.openclip_hooks import install_hooks
from training.params import parse_args
from training.reliability import PREEMPTED_EXIT_CODE, NumericFaultError, Preempted


def register_model_configs(paths: Sequence[str]) -> None:
    """Register extra model config files or folders (``--add-model-config``) in OpenCLIP's factory."""
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--add-model-config {path}: no such file or folder")
        open_clip.add_model_config(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run training for ``argv``; returns the process exit status.

    0: done; 75 (:data:`~training.reliability.PREEMPTED_EXIT_CODE`): stopped by SIGUSR1/SIGTERM after
    saving a checkpoint, to be requeued with ``--resume latest``; 1: failed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    register_model_configs(args.add_model_config)
    install_hooks(args)
    try:
        status = openclip_main.main(argv)
    except Preempted as stop:
        logging.warning("Preempted: %s", stop)
        return PREEMPTED_EXIT_CODE
    except (BadDataError, NumericFaultError, CheckpointError) as error:
        logging.error("%s: %s", type(error).__name__, error)
        return 1
    # OpenCLIP's main returns None on success and -1 when it refuses to run (e.g. the experiment
    # folder exists); job scripts need that as a failing exit status.
    return 0 if status is None else 1


if __name__ == "__main__":
    sys.exit(main())
