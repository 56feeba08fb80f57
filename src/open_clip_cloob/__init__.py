"""CLOOB (modern Hopfield networks + InfoLOOB, Fürst et al., NeurIPS 2022) for OpenCLIP.

Importing this package registers the CLOOB model configs (``RN50-cloob``, ``ViT-B-16-cloob``, ...)
and the authors' pretrained tags (``yfcc15m``) in OpenCLIP's factory, so
``open_clip.create_model('RN50-cloob', pretrained='yfcc15m')`` works afterwards.
"""
from .convert import convert_cloob_checkpoint
from .export import export_model_folder
from .loss import (
    LOSS_VARIANTS,
    CloobLoss,
    cloob_loss,
    collapsed_loss,
    cross_hopfield_retrieval,
    hopfield_diagnostics,
    hopfield_retrieval,
    info_loob,
    info_nce,
)
from .pretrained import register_pretrained_tags
from .registry import list_cloob_models, register_model_configs

register_model_configs()
register_pretrained_tags()

__all__ = [
    "LOSS_VARIANTS",
    "CloobLoss",
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
    "register_model_configs",
    "register_pretrained_tags",
]
