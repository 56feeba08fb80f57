"""Real images that load without network access: Fashion-MNIST from the Debian package.

``apt-get install dataset-fashion-mnist`` (``make data``) puts the IDX files under
``/usr/share/datasets/fashion-mnist``; set ``FASHION_MNIST_DIR`` to read them from elsewhere.
:func:`write_fashion_mnist_dataset` writes a seeded subset of a split as image-text pairs in either
layout OpenCLIP's training reads (:mod:`cloob_tools.data.writers`), in one call.

Captions are varied (:data:`CAPTION_TEMPLATES`, picked by a seeded generator) because with only ten
concepts identical captions in a batch would be false negatives for every contrastive loss.

Only the standard library, NumPy and Pillow are needed: no training extras.
"""
import gzip
import logging
import os
import random
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np

from .writers import write_csv_dataset, write_webdataset_shards

_logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Label order 0..9 of the dataset (Zalando's README); zero-shot class order must follow it.
FASHION_MNIST_CLASSES: Tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Templates with a ``{c}`` placeholder (CLIP_benchmark's convention); serve as training captions
# and as zero-shot prompts.
CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a grayscale picture of a {c}.",
    "a product photo of a {c}.",
    "a small image of a {c}.",
    "a {c} on a dark background.",
    "a centered photo of the {c}.",
)

DATASET_FORMATS = ("csv", "webdataset")
_SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}
_IDX_HEADER_BYTES = {"images": 16, "labels": 8}


def fashion_mnist_dir() -> Path:
    """Folder holding the four Fashion-MNIST IDX files (``$FASHION_MNIST_DIR`` or the Debian path)."""
    return Path(os.environ.get("FASHION_MNIST_DIR", DEFAULT_FASHION_MNIST_DIR))


def _read_idx(path: Path, kind: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install the Debian package dataset-fashion-mnist (`make data`) "
            "or point FASHION_MNIST_DIR at a folder with the IDX files."
        )
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=_IDX_HEADER_BYTES[kind])


def load_fashion_mnist(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split from the local IDX files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000; ``"t10k"`` is accepted too).

    Returns:
        ``(images, labels)``: uint8 array ``[n, 28, 28]`` and int64 array ``[n]`` with values 0..9
        indexing :data:`FASHION_MNIST_CLASSES`.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_PREFIX)}")
    root, prefix = fashion_mnist_dir(), _SPLIT_PREFIX[split]
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", "images").reshape(-1, 28, 28)
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", "labels").astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in split {split!r}")
    _logger.debug("loaded Fashion-MNIST %s: %d images from %s", split, len(images), root)
    return images, labels


def make_captions(
    labels: Sequence[int],
    seed: int = 0,
    classnames: Sequence[str] = FASHION_MNIST_CLASSES,
    templates: Sequence[str] = CAPTION_TEMPLATES,
) -> List[str]:
    """One caption per label, each from a template drawn by a generator seeded with ``seed``.

    The same ``seed`` gives the same captions, so datasets written twice are identical.
    """
    rng = random.Random(seed)
    return [rng.choice(templates).format(c=classnames[int(label)].lower()) for label in labels]


def write_fashion_mnist_dataset(
    out_dir: Union[str, Path],
    split: str,
    num_samples: int,
    fmt: str = "csv",
    seed: int = 0,
    samples_per_shard: int = 1000,
    templates: Sequence[str] = CAPTION_TEMPLATES,
) -> Union[Path, List[Path]]:
    """Write ``num_samples`` Fashion-MNIST images of ``split`` with varied captions for OpenCLIP.

    The images are a random subset (seeded by ``seed``, which also seeds the captions).

    Args:
        out_dir: target folder, created if missing.
        split: ``"train"`` or ``"test"``.
        num_samples: how many images, at most the size of the split.
        fmt: ``"csv"`` (PNG files + CSV, see :func:`write_csv_dataset`) or ``"webdataset"`` (tar
            shards with ``.png``/``.txt``/``.cls``, see :func:`write_webdataset_shards`).
        seed: subset and caption seed.
        samples_per_shard: webdataset only.
        templates: caption templates with a ``{c}`` for the class name.

    Returns:
        The CSV path, or the list of shard paths.
    """
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {DATASET_FORMATS}")
    images, labels = load_fashion_mnist(split)
    if not 0 < num_samples <= len(images):
        raise ValueError(f"num_samples must be in [1, {len(images)}] for split {split!r}, got {num_samples}")
    subset = np.random.default_rng(seed).permutation(len(images))[:num_samples]
    images, labels = images[subset], labels[subset]
    captions = make_captions(labels, seed=seed, templates=templates)
    if fmt == "csv":
        return write_csv_dataset(out_dir, images, captions, csv_name=f"{split}.csv")
    return write_webdataset_shards(
        out_dir, images, captions, labels, samples_per_shard=samples_per_shard,
        shard_name=f"{split}-{{index:06d}}.tar")
