"""Registration of the CLOOB model configs in OpenCLIP's model factory.

The architectures are JSON data in ``model_configs/`` (one file per architecture, named
``<arch>-cloob.json``). Registering appends that folder to OpenCLIP's config search path through
its public ``open_clip.add_model_config``; registration is per process, so every torchrun or SLURM
rank must import :mod:`open_clip_cloob` (which registers on import).
"""
import logging
import os
from pathlib import Path
from typing import Iterable, List, Union

import open_clip

from .settings import CLOOB_MODEL_SUFFIX

_logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_cloob_models() -> List[str]:
    """Names of the CLOOB architectures this package ships, e.g. ``["RN101-cloob", "RN50-cloob", ...]``."""
    return sorted(path.stem for path in MODEL_CONFIG_DIR.glob(f"*{CLOOB_MODEL_SUFFIX}.json"))


def register_model_configs() -> List[str]:
    """Make every CLOOB config known to ``open_clip.create_model`` and friends.

    Idempotent: when all CLOOB names are already registered nothing is added again.
    Refuses to shadow a config OpenCLIP already has under the same name (a later file with the
    same stem would silently replace it). Returns the CLOOB model names.
    """
    names = list_cloob_models()
    known = set(open_clip.list_models())
    if known.issuperset(names):
        return names
    clashes = sorted(known.intersection(names))
    if clashes:
        raise RuntimeError(
            f"OpenCLIP already has model configs named {clashes}; registering {MODEL_CONFIG_DIR} "
            "would shadow them. Remove the other registration first."
        )
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _logger.debug("registered CLOOB model configs %s from %s", names, MODEL_CONFIG_DIR)
    return names


def add_model_configs(paths: Iterable[Union[str, os.PathLike]]) -> None:
    """Register more model config files or folders (``--add-model-config``) in OpenCLIP's factory.

    Raises:
        FileNotFoundError: a path does not exist (OpenCLIP would skip it silently).
    """
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--add-model-config {path}: no such file or folder")
        open_clip.add_model_config(path)
