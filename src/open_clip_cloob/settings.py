"""CLOOB's settings in one place: the loss variants and their properties, the paper's defaults, the
valid range of every number, the model-name suffix; and the checks of those numbers.

Everything that needs these facts reads them here: the loss (:mod:`open_clip_cloob.loss`), the
config registry (:mod:`open_clip_cloob.registry`), the training parser (``training.params``), the
training monitor and the tooling. This module imports nothing but the standard library, so the
training parser's dry run (``python -m training.params ...``) loads it without torch
(``training.params`` loads this file without running the package's ``__init__``, which imports
torch to register the model configs).

The paper's ablation grid crosses two objectives with and without the Hopfield retrieval.
:data:`LOSS_VARIANTS` maps the ``--loss`` names of its four corners, all served by
:class:`open_clip_cloob.CloobLoss` on CLOOB's scale, to its keyword arguments. InfoNCE on the plain
embeddings is also OpenCLIP's own ``ClipLoss`` (:data:`OPENCLIP_LOSS`), on its own scale (no τ, the
two directions averaged) and with its learnable temperature.
"""
import math
import numbers
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

# Objective name -> whether its denominator leaves the positive out (InfoLOOB) or keeps it (InfoNCE).
LEAVES_OUT_POSITIVE: Mapping[str, bool] = MappingProxyType({"infoloob": True, "infonce": False})
OBJECTIVES: Tuple[str, ...] = tuple(LEAVES_OUT_POSITIVE)

# --loss name -> CloobLoss keywords. The first is the default loss of '*-cloob' models. Adding a
# variant here offers it to training.main (a --loss choice with CLOOB's temperature defaults, its
# validation loss, checkpoints, the monitor) and to the tooling.
LOSS_VARIANTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "cloob": MappingProxyType({"objective": "infoloob", "hopfield": True}),
    "cloob-infonce": MappingProxyType({"objective": "infonce", "hopfield": True}),
    "infoloob": MappingProxyType({"objective": "infoloob", "hopfield": False}),
    "infonce": MappingProxyType({"objective": "infonce", "hopfield": False}),
})
CLOOB_LOSSES: Tuple[str, ...] = tuple(LOSS_VARIANTS)
# The variants that score Hopfield retrievals: the only ones where β matters.
HOPFIELD_LOSSES: Tuple[str, ...] = tuple(name for name, keywords in LOSS_VARIANTS.items() if keywords["hopfield"])
# OpenCLIP's own create_loss (InfoNCE, SigLIP, CoCa or distillation, as its other flags say).
OPENCLIP_LOSS = "clip"
LOSSES: Tuple[str, ...] = CLOOB_LOSSES + (OPENCLIP_LOSS,)

# Model configs named '<architecture>-cloob' are CLOOB's (model_configs/*.json).
CLOOB_MODEL_SUFFIX = "-cloob"

# A learnable β (an opt-in remedy): one for every retrieval, or one per memory (image, text). The
# model parameters holding log β: the first is the shared one or the image memory's, the second the
# text memory's ('per-modality'). 'logit_scale_hopfield' is the name in the authors' first code.
LEARNABLE_BETA_MODES: Tuple[str, ...] = ("shared", "per-modality")
LEARNABLE_BETA_PARAMETERS: Tuple[str, str] = ("logit_scale_hopfield", "logit_scale_hopfield_text")

# The paper's Conceptual Captions constants: Hopfield β and the fixed inverse temperature 1/τ.
DEFAULT_HOPFIELD_BETA = 8.0
DEFAULT_INV_TAU = 30.0
# OpenCLIP clamps logit_scale = ln(1/τ) to [0, ln 100] after every step.
INV_TAU_RANGE: Tuple[float, float] = (1.0, 100.0)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float when it is a finite number > 0; otherwise ``ValueError`` naming ``name``.

    For β, the spread factor K of ``beta_from_spread`` and every other strictly positive real.
    """
    number = _finite(name, value)
    if not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_optional_positive(name: str, value: Optional[Any]) -> Optional[float]:
    """``None``, or :func:`check_positive` of ``value``."""
    return None if value is None else check_positive(name, value)


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float when it is a number in [0, 1] (a weight); otherwise ``ValueError`` naming ``name``."""
    number = _finite(name, value)
    if not 0 <= number <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def check_inv_tau(name: str, value: Any) -> float:
    """``value`` as a float when it is an inverse temperature OpenCLIP keeps (:data:`INV_TAU_RANGE`)."""
    number = _finite(name, value)
    low, high = INV_TAU_RANGE
    if not low <= number <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}] (OpenCLIP clamps the scale there), got {value!r}")
    return number


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` when it is an integer ≥ ``minimum`` (not a bool); otherwise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return value


def check_objective(objective: Any) -> str:
    """``objective`` when it names one of :data:`OBJECTIVES`; otherwise ``ValueError``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    return objective


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number
