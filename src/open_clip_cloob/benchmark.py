"""LAION's CLIP_benchmark with the CLOOB model configs and pretrained tags registered.

::

    python -m open_clip_cloob.benchmark eval --model RN50-cloob --pretrained yfcc15m \\
        --dataset imagenet1k --dataset_root /data/imagenet --output rn50-cloob-imagenet.json

The command line is CLIP_benchmark's own (``clip_benchmark eval|build ...``: every dataset, task
and flag). The only difference to the ``clip_benchmark`` console script is that this module lives
in :mod:`open_clip_cloob`, whose import registers the CLOOB architectures (``RN50-cloob``, ...)
and the ``yfcc15m`` tags in OpenCLIP before CLIP_benchmark loads a model, so ``--model RN50-cloob
--pretrained yfcc15m|PATH`` resolve. Exported folders (``--model local-dir:DIR``) need no
registration and work with the unchanged console script too.

CLIP_benchmark is imported only here, when the command runs: it comes with the ``[eval]`` extra
(``pip install 'open_clip_cloob[eval]'``), the library itself does not need it.
"""
import sys
from typing import Optional, Sequence

from . import cli

PROG = "python -m open_clip_cloob.benchmark"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run CLIP_benchmark's CLI on ``argv`` (default: ``sys.argv[1:]``)."""
    clip_benchmark_cli = cli.require("clip_benchmark.cli", extra="eval", purpose=f"{PROG} runs CLIP_benchmark")
    saved_argv = sys.argv
    if argv is not None:
        # CLIP_benchmark's parser reads sys.argv itself and takes no argument list.
        sys.argv = [saved_argv[0], *argv]
    try:
        clip_benchmark_cli.main()
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
