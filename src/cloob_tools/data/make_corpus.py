"""Build the corpus: real images, each with a unique caption people wrote, from Debian packages (no network).

Sources (:data:`SOURCES`), each a different kind of picture:
  - ``emoji``: the Noto colour emoji with their Unicode CLDR names ("woman detective: medium skin tone");
  - ``symbols``: Unicode characters drawn by the Symbola font with their Unicode names ("cross of
    lorraine", "alchemical symbol for aqua regia"), generated names and variant forms left out;
  - ``stamps``: Tux Paint's stamp drawings with the captions people wrote for them ("A Magellanic penguin.");
  - ``flags``: the flags of the ISO 3166-1 countries with their names ("Norway").
Every caption is unique in the corpus as the model reads it (:func:`caption_key`); of pairs whose
captions repeat, the first (in the order above) is kept. Web captions (CC3M, YFCC, LAION) are
almost all unique too, unlike template captions, of which a batch holds many copies.

Held out: whole near-duplicate groups (the skin tones of one emoji, the forms of one base character,
the stamps of one folder, the flags of one country, emoji and picture alike), each with probability
``--holdout``, decided by a hash of the seed and the group, so a split does not depend on the other
groups. Written under ``OUT``:
  - ``train/train-*.tar``: the training pairs, shuffled (webdataset);
  - ``benchmark/NAME/``: held-out sets in CLIP_benchmark's ``wds/`` layout: retrieval per source
    (``emoji_names``, ``symbol_names``, ``stamp_captions``, ``flag_names``) and classification
    where a source has categories (``emoji_group``, ``emoji_skin_tone``, ``symbol_block``,
    ``stamp_category``), the class names as the sources write them;
  - ``analysis/analysis-*.tar``: the held-out pairs, for ``open_clip_cloob.analysis``;
  - ``pairs.tsv``: every pair's source, split, near-duplicate group and caption;
  - ``manifest.json``: the data manifest (:mod:`cloob_tools.data.manifest`), with every source's kind,
    Debian packages, licences and counts.

``--fashion-share P`` replaces the share P of the training pairs by Fashion-MNIST images with template
captions ("a photo of a sneaker."): the duplicate-caption stress case, on the same held-out sets
(plus ``fashion_mnist``), so one corpus can be studied with 0, 50 or 90 % template captions.

    python -m cloob_tools.data.make_corpus --out data/corpus [--fashion-share 0.5]
"""
import argparse
import csv
import hashlib
import logging
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import console
from . import emoji, flags, stamps, symbols
from .fashion_mnist import CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, load_fashion_mnist, make_captions
from .images import IMAGE_SIZE
from .manifest import log_written, set_entry, write_manifest
from .writers import shard_spec, write_clip_benchmark_set, write_webdataset_shards

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.data.make_corpus"

# The licence of what each package contributes, and a phrase of its /usr/share/doc/PACKAGE/copyright
# that states it (tests/test_corpus.py checks the phrase is there).
LICENCES: Dict[str, Tuple[str, str]] = {
    "fonts-noto-color-emoji": ("SIL Open Font License 1.1 (the emoji font)", "SIL-1.1"),
    "unicode-data": ("Unicode License (character names, CLDR emoji names, blocks)", "UNICODE, INC. LICENSE"),
    "fonts-symbola": ("free for any use (the Symbola font, George Douros)", "Fonts are free for any use"),
    "tuxpaint-stamps-default": ("GPL-2 (drawings and captions)", "License: GPL-2"),
    "iso-flags-png-320x240": ("public domain (the flag pictures)", "License: public-domain"),
    "iso-codes": ("LGPL-2.1+ (the country names)", "License: LGPL-2.1+"),
    "dataset-fashion-mnist": ("MIT (Fashion-MNIST, Zalando)", "License: Expat"),
}
EMOJI_GROUP_TEMPLATES = ("{c}", "an emoji from the group {c}")
SYMBOL_BLOCK_TEMPLATES = ("{c}", "a character from the Unicode block {c}")
# A Unicode block is a class of the symbol_block set when the corpus draws this many of its characters.
MIN_BLOCK_SIZE = 100
# A held-out set needs this many images: CLIP_benchmark's recall@5 needs five candidates.
MIN_SET_SIZE = 5
# Sizes of the demo's corpus: all of it, and --smoke (a slice of each source: enough for every stage).
DATA_SIZES = {
    "full": {"per_source": None, "fashion_test": 2000, "samples_per_shard": 2000},
    "smoke": {"per_source": 60, "fashion_test": 100, "samples_per_shard": 256},
}


@dataclass(frozen=True)
class Pair:
    """One image-text pair of a source, before its image is drawn."""

    source: str
    caption: str
    group: str  # near-duplicates share it; a group lies wholly on one side of the split
    item: Any  # what the source's renderer draws
    classes: Mapping[str, str] = field(default_factory=dict)  # classification set -> class name


@dataclass(frozen=True)
class Source:
    """A source of the corpus: where its pairs come from and what is evaluated on them."""

    name: str
    kind: str  # the kind of picture
    captions: str  # who wrote the captions
    packages: Tuple[str, ...]  # Debian packages (:data:`LICENCES`)
    available: Callable[[], bool]
    install_hint: str
    load: Callable[[], List[Pair]]  # every pair, in a fixed order
    render: Callable[[Sequence[Any], int], np.ndarray]
    retrieval_set: str
    class_templates: Mapping[str, Tuple[str, ...]]  # classification set -> its zero-shot prompts


def emoji_pairs() -> List[Pair]:
    """The emoji with their CLDR names; classes: the Unicode emoji group, the one skin tone."""
    pairs = []
    for item in emoji.load_emoji_list():
        tone = emoji.skin_tone(item.name)
        classes = {"emoji_group": item.group, **({} if tone is None else {"emoji_skin_tone": emoji.SKIN_TONES[tone]})}
        group = emoji.near_duplicate_group(item)
        pairs.append(Pair("emoji", item.name, group if group.startswith("flag:") else f"emoji:{group}", item, classes))
    return pairs


def symbol_pairs() -> List[Pair]:
    """Unicode's named characters that Symbola draws (the emoji's own code points left to the emoji);
    classes: the Unicode block, for blocks of at least :data:`MIN_BLOCK_SIZE` characters."""
    loaded = symbols.load_symbols(exclude=emoji.single_code_points(emoji.load_emoji_list()))
    large = {block for block, count in symbols.block_counts(loaded).items() if count >= MIN_BLOCK_SIZE}
    return [Pair("symbols", item.name, f"symbol:{item.base}", item,
                 {"symbol_block": item.block} if item.block in large else {}) for item in loaded]


def stamp_pairs() -> List[Pair]:
    """Tux Paint's PNG stamps with their captions; classes: the stamp category (top-level folder)."""
    return [Pair("stamps", item.caption, f"stamp:{stamps.stamp_folder(item)}", item,
                 {"stamp_category": stamps.category_name(item.category)}) for item in stamps.load_stamps()]


def flag_pairs() -> List[Pair]:
    """The countries' flags with their names; one group per country, shared with its flag emoji."""
    return [Pair("flags", item.name, f"flag:{item.code}", item) for item in flags.load_flags()]


EMOJI = Source("emoji", "colour pictograms (Noto Color Emoji)", "Unicode CLDR emoji names",
               ("fonts-noto-color-emoji", "unicode-data"), emoji.emoji_available, emoji.INSTALL_HINT, emoji_pairs,
               lambda items, size: emoji.render_emoji(items, size=size), "emoji_names",
               {"emoji_group": EMOJI_GROUP_TEMPLATES, "emoji_skin_tone": emoji.SKIN_TONE_TEMPLATES})
SYMBOLS = Source("symbols", "black-on-white glyphs of Unicode characters (Symbola)", "Unicode character names",
                 ("fonts-symbola", "unicode-data"), symbols.symbols_available, symbols.INSTALL_HINT, symbol_pairs,
                 symbols.render_symbols, "symbol_names", {"symbol_block": SYMBOL_BLOCK_TEMPLATES})
STAMPS = Source("stamps", "clip-art drawings (Tux Paint stamps)", "captions Tux Paint's contributors wrote",
                ("tuxpaint-stamps-default",), stamps.stamps_available, stamps.INSTALL_HINT, stamp_pairs,
                stamps.render_stamps, "stamp_captions", {"stamp_category": stamps.STAMP_CATEGORY_TEMPLATES})
FLAGS = Source("flags", "country flags (iso-flags-png-320x240)", "ISO 3166-1 country names (iso-codes)",
               ("iso-flags-png-320x240", "iso-codes"), flags.flags_available, flags.INSTALL_HINT, flag_pairs,
               flags.render_flags, "flag_names", {})
# In this order: of two pairs with one caption, the earlier source's is kept.
SOURCES: Tuple[Source, ...] = (EMOJI, SYMBOLS, STAMPS, FLAGS)


def source_entry(source: Source, train: int, held_out: int, repeated_captions_dropped: int = 0) -> Dict[str, Any]:
    """The manifest's record of a source: its kind, captions, licences per package and pair counts."""
    return {"kind": source.kind, "captions": source.captions,
            "licences": {package: LICENCES[package][0] for package in source.packages},
            "train": train, "held_out": held_out, "repeated_captions_dropped": repeated_captions_dropped}


def fashion_entry(train: int, held_out: int) -> Dict[str, Any]:
    """The manifest's record of Fashion-MNIST with template captions (:func:`source_entry`'s fields)."""
    return {"kind": "greyscale product photos (Fashion-MNIST)",
            "captions": f"templates: {len(FASHION_MNIST_CLASSES)} class names x {len(CAPTION_TEMPLATES)} templates",
            "licences": {"dataset-fashion-mnist": LICENCES["dataset-fashion-mnist"][0]},
            "train": train, "held_out": held_out, "repeated_captions_dropped": 0}


def caption_key(caption: str) -> str:
    """A caption as the model reads it, for finding repeats: OpenCLIP's tokenizer lower-cases and
    collapses white space, so "The letter A." and "the letter a" are one caption to it."""
    return " ".join(caption.casefold().split()).rstrip(".!")


def unique_captions(pairs: Sequence[Pair]) -> Tuple[List[Pair], Dict[str, int]]:
    """``pairs`` without those whose caption (:func:`caption_key`) an earlier pair has; and how many
    were dropped per source."""
    seen, kept, dropped = set(), [], {}
    for pair in pairs:
        key = caption_key(pair.caption)
        if key in seen:
            dropped[pair.source] = dropped.get(pair.source, 0) + 1
        else:
            seen.add(key)
            kept.append(pair)
    return kept, dropped


def group_draw(purpose: str, seed: int, group: str) -> float:
    """A number in [0, 1) fixed by ``purpose``, ``seed`` and ``group`` alone (a hash), so that a group's
    side of the split does not depend on which other groups exist."""
    digest = hashlib.blake2b(f"{purpose}:{seed}:{group}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


def is_held_out(group: str, holdout: float, seed: int) -> bool:
    """Whether the near-duplicate ``group`` is held out (probability ``holdout``)."""
    return group_draw("split", seed, group) < holdout


def slice_groups(pairs: Sequence[Pair], limit: int, holdout: float, seed: int) -> List[Pair]:
    """About ``limit`` pairs of whole groups, a share ``holdout`` of them held out: groups in a seeded
    order, each taken while its side of the split has room for all of it (a quick real slice)."""
    groups: Dict[str, List[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.group, []).append(pair)
    room = {True: round(limit * holdout), False: limit - round(limit * holdout)}
    taken = set()
    for group in sorted(groups, key=lambda name: group_draw("slice", seed, name)):
        side = is_held_out(group, holdout, seed)
        if len(groups[group]) <= room[side]:
            room[side] -= len(groups[group])
            taken.add(group)
    return [pair for pair in pairs if pair.group in taken]


def class_sets(source: Source, pairs: Sequence[Pair]) -> Dict[str, List[str]]:
    """The class names of each classification set of ``source``, in the order they first appear."""
    names: Dict[str, List[str]] = {task: [] for task in source.class_templates}
    for pair in pairs:
        for task, name in pair.classes.items():
            if name not in names[task]:
                names[task].append(name)
    return names


def check_packages(sources: Sequence[Source] = SOURCES) -> None:
    """Fail early, saying what to install, when a source's Debian packages are missing."""
    missing = [f"{source.name}: {source.install_hint}" for source in sources if not source.available()]
    if missing:
        raise FileNotFoundError("the corpus needs real images from Debian packages (`make data` installs "
                                "them): " + "; ".join(missing))


def fashion_pairs(count: int, split: str, seed: int) -> Tuple[List[np.ndarray], List[str], np.ndarray]:
    """``count`` seeded Fashion-MNIST images of ``split`` (grey as RGB) with template captions, and labels."""
    images, labels = load_fashion_mnist(split)
    subset = np.random.default_rng(seed).permutation(len(images))[:count]
    return ([np.repeat(image[..., None], 3, axis=2) for image in images[subset]],
            make_captions(labels[subset], seed=seed), labels[subset])


def build(out: Path, holdout: float = 0.2, fashion_share: float = 0.0, per_source: Optional[int] = None,
          fashion_test: int = 2000, samples_per_shard: int = 2000, seed: int = 0,
          sources: Sequence[Source] = SOURCES) -> Dict[str, Any]:
    """Write the corpus under ``out`` (see the module docstring); returns the manifest (also written to
    ``out/manifest.json``). ``per_source``: a slice of whole groups of about this many pairs per source."""
    if not 0 <= fashion_share < 1:
        raise ValueError(f"--fashion-share must be in [0, 1), got {fashion_share}")
    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
    check_packages(sources)
    loaded, dropped = unique_captions([pair for source in sources for pair in source.load()])
    by_source = {source.name: [pair for pair in loaded if pair.source == source.name] for source in sources}
    if per_source is not None:
        by_source = {name: slice_groups(pairs, per_source, holdout, seed) for name, pairs in by_source.items()}
    pairs = [(pair, image) for source in sources for pair, image in
             zip(by_source[source.name], source.render([pair.item for pair in by_source[source.name]], IMAGE_SIZE))]

    # Each pair's split: held out by its group; of the training pairs, a seeded share replaced by Fashion-MNIST.
    rng = random.Random(seed)
    held_out = [is_held_out(pair.group, holdout, seed) for pair, _ in pairs]
    training = [index for index, test in enumerate(held_out) if not test]
    fashion_count = round(fashion_share * len(training))
    replaced = set(rng.sample(training, fashion_count))
    splits = ["held_out" if test else "replaced" if index in replaced else "train"
              for index, test in enumerate(held_out)]
    train = [(pair.source, image, pair.caption) for (pair, image), split in zip(pairs, splits) if split == "train"]
    if fashion_count:
        images, captions, _ = fashion_pairs(fashion_count, "train", seed)
        train += [("fashion_mnist", image, caption) for image, caption in zip(images, captions)]
    rng.shuffle(train)  # mix the sources within every shard
    train_shards = write_webdataset_shards(out / "train", [image for _, image, _ in train],
                                           [caption for _, _, caption in train],
                                           samples_per_shard=samples_per_shard, shard_name="train-{index:06d}.tar")

    held = [pair_image for pair_image, split in zip(pairs, splits) if split == "held_out"]
    benchmark = write_benchmark_sets(out / "benchmark", sources, by_source, held)
    if fashion_count:
        images, captions, labels = fashion_pairs(fashion_test, "test", seed + 1)
        write_clip_benchmark_set(out / "benchmark" / "fashion_mnist", images, captions, labels,
                                 FASHION_MNIST_CLASSES, CAPTION_TEMPLATES)
        benchmark["fashion_mnist"] = set_entry(out / "benchmark" / "fashion_mnist", "zeroshot_classification",
                                               len(images))
    analysis_shards = write_webdataset_shards(out / "analysis", [image for _, image in held],
                                              [pair.caption for pair, _ in held], samples_per_shard=samples_per_shard,
                                              shard_name="analysis-{index:06d}.tar")
    write_listing(out / "pairs.tsv", [(pair.source, split, pair.group, pair.caption)
                                      for (pair, _), split in zip(pairs, splits)])

    trained = Counter(source for source, _, _ in train)
    held_counts = Counter(pair.source for pair, _ in held)
    entries = {source.name: source_entry(source, trained[source.name], held_counts[source.name],
                                         dropped.get(source.name, 0)) for source in sources}
    if fashion_count:
        entries["fashion_mnist"] = fashion_entry(fashion_count, fashion_test)
    return write_manifest(out, {
        "train_data": shard_spec(train_shards),
        "train_num_samples": len(train),
        "sources": entries,
        "fashion_share": fashion_share,
        "holdout": holdout,
        "seed": seed,
        "benchmark": benchmark,
        "analysis_data": shard_spec(analysis_shards),
        "analysis_num_samples": len(held),
    })


def write_benchmark_sets(root: Path, sources: Sequence[Source], by_source: Mapping[str, Sequence[Pair]],
                         held: Sequence[Tuple[Pair, np.ndarray]]) -> Dict[str, Dict[str, Any]]:
    """Every source's held-out retrieval set and classification sets (those with at least
    :data:`MIN_SET_SIZE` images); returns their manifest entries."""
    entries = {}
    for source in sources:
        pairs = [pair for pair, _ in held if pair.source == source.name]
        if len(pairs) < MIN_SET_SIZE:
            _logger.info("no %s sets: %d held-out images", source.name, len(pairs))
            continue
        images = np.stack([image for pair, image in held if pair.source == source.name])
        write_clip_benchmark_set(root / source.retrieval_set, images, [pair.caption for pair in pairs])
        entries[source.retrieval_set] = set_entry(root / source.retrieval_set, "zeroshot_retrieval", len(pairs))
        for task, classnames in class_sets(source, by_source[source.name]).items():
            members = [index for index, pair in enumerate(pairs) if task in pair.classes]
            if len(members) < MIN_SET_SIZE:
                _logger.info("no %s set: %d held-out images have a class", task, len(members))
                continue
            write_clip_benchmark_set(root / task, images[members], [pairs[i].caption for i in members],
                                     [classnames.index(pairs[i].classes[task]) for i in members], classnames,
                                     source.class_templates[task])
            entries[task] = set_entry(root / task, "zeroshot_classification", len(members))
    return entries


def write_listing(path: Path, rows: Sequence[Tuple[str, str, str, str]]) -> Path:
    """``pairs.tsv``: one line per pair of the corpus (source, split, group, caption)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["source", "split", "group", "caption"])
        writer.writerows(rows)
    return path


def build_corpus(out: Path, size: str, fashion_share: float = 0.0) -> Dict[str, Any]:
    """Write the demo's corpus in the sizes :data:`DATA_SIZES` ``[size]`` under ``out``; returns its manifest."""
    return build(out, fashion_share=fashion_share, **DATA_SIZES[size])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fashion-share", type=float, default=0.0,
                        help="share of the training pairs replaced by Fashion-MNIST with template captions, in [0, 1)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="probability that a near-duplicate group is held out")
    parser.add_argument("--per-source", type=int, default=None,
                        help="a slice of about this many pairs per source (whole groups), for quick checks")
    parser.add_argument("--fashion-test", type=int, default=2000,
                        help="Fashion-MNIST test images of the fashion_mnist set (with --fashion-share)")
    parser.add_argument("--samples-per-shard", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    manifest = build(args.out, args.holdout, args.fashion_share, args.per_source, args.fashion_test,
                     args.samples_per_shard, args.seed)
    log_written(args.out, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
