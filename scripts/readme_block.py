"""Generated blocks of the README: the text between a begin and an end marker line is replaced.

``scripts/demo.py --readme`` (the demo's results) and ``scripts/perf_report.py readme`` (the
performance tables) write their blocks this way; the tests compare each block with its sources.
"""
import logging
from pathlib import Path

_logger = logging.getLogger(__name__)


def replace_block(readme: Path, block: str, begin: str, end: str) -> bool:
    """Replace the text between the markers ``begin`` and ``end`` of ``readme`` with ``block``.

    Returns False, leaving the file alone, when the markers are missing.
    """
    text = readme.read_text(encoding="utf-8")
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        _logger.warning("%s has no markers %s ... %s: not updated", readme, begin, end)
        return False
    readme.write_text(text[:start + len(begin)] + "\n" + block + text[stop:], encoding="utf-8")
    return True


def read_block(readme: Path, begin: str, end: str) -> str:
    """The text between the markers ``begin`` and ``end`` of ``readme`` (what :func:`replace_block` wrote)."""
    text = readme.read_text(encoding="utf-8")
    return text[text.index(begin) + len(begin) + 1:text.index(end)]
