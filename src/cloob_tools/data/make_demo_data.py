"""Build the Fashion-MNIST + emoji set from real images installed by Debian packages (no network): the
demo's ``--data fashion-emoji`` and the study's data.

It is the stress case of duplicate captions: Fashion-MNIST's captions come from 10 class names x 8
templates, so a batch of 128 holds about 60 distinct captions, the regime in which CLOOB's Hopfield
retrieval averages the pairs of one caption into one. The demo's default data is the corpus of
unique human-written captions (:mod:`cloob_tools.data.make_corpus`).

Training pairs (webdataset shards, shuffled together):
  - Fashion-MNIST train images with varied captions ("a black and white photo of a sneaker.");
  - Noto colour emoji with their human-written CLDR names ("woman detective: medium skin tone"),
    all but a held-out fifth.
Held-out sets, in CLIP_benchmark's ``wds/`` layout (``--dataset wds/NAME --dataset_root OUT/benchmark/NAME``):
  - ``fashion_mnist``: Fashion-MNIST test images, 10 classes in label order, the caption templates;
  - ``emoji_skin_tone``: held-out emoji with exactly one skin tone, 5 classes ("medium skin tone", ...);
  - ``emoji_names``: held-out emoji with their names, a retrieval set (``--task zeroshot_retrieval``).
Analysis pairs (``analysis-*.tar``): held-out Fashion-MNIST test images and emoji with their captions.

    python -m cloob_tools.data.make_demo_data --out data/demo

``OUT/manifest.json`` lists every path, shard spec and count for the training and evaluation commands,
and the sources with their licences (:func:`cloob_tools.data.make_corpus.source_entry`).
"""
import argparse
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import console
from .emoji import (INSTALL_HINT, SKIN_TONE_TEMPLATES, SKIN_TONES, emoji_available, load_emoji_list, render_emoji,
                    skin_tone)
from .fashion_mnist import CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, fashion_mnist_dir, load_fashion_mnist, make_captions
from .images import IMAGE_SIZE
from .make_corpus import EMOJI, fashion_entry, source_entry
from .manifest import log_written, set_entry, write_manifest
from .writers import shard_spec, write_clip_benchmark_set, write_webdataset_shards

PROG = "python -m cloob_tools.data.make_demo_data"

# Data sizes of the demo and the study: the full set, and --smoke (enough for every stage to produce its files).
DATA_SIZES = {
    "full": {"fashion_train": 20000, "fashion_test": 2000, "analysis_fashion": 1000, "samples_per_shard": 2000},
    "smoke": {"fashion_train": 512, "fashion_test": 100, "analysis_fashion": 50, "samples_per_shard": 256},
}


def build(out: Path, fashion_train: int, fashion_test: int, analysis_fashion: int, emoji_holdout: float,
          samples_per_shard: int, seed: int) -> Dict[str, object]:
    """Write every demo dataset under ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    rng = np.random.default_rng(seed)

    train_images, train_labels = load_fashion_mnist("train")
    subset = rng.permutation(len(train_images))[:fashion_train]
    fashion_images, fashion_captions = list(train_images[subset]), make_captions(train_labels[subset], seed=seed)

    test_images, test_labels = load_fashion_mnist("test")
    subset = rng.permutation(len(test_images))[:fashion_test]
    test_images, test_labels = test_images[subset], test_labels[subset]
    test_captions = make_captions(test_labels, seed=seed + 1)

    emoji = load_emoji_list()
    emoji_images = render_emoji(emoji, size=IMAGE_SIZE)
    held_out = rng.random(len(emoji)) < emoji_holdout
    train_index, test_index = np.flatnonzero(~held_out), np.flatnonzero(held_out)

    # Greyscale Fashion-MNIST as RGB so that both sources share one array type per sample.
    pairs = [(np.repeat(image[..., None], 3, axis=2), caption) for image, caption in zip(fashion_images, fashion_captions)]
    pairs += [(emoji_images[i], emoji[i].name) for i in train_index]
    random.Random(seed).shuffle(pairs)  # mix both sources within every shard
    train_shards = write_webdataset_shards(out / "train", [p[0] for p in pairs], [p[1] for p in pairs],
                                           samples_per_shard=samples_per_shard, shard_name="train-{index:06d}.tar")

    benchmark = out / "benchmark"
    write_clip_benchmark_set(benchmark / "fashion_mnist", test_images, test_captions, test_labels,
                             FASHION_MNIST_CLASSES, CAPTION_TEMPLATES)
    toned = [i for i in test_index if skin_tone(emoji[i].name) is not None]
    write_clip_benchmark_set(benchmark / "emoji_skin_tone", emoji_images[toned], [emoji[i].name for i in toned],
                             [skin_tone(emoji[i].name) for i in toned], SKIN_TONES, SKIN_TONE_TEMPLATES)
    write_clip_benchmark_set(benchmark / "emoji_names", emoji_images[test_index], [emoji[i].name for i in test_index])

    analysis_images = [np.repeat(image[..., None], 3, axis=2) for image in test_images[:analysis_fashion]]
    analysis_images += list(emoji_images[test_index])
    analysis_captions = test_captions[:analysis_fashion] + [emoji[i].name for i in test_index]
    analysis_shards = write_webdataset_shards(out / "analysis", analysis_images, analysis_captions,
                                              samples_per_shard=samples_per_shard, shard_name="analysis-{index:06d}.tar")

    return write_manifest(out, {
        "train_data": shard_spec(train_shards),
        "train_num_samples": len(pairs),
        "sources": {"fashion_mnist": fashion_entry(len(fashion_images), len(test_images)),
                    "emoji": source_entry(EMOJI, len(train_index), len(test_index))},
        "benchmark": {
            "fashion_mnist": set_entry(benchmark / "fashion_mnist", "zeroshot_classification", len(test_images)),
            "emoji_skin_tone": set_entry(benchmark / "emoji_skin_tone", "zeroshot_classification", len(toned)),
            "emoji_names": set_entry(benchmark / "emoji_names", "zeroshot_retrieval", len(test_index)),
        },
        "analysis_data": shard_spec(analysis_shards),
        "analysis_num_samples": len(analysis_images),
    })


def check_data_packages() -> None:
    """Fail early, saying what to install, when the Debian packages of the demo's images are missing."""
    missing = []
    if not (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file():
        missing.append("Fashion-MNIST: install the Debian package dataset-fashion-mnist")
    if not emoji_available():
        missing.append(f"emoji: {INSTALL_HINT}")
    if missing:
        raise FileNotFoundError("the demo's data needs real images from Debian packages (`make data` installs "
                                "them): " + "; ".join(missing))


def build_demo_data(out: Path, size: str) -> Dict[str, object]:
    """Write the demo's data in the sizes :data:`DATA_SIZES` ``[size]`` under ``out``; returns its manifest."""
    check_data_packages()
    return build(out, emoji_holdout=0.2, seed=0, **DATA_SIZES[size])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--fashion-train", type=int, default=20000, help="Fashion-MNIST training images")
    parser.add_argument("--fashion-test", type=int, default=2000, help="Fashion-MNIST zero-shot test images")
    parser.add_argument("--analysis-fashion", type=int, default=1000,
                        help="of those, how many go into the analysis pairs (with all held-out emoji)")
    parser.add_argument("--emoji-holdout", type=float, default=0.2, help="fraction of emoji held out")
    parser.add_argument("--samples-per-shard", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    manifest = build(args.out, args.fashion_train, args.fashion_test, args.analysis_fashion, args.emoji_holdout,
                     args.samples_per_shard, args.seed)
    log_written(args.out, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
