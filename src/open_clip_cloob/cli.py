"""How the project's command-line tools start and end: console logging, one-line errors, missing extras.

The tools: ``python -m open_clip_cloob.convert|export|analysis|benchmark`` (this package),
``python -m training.main`` (training) and ``python -m cloob_tools.<tool>`` (the tooling). Each
ends on one line, ``PROG: error: FILE: PROBLEM``, and exit status 1 when its input is unusable (a
file that is not a checkpoint, a missing file, a value out of range) instead of a traceback; a
traceback still means a bug. A tool whose optional dependencies are missing names the extra that
installs them (:func:`require`).
"""
import importlib
import logging
import sys
from types import ModuleType
from typing import Any, Callable

_logger = logging.getLogger(__name__)


class MissingExtraError(ImportError):
    """An optional part of the package needs a dependency that is not installed; names the extra."""


# Problems with a tool's input or environment, reported in one line. Anything else is a bug.
USER_ERRORS = (OSError, ValueError, MissingExtraError)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``pip install 'open_clip_cloob[extra]'``.

    Args:
        module: what ``purpose`` imports (its own dependencies count: the error names the missing one).
        extra: the optional-dependency group of ``pyproject.toml`` that installs it.
        purpose: what needs it, the start of the message, e.g. ``"plots need matplotlib"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{purpose}: {error.name or module} is not installed; pip install 'open_clip_cloob[{extra}]'") from error


def setup_logging() -> None:
    """This project's INFO messages on the console; OpenCLIP's (root logger) only from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # "__main__" is the logger name of a module run with python -m or of a script.
    for name in ("open_clip_cloob", "training", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)


def run(main: Callable[[], Any], prog: str, console_logging: bool = True) -> int:
    """Run a tool's ``main()``; returns the exit status for ``sys.exit``.

    The status is ``main()``'s result when that is an int, else 0; a :data:`USER_ERRORS` problem is
    printed as ``PROG: error: MESSAGE`` on stderr and gives 1. ``console_logging``: set up
    :func:`setup_logging` first (off for a tool that sets up logging itself, like OpenCLIP's training).
    """
    if console_logging:
        setup_logging()
    try:
        result = main()
    except USER_ERRORS as error:
        _logger.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
