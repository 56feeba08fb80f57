"""Markdown the tools write: tables, and the generated blocks of the README.

Standard library only: ``python -m cloob_tools.perf_report`` runs on the GPU machine after the
benchmarks, where nothing but the machine's own packages may be importable.

A generated README block is the text between a begin and an end marker line:
``python -m cloob_tools.demo --readme`` (the demo's results) and ``python -m cloob_tools.perf_report
readme`` (the performance tables) replace theirs (:func:`replace_block`); the tests compare each
block with its sources (:func:`read_block`).
"""
import logging
from pathlib import Path
from typing import Any, Sequence

_logger = logging.getLogger(__name__)

_RULES = {"l": "---", "r": "---:"}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown (pipe) table, one line per row, no trailing newline; cells are written with ``str``.

    ``align`` has one letter per column, ``l`` (left) or ``r`` (right, for numbers); missing letters
    mean ``l``.
    """
    rule = "|" + "|".join(_RULES[letter] for letter in align.ljust(len(header), "l")) + "|"
    return "\n".join([_row(header), rule, *map(_row, rows)])


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"

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
