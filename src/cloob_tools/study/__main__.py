"""``python -m cloob_tools.study``: see :mod:`cloob_tools.study.cli` (or ``--help``)."""
import sys

from .. import console
from .cli import main
from .plan import PROG

sys.exit(console.run(main, PROG))
