"""CLOOB (modern Hopfield networks + InfoLOOB, Fürst et al., NeurIPS 2022) for OpenCLIP.

Importing this package registers the CLOOB model configs (``RN50-cloob``, ``ViT-B-16-cloob``, ...)
and the authors' pretrained tags (``yfcc15m``) in OpenCLIP's factory, so
``open_clip.create_model('RN50-cloob', pretrained='yfcc15m')`` works afterwards; it has no other
side effect. The library: the loss (:mod:`.loss`), its variants, defaults and valid values
(:mod:`.settings`, torch-free), configs (:mod:`.registry`), checkpoint files
(:mod:`.checkpoint`), conversion (:mod:`.convert`), export (:mod:`.export`), pretrained tags
(:mod:`.pretrained`) and representation diagnostics (:mod:`.analysis`); :mod:`.benchmark` runs
CLIP_benchmark with all of it registered (``[eval]`` extra).
"""
import importlib
from typing import Any, List

from .checkpoint import CheckpointError, load_checkpoint_file
from .loss import (
    CloobLoss,
    cloob_loss,
    collapsed_loss,
    cross_hopfield_retrieval,
    hopfield_diagnostics,
    hopfield_retrieval,
    info_loob,
    info_nce,
    memory_betas,
    similarity_spread,
)
from .pretrained import register_pretrained_tags
from .registry import add_model_configs, list_cloob_models, register_model_configs
# Bound explicitly: training.params may have loaded the settings module first, without this package
# (torch-free), and an import that finds a module already loaded does not make it a package attribute.
from . import settings
from .settings import LOSS_VARIANTS

register_model_configs()
register_pretrained_tags()

# Modules that are also command-line tools (python -m open_clip_cloob.convert|export|analysis) are
# imported on first use: a module that runs as __main__ must not be imported by its package first
# (runpy would warn that it "may result in unpredictable behaviour").
_ON_FIRST_USE = {
    "analysis": ("analysis", None),
    "analyze_embeddings": ("analysis", "analyze_embeddings"),
    "convert_cloob_checkpoint": ("convert", "convert_cloob_checkpoint"),
    "export_model_folder": ("export", "export_model_folder"),
}


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _ON_FIRST_USE[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))


__all__ = [
    "CheckpointError",
    "LOSS_VARIANTS",
    "CloobLoss",
    "add_model_configs",
    "analysis",
    "analyze_embeddings",
    "cloob_loss",
    "collapsed_loss",
    "convert_cloob_checkpoint",
    "cross_hopfield_retrieval",
    "export_model_folder",
    "hopfield_diagnostics",
    "hopfield_retrieval",
    "info_loob",
    "info_nce",
    "list_cloob_models",
    "load_checkpoint_file",
    "memory_betas",
    "register_model_configs",
    "register_pretrained_tags",
    "settings",
    "similarity_spread",
]
