"""Shared test fixtures: real Fashion-MNIST image-text data, the tiny CPU model, a trained tiny run.

Fixtures other test modules may rely on (keep their names and return values stable):

- ``tiny_model_config``: path of ``cloob_tools/model_configs/tiny-test-vit-cloob.json``, registered in
  OpenCLIP's factory of the test process (name :data:`TINY_MODEL`). Training subprocesses register
  it with ``--add-model-config PATH`` (see :func:`training_argv`).
- ``fashion_mnist_available``: skips the test when the data package is not installed.
- ``fashion_mnist_data``: dict of dataset paths built once per session (see the fixture).
- ``tiny_cloob_run``: folder of a tiny CLOOB run trained through ``training.main`` on Fashion-MNIST
  (``out.log``, ``params.txt``, ``checkpoints/epoch_2.pt`` and ``epoch_latest.pt``, tensorboard).

Tests marked ``cuda`` need a CUDA GPU: where torch sees none they are skipped, with the reason.
"""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union

import open_clip
import pytest
import torch
from PIL import Image

import training_process
from cloob_tools.data import fashion_mnist_dir, load_fashion_mnist, write_fashion_mnist_dataset
from cloob_tools.results import read_scalars
from cloob_tools.runs import model_config

TESTS_DIR = Path(__file__).parent
TINY_MODEL = "tiny-test-vit-cloob"
TINY_MODEL_CONFIG = model_config(TINY_MODEL)
# The command line itself, for the tests of its exit statuses and output (see launch()).
PYTHON_TRAIN_MODULE = (sys.executable, "-m", "training.main")

# The learning run: 2 epochs x 100 steps at batch 128. At initialisation the tiny model's embeddings
# are nearly collinear and the loss sits at 2·log(N−1)·τ = 0.323 until the towers separate: measured
# (seed 0, lr 1e-3, warmup 20) within 3% of it up to step 60, 0.289 at step 80, 0.266 at the end.
LEARNING_TRAIN_SAMPLES = 12800
LEARNING_BATCH_SIZE = 128
LEARNING_EPOCHS = 2

NO_CUDA_REASON = ("no CUDA GPU here: scripts/device_check.sh runs the cuda tests on a GPU machine "
                  "(docs/tooling.md, the GPU check)")

# The two pytest-xdist workers already keep both cores busy: a worker's own torch computes on one
# thread, like the training processes it starts (see launch()).
if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)


def schedule_rank(item: pytest.Item) -> int:
    """0 for a SLURM test, 1 for another end-to-end (``slow``) test, 2 for a fast one; a module is
    scheduled by the lowest rank of its tests."""
    return 0 if item.get_closest_marker("slurm") else 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Skip the tests marked ``cuda``, with :data:`NO_CUDA_REASON`, where torch sees no GPU; order the
    modules for the parallel run (pyproject.toml: ``-n 2 --dist loadfile --no-loadscope-reorder``).

    Each module goes to one worker as a whole (its fixtures run once), in the order of the items: the
    SLURM jobs first (they wait on slurmctld while the other worker computes), then the modules with
    end-to-end runs (``slow``), then the fast ones, which fill the gaps at the end
    (:func:`schedule_rank`; tests/test_conftest.py checks the result).
    """
    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("cuda") is not None:
                item.add_marker(pytest.mark.skip(reason=NO_CUDA_REASON))

    rank: Dict[Path, int] = {}
    for item in items:
        rank[item.path] = min(rank.get(item.path, 2), schedule_rank(item))
    first_seen = {item.path: index for index, item in reversed(list(enumerate(items)))}
    items.sort(key=lambda item: (rank[item.path], first_seen[item.path]))


@pytest.fixture(scope="session")
def tiny_model_config() -> Path:
    """The tiny CPU test model's config file, registered in this process's OpenCLIP factory."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(TINY_MODEL_CONFIG)
    return TINY_MODEL_CONFIG


@pytest.fixture(scope="session")
def fashion_mnist_available() -> None:
    """Skip, with the way to install it, when the Fashion-MNIST package is missing."""
    if not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed under {fashion_mnist_dir()}: run `make data` "
                    "(apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fashion_mnist_data(tmp_path_factory, fashion_mnist_available) -> Dict[str, object]:
    """Fashion-MNIST image-text datasets with varied captions, written once per session.

    Keys: ``train_csv`` (12,800 train images), ``small_csv`` (512 other-seed train images, for
    short feature runs), ``val_csv`` (512 test images), ``shards`` (4 webdataset shards of 128 train
    images with .png/.txt/.cls; a list of paths).
    """
    root = tmp_path_factory.mktemp("fashion_mnist")
    return {
        "train_csv": write_fashion_mnist_dataset(root / "train", "train", LEARNING_TRAIN_SAMPLES, seed=0),
        "small_csv": write_fashion_mnist_dataset(root / "small", "train", 512, seed=2),
        "val_csv": write_fashion_mnist_dataset(root / "val", "test", 512, seed=1),
        "shards": write_fashion_mnist_dataset(
            root / "shards", "train", 512, "webdataset", seed=3, samples_per_shard=128),
    }


def training_argv(logs: Path, name: str, *flags: str) -> list:
    """``training.main`` arguments for a CPU run of the tiny model, followed by ``flags``."""
    return [
        "--add-model-config", str(TINY_MODEL_CONFIG), "--model", TINY_MODEL,
        "--device", "cpu", "--precision", "fp32", "--workers", "0", "--seed", "0",
        "--logs", str(logs), "--name", name, *flags,
    ]


def small_csv_argv(logs: Path, name: str, data: Dict[str, object], *flags: str) -> list:
    """``training.main`` arguments for 2 epochs over ``small_csv`` at batch 16 per rank, logging every step."""
    return training_argv(
        logs, name, "--train-data", str(data["small_csv"]), "--batch-size", "16",
        "--epochs", "2", "--lr", "1e-3", "--warmup", "5", "--log-every-n-steps", "1", *flags)


EPHEMERAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
FIRST_TEST_PORT = 15000
_issued_ports: Set[int] = set()


def first_ephemeral_port() -> int:
    """The low end of the kernel's ephemeral port range (Linux's default where it cannot be read)."""
    return int(EPHEMERAL_PORT_RANGE.read_text().split()[0]) if EPHEMERAL_PORT_RANGE.exists() else 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to now, below the kernel's ephemeral range (for a
    rendezvous or a daemon's port).

    Not ``bind(0)``: that port lies in the ephemeral range, where the next process to connect or listen
    anywhere (srun, torchrun, a daemon) may take it before the job binds it; srun once did, and a rank
    waited on srun's socket until the test timed out. Below the range only explicit binds compete, so
    each pytest-xdist worker takes its own residue class, and a process never issues a port twice.
    """
    low = first_ephemeral_port()
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    for port in range(FIRST_TEST_PORT + worker, low, workers):
        if port in _issued_ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _issued_ports.add(port)
        return port
    raise RuntimeError(f"no free TCP port in [{FIRST_TEST_PORT}, {low}) for xdist worker {worker} of {workers} "
                       f"(the ephemeral range starts at {low}, from {EPHEMERAL_PORT_RANGE})")


def launch(
    argv: Sequence[str],
    log_file: Path,
    launcher: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    **popen_kwargs: Any,
) -> Union[subprocess.Popen, training_process.TrainingProcess]:
    """Start ``training.main argv`` (or ``launcher + argv``) with stdout and stderr to ``log_file``, in
    ``env`` (default: os.environ).

    Without ``launcher`` the run is forked from a process that has already imported ``training.main``
    (:mod:`training_process`: the same entry point without 8-10 s of imports per run); ``launcher``
    (e.g. torchrun, or :data:`PYTHON_TRAIN_MODULE` for the command line itself) starts a subprocess.
    ``popen_kwargs`` go to ``subprocess.Popen`` (``start_new_session=True`` works for both).

    Each process computes on one thread: on the 2-core test machine, shared with other processes,
    OpenMP threads spin-waiting for a busy core made a run up to 5x slower than one thread.
    """
    process_env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    if launcher is None:
        return training_process.start(argv, log_file, process_env, **popen_kwargs)
    with open(log_file, "w") as out:
        return subprocess.Popen([*launcher, *argv], stdout=out, stderr=subprocess.STDOUT, env=process_env,
                                **popen_kwargs)


def wait_ok(processes: Sequence[subprocess.Popen], log_files: Sequence[Path], timeout: float = 1200) -> None:
    """Wait for all processes; fail with the end of each log unless every one exited 0."""
    try:
        codes = [process.wait(timeout=timeout) for process in processes]
    finally:
        for process in processes:  # after a timeout or an interrupt: leave no rank behind
            if process.poll() is None:
                process.kill()
                process.wait()
    if any(codes):
        tails = "\n".join(f"--- {path} ---\n{path.read_text()[-3000:]}" for path in log_files)
        pytest.fail(f"exit codes {codes}\n{tails}")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 300, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_for_training_progress(process: subprocess.Popen, log: Path, out_log: Path, epoch: int, samples: int,
                               skip_chars: int = 0, timeout: float = 300) -> None:
    """Wait until ``out_log`` (past its first ``skip_chars``) shows ``samples`` samples of ``epoch`` trained.

    Fails, with the end of ``log`` (the process's stdout), if ``process`` exits first.
    """
    pattern = re.compile(rf"Train Epoch: {epoch} \[\s*(\d+)/")

    def reached() -> bool:
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before epoch {epoch} reached {samples} samples:\n"
                        f"{log.read_text()[-3000:]}")
        text = out_log.read_text()[skip_chars:] if out_log.exists() else ""
        return any(int(n) >= samples for n in pattern.findall(text))

    wait_for(reached, f"epoch {epoch} to reach {samples} samples", timeout)


def tensorboard_scalars(run: Path, tag: str) -> list:
    """``(step, value)`` of every ``tag`` scalar a run wrote to its tensorboard folder."""
    scalars = read_scalars(run / "tensorboard")[tag]
    return list(zip(scalars["step"], scalars["value"]))


def run_training(argv: Sequence[str], log_file: Path, **kwargs) -> None:
    """Run one ``training.main`` process (or ``launcher``) to completion; fail on a non-zero exit."""
    wait_ok([launch(argv, log_file, **kwargs)], [log_file])


@pytest.fixture(scope="session")
def imagenet_style_folder(tmp_path_factory, fashion_mnist_available) -> Path:
    """An ImageFolder standing in for ImageNet's val set: 16 real images in two class folders, and
    one corrupt image (:data:`CORRUPT_IMAGENET_IMAGES`) that evaluation must skip and count."""
    root = tmp_path_factory.mktemp("imagenet_val")
    images, labels = load_fashion_mnist("test")
    for index in range(16):
        folder = root / f"class{labels[index] % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[index]).convert("RGB").save(folder / f"{index}.png")
    (root / "class0" / "corrupt.png").write_bytes(b"not a png at all")
    return root


CORRUPT_IMAGENET_IMAGES = 1


@pytest.fixture(scope="session")
def tiny_cloob_run(tmp_path_factory, fashion_mnist_data, imagenet_style_folder, tiny_model_config) -> Path:
    """Train the tiny CLOOB model on Fashion-MNIST through ``training.main`` (default loss).

    2 epochs x 100 steps of 128, lr 1e-3, a data loader worker, validation each epoch, OpenCLIP's
    ImageNet zero-shot evaluation on :func:`imagenet_style_folder` after the last epoch,
    tensorboard, the most recent checkpoint kept. Returns the run folder.

    It is the suite's one run with ``--imagenet-val``: OpenCLIP builds its 1000-class classifier
    from 80 prompts per class (about 40 s of CPU for the tiny model), whatever the folder holds.
    Only test_training_e2e.py may use it: each pytest-xdist worker would train its own copy
    (tests/test_conftest.py checks).
    """
    logs = tmp_path_factory.mktemp("runs")
    argv = training_argv(
        logs, "learning",
        "--train-data", str(fashion_mnist_data["train_csv"]),
        "--val-data", str(fashion_mnist_data["val_csv"]),
        "--imagenet-val", str(imagenet_style_folder),
        "--batch-size", str(LEARNING_BATCH_SIZE), "--epochs", str(LEARNING_EPOCHS), "--workers", "1",
        "--lr", "1e-3", "--warmup", "20", "--log-every-n-steps", "10",
        "--report-to", "tensorboard", "--save-most-recent",
    )
    run_training(argv, logs / "learning.stdout")
    return logs / "learning"
