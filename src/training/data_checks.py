"""Image-text data that fails early on structural problems and skips, counts and limits broken samples.

Every dataset ``training.main`` reads carries a :class:`BadSampleCounter` as its ``bad_samples``
attribute: broken samples of the current pass over the data (one training epoch of one rank, or one
evaluation), shared with the dataloader workers. The first few are logged with their path, and more
than ``--max-bad-samples`` in one pass stop the run with :class:`BadDataError`.

- CSV (:class:`CheckedCsvDataset`, replacing OpenCLIP's ``CsvDataset`` for training and
  ``--val-data``): a missing file, a separator or column names that do not match
  ``--csv-separator`` / ``--csv-img-key`` / ``--csv-caption-key``, or an empty file stop the run at
  start with a message naming the file and the fix. A missing, truncated or corrupt image, an empty
  caption or caption bytes that are not UTF-8 make a broken sample, replaced by the next readable
  row so that every batch keeps its size (ranks gather features of equal shape).
- Webdataset: :func:`check_shards` stops the run at start when the shard list expands to nothing or
  names local files that do not exist. :class:`WebdatasetSampleCheck` takes the place of OpenCLIP's
  sample filter and exception handler in its pipeline: a sample without image or caption, with an
  empty or non-UTF-8 caption, an image that does not decode, and an unreadable shard are skipped
  (the batch is filled from the following samples) and counted. A training epoch of a webdataset is
  a number of samples, not a pass over the shards: a broken sample read twice in it counts twice.
- Zero-shot image folders (``--imagenet-val``, ``--imagenet-v2``): :class:`SkipUnreadableImages`
  leaves unreadable images out of their batch (:func:`collate_readable`), so accuracy is computed
  over the readable images.
"""
import logging
import multiprocessing
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import webdataset
from open_clip_train.data import CsvDataset, expand_urls
from PIL import Image
from torch.utils.data import Dataset, default_collate

# Bytes that are not UTF-8 are decoded to U+FFFD, which marks the caption as broken.
_REPLACEMENT_CHARACTER = "\ufffd"
LOGGED_BAD_SAMPLES = 5
# What PIL raises for a missing, truncated or corrupt image file (UnidentifiedImageError is an OSError).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError)
# The image extensions OpenCLIP's webdataset pipeline reads (its filter and its rename stage).
WEBDATASET_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# webdataset's decode stage calls the exception handler from this function's frame.
_WEBDATASET_DECODE_CODE = webdataset.filters._decode.__code__


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
                f"last: {source}: {problem}); the data is mostly broken: check it (the first broken samples are "
                "logged), or raise --max-bad-samples")


def caption_problem(caption: str) -> Optional[str]:
    """Why ``caption`` (decoded with replacement characters for invalid bytes) is unusable, or ``None``."""
    if not caption.strip():
        return "empty caption"
    if _REPLACEMENT_CHARACTER in caption:
        return "caption is not valid UTF-8"
    return None


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
        self.bad_samples = BadSampleCounter(max_bad_samples)

    def _load(self, idx: int) -> Tuple[Any, Any]:
        caption = self.captions[idx]
        problem = caption_problem(caption)
        if problem:
            raise ValueError(problem)
        with Image.open(self.images[idx]) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not in a transform
            return self.transforms(image), self.tokenize([caption])[0]

    def __getitem__(self, idx: int) -> Tuple[Any, Any]:
        """Sample ``idx``, or the next readable one when it is broken (counted once, when visited itself)."""
        for offset in range(len(self)):
            candidate = (idx + offset) % len(self)
            try:
                return self._load(candidate)
            except UNREADABLE_IMAGE_ERRORS as error:
                if offset == 0:
                    self.bad_samples.add(f"row {candidate + 1} ({self.images[candidate]})", str(error))
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


class WebdatasetSampleCheck:
    """The sample filter and exception handler of one webdataset pipeline, counting into ``bad_samples``.

    :meth:`select` replaces OpenCLIP's ``filter_no_caption_or_no_image`` (which drops samples
    silently) and :meth:`handle` its ``log_and_continue`` (which logs every error and counts none).
    In OpenCLIP's pipeline the decode stage takes its samples straight from the filter, so an image
    that fails to decode is the sample :meth:`select` passed last.
    """

    def __init__(self, bad_samples: BadSampleCounter) -> None:
        self.bad_samples = bad_samples
        self._selected = "?"
        self._member_error = ""  # the last error reading a tar member: "message @ stream"

    def select(self, sample: Dict[str, Any]) -> bool:
        """Whether ``sample`` (undecoded: bytes per extension) has an image and a usable caption."""
        name = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
        if not any(key in sample for key in WEBDATASET_IMAGE_KEYS):
            problem = f"no image ({', '.join('.' + key for key in WEBDATASET_IMAGE_KEYS)})"
        elif "txt" not in sample:
            problem = "no caption (.txt)"
        else:
            problem = caption_problem(sample["txt"].decode("utf-8", errors="replace"))
        if problem:
            self.bad_samples.add(name, problem)
            return False
        self._selected = name
        return True

    def handle(self, error: Exception) -> bool:
        """Exception handler of the pipeline's stages: count the broken sample or shard, go on.

        webdataset reports a shard cut short twice: reading its member ("message @ stream"), then
        iterating its archive (arguments end with stream and URL); the second is not counted again.
        """
        if sys._getframe(1).f_code is _WEBDATASET_DECODE_CODE:
            self.bad_samples.add(self._selected, repr(error))
            return True
        args = error.args
        if len(args) >= 3 and self._member_error.endswith(f" @ {args[-2]}"):
            logging.debug("Same shard, reported again: %r", error)
        else:
            self.bad_samples.add("reading a shard", repr(error))  # shard errors name their URL
        self._member_error = str(args[0]) if args else ""
        return True


class SkipUnreadableImages(Dataset):
    """A map-style ``(image, label)`` dataset whose unreadable images become ``None`` and are counted.

    Batch it with :func:`collate_readable`, which leaves them out.
    """

    def __init__(self, dataset: Dataset, bad_samples: BadSampleCounter) -> None:
        self.dataset, self.bad_samples = dataset, bad_samples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Optional[Any]:
        try:
            return self.dataset[idx]
        except UNREADABLE_IMAGE_ERRORS as error:
            samples = getattr(self.dataset, "samples", None)  # ImageFolder: (path, class) pairs
            self.bad_samples.add(samples[idx][0] if samples else f"index {idx}", str(error))
            return None


def collate_readable(batch: Sequence[Optional[Any]]) -> Any:
    """``default_collate`` of the samples that are not ``None``; :class:`BadDataError` if none is left."""
    readable = [sample for sample in batch if sample is not None]
    if not readable:
        raise BadDataError(f"all {len(batch)} images of an evaluation batch are unreadable; check the image "
                           "folder (--imagenet-val / --imagenet-v2)")
    return default_collate(readable)
