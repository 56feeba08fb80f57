"""Noto emoji with their CLDR names: parsing Unicode's list, skin tones, rendering."""
import re

import numpy as np
import pytest

from cloob_tools.data import emoji as emoji_data


@pytest.fixture(scope="module")
def emoji_list():
    if not emoji_data.emoji_available():
        pytest.skip(f"emoji data missing: {emoji_data.INSTALL_HINT}")
    return emoji_data.load_emoji_list()


def test_emoji_list_parses_fully_qualified_entries(emoji_list):
    assert len(emoji_list) > 3000  # 3,655 in Unicode 15
    assert emoji_list[0] == emoji_data.Emoji("\U0001F600", "grinning face", "Smileys & Emotion", "face-smiling")
    by_name = {item.name: item for item in emoji_list}
    # A ZWJ sequence with a skin tone, and a flag: names with their qualifiers, text as code points.
    scientist = by_name["woman scientist: medium skin tone"]
    assert scientist.text == "\U0001F469\U0001F3FD\u200D\U0001F52C" and scientist.group == "People & Body"
    assert by_name["flag: Germany"].text == "\U0001F1E9\U0001F1EA"
    # Only fully-qualified entries: the unqualified "☺" (without U+FE0F) is not listed twice.
    assert sum(item.name == "smiling face" for item in emoji_list) == 1


def test_malformed_line_names_file_and_line(tmp_path):
    listing = tmp_path / "emoji-test.txt"
    listing.write_text("# group: Smileys & Emotion\n1F600 ; fully-qualified # 😀 E1.0 grinning face\n"
                       "1F6ZZ ; fully-qualified # ? E1.0 broken\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{listing}:3: not an emoji-test.txt data line")):
        emoji_data.load_emoji_list(listing)


def test_parses_a_small_list_without_the_installed_file(tmp_path):
    listing = tmp_path / "emoji-test.txt"
    listing.write_text("# group: People & Body\n# subgroup: hand-fingers-closed\n"
                       "1F44D 1F3FD ; fully-qualified # 👍🏽 E1.0 thumbs up: medium skin tone\n"
                       "263A ; unqualified # ☺ E0.6 smiling face\n", encoding="utf-8")
    assert emoji_data.load_emoji_list(listing) == [
        emoji_data.Emoji("\U0001F44D\U0001F3FD", "thumbs up: medium skin tone", "People & Body", "hand-fingers-closed")]


@pytest.mark.parametrize("name, tone", [
    ("thumbs up: medium skin tone", 2),
    ("woman detective: dark skin tone", 4),
    ("thumbs up", None),
    ("handshake: light skin tone, dark skin tone", None),
    ("flag: Germany", None),
])
def test_skin_tone(name, tone):
    assert emoji_data.skin_tone(name) == tone


def test_every_single_tone_appears_equally_often(emoji_list):
    tones = [emoji_data.skin_tone(item.name) for item in emoji_list]
    counts = [tones.count(index) for index in range(len(emoji_data.SKIN_TONES))]
    assert counts[0] > 100 and len(set(counts)) == 1  # each toned emoji exists in all five tones


def test_render_emoji_draws_colour_glyphs(emoji_list):
    by_name = {item.name: item for item in emoji_list}
    chosen = [by_name[name] for name in ("grinning face", "woman scientist: medium skin tone", "flag: Germany")]
    images = emoji_data.render_emoji(chosen, size=48)
    assert images.shape == (3, 48, 48, 3) and images.dtype == np.uint8
    assert (images[:, 0, 0] == 255).all()  # white background in the corners
    for image in images:
        drawn = (image != 255).any(axis=2)
        assert drawn.mean() > 0.2  # a glyph, not a blank or a tofu box outline
        assert image.std(axis=(0, 1)).max() > 20  # colour, not a monochrome outline
    # The ZWJ sequence is one glyph (raqm layout): it is centred, not two glyphs side by side.
    columns = np.flatnonzero((images[1] != 255).any(axis=(0, 2)))
    assert abs((columns[0] + columns[-1]) / 2 - 24) < 6
