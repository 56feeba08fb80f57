"""CLOOB checkpoint files: their layout, safe reading and atomic writing, one implementation each.

Layout. A training checkpoint of ``training.main`` is OpenCLIP's dict (``epoch``, ``name``,
``state_dict``, ``optimizer``, ``scaler``; the ``state_dict`` keys prefixed ``module.`` under DDP)
plus CLOOB's own top-level entries:

- ``"cloob"`` (:data:`META_KEY`): the run's CLOOB settings, JSON scalars only: the flags named by
  ``training.params.CLOOB_SETTINGS`` (the loss, β, β from the spread, 1/τ and whether it is
  learnable, the restart cycles), by their ``argparse`` names. Converted and exported files carry
  the same entry, completed with ``model``, ``inv_tau``, ``epoch``, ...: torch files at the top
  level, ``.safetensors`` files as JSON in the header's metadata field ``cloob``;
- ``"cloob_settings_history"`` (:data:`HISTORY_KEY`): only in a run that was resumed with other
  settings (``--allow-changed-settings``): the earlier settings, oldest first, each ``{"settings":
  {...}, "until_epoch": E, "until_step": S, "checkpoint": path}``, used up to step S of epoch E
  (0-based), where the run resumed from that checkpoint file with the settings that follow;
- ``"cloob_loss_state"`` (:data:`LOSS_STATE_KEY`): the training loss module's ``state_dict()`` when
  it is not empty, restored into the loss on ``--resume``. A loss with state (e.g. a memory of past
  batches) keeps it in buffers and it survives preemption with the weights; today's losses have
  none, so the entry is absent;
- ``"cloob_resume"`` (:data:`RESUME_KEY`): step checkpoints only, ``{"step": steps done in the
  epoch, "rng": every rank's random states}`` (see :mod:`training.reliability`).

Checkpoints written by earlier versions keep the settings inside the optimizer state
(``checkpoint["optimizer"]["cloob"]``); :func:`cloob_metadata` reads both places. The authors'
original checkpoints add ``model_config_file``, ``method`` and ``scheduler`` (see
:mod:`open_clip_cloob.convert`).

Reading never executes pickled code (``torch.load(weights_only=True)``) and tells a file that is not
a PyTorch checkpoint at all from a corrupt one and from one holding objects other than tensors.
Writing goes through a hidden, per-process temporary file next to the target, fsync and rename
(:func:`atomic_write`): a kill leaves the old file or the complete new one, never a truncated one.
"""
import contextlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Mapping, Optional, Union

import safetensors
import safetensors.torch
import torch

META_KEY = "cloob"
LOSS_STATE_KEY = "cloob_loss_state"
RESUME_KEY = "cloob_resume"
HISTORY_KEY = "cloob_settings_history"
OPENCLIP_KEYS = ("state_dict", "epoch", "name", "optimizer", "scaler")
ORIGINAL_KEYS = ("model_config_file", "method", "scheduler")
# Top-level entries a checkpoint may have; a reader refuses others rather than silently losing them.
KNOWN_TOP_LEVEL_KEYS = OPENCLIP_KEYS + ORIGINAL_KEYS + (META_KEY, LOSS_STATE_KEY, RESUME_KEY, HISTORY_KEY)

# Hidden and not *.pt, so that OpenCLIP's `--resume latest` glob never sees a file being written;
# the process id keeps ranks that write the same file (a cached download) out of each other's way.
PARTIAL_NAME = ".{name}.{pid}.partial"
PARTIAL_GLOB = ".*.partial"
# The pickled magic number that starts a torch.save file of the pre-1.6 (non-zip) format.
_LEGACY_TORCH_HEADER = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

_torch_save = torch.save  # captured at import: training.main makes torch.save itself call save_torch

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message names the file and the problem."""


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; ``path`` appears only once it is complete.

    The temporary file (:data:`PARTIAL_NAME`, next to ``path``) is fsynced and renamed over ``path``
    when the block ends normally, and removed when it raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(PARTIAL_NAME.format(name=path.name, pid=os.getpid()))
    try:
        yield partial
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_torch(obj: Any, f: Union[PathLike, IO[bytes]], *args: Any, **kwargs: Any) -> None:
    """``torch.save`` that writes a path atomically (:func:`atomic_write`); file objects go straight to it."""
    if not isinstance(f, (str, os.PathLike)):
        _torch_save(obj, f, *args, **kwargs)
        return
    with atomic_write(f) as partial:
        _torch_save(obj, partial, *args, **kwargs)


def load_torch(f: Union[PathLike, IO[bytes]], source: Optional[str] = None, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a path or a seekable binary file, with errors that name it.

    Raises:
        CheckpointError: ``f`` is not a ``torch.save`` file at all (not a torch zip archive nor the
            legacy format: another format, or truncated), is corrupt, or holds objects other than
            tensors and plain containers (unpickling them would run code; they are refused).
    """
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as file:
            return load_torch(file, source or os.fspath(f), map_location)
    source = source or getattr(f, "name", "<file>")
    start = f.tell()
    header = f.read(len(_LEGACY_TORCH_HEADER))
    f.seek(start)
    is_archive = zipfile.is_zipfile(f)
    f.seek(start)
    if not (is_archive or header == _LEGACY_TORCH_HEADER):
        raise CheckpointError(f"{source}: not a PyTorch checkpoint: the file is empty" if not header else
                              f"{source}: not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy "
                              "torch.save format): another kind of file, or one cut short")
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses every object that is not a tensor or a plain container: that is the
        # point (a downloaded file must not run code), so say so instead of suggesting a bypass.
        raise CheckpointError(
            f"{source}: refused to load: it holds objects other than tensors and plain containers, which "
            f"unpickling would build by running code (torch.load weights_only=True): {_first_line(error)}. "
            "Load only checkpoints written by training or conversion; re-save a trusted file's state_dict "
            "with torch.save.") from error
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{source}: corrupt or truncated PyTorch checkpoint: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def load_checkpoint_file(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint or weights file into a dict, without executing pickled code.

    ``.safetensors`` files come back as ``{"state_dict": tensors}`` plus ``{"cloob": meta}`` when
    their header has it; anything else goes through :func:`load_torch` and must hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    checkpoint = load_torch(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: expected a dict (a checkpoint or a state dict), got {type(checkpoint).__name__}")
    return checkpoint


def _load_safetensors(path: Path) -> Dict[str, Any]:
    try:
        checkpoint: Dict[str, Any] = {"state_dict": safetensors.torch.load_file(str(path), device="cpu")}
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from error
    if META_KEY in metadata:
        try:
            checkpoint[META_KEY] = json.loads(metadata[META_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: metadata field {META_KEY!r} is not valid JSON: {error}") from error
    return checkpoint


def cloob_metadata(checkpoint: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """The CLOOB settings and metadata of a checkpoint dict: its top-level ``"cloob"`` entry.

    Checkpoints written by earlier versions of ``training.main`` hold the settings in the optimizer
    state (``checkpoint["optimizer"]["cloob"]``); they are read from there, and a top-level entry
    wins. Every value must be a JSON scalar: they go into safetensors metadata and model cards.
    """
    optimizer = checkpoint.get("optimizer")
    places = ((f"optimizer[{META_KEY!r}]", optimizer.get(META_KEY) if isinstance(optimizer, Mapping) else None),
              (META_KEY, checkpoint.get(META_KEY)))
    found: Dict[str, Any] = {}
    for where, entry in places:
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise CheckpointError(f"{source}: {where} must be a dict of settings, got {type(entry).__name__}")
        for key, value in entry.items():
            if not isinstance(key, str) or not is_json_scalar(value):
                raise CheckpointError(
                    f"{source}: {where}[{key!r}] = {value!r} is not a plain number, string, bool or None")
        found.update(entry)
    return found


def is_json_scalar(value: Any) -> bool:
    """Whether ``value`` is None, a string, a number or a bool (a JSON scalar)."""
    return value is None or isinstance(value, (str, int, float, bool))


def save_converted(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: PathLike) -> Path:
    """Write converted weights with their CLOOB metadata, atomically.

    ``.safetensors``: the tensors plus ``meta`` as JSON in the metadata field ``cloob``; any other
    suffix: ``torch.save({"state_dict": ..., "cloob": meta})``. Both load with OpenCLIP's
    ``pretrained=`` and back through :func:`load_checkpoint_file`.
    """
    path = Path(path)
    with atomic_write(path) as partial:
        if path.suffix == ".safetensors":
            tensors = {key: value.contiguous() for key, value in state_dict.items()}
            metadata = {"format": "pt", META_KEY: json.dumps(dict(meta))}
            safetensors.torch.save_file(tensors, str(partial), metadata=metadata)
        else:
            _torch_save({"state_dict": dict(state_dict), META_KEY: dict(meta)}, partial)
    return path
