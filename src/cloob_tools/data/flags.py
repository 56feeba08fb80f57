"""Real images with human-written names, offline: the flags of the world's countries with their names.

``apt-get install iso-flags-png-320x240 iso-codes`` puts a 320 x 240 PNG per ISO 3166-1 country
(``/usr/share/iso-flags-png-320x240/<alpha-2>.png``, ``$ISO_FLAGS_DIR`` points elsewhere) and the
countries' names (``iso_3166-1.json``, ``$ISO_3166_FILE``) on disk. Each flag is paired with the
country's name as ISO 3166 writes it, its common name where it has one ("Bolivia" rather than
"Bolivia, Plurinational State of"). Flags of regions that are not ISO 3166-1 countries (Catalonia,
the Olympic flag, ...) have no name there and are left out.
"""
import json
import logging
import os
from pathlib import Path
from typing import List, NamedTuple, Sequence

import numpy as np

from .images import fit_files

_logger = logging.getLogger(__name__)

DEFAULT_FLAGS_DIR = "/usr/share/iso-flags-png-320x240"
DEFAULT_ISO_3166_FILE = "/usr/share/iso-codes/json/iso_3166-1.json"
INSTALL_HINT = "install the Debian packages iso-flags-png-320x240 and iso-codes (`make data`)"


class Flag(NamedTuple):
    """One country's flag."""

    path: Path
    code: str  # ISO 3166-1 alpha-2, lower case, e.g. "no"
    name: str  # e.g. "Norway"


def flags_dir() -> Path:
    """The folder of flag pictures (``$ISO_FLAGS_DIR`` or the Debian path)."""
    return Path(os.environ.get("ISO_FLAGS_DIR", DEFAULT_FLAGS_DIR))


def iso_3166_path() -> Path:
    """iso-codes' list of countries (``$ISO_3166_FILE`` or the Debian path)."""
    return Path(os.environ.get("ISO_3166_FILE", DEFAULT_ISO_3166_FILE))


def flags_available() -> bool:
    """Whether the flag pictures and the country list are installed."""
    return flags_dir().is_dir() and iso_3166_path().is_file()


def load_flags() -> List[Flag]:
    """Every country of ISO 3166-1 with a flag picture, in alpha-2 order."""
    if not flags_available():
        missing = iso_3166_path() if flags_dir().is_dir() else flags_dir()
        raise FileNotFoundError(f"{missing} is missing: {INSTALL_HINT}")
    try:
        countries = json.loads(iso_3166_path().read_text(encoding="utf-8"))["3166-1"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{iso_3166_path()}: not iso-codes' ISO 3166-1 list ({error})") from error
    flags = []
    for country in sorted(countries, key=lambda entry: entry["alpha_2"]):
        path = flags_dir() / f"{country['alpha_2'].lower()}.png"
        if path.is_file():
            flags.append(Flag(path, country["alpha_2"].lower(), country.get("common_name", country["name"])))
    if not flags:
        raise ValueError(f"{flags_dir()}: no flag named by an ISO 3166-1 alpha-2 code")
    _logger.debug("loaded %d flags", len(flags))
    return flags


def render_flags(flags: Sequence[Flag], size: int) -> np.ndarray:
    """``[n, size, size, 3]`` uint8: each flag shrunk to the square's width, centred on white."""
    return fit_files([flag.path for flag in flags], size)
