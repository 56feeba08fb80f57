"""Export to OpenCLIP's model-folder format, and the unchanged OpenCLIP tools loading the folder."""
import json
import subprocess
import sys

import open_clip
import pytest
import safetensors
import torch

from cloob_checkpoints import (CLOOB_SETTINGS, TINY_MODEL_CFG, encode, original_checkpoint, random_model,
                               tiny_model_dir, training_checkpoint)
from open_clip_cloob import export
from open_clip_cloob.checkpoint import load_checkpoint_file
from cloob_tools.data import write_fashion_mnist_dataset


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-config"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_name):
    """(source model, folder) for a training checkpoint of a random tiny model, exported by the CLI."""
    root = tmp_path_factory.mktemp("export")
    source = random_model(tiny_name)
    checkpoint = root / "epoch_3.pt"
    torch.save(training_checkpoint(source, CLOOB_SETTINGS), checkpoint)
    return source, export.main([str(checkpoint), "--model", tiny_name, "--out", str(root / "tiny-cloob")])


def test_folder_has_config_weights_and_model_card(exported):
    _, folder = exported
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"] == TINY_MODEL_CFG
    assert config["preprocess_cfg"] == {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                        "std": list(open_clip.OPENAI_DATASET_STD),
                                        "interpolation": "bicubic", "resize_mode": "shortest"}
    with safetensors.safe_open(str(folder / "open_clip_model.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["cloob"])
    assert {key: meta[key] for key in CLOOB_SETTINGS} == CLOOB_SETTINGS
    card = (folder / "README.md").read_text()
    assert "| Hopfield inverse temperature β (training loss only) | 8 |" in card
    assert "| inverse temperature 1/τ (exp of logit_scale) | 30 |" in card
    assert "| learnable_inv_tau | False |" in card
    assert f'create_model_and_transforms("local-dir:{folder}")' in card


def test_create_model_loads_the_folder(exported):
    source, folder = exported
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    for expected, actual in zip(encode(source, 64), encode(model, 64)):
        assert torch.equal(expected, actual)
    assert preprocess.transforms[0].size == 64


def test_original_checkpoint_exports(tmp_path, tiny_name):
    source = random_model(tiny_name, seed=3)
    checkpoint = tmp_path / "cloob_tiny_epoch_28.pt"
    torch.save(original_checkpoint(source, "tiny.json", hopfield_beta=14.3), checkpoint)
    folder = export.export_model_folder(checkpoint, tmp_path / "out", model_name=tiny_name)
    model = open_clip.create_model(f"local-dir:{folder}").eval()
    for expected, actual in zip(encode(source, 64), encode(model, 64)):
        assert torch.equal(expected, actual)
    card = (folder / "README.md").read_text()
    assert "| Hopfield inverse temperature β (training loss only) | 14.3 |" in card
    assert "from `cloob_tiny_epoch_28.pt`" in card and "| source layout | original |" in card


def test_a_clip_run_exports_as_clip(tmp_path, tiny_name):
    settings = {**CLOOB_SETTINGS, "loss": "clip", "init_inv_tau": None, "learnable_inv_tau": True}
    folder = export.export_model_folder(training_checkpoint(random_model(tiny_name), settings), tmp_path / "clip",
                                        tiny_name)
    card = (folder / "README.md").read_text()
    assert f"# {tiny_name} (CLIP)" in card and "A CLIP model trained with OpenCLIP's own objective" in card
    assert "CLOOB model" not in card and "Hopfield" not in card and "- cloob" not in card
    assert "| loss | clip |" in card


def test_an_ablation_run_names_its_loss(tmp_path, tiny_name):
    settings = {**CLOOB_SETTINGS, "loss": "infoloob"}
    folder = export.export_model_folder(training_checkpoint(random_model(tiny_name), settings), tmp_path / "ablation",
                                        tiny_name)
    card = (folder / "README.md").read_text()
    assert "A model trained with `--loss infoloob`, an ablation of CLOOB" in card and "A CLOOB model" not in card


def _train(module, model, train_csv, logs, *extra):
    """One epoch of two steps on 16 Fashion-MNIST images; returns the checkpoint's state dict."""
    subprocess.run(
        [sys.executable, "-m", module, "--model", model, "--train-data", str(train_csv), "--dataset-type", "csv",
         "--batch-size", "8", "--epochs", "1", "--lr", "1e-5", "--warmup", "1", "--workers", "0",
         "--precision", "fp32", "--logs", str(logs), "--name", "run", "--seed", "0", *extra],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return load_checkpoint_file(logs / "run" / "checkpoints" / "epoch_1.pt")


def _assert_close_to(state_dict, folder):
    """Trained weights are a few 1e-5 steps from the folder's: training started from the folder."""
    start = open_clip.create_model(f"local-dir:{folder}").state_dict()
    trained = {key.removeprefix("module."): value for key, value in state_dict.items()}
    assert trained.keys() == start.keys()
    assert 0 < max((trained[key] - start[key]).abs().max().item() for key in start) < 1e-3


@pytest.mark.slow
def test_training_runs_from_exported_folders_and_exports_again(exported, tiny_name, tmp_path, fashion_mnist_available):
    _, folder = exported
    train_csv = write_fashion_mnist_dataset(tmp_path / "data", "train", 16, fmt="csv")

    # Our training entry point, from the exported folder, then its checkpoint exported again.
    checkpoint = _train("training.main", f"local-dir:{folder}", train_csv, tmp_path / "cloob-logs", "--loss", "cloob")
    _assert_close_to(checkpoint["state_dict"], folder)
    again = export.main([str(tmp_path / "cloob-logs/run/checkpoints/epoch_1.pt"), "--model", tiny_name,
                         "--out", str(tmp_path / "again")])
    card = (again / "README.md").read_text()
    assert "| Hopfield inverse temperature β (training loss only) | 8 |" in card and "| loss | cloob |" in card
    assert "| epoch | 1 |" in card

    # OpenCLIP's unchanged training loads the re-exported folder.
    checkpoint = _train("open_clip_train.main", f"local-dir:{again}", train_csv, tmp_path / "openclip-logs")
    _assert_close_to(checkpoint["state_dict"], again)
