"""Turn CLOOB checkpoints into OpenCLIP state dicts: the authors' original files and our own.

Understood inputs (a path or an already loaded dict):

- **original** checkpoints of the reference implementation (ml-jku/cloob, an OpenCLIP fork of late
  2021), e.g. the released ``cloob_rn50_yfcc_epoch_28.pt``: a dict with ``state_dict`` (keys
  prefixed ``module.``), ``epoch``, ``name``, often ``optimizer``, ``model_config_file``, in older
  files ``method``, in newer ones ``scheduler``. The text tower sits under ``transformer.*`` and the temperature is
  ``logit_inv_tau``; older files also hold ``logit_scale_hopfield`` (log β), which
  ``training.main --learnable-hopfield-beta`` stores the same way (with ``logit_scale_hopfield_text``
  for a β per memory): a learnt β becomes metadata, not a weight;
- **OpenCLIP** checkpoints: training checkpoints (``epoch``, ``name``, ``state_dict``,
  ``optimizer``, ``scaler``; keys prefixed ``module.`` under DDP), bare state dicts and the files
  this module writes (``.safetensors`` or ``.pt``).

CLOOB metadata and settings (``hopfield_beta``, ``init_inv_tau``, ...; JSON scalars) come from the
checkpoint's ``cloob`` entry (:func:`open_clip_cloob.checkpoint.cloob_metadata`, which also reads
the optimizer-state entry of checkpoints written by earlier versions); they are passed on in ``meta``
and written into converted files. The file layouts are documented in :mod:`open_clip_cloob.checkpoint`.

Loading never executes pickled code (``torch.load(weights_only=True)``). Anything not understood is
refused with :class:`~open_clip_cloob.checkpoint.CheckpointError` naming the file and the key.
The architecture is detected by comparing every key and shape with the CLOOB model configs,
instantiated on PyTorch's ``meta`` device (no memory, no initialisation cost); ``model_name``
restricts the comparison to one OpenCLIP model name (registered names and ``local-dir:`` folders
both work).

Command line (writes ``.safetensors``, or a ``{"state_dict", "cloob"}`` torch file for other
suffixes; either loads with ``open_clip.create_model('RN50-cloob', pretrained=DST)``)::

    python -m open_clip_cloob.convert cloob_rn50_yfcc_epoch_28.pt rn50-cloob-yfcc15m.safetensors
"""
import argparse
import contextlib
import functools
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import open_clip
from open_clip.constants import HF_CONFIG_NAME
from open_clip.factory import LOCAL_DIR_PREFIX
import torch

from . import cli
from .checkpoint import (KNOWN_TOP_LEVEL_KEYS, META_KEY, CheckpointError, cloob_metadata, is_json_scalar,
                         load_checkpoint_file, save_converted)
from .registry import add_model_configs, list_cloob_models
from .settings import CLOOB_MODEL_SUFFIX, LEARNABLE_BETA_PARAMETERS

_logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathOrDict = Union[str, os.PathLike, Mapping[str, Any]]

# The original text tower is a module called `transformer` holding its own `transformer`; OpenCLIP
# keeps the text tower's parts at the top level of `CLIP`.
_ORIGINAL_PREFIX_RENAMES = (
    ("visual.", "visual."),
    ("transformer.transformer.", "transformer."),
    ("transformer.token_embedding.", "token_embedding."),
    ("transformer.ln_final.", "ln_final."),
)
_ORIGINAL_KEY_RENAMES = {
    "transformer.positional_embedding": "positional_embedding",
    "transformer.text_projection": "text_projection",
    "logit_inv_tau": "logit_scale",
}
# Log β, a parameter of the training loss, not of the model: the original files' learnt β, and
# training.main's --learnable-hopfield-beta (one shared, or the image memory's and the text memory's).
LEARNT_BETA_KEYS = dict(zip(LEARNABLE_BETA_PARAMETERS, ("hopfield_beta", "hopfield_beta_text")))
_MODULE_PREFIX = "module."


def convert_cloob_checkpoint(
        path_or_dict: PathOrDict,
        model_name: Optional[str] = None,
) -> Tuple[StateDict, Dict[str, Any]]:
    """Convert a CLOOB checkpoint (original layout or OpenCLIP's) into an OpenCLIP state dict.

    Args:
        path_or_dict: a checkpoint file or an already loaded checkpoint dict / state dict.
        model_name: OpenCLIP model name (or ``local-dir:DIR``) the weights must fit; detected from
            the checkpoint among the CLOOB configs when omitted.

    Returns:
        ``(state_dict, meta)``: the state dict loads strictly into ``open_clip.create_model(
        meta["model"])``; ``meta`` holds ``model``, ``inv_tau`` (= exp(logit_scale)),
        ``hopfield_beta`` (None where the checkpoint does not record it; a learnt β, stored as log β
        in the weights, wins over the settings' starting value, then kept as
        ``initial_hopfield_beta``; ``hopfield_beta_text`` for a β per memory), ``epoch``, ``name``,
        ``source_format`` (``"original"`` or ``"open_clip"``) and any CLOOB hyperparameters the
        checkpoint carries.

    Raises:
        CheckpointError: unknown or malformed keys, values or architecture, naming them.
    """
    if isinstance(path_or_dict, Mapping):
        source, checkpoint = "<checkpoint dict>", dict(path_or_dict)
    else:
        source, checkpoint = str(path_or_dict), load_checkpoint_file(path_or_dict)
    state_dict, extras = _split_checkpoint(checkpoint, source)
    state_dict = _strip_module_prefix(state_dict)
    meta = dict(extras.get(META_KEY, {}))
    learnt = _pop_learnt_betas(state_dict, source)
    if learnt and meta.get("hopfield_beta") is not None:
        meta["initial_hopfield_beta"] = meta["hopfield_beta"]  # the settings' β, where training started
    meta.update(learnt)
    if _is_original_layout(state_dict):
        state_dict = _rename_original_keys(state_dict, source)
        meta.setdefault("source_format", "original")
    else:
        meta.setdefault("source_format", "open_clip")
    hint = model_name or meta.get("model") or _model_hint(extras.get("model_config_file"))
    meta["model"] = _match_architecture(state_dict, source, model_name, hint)
    meta["inv_tau"] = _finite_exp(state_dict["logit_scale"], source, "logit_scale")
    meta.setdefault("hopfield_beta", None)
    for key in ("epoch", "name"):
        meta.setdefault(key, extras.get(key))
    return state_dict, meta


def _split_checkpoint(checkpoint: Dict[str, Any], source: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Separate the weights from the other top-level entries, refusing entries we do not know."""
    if "state_dict" not in checkpoint:
        # A bare state dict (e.g. torch.save(model.state_dict())): every value is a tensor.
        return _check_tensors(checkpoint, source), {}
    unknown = sorted(set(checkpoint) - set(KNOWN_TOP_LEVEL_KEYS))
    if unknown:
        raise CheckpointError(
            f"{source}: unknown top-level key {unknown[0]!r} (known: {', '.join(KNOWN_TOP_LEVEL_KEYS)})"
        )
    extras = {key: value for key, value in checkpoint.items() if key != "state_dict"}
    for key in ("epoch", "name", "model_config_file", "method"):
        if key in extras and not is_json_scalar(extras[key]):
            raise CheckpointError(f"{source}: top-level {key!r} = {extras[key]!r} is not a plain number or string")
    extras[META_KEY] = cloob_metadata(checkpoint, source)
    if not isinstance(checkpoint["state_dict"], Mapping):
        raise CheckpointError(f"{source}: 'state_dict' is a {type(checkpoint['state_dict']).__name__}, not a dict")
    return _check_tensors(checkpoint["state_dict"], source), extras


def _check_tensors(state_dict: Mapping[str, Any], source: str) -> Dict[str, torch.Tensor]:
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    if not state_dict:
        raise CheckpointError(f"{source}: the state dict is empty")
    return dict(state_dict)


def _strip_module_prefix(state_dict: StateDict) -> StateDict:
    """Drop DDP's ``module.`` prefix (present on every key of a DDP-saved checkpoint)."""
    return {key[len(_MODULE_PREFIX):] if key.startswith(_MODULE_PREFIX) else key: value
            for key, value in state_dict.items()}


def _is_original_layout(state_dict: StateDict) -> bool:
    return any(key in _ORIGINAL_KEY_RENAMES or key.startswith("transformer.transformer.") for key in state_dict)


def _pop_learnt_betas(state_dict: StateDict, source: str) -> Dict[str, float]:
    """Remove the log-β entries (:data:`LEARNT_BETA_KEYS`) from ``state_dict``; returns their β by metadata key."""
    return {meta_key: _finite_exp(state_dict.pop(key), source, key)
            for key, meta_key in LEARNT_BETA_KEYS.items() if key in state_dict}


def _rename_original_keys(state_dict: StateDict, source: str) -> StateDict:
    """Map original parameter names to OpenCLIP's."""
    renamed: StateDict = {}
    for key, value in state_dict.items():
        new_key = _ORIGINAL_KEY_RENAMES.get(key)
        if new_key is None:
            new_key = next((new + key[len(old):] for old, new in _ORIGINAL_PREFIX_RENAMES if key.startswith(old)), None)
        if new_key is None:
            raise CheckpointError(f"{source}: unknown key {key!r} in an original CLOOB checkpoint")
        renamed[new_key] = value
    return renamed


def _finite_exp(log_value: Any, source: str, key: str) -> float:
    """exp of a stored log-scale scalar, refusing non-scalars and non-finite values."""
    tensor = torch.as_tensor(log_value)
    if tensor.numel() != 1 or not torch.isfinite(tensor).all():
        raise CheckpointError(f"{source}: {key!r} must be one finite number (a log scale), got {tensor.tolist()}")
    try:
        return math.exp(float(tensor))
    except OverflowError as error:
        raise CheckpointError(f"{source}: {key!r} = {float(tensor)} is too large a log scale (exp overflows)") from error


def _model_hint(model_config_file: Any) -> Optional[str]:
    """``RN50.json`` (the reference implementation's config name) -> ``RN50-cloob``."""
    if not isinstance(model_config_file, str):
        return None
    return Path(model_config_file).stem + CLOOB_MODEL_SUFFIX


def _match_architecture(state_dict: StateDict, source: str, model_name: Optional[str], hint: Optional[str]) -> str:
    """The model whose parameters have exactly the keys and shapes of ``state_dict``."""
    if model_name is not None:
        if not _is_known_model(model_name):
            raise CheckpointError(f"{source}: unknown model {model_name!r} (CLOOB models: "
                                  f"{', '.join(list_cloob_models())}; or any OpenCLIP model name, or local-dir:FOLDER)")
        problem = _mismatch(state_dict, model_name)
        if problem:
            raise CheckpointError(f"{source}: does not fit {model_name}: {problem}")
        return model_name
    candidates = list_cloob_models()
    if hint is not None and _is_known_model(hint):
        candidates = [hint] + [name for name in candidates if name != hint]  # the likely one first
    problems = {}
    for candidate in candidates:
        problems[candidate] = _mismatch(state_dict, candidate)
        if not problems[candidate]:
            return candidate
    raise CheckpointError(
        f"{source}: the weights fit none of the CLOOB architectures ({', '.join(sorted(problems))}); "
        f"against {candidates[0]}: {problems[candidates[0]]}. Pass the OpenCLIP model name explicitly (--model)."
    )


def _is_known_model(model_name: str) -> bool:
    """Whether ``open_clip.create_model(model_name)`` can build the architecture (without network)."""
    if model_name.startswith(LOCAL_DIR_PREFIX):
        return (Path(model_name[len(LOCAL_DIR_PREFIX):]) / HF_CONFIG_NAME).is_file()
    return model_name in open_clip.list_models()


def _mismatch(state_dict: StateDict, model_name: str) -> Optional[str]:
    """First difference between ``state_dict`` and the parameters of ``model_name``, or None."""
    expected = parameter_shapes(model_name)
    for key, value in state_dict.items():
        if key not in expected:
            return f"unexpected key {key!r}"
        if tuple(value.shape) != expected[key]:
            return f"key {key!r} has shape {tuple(value.shape)}, the model expects {expected[key]}"
    missing = [key for key in expected if key not in state_dict]
    return f"missing key {missing[0]!r}" if missing else None


@functools.lru_cache(maxsize=None)
def parameter_shapes(model_name: str) -> Dict[str, Tuple[int, ...]]:
    """Keys and shapes of the state dict of ``open_clip.create_model(model_name)``, computed on the meta device."""
    return {key: tuple(value.shape) for key, value in meta_model(model_name).state_dict().items()}


def meta_model(model_name: str) -> torch.nn.Module:
    """``open_clip.create_model(model_name)`` with every tensor on PyTorch's ``meta`` device.

    Costs neither memory nor initialisation time; carries the model's preprocess config.
    """
    with torch.device("meta"), _without_random_init_warning():
        return open_clip.create_model(model_name, device="meta")


class _RandomInitWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    # create_model warns (on the root logger) that nothing was loaded; a meta model never holds
    # weights, so the warning would only confuse the user of the converter.
    log_filter = _RandomInitWarningFilter()
    logging.getLogger().addFilter(log_filter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(log_filter)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The converter's command line (``src dst [--model NAME]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_cloob.convert",
        description="Convert a CLOOB checkpoint (the authors' original layout or an OpenCLIP training "
                    "checkpoint) into an OpenCLIP state dict.",
    )
    parser.add_argument("src", help="checkpoint to convert (.pt/.pth/.bin or .safetensors)")
    parser.add_argument("dst", help="output file: .safetensors (recommended) or a torch file (.pt)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--add-model-config``, the model flags of the converter and the exporter."""
    parser.add_argument(
        "--model", default=None,
        help=f"OpenCLIP model name the weights must fit (default: detected among {', '.join(list_cloob_models())})",
    )
    parser.add_argument(
        "--add-model-config", action="append", default=[], metavar="PATH",
        help="model config JSON file or folder to register first, for a --model that is neither a CLOOB "
             "config nor built into OpenCLIP (repeatable)")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the metadata of the converted checkpoint."""
    args = parse_args(argv)
    add_model_configs(args.add_model_config)
    state_dict, meta = convert_cloob_checkpoint(args.src, model_name=args.model)
    save_converted(state_dict, meta, args.dst)
    _logger.info("wrote %s (%s, inv_tau %.4g, hopfield_beta %s)", args.dst, meta["model"], meta["inv_tau"],
                 meta["hopfield_beta"])
    return meta


if __name__ == "__main__":
    sys.exit(cli.run(main, "python -m open_clip_cloob.convert"))
