"""Image-text data that fails early on structural problems and skips broken samples.

:func:`check_shards` runs before OpenCLIP builds a webdataset pipeline: a shard list that expands to
nothing or names local files that do not exist stops the run at start (OpenCLIP's pipeline would log
and skip them one by one). Broken samples inside shards are OpenCLIP's: logged and skipped.

:class:`CheckedCsvDataset` replaces OpenCLIP's ``CsvDataset`` (training and ``--val-data``):

- Structural problems stop the run at start with a message naming the file and the fix: a missing
  file, a separator or column names that do not match ``--csv-separator`` / ``--csv-img-key`` /
  ``--csv-caption-key``, an empty file.
- A per-sample problem (missing, truncated or corrupt image; empty caption; caption bytes that are
  not UTF-8) is skipped: the sample is replaced by the next readable one of the file, so every
  batch keeps its size (ranks gather features of equal shape). Each broken row counts once per
  pass over the data, in a counter shared with the dataloader workers; the first few are logged
  with their path, and more than ``--max-bad-samples`` in one pass stop the run with
  :class:`BadDataError`.
"""
import logging
import multiprocessing
import os
from typing import Any, Callable, List, Optional, Tuple

import pandas as pd
from open_clip_train.data import CsvDataset, expand_urls
from PIL import Image

# Bytes that are not UTF-8 are decoded to U+FFFD, which marks the caption as broken.
_REPLACEMENT_CHARACTER = "\ufffd"
LOGGED_BAD_SAMPLES = 5


class BadDataError(RuntimeError):
    """The data is unusable: a structural problem, or too many broken samples."""


class BadSampleCounter:
    """Broken samples of the current pass over a dataset, shared with dataloader worker processes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = multiprocessing.Value("i", 0)

    @property
    def count(self) -> int:
        """Broken samples seen in the current pass."""
        return self._count.value

    def reset(self) -> int:
        """Start a new pass; returns the count of the pass that ended."""
        with self._count.get_lock():
            count, self._count.value = self._count.value, 0
        return count

    def add(self, source: str, problem: str) -> None:
        """Count one broken sample; log the first few, stop the run past the limit."""
        with self._count.get_lock():
            self._count.value += 1
            count = self._count.value
        if count <= LOGGED_BAD_SAMPLES:
            logging.warning("Skipping broken sample %d: %s: %s", count, source, problem)
        if count > self.limit:
            raise BadDataError(
                f"more than --max-bad-samples {self.limit} broken samples in one pass over the data (the "
                f"last: {source}: {problem}); the data is mostly broken: check the CSV's image paths, or "
                "raise --max-bad-samples")


def _read_table(path: str, sep: str, img_key: str, caption_key: str) -> pd.DataFrame:
    """The CSV's image and caption columns; :class:`BadDataError` naming the fix for a structural problem."""
    if not os.path.isfile(path):
        raise BadDataError(f"{path}: no such CSV file (--train-data / --val-data)")
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding_errors="replace")
    except pd.errors.EmptyDataError:
        raise BadDataError(f"{path}: the file is empty; it needs a header row and one row per image") from None
    missing = [key for key in (img_key, caption_key) if key not in table.columns]
    if missing:
        raise BadDataError(
            f"{path}: no column {', '.join(map(repr, missing))}; with separator {sep!r} the header has the "
            f"columns {list(table.columns)}. Set --csv-separator (tab by default), --csv-img-key and "
            "--csv-caption-key to the file's separator and column names")
    if table.empty:
        raise BadDataError(f"{path}: the CSV has a header but no rows")
    return table


class CheckedCsvDataset(CsvDataset):
    """OpenCLIP's CSV dataset with structural checks and skipping of broken samples (module doc)."""

    def __init__(self, input_filename: str, transforms: Callable, img_key: str, caption_key: str,
                 sep: str = "\t", tokenizer: Optional[Callable] = None, *, max_bad_samples: int) -> None:
        table = _read_table(input_filename, sep, img_key, caption_key)
        self.images = table[img_key].tolist()
        self.captions = table[caption_key].tolist()
        self.transforms = transforms
        self.tokenize = tokenizer
        self.counter = BadSampleCounter(max_bad_samples)

    def _load(self, idx: int) -> Tuple[Any, Any]:
        caption = self.captions[idx]
        if not caption.strip():
            raise ValueError("empty caption")
        if _REPLACEMENT_CHARACTER in caption:
            raise ValueError("caption is not valid UTF-8")
        with Image.open(self.images[idx]) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not in a transform
            return self.transforms(image), self.tokenize([caption])[0]

    def __getitem__(self, idx: int) -> Tuple[Any, Any]:
        """Sample ``idx``, or the next readable one when it is broken (counted once, when visited itself)."""
        for offset in range(len(self)):
            candidate = (idx + offset) % len(self)
            try:
                return self._load(candidate)
            except (OSError, ValueError) as error:  # PIL raises OSError subclasses for unreadable images
                if offset == 0:
                    self.counter.add(f"row {candidate + 1} ({self.images[candidate]})", str(error))
        raise BadDataError(f"no readable sample in the CSV ({len(self)} rows)")


def check_shards(spec: Any) -> List[str]:
    """The shards of a ``--train-data`` / ``--val-data`` webdataset spec; :class:`BadDataError` if unusable.

    Only local paths are checked for existence; URLs and ``pipe:`` commands are opened later.
    """
    shards, _ = expand_urls(spec)
    if not shards:
        raise BadDataError(f"webdataset {spec!r}: the shard list is empty")
    missing = [shard for shard in shards if "://" not in shard and not shard.startswith("pipe:")
               and not os.path.isfile(shard)]
    if missing:
        raise BadDataError(
            f"webdataset {spec!r}: {len(missing)} of {len(shards)} shards do not exist, e.g. "
            f"{', '.join(missing[:3])}; fix the brace pattern (e.g. /data/{{00000..00099}}.tar) or the paths")
    return shards
