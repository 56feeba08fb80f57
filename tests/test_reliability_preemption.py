"""Preemption and crash safety of real ``training.main`` processes on real images.

- SIGTERM, then SIGUSR1, to a training process mid-epoch: it saves the current step and exits with
  status 75; ``--resume latest`` continues, and the final weights equal those of an uninterrupted run
  of the same seed, bit for bit.
- ``kill -9`` while a checkpoint is being written: ``epoch_latest.pt`` stays complete and
  ``--resume latest`` finishes the run.
"""
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pytest
import torch

from conftest import launch, run_training, small_csv_argv, wait_for, wait_for_training_progress, wait_ok
from training.reliability import PREEMPTED_EXIT_CODE, RESUME_KEY

pytestmark = pytest.mark.slow

BATCH_SIZE = 16  # small_csv_argv
STEPS_PER_EPOCH = 512 // BATCH_SIZE  # small_csv holds 512 images
TIMEOUT_S = 300


def _argv(logs: Path, name: str, data: dict, *flags: str) -> List[str]:
    return small_csv_argv(logs, name, data, "--save-every-n-steps", "10", *flags)


def _signal_mid_epoch(argv: List[str], log: Path, out_log: Path, epoch: int, signum: int) -> None:
    """Start a run, send ``signum`` once it logged 5 steps of ``epoch``; expect the preemption exit."""
    old_chars = len(out_log.read_text()) if out_log.exists() else 0
    process = launch(argv, log)
    try:
        wait_for_training_progress(process, log, out_log, epoch, 5 * BATCH_SIZE, skip_chars=old_chars)
        process.send_signal(signum)
        assert process.wait(timeout=TIMEOUT_S) == PREEMPTED_EXIT_CODE, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert f"Preempted: {signal.Signals(signum).name}: step" in log.read_text()


def _step_checkpoint(checkpoints: Path, epoch: int) -> dict:
    (path,) = checkpoints.glob(f"epoch_{epoch}_step_*.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_signals_save_the_current_step_and_resume_matches_an_uninterrupted_run(
        tmp_path, fashion_mnist_data, tiny_model_config):
    reference = launch(_argv(tmp_path, "reference", fashion_mnist_data), tmp_path / "reference.stdout")
    argv = _argv(tmp_path, "preempted", fashion_mnist_data)
    checkpoints, out_log = tmp_path / "preempted" / "checkpoints", tmp_path / "preempted" / "out.log"
    log = tmp_path / "preempted.stdout"

    _signal_mid_epoch(argv, log, out_log, 0, signal.SIGTERM)
    first_stop = _step_checkpoint(checkpoints, 0)
    assert first_stop["epoch"] == 0 and 5 <= first_stop[RESUME_KEY]["step"] < STEPS_PER_EPOCH
    assert first_stop["cloob"]["loss"] == "cloob"  # the run's settings, in step checkpoints too
    _signal_mid_epoch([*argv, "--resume", "latest"], log, out_log, 1, signal.SIGUSR1)
    second_stop = _step_checkpoint(checkpoints, 1)
    assert second_stop["epoch"] == 1 and 5 <= second_stop[RESUME_KEY]["step"] < STEPS_PER_EPOCH
    run_training([*argv, "--resume", "latest"], log)
    assert "Resuming inside epoch 1 after" in out_log.read_text()

    wait_ok([reference], [tmp_path / "reference.stdout"])
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "epoch_2.pt", weights_only=True)
    resumed = torch.load(checkpoints / "epoch_2.pt", weights_only=True)
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    different = [key for key, value in expected["state_dict"].items()
                 if not torch.equal(value, resumed["state_dict"][key])]
    assert not different


def _stopped(process: subprocess.Popen) -> bool:
    # /proc/PID/stat: "PID (comm) STATE ...": T once SIGSTOP has taken effect.
    return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _freeze_while_writing(process: subprocess.Popen, partial: Path, complete: Path, log: Path) -> None:
    """Stop ``process`` (SIGSTOP) at a moment it is writing ``partial`` and ``complete`` already exists."""
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        if partial.exists() and complete.exists():
            process.send_signal(signal.SIGSTOP)
            wait_for(lambda: _stopped(process), "SIGSTOP to take effect", interval=0.001)
            if partial.exists():
                return
            process.send_signal(signal.SIGCONT)
        time.sleep(0.001)


def test_kill_9_during_a_checkpoint_write_leaves_a_complete_latest_checkpoint(
        tmp_path, fashion_mnist_data, tiny_model_config):
    # A checkpoint every step: the process spends much of its time writing one.
    argv = _argv(tmp_path, "killed", fashion_mnist_data, "--epochs", "1", "--save-most-recent",
                 "--save-every-n-steps", "1")
    checkpoints, log = tmp_path / "killed" / "checkpoints", tmp_path / "killed.stdout"
    process = launch(argv, log)
    partial = checkpoints / f".epoch_latest.pt.{process.pid}.partial"
    try:
        _freeze_while_writing(process, partial, checkpoints / "epoch_latest.pt", log)
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert partial.exists()  # the write was cut off
    latest = torch.load(checkpoints / "epoch_latest.pt", weights_only=True)
    assert latest[RESUME_KEY]["step"] >= 1
    run_training([*argv, "--resume", "latest", "--save-every-n-steps", "16"], log)
    assert not partial.exists()  # the next step checkpoint cleared the remains
    resumed_log = (tmp_path / "killed" / "out.log").read_text()
    assert f"Resuming inside epoch {latest['epoch']} after {latest[RESUME_KEY]['step']} steps" in resumed_log
    assert torch.load(checkpoints / "epoch_latest.pt", weights_only=True)["epoch"] == 1
