"""Build a second real image-text set, for checking a result on data it was not tuned on (no network).

Training pairs (webdataset shards, shuffled together):
  - Tux Paint stamps (``tuxpaint-stamps-default``) with the captions people wrote for them
    ("A Magellanic penguin."), all but a held-out fifth;
  - scikit-learn's handwritten digits with template captions ("a handwritten digit seven."),
    all but a held-out fifth.
Held-out sets, in CLIP_benchmark's ``wds/`` layout, and the analysis pairs (held-out digits and
stamps with their captions), with the same ``manifest.json`` as :mod:`cloob_tools.data.make_demo_data`, so
``python -m cloob_tools.study --data OUT/manifest.json`` and the demo's tools read it unchanged:
  - ``digits``: held-out digits, 10 classes in label order, the digit templates;
  - ``stamp_captions``: held-out stamps with their captions, a retrieval set.

    python -m cloob_tools.data.make_stamps_digits_data --out data/stamps-digits
"""
import argparse
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import console
from .images import IMAGE_SIZE
from .manifest import log_written, set_entry, write_manifest
from .stamps import DIGIT_CLASSES, DIGIT_TEMPLATES, load_digits_images, load_stamps, render_stamps
from .writers import shard_spec, write_clip_benchmark_set, write_webdataset_shards

PROG = "python -m cloob_tools.data.make_stamps_digits_data"


def build(out: Path, holdout: float = 0.2, samples_per_shard: int = 1000, seed: int = 0) -> Dict[str, object]:
    """Write every set under ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    rng = np.random.default_rng(seed)
    stamps = load_stamps()
    stamp_images = render_stamps(stamps, IMAGE_SIZE)
    stamp_test = rng.random(len(stamps)) < holdout
    digit_images, digit_labels = load_digits_images()
    digit_images = np.repeat(digit_images[..., None], 3, axis=3)
    digit_test = rng.random(len(digit_images)) < holdout
    caption_rng = random.Random(seed)
    digit_captions = [caption_rng.choice(DIGIT_TEMPLATES).format(c=DIGIT_CLASSES[label]) for label in digit_labels]

    pairs = [(stamp_images[i], stamps[i].caption) for i in np.flatnonzero(~stamp_test)]
    pairs += [(digit_images[i], digit_captions[i]) for i in np.flatnonzero(~digit_test)]
    random.Random(seed).shuffle(pairs)
    train_shards = write_webdataset_shards(out / "train", [p[0] for p in pairs], [p[1] for p in pairs],
                                           samples_per_shard=samples_per_shard, shard_name="train-{index:06d}.tar")

    benchmark = out / "benchmark"
    stamp_index, digit_index = np.flatnonzero(stamp_test), np.flatnonzero(digit_test)
    write_clip_benchmark_set(benchmark / "digits", digit_images[digit_index],
                             [digit_captions[i] for i in digit_index], digit_labels[digit_index],
                             DIGIT_CLASSES, DIGIT_TEMPLATES)
    write_clip_benchmark_set(benchmark / "stamp_captions", stamp_images[stamp_index],
                             [stamps[i].caption for i in stamp_index])
    analysis_images = list(digit_images[digit_index]) + list(stamp_images[stamp_index])
    analysis_captions = [digit_captions[i] for i in digit_index] + [stamps[i].caption for i in stamp_index]
    analysis_shards = write_webdataset_shards(out / "analysis", analysis_images, analysis_captions,
                                              samples_per_shard=samples_per_shard, shard_name="analysis-{index:06d}.tar")
    return write_manifest(out, {
        "train_data": shard_spec(train_shards),
        "train_num_samples": len(pairs),
        "train_stamps": int((~stamp_test).sum()),
        "train_digits": int((~digit_test).sum()),
        "benchmark": {
            "digits": set_entry(benchmark / "digits", "zeroshot_classification", len(digit_index)),
            "stamp_captions": set_entry(benchmark / "stamp_captions", "zeroshot_retrieval", len(stamp_index)),
        },
        "analysis_data": shard_spec(analysis_shards),
        "analysis_num_samples": len(analysis_images),
    })


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of stamps and digits held out")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    manifest = build(args.out, args.holdout, args.samples_per_shard, args.seed)
    log_written(args.out, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
