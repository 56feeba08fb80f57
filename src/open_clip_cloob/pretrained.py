"""Pretrained tags for the authors' released CLOOB checkpoints: ``yfcc15m`` for RN50-cloob and RN50x4-cloob.

After :func:`register_pretrained_tags` (run by ``import open_clip_cloob``)::

    model, _, preprocess = open_clip.create_model_and_transforms('RN50-cloob', pretrained='yfcc15m')

downloads ``cloob_rn50_yfcc_epoch_28.pt`` from the authors' server once into the cache (default
``~/.cache/clip``, OpenCLIP's own; ``cache_dir=`` as usual) with a progress bar, converts it with
:func:`open_clip_cloob.convert.convert_cloob_checkpoint` into ``cloob_rn50_yfcc_epoch_28.open_clip.safetensors``
next to it, and lets OpenCLIP load that file strictly. Later calls find the converted file and
touch neither the network nor the original. Set ``OPEN_CLIP_CLOOB_MIRROR`` to a base URL
(``https://``, ``http://`` or ``file://``) to fetch the same file names from elsewhere (a mirror, a
local copy).

OpenCLIP 3.3 has no public API for new pretrained tags, so this module is the one place that
touches its internals: the tag registry ``open_clip.pretrained._PRETRAINED`` and the name
``open_clip.factory.download_pretrained`` that ``create_model`` calls for a tag. The wrapper
installed there handles CLOOB tags and passes every other tag to OpenCLIP's own function.
``tests/test_cloob_pretrained.py`` fails loudly if upstream moves either.
"""
import logging
import os
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import open_clip
import open_clip.factory
import open_clip.pretrained
from tqdm import tqdm

from .checkpoint import atomic_write, save_converted

_logger = logging.getLogger(__name__)

CLOOB_DOWNLOAD_ROOT = "https://ml.jku.at/research/CLOOB/downloads/checkpoints/"
MIRROR_ENV = "OPEN_CLIP_CLOOB_MIRROR"
DEFAULT_CACHE_DIR = "~/.cache/clip"  # where OpenCLIP caches URL downloads
CONVERTED_SUFFIX = ".open_clip.safetensors"

# (model, tag) -> file name under CLOOB_DOWNLOAD_ROOT. The authors' released checkpoints, trained on YFCC-15M for 28 epochs.
RELEASED_CHECKPOINTS: Dict[Tuple[str, str], str] = {
    ("RN50-cloob", "yfcc15m"): "cloob_rn50_yfcc_epoch_28.pt",
    ("RN50x4-cloob", "yfcc15m"): "cloob_rn50x4_yfcc_epoch_28.pt",
}

# Key in a tag cfg marking a CLOOB original checkpoint; its value is the model the file must fit.
_CLOOB_TAG_KEY = "cloob_original_for"
_DOWNLOAD_CHUNK_BYTES = 1 << 20


def register_pretrained_tags() -> List[Tuple[str, str]]:
    """Register the ``yfcc15m`` tags in OpenCLIP and install the download hook. Idempotent.

    Returns:
        The registered ``(model, tag)`` pairs.
    """
    registry = _openclip_tag_registry()
    for (model, tag), filename in RELEASED_CHECKPOINTS.items():
        registry.setdefault(model, {})[tag] = _tag_cfg(model, CLOOB_DOWNLOAD_ROOT + filename)
    open_clip.factory.download_pretrained = _download_pretrained
    return list(RELEASED_CHECKPOINTS)


def _openclip_tag_registry() -> Dict[str, Dict[str, Dict[str, Any]]]:
    registry = getattr(open_clip.pretrained, "_PRETRAINED", None)
    if not isinstance(registry, dict) or not hasattr(open_clip.factory, "download_pretrained"):
        raise RuntimeError(
            "open_clip moved its pretrained-tag internals (open_clip.pretrained._PRETRAINED, "
            f"open_clip.factory.download_pretrained); open_clip_cloob supports open_clip_torch 3.3, "
            f"found {open_clip.__version__}"
        )
    return registry


def _tag_cfg(model: str, url: str) -> Dict[str, Any]:
    """A tag cfg in OpenCLIP's format: OpenAI preprocessing, QuickGELU, the authors' URL."""
    return {
        "url": url,
        "hf_hub": "",
        "quick_gelu": True,
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        _CLOOB_TAG_KEY: model,
    }


def _download_pretrained(cfg: Dict[str, Any], prefer_hf_hub: bool = True, cache_dir: Optional[str] = None) -> str:
    """Stands in for ``open_clip.factory.download_pretrained``: CLOOB tags here, all others upstream."""
    if cfg.get(_CLOOB_TAG_KEY):
        return fetch_converted_checkpoint(cfg["url"], cfg[_CLOOB_TAG_KEY], cache_dir=cache_dir)
    return open_clip.pretrained.download_pretrained(cfg, prefer_hf_hub=prefer_hf_hub, cache_dir=cache_dir)


def fetch_converted_checkpoint(url: str, model_name: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """Path of the converted (OpenCLIP-layout) copy of an original CLOOB checkpoint.

    Downloads ``url`` (or its namesake under ``$OPEN_CLIP_CLOOB_MIRROR``) into ``cache_dir`` unless
    already there, converts it for ``model_name`` once and returns the cached ``.safetensors``.
    """
    url = _mirrored(url)
    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    original = cache / url.rsplit("/", 1)[-1]
    converted = original.with_name(original.stem + CONVERTED_SUFFIX)
    if converted.is_file():
        return str(converted)
    if not original.is_file():
        download_file(url, original)
    # Imported on use: the package imports this module, and convert also runs as __main__.
    from .convert import convert_cloob_checkpoint

    state_dict, meta = convert_cloob_checkpoint(original, model_name=model_name)
    meta.setdefault("url", url)
    save_converted(state_dict, meta, converted)
    _logger.info("converted %s -> %s (inv_tau %.4g, hopfield_beta %s)", original, converted, meta["inv_tau"],
                 meta["hopfield_beta"])
    return str(converted)


def _mirrored(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1] if mirror else url


def download_file(url: str, destination: Union[str, os.PathLike]) -> Path:
    """Download ``url`` to ``destination`` with a progress bar, atomically.

    The bytes go to a per-process temporary file (:func:`~open_clip_cloob.checkpoint.atomic_write`)
    that replaces ``destination`` only once complete (and of the announced ``Content-Length``), so an
    interrupted download is never mistaken for a cached file and concurrent ranks do not write into
    each other's file.
    """
    destination = Path(destination)
    _logger.info("downloading %s to %s", url, destination)
    try:
        with atomic_write(destination) as partial:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                length = response.headers.get("Content-Length")
                expected = int(length) if length else None
                with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name) as bar:
                    while chunk := response.read(_DOWNLOAD_CHUNK_BYTES):
                        out.write(chunk)
                        bar.update(len(chunk))
            received = partial.stat().st_size
            if expected is not None and received != expected:
                raise OSError(f"download of {url} ended after {received} of {expected} bytes")
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors too
        raise OSError(
            f"could not download {url}: {error}. Without internet access, put the file into "
            f"{destination.parent} or set {MIRROR_ENV} to a folder URL that has it."
        ) from error
    return destination
