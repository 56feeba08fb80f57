"""Preemption of real 2-rank torchrun runs (CPU, gloo) of ``training.main`` on real images.

- SIGTERM to one worker (rank 1) only: the ranks agree at the next step boundary, both stop at the
  same step, rank 0 writes one step checkpoint, both workers exit with status 75 (torchrun itself
  exits 1); ``--resume latest`` under torchrun finishes with the weights of an uninterrupted run,
  bit for bit.
- SIGTERM to torchrun's process group (what ``scancel`` does to a job step): torchrun forwards it to
  its workers, which save the current step and stop before torchrun's shutdown timeout; the
  checkpoint loads with ``weights_only=True`` and a resume again matches the uninterrupted run.
"""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from conftest import launch, run_training, small_csv_argv, wait_for_training_progress
from training.reliability import PREEMPTED_EXIT_CODE, RESUME_KEY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds torchrun's workers in /proc (Linux)"),
]

WORLD_SIZE = 2
BATCH_SIZE = 16  # per rank (small_csv_argv)
STEPS_PER_EPOCH = 512 // (WORLD_SIZE * BATCH_SIZE)  # small_csv holds 512 images: 16 steps
SIGNAL_AFTER_STEPS = 3
TIMEOUT_S = 300
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
            "--", "-m", "training.main")
# torchrun's exit status when a worker failed (ChildFailedError) or it was stopped by a signal
# (SignalException): it does not pass on the workers' 75.
TORCHRUN_FAILED = 1


def _argv(logs: Path, name: str, data: dict, *flags: str) -> List[str]:
    return small_csv_argv(logs, name, data, "--save-every-n-steps", "5", *flags)


def _workers(launcher_pid: int) -> Dict[int, int]:
    """Global rank -> pid of the worker processes torchrun (``launcher_pid``) started."""
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "PID (comm) STATE PPID ..."; comm may hold spaces and parentheses.
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0") if parent == launcher_pid else []
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        ranks = [int(entry[len(b"RANK="):]) for entry in environ if entry.startswith(b"RANK=")]
        if ranks:
            workers[ranks[0]] = int(proc.name)
    return workers


def _stop(process: subprocess.Popen) -> None:
    """After a failure: kill torchrun's workers (own sessions, torchrun does not take them along) and it."""
    if process.poll() is None:
        for pid in _workers(process.pid).values():
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()


def _preempt(argv: List[str], log: Path, out_log: Path, send_signal, **popen_kwargs) -> int:
    """Start torchrun, call ``send_signal(process)`` mid-epoch 0, return torchrun's exit status."""
    process = launch(argv, log, launcher=TORCHRUN, **popen_kwargs)
    try:
        wait_for_training_progress(process, log, out_log, 0, SIGNAL_AFTER_STEPS * WORLD_SIZE * BATCH_SIZE,
                                   timeout=TIMEOUT_S)
        send_signal(process)
        return process.wait(timeout=TIMEOUT_S)
    finally:
        _stop(process)


def _step_checkpoint(checkpoints: Path) -> dict:
    """The only step checkpoint (older ones are deleted), checked to be a stop inside epoch 0."""
    (path,) = checkpoints.glob("epoch_*_step_*.pt")
    assert not list(checkpoints.glob(".*.partial"))  # no write was cut short
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert path.name == f"epoch_0_step_{checkpoint[RESUME_KEY]['step']}.pt"
    assert checkpoint["epoch"] == 0 and SIGNAL_AFTER_STEPS <= checkpoint[RESUME_KEY]["step"] < STEPS_PER_EPOCH
    assert len(checkpoint[RESUME_KEY]["rng"]) == WORLD_SIZE  # each rank's random states
    return checkpoint


def _stops(log_text: str) -> List[tuple]:
    """(signal description, global step, epoch step, where saved) of every worker's "Preempted" line."""
    return re.findall(r"Preempted: (.+?): step (\d+) \(epoch 0, step (\d+)\) saved (in [^;\s]+|by the logging rank)",
                      log_text)


def _resume_and_compare(argv: List[str], log: Path, out_log: Path, step: int, expected: dict) -> None:
    run_training([*argv, "--resume", "latest"], log, launcher=TORCHRUN)
    assert f"Resuming inside epoch 0 after {step} steps" in out_log.read_text()
    resumed = torch.load(out_log.parent / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=True)
    assert resumed["state_dict"].keys() == expected.keys()
    different = [key for key, value in expected.items() if not torch.equal(value, resumed["state_dict"][key])]
    assert not different


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory, fashion_mnist_data, tiny_model_config) -> dict:
    """The final weights of an uninterrupted 2-rank torchrun run with the same seed and flags."""
    logs = tmp_path_factory.mktemp("reference")
    run_training(_argv(logs, "reference", fashion_mnist_data), logs / "reference.stdout", launcher=TORCHRUN)
    return torch.load(logs / "reference" / "checkpoints" / "epoch_2.pt", map_location="cpu",
                      weights_only=True)["state_dict"]


def test_signal_to_one_rank_stops_both_ranks_at_the_same_step_and_resume_matches(
        tmp_path, fashion_mnist_data, reference_weights):
    argv = _argv(tmp_path, "one-rank", fashion_mnist_data)
    log, out_log = tmp_path / "one-rank.stdout", tmp_path / "one-rank" / "out.log"
    signalled = {}

    def to_rank_1(process: subprocess.Popen) -> None:
        signalled.update(_workers(process.pid))
        os.kill(signalled[1], signal.SIGTERM)

    status = _preempt(argv, log, out_log, to_rank_1)
    text = log.read_text()
    assert sorted(signalled) == [0, 1]
    assert status == TORCHRUN_FAILED, text[-3000:]
    checkpoint = _step_checkpoint(tmp_path / "one-rank" / "checkpoints")
    step = checkpoint[RESUME_KEY]["step"]
    # Rank 1 got the signal, rank 0 learnt of it in the all-reduce; both stopped after the same step.
    path = tmp_path / "one-rank" / "checkpoints" / f"epoch_0_step_{step}.pt"
    assert sorted(_stops(text)) == sorted([
        ("SIGTERM", str(step), str(step), "by the logging rank"),
        ("signal on another rank", str(step), str(step), f"in {path}"),
    ]), text[-3000:]
    # torchrun's failure report: every worker exited with the preemption status.
    exits = dict(re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: (-?\d+)", text))
    assert exits == {"0": str(PREEMPTED_EXIT_CODE), "1": str(PREEMPTED_EXIT_CODE)}, text[-3000:]

    _resume_and_compare(argv, tmp_path / "resumed.stdout", out_log, step, reference_weights)


def test_sigterm_to_the_torchrun_process_group_saves_and_resumes(tmp_path, fashion_mnist_data, reference_weights):
    argv = _argv(tmp_path, "group", fashion_mnist_data)
    log, out_log = tmp_path / "group.stdout", tmp_path / "group" / "out.log"
    # Its own process group, like a job step; torchrun starts each worker in a session of its own.
    status = _preempt(argv, log, out_log, lambda process: os.killpg(process.pid, signal.SIGTERM),
                      start_new_session=True)
    text = log.read_text()
    assert status == TORCHRUN_FAILED, text[-3000:]
    checkpoint = _step_checkpoint(tmp_path / "group" / "checkpoints")
    step = checkpoint[RESUME_KEY]["step"]
    assert {"state_dict", "optimizer", RESUME_KEY} <= checkpoint.keys()
    assert checkpoint["state_dict"].keys() == reference_weights.keys()
    path = tmp_path / "group" / "checkpoints" / f"epoch_0_step_{step}.pt"
    # torchrun forwarded SIGTERM to both workers; they stopped on their own, no SIGKILL was needed.
    assert sorted(_stops(text)) == sorted([
        ("SIGTERM", str(step), str(step), "by the logging rank"),
        ("SIGTERM", str(step), str(step), f"in {path}"),
    ]), text[-3000:]
    assert len(re.findall(r"Sending process \d+ closing signal SIGTERM", text)) == WORLD_SIZE, text[-3000:]
    assert "forcefully exiting" not in text, text[-3000:]

    _resume_and_compare(argv, tmp_path / "resumed.stdout", out_log, step, reference_weights)
