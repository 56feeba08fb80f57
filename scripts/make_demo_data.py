#!/usr/bin/env python
"""Build the demo's data from real images installed by Debian packages (no network).

Training pairs (webdataset shards, shuffled together):
  - Fashion-MNIST train images with varied captions ("a black and white photo of a sneaker.");
  - Noto colour emoji with their human-written CLDR names ("woman detective: medium skin tone"),
    all but a held-out fifth.
Held-out sets, in CLIP_benchmark's ``wds/`` layout (``--dataset wds/NAME --dataset_root OUT/benchmark/NAME``):
  - ``fashion_mnist``: Fashion-MNIST test images, 10 classes in label order, the caption templates;
  - ``emoji_skin_tone``: held-out emoji with exactly one skin tone, 5 classes ("medium skin tone", ...);
  - ``emoji_names``: held-out emoji with their names, a retrieval set (``--task zeroshot_retrieval``).
Analysis pairs (``analysis-*.tar``): held-out Fashion-MNIST test images and emoji with their captions.

    python scripts/make_demo_data.py --out data/demo

``OUT/manifest.json`` lists every path, shard spec and count for the training and evaluation commands.
"""
import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from offline_data import (CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, load_fashion_mnist, make_captions,
                          write_clip_benchmark_set, write_webdataset_shards)
from offline_data.emoji import SKIN_TONES, load_emoji_list, render_emoji, skin_tone

MANIFEST_NAME = "manifest.json"
# Zero-shot prompts for the skin-tone classes; training captions end in ": <tone>".
SKIN_TONE_TEMPLATES = ("{c}", "an emoji with {c}", "a person: {c}")
IMAGE_SIZE = 64  # stored size; the model's transform resizes to its own input size


def shard_spec(shards: Sequence[Path]) -> str:
    """OpenCLIP's brace pattern for shards named ``PREFIX-000000.tar`` ... in order."""
    first, last = shards[0].name, shards[-1].name
    prefix, suffix = first[:first.rindex("-") + 1], ".tar"
    return str(shards[0].with_name(f"{prefix}{{{first[len(prefix):-len(suffix)]}..{last[len(prefix):-len(suffix)]}}}"
                                   f"{suffix}"))


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

    manifest = {
        "train_data": shard_spec(train_shards),
        "train_num_samples": len(pairs),
        "train_fashion_mnist": len(fashion_images),
        "train_emoji": len(train_index),
        "benchmark": {
            "fashion_mnist": {"root": str(benchmark / "fashion_mnist"), "task": "zeroshot_classification",
                              "num_samples": len(test_images)},
            "emoji_skin_tone": {"root": str(benchmark / "emoji_skin_tone"), "task": "zeroshot_classification",
                                "num_samples": len(toned)},
            "emoji_names": {"root": str(benchmark / "emoji_names"), "task": "zeroshot_retrieval",
                            "num_samples": len(test_index)},
        },
        "analysis_data": shard_spec(analysis_shards),
        "analysis_num_samples": len(analysis_images),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    manifest = build(args.out, args.fashion_train, args.fashion_test, args.analysis_fashion, args.emoji_holdout,
                     args.samples_per_shard, args.seed)
    logging.info("wrote %s", args.out / MANIFEST_NAME)
    logging.info("%s", json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
