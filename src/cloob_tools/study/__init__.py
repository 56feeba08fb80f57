"""The study (``make study``, ``python -m cloob_tools.study``): a grid of ``training.main`` runs with
zero-shot evaluation during training, and a report; its command line and what it does are described in
:mod:`.cli` (``--help``).

- :mod:`.plan`: the grid, each run's settings, folder name and ``training.main`` flags, the time estimate;
- :mod:`.runner`: one run brought to its ``result.json`` (train, evaluate every epoch checkpoint,
  analyse the last; resume after an interruption), the grid run ``--jobs`` at a time;
- :mod:`.report` and :mod:`.plots`: ``results.json``, ``report.md`` and its plots from every finished run;
- :mod:`.cli`: the command line.
"""
from .cli import build_parser, main, parse_args, resolve_steps
from .plan import estimate_seconds, run_id
from .report import DIAGNOSTICS, write_report
from .runner import RunFailed, collect_run

__all__ = ["DIAGNOSTICS", "RunFailed", "build_parser", "collect_run", "estimate_seconds", "main", "parse_args",
           "resolve_steps", "run_id", "write_report"]
