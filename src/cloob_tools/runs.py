"""One ``training.main`` run of the tools: its command line, its environment, launching it.

The demo, the study, the collapse study and the training benchmark start ``python -m
training.main`` as a subprocess with :func:`training_argv` (the demo's recipe) or flags of their
own. Every run reports to tensorboard (``--report-to tensorboard``), which :mod:`cloob_tools.results`
reads back; the console lines are for people.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .data.manifest import dataset_type

# The model configs the tools train (package data): the demo's ViT and its wide variant, the collapse
# recipe's 2-layer ViT, the tiny ViT of the CPU benchmarks and the tests.
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
DEMO_MODEL = "demo-vit"
DATA_WORKERS = 1  # data loader processes per run of the demo's recipe
REPORT_TO = ("--report-to", "tensorboard")


class RunFailed(ChildProcessError):
    """A training run exited with an error; names the run and the end of its log."""


def model_config(name: str) -> Path:
    """The config file of a model the tools train (``MODEL_CONFIGS/<name>.json``)."""
    return MODEL_CONFIGS / f"{name}.json"


def training_argv(loss: str, train_data: str, runs: Path, name: str, steps: int, batch_size: int, device: str,
                  epochs: int = 1, seed: int = 0, data_type: str = "webdataset", model: str = DEMO_MODEL,
                  model_config_file: Optional[Path] = model_config(DEMO_MODEL)) -> List[str]:
    """``training.main`` flags of one run of the demo's recipe: ``steps`` steps of ``batch_size`` in ``epochs``
    equal epochs (webdataset: ``--train-num-samples`` per epoch; a CSV epoch is one pass over the file,
    the caller makes the two agree), OpenCLIP's experiment folder ``runs/name``, tensorboard logs;
    ``model_config_file`` (None for a registered model) is registered with ``--add-model-config``.
    ``data_type`` is OpenCLIP's ``--dataset-type`` (``auto`` for training and validation data of
    different types).

    Each run leaves the loss-dependent defaults of ``training.main`` in place: a CLOOB-family loss
    keeps the paper's fixed inverse temperature 30 and β = 8, CLIP learns its temperature as
    OpenCLIP does.
    """
    samples = [] if dataset_type(train_data) == "csv" else ["--train-num-samples", str(steps // epochs * batch_size)]
    config = [] if model_config_file is None else ["--add-model-config", str(model_config_file)]
    return [
        *config, "--model", model, "--loss", loss,
        "--train-data", train_data, "--dataset-type", data_type, *samples,
        "--batch-size", str(batch_size), "--epochs", str(epochs),
        "--lr", "1e-3", "--wd", "0.1", "--warmup", str(max(1, steps // 20)),
        "--device", device, "--precision", "amp" if device == "cuda" else "fp32",
        "--workers", str(DATA_WORKERS), "--seed", str(seed), "--log-every-n-steps", str(max(1, steps // 50)),
        "--logs", str(runs), "--name", name, *REPORT_TO,
    ]


def training_env(device: str, concurrent_runs: int = 1) -> Dict[str, str]:
    """The environment of a training run: on CPU, compute threads for the cores the data workers leave,
    shared by ``concurrent_runs`` runs.

    torch computes on one thread per core by default; beside a data loader worker that oversubscribes
    the cores, and OpenMP threads spin-waiting for a busy core slowed the demo's steps 1.7x on 2
    cores (0.19 s instead of 0.11 s per step of 128). ``OMP_NUM_THREADS`` set by the user wins.
    """
    env = dict(os.environ)
    if device == "cpu" and "OMP_NUM_THREADS" not in env:
        free = len(os.sched_getaffinity(0)) - concurrent_runs * DATA_WORKERS
        env["OMP_NUM_THREADS"] = str(max(1, free // concurrent_runs))
    return env


def launch_training(argv: Sequence[str], log_file: Optional[Path], env: Mapping[str, str]) -> subprocess.Popen:
    """Start ``python -m training.main argv`` (in this working directory, where relative data paths point)
    with stdout and stderr to ``log_file`` (None: this process's console)."""
    command = [sys.executable, "-m", "training.main", *argv]
    if log_file is None:
        return subprocess.Popen(command, env=dict(env))
    with open(log_file, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(env))


def wait_for_training(process: subprocess.Popen, name: str, log_file: Optional[Path],
                      timeout: Optional[float] = None) -> None:
    """Wait for a run started by :func:`launch_training`; :class:`RunFailed` with the end of its log unless it
    exits 0. A run still going when this returns (interrupted, or past ``timeout`` seconds) is stopped
    with SIGTERM, on which it saves a checkpoint."""
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
    if status != 0:
        tail = log_file.read_text(errors="replace")[-3000:] if log_file is not None and log_file.is_file() else ""
        what = f"took over {timeout:.0f} s" if status is None else f"exited with status {status}"
        raise RunFailed(f"{name}: training.main {what}; log {log_file}:\n{tail}")


def run_training(argv: Sequence[str], env: Mapping[str, str], log_file: Optional[Path] = None,
                 timeout: Optional[float] = None) -> None:
    """Run ``python -m training.main argv`` to its end (:func:`launch_training`, :func:`wait_for_training`)."""
    name = argv[list(argv).index("--name") + 1] if "--name" in argv else "training.main"
    wait_for_training(launch_training(argv, log_file, env), name, log_file, timeout)
