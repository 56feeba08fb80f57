"""Checkpoint files (:mod:`open_clip_cloob.checkpoint`) and how the command-line tools fail on bad ones.

- A file that is not a checkpoint at all, a corrupt one and one whose unpickling would run code each
  get their own error; the tools print it as one line naming the file, not a traceback.
- A checkpoint of earlier versions (settings inside the optimizer state, ``tests/data/legacy_checkpoint``,
  written by the code of that time) still converts, exports and resumes.
- Training checkpoints carry CLOOB's entries at the top level; a loss with state gets it back on resume.
"""
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch

from cloob_checkpoints import CLOOB_SETTINGS, random_model, tiny_model_dir, training_checkpoint
from conftest import TESTS_DIR, TINY_MODEL, TINY_MODEL_CONFIG, run_training, training_argv
from open_clip_cloob import CloobLoss, benchmark, cli, convert, export
from open_clip_cloob.checkpoint import (CheckpointError, atomic_write, load_checkpoint_file, load_torch,
                                        save_converted)
from training import openclip_hooks
from training.params import cloob_settings, parse_args

LEGACY = TESTS_DIR / "data" / "legacy_checkpoint"
LEGACY_CHECKPOINT = LEGACY / "epoch_1.pt"
MICRO_MODEL = "micro-test-vit-cloob"
MICRO_CONFIG = LEGACY / f"{MICRO_MODEL}.json"
LEGACY_SETTINGS = {"loss": "cloob", "hopfield_beta": 14.3, "init_inv_tau": 50.0, "learnable_inv_tau": False,
                   "restart_cycles": 1}
# Top-level modules that only the extras install: `pip install .` alone has none of them.
EXTRA_MODULES = ("webdataset", "braceexpand", "pandas", "clip_benchmark", "matplotlib", "tensorboard")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")  # unpickling would create the marker file


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _zip_of_text() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


BAD_FILES = {  # name: (content, start of the error after "PATH: ")
    "random": (lambda: os.urandom(1000), "not a PyTorch checkpoint (neither a torch.save zip archive"),
    "empty": (lambda: b"", "not a PyTorch checkpoint: the file is empty"),
    "truncated": (lambda: _torch_bytes({"w": torch.zeros(1000)})[:2000], "not a PyTorch checkpoint (neither"),
    "other-zip": (_zip_of_text, "corrupt or truncated PyTorch checkpoint"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path, kind):
    content, message = BAD_FILES[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(content())
    with pytest.raises(CheckpointError, match=f"^{path}: {message}".replace("(", r"\(")):
        load_checkpoint_file(path)


def test_an_unsafe_pickle_is_refused_without_running_it_and_told_apart(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "epoch": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match=f"^{path}: refused to load: it holds objects other than tensors"):
        load_torch(path)
    assert not marker.exists()


def _tool_error(capsys, main, prog: str, argv) -> str:
    """The stderr of ``cli.run`` (what ``python -m prog`` does) on ``argv``; asserts status 1 and one line."""
    assert cli.run(lambda: main(argv), prog) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def test_convert_and_export_end_on_one_line_naming_file_and_problem(tmp_path, capsys):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(1000))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "epoch": _Exploit(tmp_path / "marker")}, unsafe)
    prog = "python -m open_clip_cloob.convert"
    assert _tool_error(capsys, convert.main, prog, [str(random_bytes), str(tmp_path / "out.safetensors")]) == (
        f"{prog}: error: {random_bytes}: not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy "
        "torch.save format): another kind of file, or one cut short")
    assert _tool_error(capsys, convert.main, prog, [str(unsafe), str(tmp_path / "out.safetensors")]).startswith(
        f"{prog}: error: {unsafe}: refused to load: it holds objects other than tensors")
    prog = "python -m open_clip_cloob.export"
    assert _tool_error(capsys, export.main, prog, [str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == (
        f"{prog}: error: checkpoint {tmp_path / 'missing.pt'} does not exist")
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "marker").exists()


def test_the_library_and_its_converter_work_without_any_extra(tmp_path):
    """``python -m open_clip_cloob.convert`` on 1,000 random bytes, in a process where no extra is installed."""
    site = tmp_path / "site"
    site.mkdir()
    # As if `pip install .` without extras: importing any of these fails.
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({EXTRA_MODULES!r}))\n")
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(os.urandom(1000))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "open_clip_cloob.convert", str(random_bytes), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 1
    assert completed.stderr == (f"python -m open_clip_cloob.convert: error: {random_bytes}: not a PyTorch checkpoint "
                                "(neither a torch.save zip archive nor the legacy torch.save format): another kind "
                                "of file, or one cut short\n")


def _hide(monkeypatch, *modules: str) -> None:
    """Make importing ``modules`` (and re-importing what imported them) fail, as if not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules or name in ("open_clip_train.main", "open_clip_train.data"):
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_tool_whose_extra_is_missing_names_the_extra(monkeypatch, capsys):
    _hide(monkeypatch, "clip_benchmark", "webdataset")
    prog = "python -m open_clip_cloob.benchmark"
    assert _tool_error(capsys, benchmark.main, prog, ["eval", "--dataset", "dummy"]) == (
        f"{prog}: error: {prog} runs CLIP_benchmark: clip_benchmark.cli is not installed; "
        "pip install 'open_clip_cloob[eval]'")
    from training import main as training_main

    prog = "python -m training.main"
    assert _tool_error(capsys, training_main.main, prog, ["--model", "RN50-cloob", "--train-data", "x.csv"]) == (
        f"{prog}: error: {prog} runs OpenCLIP's training: webdataset is not installed; "
        "pip install 'open_clip_cloob[train]'")


def test_atomic_write_replaces_only_a_complete_file(tmp_path):
    path = tmp_path / "epoch_1.pt"
    path.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path) as partial:
            partial.write_text("half")
            raise OSError("disk full")
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]
    with atomic_write(path) as partial:
        assert partial.name == f".epoch_1.pt.{os.getpid()}.partial"  # hidden, not *.pt: --resume latest skips it
        partial.write_text("new")
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == [path]


@pytest.fixture(scope="module")
def micro_model() -> str:
    open_clip.add_model_config(MICRO_CONFIG)
    return MICRO_MODEL


def test_a_checkpoint_of_earlier_versions_converts_and_exports(micro_model, tmp_path):
    legacy = torch.load(LEGACY_CHECKPOINT, weights_only=True)
    assert legacy["optimizer"]["cloob"] == LEGACY_SETTINGS and "cloob" not in legacy  # the old layout
    state_dict, meta = convert.convert_cloob_checkpoint(LEGACY_CHECKPOINT, micro_model)
    assert {key: meta[key] for key in LEGACY_SETTINGS} == LEGACY_SETTINGS
    assert (meta["model"], meta["epoch"], meta["name"]) == (micro_model, 1, "legacy")
    assert meta["source_format"] == "open_clip"
    assert meta["inv_tau"] == pytest.approx(50.0)
    assert all(torch.equal(state_dict[key], value) for key, value in legacy["state_dict"].items())

    # The exporter registers the model's config itself (--add-model-config).
    folder = export.main([str(LEGACY_CHECKPOINT), "--add-model-config", str(MICRO_CONFIG), "--model", micro_model,
                          "--out", str(tmp_path / "export")])
    card = (folder / "README.md").read_text()
    assert f"# {micro_model} (CLOOB)" in card
    assert "| Hopfield inverse temperature β (training loss only) | 14.3 |" in card
    model = open_clip.create_model(f"local-dir:{folder}")
    assert all(torch.equal(model.state_dict()[key], value) for key, value in legacy["state_dict"].items())


@pytest.mark.slow
def test_a_checkpoint_of_earlier_versions_resumes_and_is_saved_in_the_new_layout(tmp_path, fashion_mnist_data):
    argv = training_argv(
        tmp_path, "resumed", "--train-data", str(fashion_mnist_data["small_csv"]), "--batch-size", "64",
        "--epochs", "2", "--lr", "1e-3", "--warmup", "1", "--hopfield-beta", "14.3", "--init-inv-tau", "50",
        "--lock-text", "--lock-text-freeze-layer-norm", "--resume", str(LEGACY_CHECKPOINT))
    argv[argv.index(str(TINY_MODEL_CONFIG))] = str(MICRO_CONFIG)  # the legacy checkpoint's model
    argv[argv.index(TINY_MODEL)] = MICRO_MODEL
    run_training(argv, tmp_path / "resumed.stdout")
    log = (tmp_path / "resumed" / "out.log").read_text()
    assert f"=> resuming checkpoint '{LEGACY_CHECKPOINT}' (epoch 1)" in log
    assert "Start epoch 1" in log and "Start epoch 0" not in log
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "epoch_2.pt", weights_only=True)
    # Settings added since (the remedy flags, off here) join the legacy ones.
    assert saved["cloob"] == {**LEGACY_SETTINGS, "hopfield_beta_from_spread": None, "hopfield_warmin": 0,
                              "learnable_hopfield_beta": None} and "cloob" not in saved["optimizer"]


def test_a_step_checkpoint_converts(tmp_path):
    name = tiny_model_dir(tmp_path / "config")
    checkpoint = training_checkpoint(random_model(name), CLOOB_SETTINGS)
    checkpoint["cloob_resume"] = {"step": 7, "rng": [{"torch": [0]}]}
    _, meta = convert.convert_cloob_checkpoint(checkpoint, name)
    assert meta["epoch"] == 3 and meta["hopfield_beta"] == 8.0


class _MemoryLoss(CloobLoss):
    """A CLOOB loss with state (a memory of past batches would be such a buffer)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("memory", torch.zeros(3, 2))


def test_the_loss_state_and_settings_survive_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(openclip_hooks, "create_loss", lambda args: _MemoryLoss())
    args = parse_args(["--model", "RN50-cloob", "--train-data", "x.csv", "--hopfield-beta", "15",
                       "--no-hopfield-monitor"])  # no OpenCLIP runtime (world size) here
    run = openclip_hooks.Run(args)
    run.create_loss(args).memory.copy_(torch.arange(6.0).view(3, 2))
    path = tmp_path / "epoch_1.pt"
    run.save({"epoch": 1, "name": "run", "state_dict": {}, "optimizer": {}}, path)  # OpenCLIP's checkpoint dict
    run.save({"other": torch.ones(1)}, tmp_path / "other.pt")  # anything else: saved as it is

    saved = torch.load(path, weights_only=True)
    assert saved["cloob"] == cloob_settings(args) and saved["cloob"]["hopfield_beta"] == 15.0
    assert torch.equal(saved["cloob_loss_state"]["memory"], torch.arange(6.0).view(3, 2))
    assert torch.load(tmp_path / "other.pt", weights_only=True).keys() == {"other"}
    resumed = openclip_hooks.Run(args)
    resumed.pt_load(str(path))  # --resume: OpenCLIP loads the checkpoint before it creates the loss
    assert torch.equal(resumed.create_loss(args).memory, torch.arange(6.0).view(3, 2))
    # A checkpoint of a loss without state has no loss entry.
    monkeypatch.setattr(openclip_hooks, "create_loss", lambda args: CloobLoss())
    stateless = openclip_hooks.Run(args)
    stateless.create_loss(args)
    assert stateless.checkpoint_entries().keys() == {"cloob"}


def test_converted_files_round_trip_their_metadata(tmp_path):
    tensors = {"w": torch.arange(4.0)}
    for suffix in (".safetensors", ".pt"):
        path = save_converted(tensors, {"hopfield_beta": 8.0, "model": "m"}, tmp_path / f"w{suffix}")
        loaded = load_checkpoint_file(path)
        assert torch.equal(loaded["state_dict"]["w"], tensors["w"]) and loaded["cloob"]["hopfield_beta"] == 8.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt", "w.safetensors"]  # no temporary file left
