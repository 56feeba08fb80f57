"""The CLOOB model configs in OpenCLIP's factory."""
import importlib
import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import QuickGELU

import open_clip_cloob
from open_clip_cloob import list_cloob_models, register_model_configs
from open_clip_cloob.registry import MODEL_CONFIG_DIR

EXPECTED = {  # name: (embed_dim, image_size, text width, built-in OpenAI architecture it must equal)
    "RN50-cloob": (1024, 224, 512, "RN50-quickgelu"),
    "RN101-cloob": (512, 224, 512, "RN101-quickgelu"),
    "RN50x4-cloob": (640, 288, 640, "RN50x4-quickgelu"),
    "RN50x16-cloob": (768, 384, 768, "RN50x16-quickgelu"),
    "ViT-B-32-cloob": (512, 224, 512, "ViT-B-32-quickgelu"),
    "ViT-B-16-cloob": (512, 224, 512, "ViT-B-16-quickgelu"),
}
BUILTIN_CONFIG_DIR = Path(open_clip.__file__).parent / "model_configs"


def test_every_cloob_model_is_listed():
    assert list_cloob_models() == sorted(EXPECTED)
    assert set(EXPECTED) <= set(open_clip.list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_is_the_openai_architecture_with_quickgelu_and_inv_tau_30(name):
    ours = open_clip.get_model_config(name)
    builtin = json.loads((BUILTIN_CONFIG_DIR / f"{EXPECTED[name][3]}.json").read_text())
    assert ours["quick_gelu"] is True
    assert ours["init_logit_scale"] == pytest.approx(math.log(30.0), abs=1e-12)
    assert {k: v for k, v in ours.items() if k != "init_logit_scale"} == builtin


def test_no_builtin_config_is_shadowed():
    builtin = {p.stem: json.loads(p.read_text()) for p in BUILTIN_CONFIG_DIR.glob("*.json")}
    assert len(builtin) > 100 and not set(builtin) & set(EXPECTED)
    for name, cfg in builtin.items():
        if {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            assert open_clip.get_model_config(name) == cfg, name


def test_registration_is_idempotent():
    from open_clip import factory
    paths_before = list(factory._MODEL_CONFIG_PATHS)
    models_before = open_clip.list_models()
    register_model_configs()
    register_model_configs()
    importlib.reload(open_clip_cloob)
    assert factory._MODEL_CONFIG_PATHS == paths_before
    assert open_clip.list_models() == models_before
    assert factory._MODEL_CONFIG_PATHS.count(MODEL_CONFIG_DIR) == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_builds_and_runs_forward(name):
    embed_dim, image_size, text_width, _ = EXPECTED[name]
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    assert model.logit_scale.exp().item() == pytest.approx(30.0, rel=1e-6)
    assert any(isinstance(m, QuickGELU) for m in model.transformer.modules())
    assert any(isinstance(m, QuickGELU) for m in model.visual.modules()) or name.startswith("RN")
    assert model.visual.image_size in (image_size, (image_size, image_size))
    assert preprocess.transforms[0].size == image_size
    assert model.token_embedding.weight.shape[1] == text_width

    tokens = tokenizer(["a photo of a cat", "a dog"])
    assert tokens.shape == (2, 77)
    with torch.no_grad():
        image_features, text_features, logit_scale = model(torch.randn(1, 3, image_size, image_size), tokens)
    assert image_features.shape == (1, embed_dim)
    assert text_features.shape == (2, embed_dim)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(logit_scale, torch.tensor(30.0))
