"""Build image-text training data from Fashion-MNIST (offline: Debian's dataset-fashion-mnist).

Writes a random subset of a split with varied captions ("a black and white photo of a sneaker.")
as an OpenCLIP CSV with PNG files or as webdataset tar shards (.png/.txt/.cls):

    python -m cloob_tools.data.make_fashion_mnist_data --out data/fmnist-train --split train --num-samples 12800
    python -m cloob_tools.data.make_fashion_mnist_data --out data/fmnist-wds --format webdataset --num-samples 4096
    python -m cloob_tools.data.make_fashion_mnist_data --out data/fm6000 --num-samples 6000 \
        --template "a photo of a {c}." --template "an image of a {c}."

See :mod:`cloob_tools.data.writers` for the layouts.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .. import console
from .fashion_mnist import CAPTION_TEMPLATES, DATASET_FORMATS, write_fashion_mnist_dataset

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.data.make_fashion_mnist_data"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--format", choices=DATASET_FORMATS, default="csv")
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="webdataset only")
    parser.add_argument("--seed", type=int, default=0, help="subset and caption seed")
    parser.add_argument("--template", dest="templates", action="append", default=None, metavar="TEMPLATE",
                        help="caption template with {c} for the class name, repeatable (default: the "
                             f"{len(CAPTION_TEMPLATES)} of cloob_tools.data.CAPTION_TEMPLATES)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    write_fashion_mnist_dataset(args.out, args.split, args.num_samples, args.format, args.seed, args.samples_per_shard,
                                templates=args.templates or CAPTION_TEMPLATES)
    return 0


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
