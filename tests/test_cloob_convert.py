"""Conversion of original CLOOB checkpoints (and our own) into OpenCLIP state dicts."""
import math
import re

import open_clip
import pytest
import torch

from cloob_checkpoints import (CLOOB_SETTINGS, encode, original_checkpoint, random_model, tiny_model_dir,
                               training_checkpoint)
import open_clip_cloob
from open_clip_cloob import convert, export
from open_clip_cloob.checkpoint import CheckpointError, load_checkpoint_file, save_converted
from open_clip_cloob.convert import convert_cloob_checkpoint, main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(local-dir model name, random tiny model) shared by the fast tests."""
    name = tiny_model_dir(tmp_path_factory.mktemp("tiny-config"))
    return name, random_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("model_name,config_file,image_size", [
    ("RN50-cloob", "RN50.json", 224),
    ("RN50x4-cloob", "RN50x4.json", 288),
])
def test_original_checkpoint_loads_into_open_clip_exactly(tmp_path, model_name, config_file, image_size):
    source = random_model(model_name)
    original = tmp_path / "cloob_epoch_28.pt"
    torch.save(original_checkpoint(source, config_file, hopfield_beta=8.0), original)
    converted = tmp_path / "converted.safetensors"

    meta = main([str(original), str(converted)])  # no --model: the architecture is detected

    assert meta["model"] == model_name
    assert meta["inv_tau"] == pytest.approx(30.0)
    assert meta["hopfield_beta"] == pytest.approx(8.0)
    assert (meta["epoch"], meta["name"], meta["source_format"]) == (28, "cloob_test_run", "original")
    loaded = open_clip.create_model(model_name, pretrained=str(converted)).eval()  # strict loading
    for expected, actual in zip(encode(source, image_size), encode(loaded, image_size)):
        assert torch.equal(expected, actual)
    del source, loaded


def test_dict_input_and_torch_output(tmp_path, tiny):
    name, model = tiny
    state_dict, meta = convert_cloob_checkpoint(original_checkpoint(model, "tiny.json", hopfield_beta=15.0), name)
    assert meta["hopfield_beta"] == pytest.approx(15.0) and meta["model"] == name
    assert state_dict.keys() == model.state_dict().keys()
    path = save_converted(state_dict, meta, tmp_path / "tiny.pt")
    loaded = open_clip.create_model(name).eval()
    open_clip.load_checkpoint(loaded, str(path))  # OpenCLIP's own strict loader reads the torch file
    for expected, actual in zip(encode(model, 64), encode(loaded, 64)):
        assert torch.equal(expected, actual)


def test_training_checkpoint_settings_round_trip(tmp_path, tiny):
    name, model = tiny
    state_dict, meta = convert_cloob_checkpoint(training_checkpoint(model, CLOOB_SETTINGS), name)
    assert meta["source_format"] == "open_clip"
    assert {key: meta[key] for key in CLOOB_SETTINGS} == CLOOB_SETTINGS
    assert (meta["epoch"], meta["name"]) == (3, "tiny-cloob")
    assert meta["inv_tau"] == pytest.approx(30.0)
    assert all(torch.equal(state_dict[key], value) for key, value in model.state_dict().items())

    converted = save_converted(state_dict, meta, tmp_path / "tiny.safetensors")
    again_state, again_meta = convert_cloob_checkpoint(converted)  # model name comes from the metadata
    assert again_meta == meta
    assert all(torch.equal(again_state[key], value) for key, value in state_dict.items())


@pytest.mark.parametrize("learnt", [{"logit_scale_hopfield": 2.5},
                                    {"logit_scale_hopfield": 2.5, "logit_scale_hopfield_text": 1.5}],
                         ids=["shared", "per-modality"])
def test_a_learnt_beta_becomes_metadata_and_the_weights_load_strictly(tmp_path, tiny, learnt):
    name, model = tiny
    checkpoint = training_checkpoint(model, {**CLOOB_SETTINGS, "learnable_hopfield_beta": "shared"})
    for key, log_beta in learnt.items():  # --learnable-hopfield-beta's model parameters, DDP-prefixed
        checkpoint["state_dict"][f"module.{key}"] = torch.tensor(log_beta)
    state_dict, meta = convert_cloob_checkpoint(checkpoint, name)
    assert state_dict.keys() == model.state_dict().keys()
    assert meta["hopfield_beta"] == pytest.approx(math.exp(2.5)) and meta["initial_hopfield_beta"] == 8.0
    assert meta.get("hopfield_beta_text") == (pytest.approx(math.exp(1.5)) if len(learnt) == 2 else None)
    folder = export.export_model_folder(checkpoint, tmp_path / "folder", name)
    card = (folder / export.MODEL_CARD_NAME).read_text()
    assert f"| Hopfield inverse temperature β (training loss only) | {math.exp(2.5):.6g} |" in card
    if len(learnt) == 2:
        assert f"| hopfield_beta_text | {math.exp(1.5):.6g} |" in card
    open_clip.create_model(f"local-dir:{folder}")  # strict: no log β among the weights


def test_training_checkpoint_without_settings(tiny):
    name, model = tiny
    _, meta = convert_cloob_checkpoint(training_checkpoint(model, None), name)
    assert meta["hopfield_beta"] is None and meta["inv_tau"] == pytest.approx(30.0)


def _tiny_original(tiny):
    return original_checkpoint(tiny[1], "tiny.json")


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c["state_dict"].update({"module.transformer.adapter.weight": torch.zeros(1)}),
     "unknown key 'transformer.adapter.weight'"),
    (lambda c: c.update({"args": "--lr 1e-3"}), "unknown top-level key 'args'"),
    (lambda c: c.update({"epoch": [28]}), "top-level 'epoch' = [28]"),
    (lambda c: c["state_dict"].update({"module.logit_inv_tau": torch.tensor(float("nan"))}), "'logit_scale'"),
    (lambda c: c["state_dict"].update({"module.logit_scale_hopfield": torch.zeros(2)}), "'logit_scale_hopfield'"),
    (lambda c: c["state_dict"].update({"module.logit_scale_hopfield": torch.tensor(1000.0)}),
     "'logit_scale_hopfield' = 1000.0 is too large a log scale"),
    (lambda c: c["state_dict"].update({"module.visual.proj": "weights"}), "entry 'module.visual.proj' is a str"),
    (lambda c: c.update({"cloob": {"hopfield_beta": [8.0]}}), "cloob['hopfield_beta'] = [8.0]"),
    (lambda c: c["optimizer"].update({"cloob": "beta=8"}), "optimizer['cloob'] must be a dict"),
], ids=["unknown-key", "unknown-top-level", "epoch-list", "nan-inv-tau", "beta-not-scalar", "beta-overflow",
        "not-a-tensor",
        "cloob-list", "optimizer-cloob-str"])
def test_refuses_what_it_does_not_understand(tiny, mutate, message):
    checkpoint = _tiny_original(tiny)
    mutate(checkpoint)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        convert_cloob_checkpoint(checkpoint, tiny[0])


def test_shape_mismatch_names_key_and_shapes(tiny):
    expected = (r"does not fit RN50-cloob: key 'positional_embedding' has shape \(77, 64\), "
                r"the model expects \(77, 512\)")
    with pytest.raises(CheckpointError, match=expected):
        convert_cloob_checkpoint(_tiny_original(tiny), "RN50-cloob")


def test_unknown_model_name(tiny):
    with pytest.raises(CheckpointError, match=r"unknown model 'RN51-cloob' \(CLOOB models: RN101-cloob, "):
        convert_cloob_checkpoint(_tiny_original(tiny), "RN51-cloob")


def test_undetectable_architecture_asks_for_model(tiny):
    with pytest.raises(CheckpointError, match=r"fit none of the CLOOB architectures .*--model"):
        convert_cloob_checkpoint(_tiny_original(tiny))


def test_never_executes_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")  # unpickling would create the marker file

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"module.logit_inv_tau": torch.zeros(())}, "epoch": Payload()}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: refused to load: it holds objects other than tensors"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        convert_cloob_checkpoint(tmp_path / "nope.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="tensor.pt: expected a dict"):
        convert_cloob_checkpoint(tmp_path / "tensor.pt")


def test_package_exports_the_public_functions():
    assert open_clip_cloob.convert_cloob_checkpoint is convert.convert_cloob_checkpoint
    assert open_clip_cloob.export_model_folder is export.export_model_folder
