"""Real images with human-written names, offline: Unicode characters drawn by the Symbola font, named
by Unicode's character names.

``apt-get install fonts-symbola unicode-data`` puts the font and Unicode's character database on disk
(``$SYMBOL_FONT`` and ``$UNICODE_DATA_DIR`` point elsewhere). Every character the font draws is an
image-text pair: the glyph, black on white, and its Unicode name in lower case ("cross of
lorraine", "alchemical symbol for aqua regia", "latin small letter e with acute"), chosen by people for
each character. Left out:

- generated names: a code point or a number pattern after a hyphen ("cjk unified ideograph-4e00",
  "braille pattern dots-1245", "domino tile horizontal-01-02"), Hangul syllables, ``<...>`` ranges;
- typographic variants of another character (``<font>``, ``<wide>``, ``<small>``, Arabic positional
  forms ...) and canonical singletons ("ohm sign" is "greek capital letter omega"): the same picture
  under a second name;
- marks, separators and controls (nothing to see on their own), and the emoji's code points (the
  emoji source draws them in colour under their CLDR names).

Characters that decompose to the same base character (:func:`base_character`: "e", "é", "ⓔ", "ᵉ",
"E", "⒠") form one near-duplicate group (:attr:`Symbol.base`). Each character's
Unicode block ("Arrows", "Box Drawing", ...) is a category to classify zero-shot.
"""
import logging
import os
import re
import unicodedata
from bisect import bisect_right
from pathlib import Path
from typing import AbstractSet, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont, ImageOps

_logger = logging.getLogger(__name__)

DEFAULT_SYMBOL_FONT = "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf"
DEFAULT_UNICODE_DATA_DIR = "/usr/share/unicode"
INSTALL_HINT = "install the Debian packages fonts-symbola and unicode-data (`make data`)"

# Decomposition tags of characters that are another character drawn differently.
VARIANT_TAGS = frozenset({"<font>", "<wide>", "<narrow>", "<small>", "<noBreak>", "<vertical>",
                          "<initial>", "<medial>", "<final>", "<isolated>"})
# Names made from a number rather than written: "...-4E00", "...DOTS-1245", "...-01-02".
_GENERATED_NAME = re.compile(r"-[0-9A-F]+(?:-[0-9A-F]+)*$")
_GENERATED_PREFIXES = ("HANGUL SYLLABLE ", "CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")
# Nothing to draw on its own: marks (C)ombine, separators (Z), controls and unassigned (C).
_INVISIBLE_CATEGORIES = ("M", "Z", "C")
# Glyphs are drawn this large in the middle of a canvas with room for the widest, and the box around the
# middle (1.25 em) is what is stored, shrunk to the stored size: a wider glyph widens the box.
_DRAW_SIZE = 96
_BOX = 120
_CANVAS = 3 * _DRAW_SIZE


class Symbol(NamedTuple):
    """One character the font draws, with its Unicode name."""

    char: str
    name: str  # Unicode's name in lower case, e.g. "cross of lorraine"
    block: str  # e.g. "Arrows"
    base: str  # its near-duplicate group, :func:`base_character`


def symbol_font_path() -> Path:
    """The Symbola font (``$SYMBOL_FONT`` or the Debian path)."""
    return Path(os.environ.get("SYMBOL_FONT", DEFAULT_SYMBOL_FONT))


def unicode_data_dir() -> Path:
    """Unicode's character database (``$UNICODE_DATA_DIR`` or the Debian path)."""
    return Path(os.environ.get("UNICODE_DATA_DIR", DEFAULT_UNICODE_DATA_DIR))


def symbols_available() -> bool:
    """Whether the font and the two database files are installed."""
    return symbol_font_path().is_file() and all((unicode_data_dir() / name).is_file()
                                                for name in ("UnicodeData.txt", "Blocks.txt"))


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {INSTALL_HINT}")
    return path


def is_generated_name(name: str) -> bool:
    """Whether a Unicode name (upper case, as in ``UnicodeData.txt``) was generated from a number."""
    return name.startswith("<") or name.startswith(_GENERATED_PREFIXES) or bool(_GENERATED_NAME.search(name))


def load_blocks(path: Optional[Path] = None) -> Tuple[List[int], List[Tuple[int, str]]]:
    """Unicode's ``Blocks.txt`` as (sorted first code points, [(last code point, block name)])."""
    path = _require(path or unicode_data_dir() / "Blocks.txt")
    starts, ends = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            span, name = line.split(";")
            first, last = span.split("..")
            starts.append(int(first, 16))
            ends.append((int(last, 16), name.strip()))
    return starts, ends


def block_of(code_point: int, blocks: Tuple[List[int], List[Tuple[int, str]]]) -> Optional[str]:
    """The name of the block holding ``code_point``, None outside every block."""
    starts, ends = blocks
    index = bisect_right(starts, code_point) - 1
    return ends[index][1] if index >= 0 and code_point <= ends[index][0] else None


def _drawable_code_points(font_path: Path) -> AbstractSet[int]:
    return set(TTFont(str(font_path), lazy=True)["cmap"].getBestCmap())


def base_character(char: str) -> str:
    """The character ``char`` is a form of: the first letter or digit of its NFKD decomposition (else its
    first character), case folded ("É" and "ⓔ" -> "e", "⑹" -> "6", "→" -> "→")."""
    decomposed = unicodedata.normalize("NFKD", char)
    return next((part for part in decomposed if part.isalnum()), decomposed[0]).casefold()


def load_symbols(exclude: AbstractSet[int] = frozenset(), path: Optional[Path] = None) -> List[Symbol]:
    """Every character of ``UnicodeData.txt`` that the font draws and that has a written name (see the
    module docstring), in code point order; ``exclude``: code points left to another source."""
    path = _require(path or unicode_data_dir() / "UnicodeData.txt")
    drawable = _drawable_code_points(_require(symbol_font_path()))
    font = ImageFont.truetype(str(symbol_font_path()), _DRAW_SIZE)
    blocks = load_blocks()
    symbols = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split(";")
        if len(fields) != 15:
            raise ValueError(f"{path}:{number}: not a UnicodeData.txt line: {line!r}")
        code_point, name, category, decomposition = int(fields[0], 16), fields[1], fields[2], fields[5]
        if (code_point not in drawable or code_point in exclude or category.startswith(_INVISIBLE_CATEGORIES)
                or is_generated_name(name) or decomposition.split(" ", 1)[0] in VARIANT_TAGS
                or (decomposition and " " not in decomposition)):  # a canonical singleton
            continue
        char = chr(code_point)
        left, top, right, bottom = font.getbbox(char)
        if right <= left or bottom <= top:
            continue  # the font maps it to an empty glyph
        symbols.append(Symbol(char, name.lower(), block_of(code_point, blocks) or "", base_character(char)))
    if not symbols:
        raise ValueError(f"{path}: no character with a written name that {symbol_font_path()} draws")
    _logger.debug("loaded %d named symbols", len(symbols))
    return symbols


def render_symbols(symbols: Sequence[Symbol], size: int) -> np.ndarray:
    """``[n, size, size, 3]`` uint8: each character black on white, centred, all at one scale (a full
    stop stays small); a glyph too wide or tall for the box is shrunk to fit it."""
    font = ImageFont.truetype(str(_require(symbol_font_path())), _DRAW_SIZE)
    centre = _CANVAS // 2
    images = np.empty((len(symbols), size, size, 3), dtype=np.uint8)
    for index, symbol in enumerate(symbols):
        canvas = Image.new("L", (_CANVAS, _CANVAS), 255)
        ImageDraw.Draw(canvas).text((centre, centre), symbol.char, font=font, fill=0, anchor="mm")
        ink = ImageOps.invert(canvas).getbbox() or (centre, centre, centre, centre)
        half = max(_BOX // 2, *(abs(edge - centre) + 1 for edge in ink))
        window = canvas.crop((centre - half, centre - half, centre + half, centre + half))
        images[index] = np.asarray(window.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    return images


def block_counts(symbols: Sequence[Symbol]) -> Dict[str, int]:
    """How many symbols each block holds."""
    counts: Dict[str, int] = {}
    for symbol in symbols:
        counts[symbol.block] = counts.get(symbol.block, 0) + 1
    return counts
