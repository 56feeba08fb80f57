"""Real images with human-written captions, offline: Tux Paint's stamps, and scikit-learn's digits.

``apt-get install --no-install-recommends tuxpaint-stamps-default`` puts about 950 drawings under
``/usr/share/tuxpaint/stamps/<category>/.../<name>.{png,svg}`` (``$TUXPAINT_STAMPS`` points
elsewhere), each with ``<name>.txt`` whose first line is an English caption people wrote ("A
Magellanic penguin."). The 16 top-level folders (animals, food, vehicles, ...) are categories to
classify zero-shot. Only PNG stamps are read (no SVG renderer is needed).

scikit-learn's ``load_digits`` (1,797 handwritten digits, 8 x 8, in the scikit-learn wheel) gives a
second, very different image domain, captioned from templates.
"""
import logging
import os
from pathlib import Path
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from .images import fit_files

_logger = logging.getLogger(__name__)

DEFAULT_STAMPS_DIR = "/usr/share/tuxpaint/stamps"
INSTALL_HINT = "install the Debian package tuxpaint-stamps-default (`make data`)"
DIGIT_CLASSES: Tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES: Tuple[str, ...] = (
    "a handwritten digit {c}.",
    "the number {c}, written by hand.",
    "a blurry photo of the digit {c}.",
    "a small scan of a {c}.",
)
STAMP_CATEGORY_TEMPLATES: Tuple[str, ...] = ("a drawing of {c}.", "clip art: {c}.", "a stamp from the {c} category.")


# Top-level folders whose name is not the words a person would write.
_CATEGORY_NAMES = {"naturalforces": "natural forces"}


class Stamp(NamedTuple):
    """One PNG stamp: its file, caption (first line of its .txt) and category (top-level folder)."""

    path: Path
    caption: str
    category: str


def category_name(category: str) -> str:
    """A stamp category (a top-level folder) in words: "naturalforces" -> "natural forces"."""
    return _CATEGORY_NAMES.get(category, category)


def stamp_folder(stamp: Stamp) -> str:
    """The stamp's folder below the stamps' root, e.g. "animals/birds": its drawings are variations
    of one theme (the letters of one alphabet, the birds), a near-duplicate group."""
    return stamp.path.parent.relative_to(stamps_dir()).as_posix()


def stamps_dir() -> Path:
    """Tux Paint's stamp folder (``$TUXPAINT_STAMPS`` or the Debian path)."""
    return Path(os.environ.get("TUXPAINT_STAMPS", DEFAULT_STAMPS_DIR))


def stamps_available() -> bool:
    return stamps_dir().is_dir()


def load_stamps() -> List[Stamp]:
    """Every PNG stamp with a non-empty caption, sorted by path (a fixed order for seeded splits)."""
    root = stamps_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no Tux Paint stamps; {INSTALL_HINT}")
    stamps = []
    for caption_file in sorted(root.rglob("*.txt")):
        image = caption_file.with_suffix(".png")
        lines = caption_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if image.is_file() and lines and lines[0].strip():
            stamps.append(Stamp(image, lines[0].strip(), caption_file.relative_to(root).parts[0]))
    if not stamps:
        raise ValueError(f"{root}: no PNG stamp with a caption")
    return stamps


def render_stamps(stamps: Sequence[Stamp], size: int) -> np.ndarray:
    """[n, size, size, 3] uint8: each stamp fitted into a square on white (transparency composited)."""
    return fit_files([stamp.path for stamp in stamps], size)


def load_digits_images() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ([1797, 8, 8] uint8 greyscale, [1797] labels 0..9)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64)
