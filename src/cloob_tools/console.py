"""How the tools' command lines start and end: their progress lines on the console, one-line errors.

A tool's ``__main__`` block is ``sys.exit(console.run(main, PROG))``: INFO messages of the tool and of
the two packages (stage lines with the time of day), OpenCLIP's (root logger) from WARNING up, and an
unusable input ending in one line, ``PROG: error: ...`` (:func:`open_clip_cloob.cli.run`). Training
runs are separate processes with OpenCLIP's own logging.
"""
import logging
from typing import Any, Callable

from open_clip_cloob import cli


def run(main: Callable[[], Any], prog: str) -> int:
    """Run a tool's ``main()`` with the tools' console logging; returns the exit status for ``sys.exit``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s | %(message)s", datefmt="%H:%M:%S")
    for name in ("__main__", "cloob_tools", "open_clip_cloob", "training"):
        logging.getLogger(name).setLevel(logging.INFO)
    return cli.run(main, prog, console_logging=False)
