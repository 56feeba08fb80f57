"""CLOOB (modern Hopfield networks + InfoLOOB, Fürst et al., NeurIPS 2022) for OpenCLIP.

Importing this package registers the CLOOB model configs (``RN50-cloob``, ``ViT-B-16-cloob``, ...)
in OpenCLIP's factory, so ``open_clip.create_model('RN50-cloob')`` works afterwards.
"""
from .loss import CloobLoss, cloob_loss, hopfield_retrieval, info_loob
from .registry import list_cloob_models, register_model_configs

register_model_configs()

__all__ = [
    "CloobLoss",
    "cloob_loss",
    "hopfield_retrieval",
    "info_loob",
    "list_cloob_models",
    "register_model_configs",
]
