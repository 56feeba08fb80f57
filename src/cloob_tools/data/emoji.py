"""Real images with human-written names, offline: the Noto colour emoji and their Unicode CLDR names.

``apt-get install fonts-noto-color-emoji unicode-data`` puts the font and Unicode's
``emoji-test.txt`` on disk (``$EMOJI_FONT`` and ``$EMOJI_TEST_FILE`` point elsewhere). Every
fully-qualified emoji of that list (3,655 in Unicode 15) is an image-text pair: the glyph drawn by
Pillow and its CLDR name ("woman detective: medium skin tone"), written by people, not from a
template. Skin-tone variants give a real attribute to classify zero-shot (:func:`skin_tone`).

The images go through :mod:`cloob_tools.data.writers` like any other array of images.
"""
import logging
import os
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_logger = logging.getLogger(__name__)

DEFAULT_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
DEFAULT_EMOJI_TEST_FILE = "/usr/share/unicode/emoji/emoji-test.txt"
INSTALL_HINT = "install the Debian packages fonts-noto-color-emoji and unicode-data (`make data`)"

# CLDR's skin-tone modifier names, lightest first: the label order of the skin-tone classes.
SKIN_TONES: Tuple[str, ...] = (
    "light skin tone",
    "medium-light skin tone",
    "medium skin tone",
    "medium-dark skin tone",
    "dark skin tone",
)

# Zero-shot prompts for the skin-tone classes; the emoji's names end in ": <tone>".
SKIN_TONE_TEMPLATES = ("{c}", "an emoji with {c}", "a person: {c}")

# Code point ranges of the flags' letters: regional indicators A..Z, tag letters a..z.
_REGIONAL_INDICATORS = (0x1F1E6, 0x1F1FF)
_TAG_LETTERS = (0xE0061, 0xE007A)
_BLACK_FLAG = "\U0001F3F4"

# Noto's colour glyphs exist as one bitmap strike of 109 px, drawn into a 136 x 128 box.
_FONT_SIZE = 109
_GLYPH_BOX = (136, 128)


class Emoji(NamedTuple):
    """One fully-qualified emoji of ``emoji-test.txt``."""

    text: str  # the code point sequence
    name: str  # CLDR short name, e.g. "thumbs up: medium skin tone"
    group: str  # e.g. "People & Body"
    subgroup: str  # e.g. "hand-fingers-closed"


def emoji_font_path() -> Path:
    """The Noto colour emoji font (``$EMOJI_FONT`` or the Debian path)."""
    return Path(os.environ.get("EMOJI_FONT", DEFAULT_EMOJI_FONT))


def emoji_test_path() -> Path:
    """Unicode's ``emoji-test.txt`` (``$EMOJI_TEST_FILE`` or the Debian path)."""
    return Path(os.environ.get("EMOJI_TEST_FILE", DEFAULT_EMOJI_TEST_FILE))


def emoji_available() -> bool:
    """Whether the font and the emoji list are installed."""
    return emoji_font_path().is_file() and emoji_test_path().is_file()


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {INSTALL_HINT}")
    return path


def load_emoji_list(path: Optional[Path] = None) -> List[Emoji]:
    """Parse the fully-qualified emoji of Unicode's ``emoji-test.txt``, in file order.

    A data line reads ``1F44D 1F3FD ; fully-qualified # 👍🏽 E1.0 thumbs up: medium skin tone``;
    ``# group:`` and ``# subgroup:`` comment lines set the grouping of the lines after them.
    """
    path = _require(path or emoji_test_path())
    emoji: List[Emoji] = []
    group = subgroup = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif not line.startswith("#") and ";" in line:
            try:
                code_points, rest = line.split(";", 1)
                status, comment = rest.split("#", 1)
                if status.strip() != "fully-qualified":
                    continue
                # comment = " 👍🏽 E1.0 thumbs up: medium skin tone": glyph, version, name.
                _, _, name = comment.split(maxsplit=2)
                text = "".join(chr(int(point, 16)) for point in code_points.split())
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not an emoji-test.txt data line: {line!r}") from error
            emoji.append(Emoji(text, name.strip(), group, subgroup))
    if not emoji:
        raise ValueError(f"no fully-qualified emoji in {path}")
    return emoji


def skin_tone(name: str) -> Optional[int]:
    """Index into :data:`SKIN_TONES` of an emoji name with exactly one skin tone, else None.

    ``"thumbs up: medium skin tone"`` -> 2; ``"handshake: light skin tone, dark skin tone"`` and
    ``"thumbs up"`` -> None.
    """
    _, _, qualifiers = name.partition(": ")
    return SKIN_TONES.index(qualifiers) if qualifiers in SKIN_TONES else None


def single_code_points(emoji: Sequence[Emoji]) -> Set[int]:
    """The code points that are an emoji on their own (with or without the emoji presentation
    selector U+FE0F): what another source drawing single characters leaves to the emoji."""
    return {ord(item.text[0]) for item in emoji if len(item.text.replace("\ufe0f", "")) == 1}


def flag_country(text: str) -> Optional[str]:
    """The ISO 3166-1 alpha-2 code (lower case) of a flag emoji, also of a subdivision's flag (its
    country's); None for any other emoji.

    A country flag is two regional indicator letters (🇳🇴 -> "no"); a subdivision flag is a black flag
    followed by tag letters (🏴 + "gbsct" + cancel tag -> "gb").
    """
    if len(text) == 2 and all(_REGIONAL_INDICATORS[0] <= ord(char) <= _REGIONAL_INDICATORS[1] for char in text):
        return "".join(chr(ord(char) - _REGIONAL_INDICATORS[0] + ord("a")) for char in text)
    if text.startswith(_BLACK_FLAG) and len(text) > 3 and all(_TAG_LETTERS[0] <= ord(char) <= _TAG_LETTERS[1]
                                                               for char in text[1:3]):
        return "".join(chr(ord(char) - _TAG_LETTERS[0] + ord("a")) for char in text[1:3])
    return None


def near_duplicate_group(item: Emoji) -> str:
    """The emoji's near-duplicate group: ``flag:<country>`` for the flags of a country and its
    subdivisions (shared with :mod:`cloob_tools.data.flags`' pictures of it), else its name before
    the colon, so that skin tones, hair styles and the like of one emoji are one group ("thumbs up:
    medium skin tone" -> "thumbs up")."""
    country = flag_country(item.text)
    return f"flag:{country}" if country else item.name.partition(": ")[0]


def render_emoji(
    emoji: Sequence[Emoji],
    size: int = 64,
    background: Tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Draw each emoji with the Noto colour font on ``background``, centred and square.

    Returns:
        uint8 array ``[n, size, size, 3]``, for :func:`cloob_tools.data.writers.write_webdataset_shards`.
    """
    font = ImageFont.truetype(str(_require(emoji_font_path())), _FONT_SIZE)
    side = max(_GLYPH_BOX)
    offset = ((side - _GLYPH_BOX[0]) // 2, (side - _GLYPH_BOX[1]) // 2)
    images = np.empty((len(emoji), size, size, 3), dtype=np.uint8)
    for index, item in enumerate(emoji):
        glyph = Image.new("RGBA", _GLYPH_BOX)
        # embedded_color draws the colour bitmap; Pillow's raqm layout joins ZWJ sequences into one glyph.
        ImageDraw.Draw(glyph).text((0, 0), item.text, font=font, embedded_color=True)
        canvas = Image.new("RGB", (side, side), background)
        canvas.paste(glyph, offset, mask=glyph)
        images[index] = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))
    _logger.debug("rendered %d emoji at %d px", len(emoji), size)
    return images
