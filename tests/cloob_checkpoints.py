"""Test helpers: CLOOB checkpoints in the authors' original layout, and tiny OpenCLIP models.

The original layout is written here independently of :mod:`open_clip_cloob.convert` (the reverse
of the key mapping the authors' checkpoints need), so the conversion tests check the mapping instead of restating it.
"""
import json
import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import open_clip
import torch

# OpenCLIP prefix -> the authors' original prefix.
_TO_ORIGINAL = (
    ("visual.", "visual."),
    ("transformer.", "transformer.transformer."),
    ("token_embedding.", "transformer.token_embedding."),
    ("positional_embedding", "transformer.positional_embedding"),
    ("ln_final.", "transformer.ln_final."),
    ("text_projection", "transformer.text_projection"),
    ("logit_scale", "logit_inv_tau"),
)

# A 64-px ViT with 2+2 layers of width 64: trains and evaluates in a fraction of a second on CPU.
# The CLOOB settings training.main records (training.params.CLOOB_SETTINGS), with the paper's values.
CLOOB_SETTINGS = {"loss": "cloob", "hopfield_beta": 8.0, "init_inv_tau": 30.0, "learnable_inv_tau": False,
                  "restart_cycles": 1}

TINY_MODEL_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "init_logit_scale": math.log(30.0),
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def to_original_key(key: str) -> str:
    for new, old in _TO_ORIGINAL:
        if key.startswith(new):
            return old + key[len(new):]
    raise KeyError(key)


def random_model(model_name: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model in eval mode whose every parameter and buffer is non-trivial.

    OpenCLIP zero-initialises some weights (e.g. each ResNet block's last BatchNorm gain) and starts
    BatchNorm statistics at 0/1; perturbing them makes a mix-up of such tensors visible in the outputs.
    """
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name == "logit_scale":
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise)
            else:
                tensor.add_(0.02 * (noise - 0.5))
    return model


def original_checkpoint(model: torch.nn.Module, model_config_file: str, hopfield_beta: float = 8.0) -> Dict:
    """The dict the reference implementation saved for ``model``: ``module.`` prefixes,
    ``logit_inv_tau`` (from the model's ``logit_scale``), ``logit_scale_hopfield`` = log β,
    ``model_config_file``, AdamW and LambdaLR states."""
    state_dict = {f"module.{to_original_key(key)}": value.clone() for key, value in model.state_dict().items()}
    state_dict["module.logit_scale_hopfield"] = torch.tensor(math.log(hopfield_beta))
    optimizer = stepped_adamw(model)
    return {
        "epoch": 28,
        "name": "cloob_test_run",
        "state_dict": state_dict,
        "optimizer": optimizer.state_dict(),
        "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict(),
        "model_config_file": model_config_file,
    }


def stepped_adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    """A real AdamW after one step (on two small tensors, to keep files small)."""
    params = [torch.nn.Parameter(model.logit_scale.detach().clone()),
              torch.nn.Parameter(model.ln_final.weight.detach().clone())]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return optimizer


def tiny_model_dir(root: Path) -> str:
    """A folder holding only ``open_clip_config.json`` for :data:`TINY_MODEL_CFG`; returns its ``local-dir:`` name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_MODEL_CFG}))
    return f"local-dir:{root}"


def training_checkpoint(model: torch.nn.Module, settings: Optional[Dict]) -> Dict:
    """What ``training.main`` saves under DDP: OpenCLIP's dict (``module.`` keys, optimizer, scaler)
    with the CLOOB settings as the top-level entry ``"cloob"``, unless ``settings`` is None."""
    checkpoint = {
        "epoch": 3,
        "name": "tiny-cloob",
        "state_dict": {f"module.{key}": value.clone() for key, value in model.state_dict().items()},
        "optimizer": stepped_adamw(model).state_dict(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
    }
    if settings is not None:
        checkpoint["cloob"] = dict(settings)
    return checkpoint


def encode(model: torch.nn.Module, image_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``encode_image`` of two fixed random images and ``encode_text`` of two captions."""
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("RN50-cloob")(["a photo of a trouser.", "a sneaker on a dark background."])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)
