"""Export a CLOOB checkpoint to OpenCLIP's model-folder format.

::

    python -m open_clip_cloob.export CKPT --model RN50-cloob --out DIR
    python -m open_clip_cloob.export CKPT --add-model-config my-vit.json --model my-vit --out DIR

``CKPT`` is one of our training checkpoints, a converted file or an original checkpoint of the
authors (anything :func:`open_clip_cloob.convert.convert_cloob_checkpoint` reads). ``DIR`` receives

- ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ...}`` written by OpenCLIP's
  own ``save_config_for_hf``;
- ``open_clip_model.safetensors``: the weights, with the CLOOB metadata in the safetensors header;
- ``README.md``: a short model card: CLOOB or CLIP (by the checkpoint's recorded ``loss``), how to
  load it, the recorded settings.

Unchanged OpenCLIP tools then load the folder: ``open_clip.create_model('local-dir:DIR')``,
``python -m open_clip_train.main --model local-dir:DIR``, ``clip_benchmark eval --model local-dir:DIR``;
uploaded to the Hugging Face Hub, the same files serve ``hf-hub:ORG/REPO``.
"""
import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import open_clip
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.push_to_hf_hub import save_config_for_hf

from . import cli
from .checkpoint import save_converted
from .convert import PathOrDict, add_model_arguments, convert_cloob_checkpoint, meta_model
from .registry import add_model_configs

_logger = logging.getLogger(__name__)

MODEL_CARD_NAME = "README.md"

# Metadata rows of the model card, in this order; other metadata keys follow alphabetically.
_CARD_ROWS = (
    ("model", "OpenCLIP architecture"),
    ("inv_tau", "inverse temperature 1/τ (exp of logit_scale)"),
    ("hopfield_beta", "Hopfield inverse temperature β (training loss only)"),
    ("epoch", "epoch"),
    ("name", "run name"),
    ("source_format", "source layout"),
    ("url", "source URL"),
)
_CARD_KEYS = frozenset(key for key, _ in _CARD_ROWS)


def export_model_folder(
        checkpoint: PathOrDict,
        out_dir: Union[str, os.PathLike],
        model_name: Optional[str] = None,
) -> Path:
    """Write ``checkpoint`` as an OpenCLIP model folder (config, safetensors weights, model card).

    Args:
        checkpoint: any checkpoint :func:`convert_cloob_checkpoint` reads, as a path or a dict.
        out_dir: the folder to write (created; the three files are overwritten).
        model_name: OpenCLIP model name the weights must fit; detected when omitted.

    Returns:
        ``out_dir``, for ``open_clip.create_model(f"local-dir:{out_dir}")``.
    """
    state_dict, meta = convert_cloob_checkpoint(checkpoint, model_name=model_name)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # A meta-device model is enough for the config: OpenCLIP reads sizes and preprocessing from it.
    save_config_for_hf(meta_model(meta["model"]), out_dir / HF_CONFIG_NAME, open_clip.get_model_config(meta["model"]))
    save_converted(state_dict, meta, out_dir / HF_SAFE_WEIGHTS_NAME)
    source = checkpoint if not isinstance(checkpoint, Mapping) else None
    (out_dir / MODEL_CARD_NAME).write_text(model_card(meta, out_dir, source), encoding="utf-8")
    _logger.info("exported %s to %s: load it with model name 'local-dir:%s'", meta["model"], out_dir, out_dir)
    return out_dir


def model_card(meta: Mapping[str, Any], out_dir: Path, source: Optional[Union[str, os.PathLike]] = None) -> str:
    """A short Markdown model card: what the model is, how to load it, the settings it was trained with.

    A checkpoint trained with ``--loss clip`` (OpenCLIP's objective) is a CLIP model and its card
    says so, without the Hopfield β (unused by that run); any other checkpoint is a CLOOB model (or
    one of its ablations, named by its ``loss``).
    """
    clip = meta.get("loss") == "clip"
    rows = [(label, meta.get(key)) for key, label in _CARD_ROWS if not (clip and key == "hopfield_beta")]
    rows += [(key, meta[key]) for key in sorted(meta) if key not in _CARD_KEYS]
    table = "\n".join(f"| {label} | {_format_value(value)} |" for label, value in rows)
    origin = f" from `{Path(source).name}`" if source is not None else ""
    if clip:
        kind, tags = "CLIP", "- clip"
        summary = ("A CLIP model trained with OpenCLIP's own objective (`--loss clip`, e.g. the baseline of a "
                   f"CLOOB run), exported by `open_clip_cloob`{origin}.")
    else:
        kind, tags = "CLOOB", "- clip\n- cloob"
        variant = meta.get("loss", "cloob")
        trained = ("A CLOOB model (modern Hopfield networks with InfoLOOB; Fürst et al., NeurIPS 2022)" if variant == "cloob"
                   else f"A model trained with `--loss {variant}`, an ablation of CLOOB (Fürst et al., NeurIPS 2022)")
        summary = (f"{trained}, exported by `open_clip_cloob`{origin}. At inference a CLOOB model is a CLIP model: the Hopfield "
                   "retrieval is part of the training loss only, so every OpenCLIP tool uses it unchanged.")
    return f"""---
library_name: open_clip
tags:
{tags}
- zero-shot-image-classification
---
# {meta['model']} ({kind})

{summary}

```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{out_dir}")
tokenizer = open_clip.get_tokenizer("local-dir:{out_dir}")
```

## Training settings

| | |
|---|---|
{table}
"""


def _format_value(value: Any) -> str:
    if value is None:
        return "not recorded in the checkpoint"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The exporter's command line (``checkpoint --out DIR [--model NAME]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_cloob.export",
        description="Export a CLOOB checkpoint (ours, converted or original) to OpenCLIP's model-folder format.",
    )
    parser.add_argument("checkpoint", help="training checkpoint, converted file or original CLOOB checkpoint")
    parser.add_argument("--out", required=True, help="output folder (load it with --model local-dir:OUT)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Command-line entry point; returns the written folder."""
    args = parse_args(argv)
    add_model_configs(args.add_model_config)
    return export_model_folder(args.checkpoint, args.out, model_name=args.model)


if __name__ == "__main__":
    sys.exit(cli.run(main, "python -m open_clip_cloob.export"))
