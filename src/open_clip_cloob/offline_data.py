"""Real images that load without network access: Fashion-MNIST from the Debian package.

``apt-get install dataset-fashion-mnist`` (``make data``) puts the IDX files under
``/usr/share/datasets/fashion-mnist``; set ``FASHION_MNIST_DIR`` to read them from elsewhere.
This module turns them into image-text pairs in the two layouts OpenCLIP's training reads:

- :func:`write_csv_dataset`: PNG files plus a tab-separated CSV (``--dataset-type csv``, OpenCLIP's
  default ``filepath``/``title`` columns);
- :func:`write_webdataset_shards`: tar shards of ``{key}.png`` + ``{key}.txt`` (+ ``{key}.cls``),
  readable by ``--dataset-type webdataset`` and by CLIP_benchmark's ``wds/`` datasets;
- :func:`write_fashion_mnist_dataset`: a seeded subset of a split in either layout, in one call.

Captions are varied (:data:`CAPTION_TEMPLATES`, picked by a seeded generator) because with only ten
concepts identical captions in a batch would be false negatives for every contrastive loss.

Only the standard library, NumPy and Pillow are needed: no training extras.
"""
import csv
import gzip
import io
import logging
import os
import random
import tarfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

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


def _png_bytes(image: np.ndarray) -> bytes:
    # RGB, because some readers (CLIP_benchmark's plain "pil" decode) do not convert greyscale.
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _check_lengths(images: np.ndarray, captions: Sequence[str], labels: Optional[Sequence[int]]) -> None:
    if len(images) != len(captions) or (labels is not None and len(labels) != len(images)):
        raise ValueError(
            f"need one caption (and label) per image: {len(images)} images, {len(captions)} captions"
            + ("" if labels is None else f", {len(labels)} labels")
        )


def write_csv_dataset(
    out_dir: Union[str, Path],
    images: np.ndarray,
    captions: Sequence[str],
    csv_name: str = "data.csv",
    img_key: str = "filepath",
    caption_key: str = "title",
    separator: str = "\t",
) -> Path:
    """Write ``images`` as PNG files under ``out_dir/images`` and an OpenCLIP CSV listing them.

    The defaults match OpenCLIP's ``--csv-img-key filepath --csv-caption-key title
    --csv-separator "\\t"``; image paths are absolute so training can run from any directory.

    Returns:
        The CSV path, to pass as ``--train-data`` / ``--val-data`` with ``--dataset-type csv``.
    """
    _check_lengths(images, captions, None)
    out_dir = Path(out_dir).resolve()
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / csv_name
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=separator, quoting=csv.QUOTE_MINIMAL)
        writer.writerow([img_key, caption_key])
        for index, (image, caption) in enumerate(zip(images, captions)):
            image_path = image_dir / f"{index:06d}.png"
            image_path.write_bytes(_png_bytes(image))
            writer.writerow([str(image_path), caption])
    _logger.info("wrote %d image-text pairs to %s", len(images), csv_path)
    return csv_path


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # reproducible shards: the same inputs give byte-identical tar files
    tar.addfile(info, io.BytesIO(payload))


def write_webdataset_shards(
    out_dir: Union[str, Path],
    images: np.ndarray,
    captions: Sequence[str],
    labels: Optional[Sequence[int]] = None,
    samples_per_shard: int = 1000,
    shard_name: str = "shard-{index:06d}.tar",
) -> List[Path]:
    """Write webdataset tar shards of ``{key}.png`` + ``{key}.txt`` (+ ``{key}.cls`` with ``labels``).

    Args:
        out_dir: created if missing.
        images: uint8 ``[n, H, W]`` (greyscale) or ``[n, H, W, 3]``.
        captions: one caption per image.
        labels: optional integer class per image, written as ``{key}.cls`` (CLIP_benchmark's layout).
        samples_per_shard: samples per tar file; the last shard may hold fewer.
        shard_name: format string with an ``{index}`` field, e.g. ``"{index}.tar"`` for
            CLIP_benchmark's ``test/0.tar`` layout.

    Returns:
        Shard paths in order. OpenCLIP takes them as a brace pattern, e.g.
        ``shard-{000000..000003}.tar``, together with ``--train-num-samples``.
    """
    _check_lengths(images, captions, labels)
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(images), samples_per_shard):
        shard_path = out_dir / shard_name.format(index=len(shards))
        with tarfile.open(shard_path, "w") as tar:
            for index in range(start, min(start + samples_per_shard, len(images))):
                key = f"{index:08d}"
                _add_member(tar, f"{key}.png", _png_bytes(images[index]))
                _add_member(tar, f"{key}.txt", captions[index].encode("utf-8"))
                if labels is not None:
                    _add_member(tar, f"{key}.cls", str(int(labels[index])).encode("utf-8"))
        shards.append(shard_path)
    _logger.info("wrote %d samples in %d shards to %s", len(images), len(shards), out_dir)
    return shards


def write_fashion_mnist_dataset(
    out_dir: Union[str, Path],
    split: str,
    num_samples: int,
    fmt: str = "csv",
    seed: int = 0,
    samples_per_shard: int = 1000,
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
    captions = make_captions(labels, seed=seed)
    if fmt == "csv":
        return write_csv_dataset(out_dir, images, captions, csv_name=f"{split}.csv")
    return write_webdataset_shards(
        out_dir, images, captions, labels, samples_per_shard=samples_per_shard,
        shard_name=f"{split}-{{index:06d}}.tar")


def write_clip_benchmark_set(
    root: Union[str, Path],
    images: np.ndarray,
    captions: Sequence[str],
    labels: Optional[Sequence[int]] = None,
    classnames: Sequence[str] = (),
    templates: Sequence[str] = (),
    samples_per_shard: int = 1000,
) -> Path:
    """A CLIP_benchmark ``wds/`` dataset folder: ``test/{0,1,...}.tar`` and ``test/nshards.txt``.

    With ``labels`` it is a classification set (``classnames.txt``, line i naming label i, and
    ``zeroshot_classification_templates.txt`` with ``{c}`` placeholders); without, a retrieval set
    (``dataset_type.txt`` = ``retrieval``; each sample's ``.txt`` caption is its text).
    """
    root = Path(root)
    if labels is not None:
        if not classnames or not templates:
            raise ValueError(f"{root}: a classification set (labels given) needs classnames and templates")
        out_of_range = sorted({int(label) for label in labels} - set(range(len(classnames))))
        if out_of_range:
            raise ValueError(f"{root}: labels {out_of_range[:5]} have no class name ({len(classnames)} classnames)")
    shards = write_webdataset_shards(root / "test", images, captions, labels, samples_per_shard=samples_per_shard,
                                     shard_name="{index}.tar")
    (root / "test" / "nshards.txt").write_text(f"{len(shards)}\n", encoding="utf-8")
    if labels is None:
        (root / "dataset_type.txt").write_text("retrieval\n", encoding="utf-8")
    else:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n", encoding="utf-8")
    return root
