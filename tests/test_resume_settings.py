"""``--resume`` keeps the CLOOB settings a run started with (:func:`training.reliability.resumed_settings_history`).

- Functions: the comparison of recorded and current settings, the refusal naming every changed
  setting with both values, ``--allow-changed-settings`` and the settings history it records, the
  checkpoints of earlier versions (settings in the optimizer state, or none at all).
- A real run, preempted inside its epoch and reported to tensorboard and to wandb (offline): resumed
  with another β it stops before any step, naming the change, and leaves its checkpoints as they
  were; with ``--allow-changed-settings`` it continues with the new β (the Hopfield diagnostics in
  the wandb files show it, at the resumed step numbers) and its checkpoint records the history.
  (The SLURM job resubmitted with changed flags after a preemption: tests/test_slurm.py.)
"""
import json
import logging
import os
import signal
import struct
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import torch

from cloob_checkpoints import random_model, tiny_model_dir, training_checkpoint
from conftest import launch, small_csv_argv, wait_for_training_progress, wait_ok
from open_clip_cloob import convert
from open_clip_cloob.checkpoint import HISTORY_KEY
from training import openclip_hooks
from training.params import cloob_settings, parse_args
from training.reliability import (PREEMPTED_EXIT_CODE, RESUME_KEY, ChangedSettingsError, changed_settings,
                                  resumed_settings_history)

SETTINGS = {"loss": "cloob", "hopfield_beta": 8.0, "hopfield_beta_from_spread": None, "hopfield_warmin": 0,
            "learnable_hopfield_beta": None, "init_inv_tau": 30.0, "learnable_inv_tau": False, "restart_cycles": 1}


def _checkpoint(settings: Dict, **entries) -> Dict:
    return {"epoch": 2, "state_dict": {}, "optimizer": {}, "cloob": dict(settings), **entries}


def test_only_settings_the_checkpoint_records_and_that_differ_are_changes():
    assert changed_settings(SETTINGS, SETTINGS) == []
    current = {**SETTINGS, "hopfield_beta": 16.0, "learnable_inv_tau": True}
    assert changed_settings(SETTINGS, current) == [("hopfield_beta", 8.0, 16.0), ("learnable_inv_tau", False, True)]
    older = {key: value for key, value in SETTINGS.items() if key != "hopfield_beta_from_spread"}
    assert changed_settings(older, {**SETTINGS, "hopfield_beta_from_spread": 2.0}) == []  # not recorded then


def test_a_changed_setting_stops_the_resume_naming_each_change():
    current = {**SETTINGS, "loss": "infoloob", "init_inv_tau": 20.0}
    with pytest.raises(ChangedSettingsError) as error:
        resumed_settings_history(_checkpoint(SETTINGS), "runs/a/epoch_2.pt", current, allow_changes=False)
    assert str(error.value) == (
        "runs/a/epoch_2.pt was trained with other CLOOB settings than this command line's: loss 'cloob' in the "
        "checkpoint, 'infoloob' now; init_inv_tau 30.0 in the checkpoint, 20.0 now. Resume with the checkpoint's "
        "values, or add --allow-changed-settings to continue with the new ones (the checkpoints then keep the old "
        "ones in their settings history)")


def test_allowed_changes_are_logged_and_join_the_history(caplog):
    earlier = [{"settings": {**SETTINGS, "hopfield_beta": 4.0}, "until_epoch": 1, "until_step": 0,
                "checkpoint": "epoch_1.pt"}]
    checkpoint = _checkpoint(SETTINGS, **{RESUME_KEY: {"step": 7, "rng": []}, HISTORY_KEY: earlier})
    current = {**SETTINGS, "hopfield_beta": 16.0}
    with caplog.at_level(logging.WARNING):
        history = resumed_settings_history(checkpoint, "epoch_2_step_7.pt", current, allow_changes=True)
    assert history == earlier + [{"settings": SETTINGS, "until_epoch": 2, "until_step": 7,
                                  "checkpoint": "epoch_2_step_7.pt"}]
    assert "with changed CLOOB settings (--allow-changed-settings): hopfield_beta 8.0 in the checkpoint, 16.0 now" \
        in caplog.text
    # Unchanged settings carry the history on.
    assert resumed_settings_history(checkpoint, "x.pt", SETTINGS, allow_changes=False) == earlier


def test_checkpoints_of_earlier_versions_are_checked_where_they_can_be(caplog):
    legacy = {"epoch": 1, "state_dict": {}, "optimizer": {"cloob": {"loss": "cloob", "hopfield_beta": 14.3}}}
    with pytest.raises(ChangedSettingsError, match="hopfield_beta 14.3 in the checkpoint, 8.0 now"):
        resumed_settings_history(legacy, "legacy.pt", SETTINGS, allow_changes=False)
    with caplog.at_level(logging.INFO):
        assert resumed_settings_history(legacy, "legacy.pt", {**SETTINGS, "hopfield_beta": 14.3}, False) == []
        assert resumed_settings_history({"epoch": 1, "state_dict": {}}, "openclip.pt", SETTINGS, False) == []
    assert ("legacy.pt does not record hopfield_beta_from_spread, hopfield_warmin, learnable_hopfield_beta, "
            "init_inv_tau") in caplog.text
    assert "openclip.pt records no CLOOB settings: the command line's are not checked against it" in caplog.text


def test_a_run_resumed_with_allowed_changes_writes_the_history_and_it_converts(tmp_path):
    path = tmp_path / "epoch_2.pt"
    torch.save(_checkpoint(SETTINGS), path)
    args = parse_args(["--model", "RN50-cloob", "--train-data", "x.csv", "--hopfield-beta", "16",
                       "--allow-changed-settings", "--no-hopfield-monitor"])
    run = openclip_hooks.Run(args)
    run.pt_load(str(path))
    entries = run.checkpoint_entries()
    assert entries["cloob"] == cloob_settings(args) and entries["cloob"]["hopfield_beta"] == 16.0
    assert entries[HISTORY_KEY] == [{"settings": SETTINGS, "until_epoch": 2, "until_step": 0, "checkpoint": str(path)}]
    # A checkpoint with a history is a known layout: conversion and export read it.
    name = tiny_model_dir(tmp_path / "config")
    _, meta = convert.convert_cloob_checkpoint({**training_checkpoint(random_model(name), entries["cloob"]),
                                                HISTORY_KEY: entries[HISTORY_KEY]}, name)
    assert meta["hopfield_beta"] == 16.0


# --- A real run -------------------------------------------------------------------------------------

BATCH_SIZE = 16  # small_csv_argv
STEPS = 512 // BATCH_SIZE
TIMEOUT_S = 300


def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a wandb ``.wandb`` file: a 7-byte header, then LevelDB-log blocks of 32 KiB
    whose records (7-byte header: CRC, length, type full/first/middle/last) carry protobuf bytes."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb data file"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        room = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            position += room
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, last
            yield pending
            pending = b""


def wandb_history(run_dir: Path) -> Dict[int, Dict[str, float]]:
    """``{step: {key: value}}`` of the ``wandb.log`` calls an offline wandb run recorded."""
    from wandb.proto import wandb_internal_pb2

    history: Dict[int, Dict[str, float]] = {}
    (data_file,) = run_dir.glob("run-*.wandb")
    for raw in _wandb_records(data_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
    return history


def _files(folder: Path) -> Dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _exit_code(argv: List[str], log: Path, env: Dict[str, str]) -> int:
    process = launch(argv, log, env=env)
    try:
        return process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_resumed_run_keeps_its_settings_unless_allowed_and_wandb_shows_the_resumed_steps(
        tmp_path, fashion_mnist_data, tiny_model_config):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "WANDB_SILENT": "true", "TMPDIR": str(tmp_path)}  # wandb leaves its temporary folders behind
    argv = small_csv_argv(tmp_path, "run", fashion_mnist_data, "--epochs", "1", "--save-every-n-steps", "10",
                          "--report-to", "wandb,tensorboard", "--wandb-project-name", "cloob-test")
    run, log = tmp_path / "run", tmp_path / "run.stdout"
    checkpoints, out_log = run / "checkpoints", run / "out.log"

    process = launch(argv, log, env=env)
    try:
        wait_for_training_progress(process, log, out_log, 0, 5 * BATCH_SIZE)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == PREEMPTED_EXIT_CODE, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (step_checkpoint,) = checkpoints.glob("epoch_0_step_*.pt")
    stopped_at = torch.load(step_checkpoint, weights_only=True)[RESUME_KEY]["step"]
    before = _files(checkpoints)

    # Another β and 1/τ: refused before any step, every change named, the checkpoints untouched.
    refused_log = tmp_path / "refused.stdout"
    log_chars = len(out_log.read_text())
    assert _exit_code([*argv, "--resume", "latest", "--hopfield-beta", "16", "--init-inv-tau", "20"],
                      refused_log, env) == 1
    assert (f"ChangedSettingsError: {step_checkpoint} was trained with other CLOOB settings than this command "
            "line's: hopfield_beta 8.0 in the checkpoint, 16.0 now; init_inv_tau 30.0 in the checkpoint, 20.0 now. "
            "Resume with the checkpoint's values, or add --allow-changed-settings") in refused_log.read_text()
    assert "Train Epoch" not in out_log.read_text()[log_chars:]
    assert _files(checkpoints) == before

    # Allowed: the run continues with β = 16 and its checkpoint keeps where β = 8 ended.
    resumed_log = tmp_path / "resumed.stdout"
    wait_ok([launch([*argv, "--resume", "latest", "--hopfield-beta", "16", "--allow-changed-settings"],
                    resumed_log, env=env)], [resumed_log])
    text = out_log.read_text()
    assert (f"Resuming {step_checkpoint} with changed CLOOB settings (--allow-changed-settings): hopfield_beta 8.0 in "
            "the checkpoint, 16.0 now") in text
    assert "Loss: CloobLoss (hopfield_beta 16, inv_tau 30.0, frozen)" in text
    final = torch.load(checkpoints / "epoch_1.pt", weights_only=True)
    assert final["cloob"] == {**SETTINGS, "hopfield_beta": 16.0}
    assert final[HISTORY_KEY] == [{"settings": SETTINGS, "until_epoch": 0, "until_step": stopped_at,
                                   "checkpoint": str(step_checkpoint)}]

    # wandb (offline): one run per process; the diagnostics at the real step numbers, β as trained.
    first, resumed = (wandb_history(folder) for folder in sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*")))
    assert sorted(first) == list(range(stopped_at)) and sorted(resumed) == list(range(stopped_at, STEPS))
    assert {values["train/hopfield/beta_images"] for values in first.values()} == {8.0}
    assert {values["train/hopfield/beta_images"] for values in resumed.values()} == {16.0}
    assert all("train/loss" in values and "train/hopfield/attended_patterns_image_from_images" in values
               for values in resumed.values())

    # The checkpoint now records β = 16: resuming it with the old β is a change again.
    assert _exit_code([*argv, "--epochs", "2", "--resume", "latest"], refused_log, env) == 1
    assert "hopfield_beta 16.0 in the checkpoint, 8.0 now" in refused_log.read_text()
