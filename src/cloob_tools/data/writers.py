"""Image-text pairs in the layouts OpenCLIP's training and CLIP_benchmark read.

- :func:`write_csv_dataset`: PNG files plus a tab-separated CSV (``--dataset-type csv``, OpenCLIP's
  default ``filepath``/``title`` columns);
- :func:`write_webdataset_shards`: tar shards of ``{key}.png`` + ``{key}.txt`` (+ ``{key}.cls``),
  readable by ``--dataset-type webdataset`` and by CLIP_benchmark's ``wds/`` datasets;
- :func:`write_clip_benchmark_set`: a CLIP_benchmark ``wds/`` dataset folder (classification or
  retrieval).

Only the standard library, NumPy and Pillow are needed.
"""
import csv
import io
import logging
import tarfile
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
from PIL import Image

_logger = logging.getLogger(__name__)


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


def shard_spec(shards: Sequence[Path]) -> str:
    """OpenCLIP's brace pattern for shards named ``PREFIX-000000.tar`` ... in order."""
    first, last = shards[0].name, shards[-1].name
    prefix, suffix = first[:first.rindex("-") + 1], ".tar"
    return str(shards[0].with_name(f"{prefix}{{{first[len(prefix):-len(suffix)]}..{last[len(prefix):-len(suffix)]}}}"
                                   f"{suffix}"))
