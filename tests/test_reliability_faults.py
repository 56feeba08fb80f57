"""Numeric faults and untrusted checkpoint files.

- A NaN loss skips the optimizer step (weights and AdamW state untouched) in fp32 and through the
  GradScaler; a finite step afterwards trains normally.
- A real ``training.main`` run whose loss is always NaN stops after ``--max-nonfinite-steps`` with
  a checkpoint holding the unchanged weights.
- A checkpoint whose unpickling would run code is refused, and the code does not run.
- A distributed run's heartbeats (``PeerWatch``) name the ranks, and their hosts, that stopped
  answering; a store that does not answer names rank 0, which serves it.
- Real gloo process groups on loopback: a rank that joins later than the operations' timeout
  (``--dist-timeout``) still starts the run, whose collective operations and store then time out
  after it; a rank whose peer never joins fails the start after the join timeout
  (``--dist-join-timeout``), and ``training.main`` then stops with status 1 and a message naming
  the rendezvous.
"""
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import open_clip
import pytest
import torch
from PIL import Image
from torch.distributed import distributed_c10d

import training_process
from conftest import TINY_MODEL, free_port, launch, training_argv
from open_clip_cloob import CloobLoss
from open_clip_cloob.checkpoint import CheckpointError
from cloob_tools.data import load_fashion_mnist, make_captions
from training.reliability import (
    NonFiniteGuard, PeerWatch, init_process_group_with_timeouts, load_checkpoint, sum_over_ranks)


@pytest.fixture
def tiny_setup(tiny_model_config, fashion_mnist_available):
    """The tiny model, AdamW, the CLOOB loss under a guard, and one real image-text batch."""
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, output_dict=True)
    images, labels = load_fashion_mnist("test")
    batch = torch.stack([preprocess(Image.fromarray(image)) for image in images[:8]])
    texts = open_clip.get_tokenizer(TINY_MODEL)(make_captions(labels[:8]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = CloobLoss()
    guard = NonFiniteGuard(max_consecutive=2)
    guard.attach(optimizer, loss)
    return model, optimizer, loss, guard, batch, texts


def _weights(model: torch.nn.Module) -> dict:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _loss(model, loss, images, texts, factor: float) -> torch.Tensor:
    """The total loss of one batch with the image features times ``factor`` (NaN: a numeric fault)."""
    features = model(images, texts)
    features["image_features"] = features["image_features"] * factor
    return sum(loss(**features, output_dict=True).values())


def test_nan_loss_skips_the_step_and_a_finite_step_trains(tiny_setup):
    model, optimizer, loss, guard, images, texts = tiny_setup
    before = _weights(model)
    _loss(model, loss, images, texts, float("nan")).backward()
    optimizer.step()
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}
    assert guard.end_step(0) is False and (guard.skipped, guard.consecutive) == (1, 1)

    optimizer.zero_grad()
    _loss(model, loss, images, texts, 1.0).backward()
    optimizer.step()
    assert guard.end_step(1) is False and (guard.skipped, guard.consecutive) == (1, 0)
    assert any(not torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_grad_scaler_path_skips_nan_steps_and_counts_them(tiny_setup):
    model, optimizer, loss, guard, images, texts = tiny_setup
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = _weights(model)
    for step in range(2):
        optimizer.zero_grad()
        scaler.scale(_loss(model, loss, images, texts, float("nan"))).backward()
        scaler.step(optimizer)
        scaler.update()
        stop = guard.end_step(step)
    assert stop and guard.consecutive == 2  # max_consecutive=2: the run would stop here
    assert scaler.get_scale() < 2.0 ** 10  # the scaler saw the infs and backed off, as usual
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())

    optimizer.zero_grad()
    scaler.scale(_loss(model, loss, images, texts, 1.0)).backward()
    scaler.step(optimizer)
    scaler.update()
    assert guard.end_step(2) is False and guard.consecutive == 0
    assert any(not torch.equal(before[key], value) for key, value in model.state_dict().items())


class _DictLoss(torch.nn.Module):
    """A loss module returning a dict of losses, like OpenCLIP's."""

    def forward(self, outputs: torch.Tensor) -> dict:
        return {"first": outputs.mean(), "second": outputs.sum()}


def test_the_guard_agrees_through_a_process_group():
    # A one-rank gloo group: the verdict and the counts go through the collective branch.
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        layer = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        loss, guard = _DictLoss(), NonFiniteGuard(max_consecutive=1)
        guard.attach(optimizer, loss)
        before = layer.weight.detach().clone()
        loss(layer(torch.tensor([[float("nan"), 1.0]])))["first"].backward()
        optimizer.step()
        assert torch.equal(layer.weight, before)
        assert guard.end_step(0) is True  # max_consecutive=1: stop
        optimizer.zero_grad()
        sum(loss(layer(torch.tensor([[2.0, 1.0]]))).values()).backward()
        optimizer.step()
        assert guard.end_step(1) is False and not torch.equal(layer.weight, before)
        assert sum_over_ranks(7) == 7
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_run_with_a_permanently_nan_loss_stops_with_a_checkpoint_of_unchanged_weights(
        tmp_path, fashion_mnist_data, tiny_model_config):
    model = open_clip.create_model(TINY_MODEL)
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))  # every CLOOB loss of this model is NaN
    poisoned = model.state_dict()
    torch.save(poisoned, tmp_path / "poisoned.pt")
    argv = training_argv(
        tmp_path, "nan", "--train-data", str(fashion_mnist_data["small_csv"]), "--batch-size", "16",
        "--epochs", "1", "--pretrained", str(tmp_path / "poisoned.pt"), "--max-nonfinite-steps", "3")
    process = launch(argv, tmp_path / "nan.stdout")
    assert process.wait(timeout=300) == 1
    log = (tmp_path / "nan" / "out.log").read_text()
    assert "Step 2: non-finite loss or gradient, optimizer step skipped (3 in a row, 3 in total)" in log
    assert "NumericFaultError: 3 consecutive steps had a non-finite loss or gradient" in log
    saved = torch.load(tmp_path / "nan" / "checkpoints" / "epoch_0_step_3.pt", weights_only=True)
    assert saved["optimizer"]["state"] == {}
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, poisoned[key]) or key == "logit_scale"


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(str(path), map_location="cpu")
    assert not marker.exists()


def test_peer_watch_names_the_ranks_whose_heartbeat_stopped_with_their_hosts():
    store = torch.distributed.HashStore()  # stands in for the rendezvous store, one per run
    # Rank 0 of 3 watches; rank 1 (node1) keeps beating, rank 2 (node2) stopped after its first beat.
    for rank, host in ((1, "node1"), (2, "node2")):
        store.set(f"host/{rank}", host)
        store.add(f"beat/{rank}", 1)
    watch = PeerWatch(store, rank=0, world_size=3, interval=0.05)
    stop = threading.Event()

    def rank_1() -> None:
        while not stop.wait(0.01):
            store.add("beat/1", 1)

    beating = threading.Thread(target=rank_1)
    beating.start()
    try:
        assert watch.describe_lost() == "rank 2 (host node2)"
    finally:
        stop.set()
        beating.join()
        watch.stop()


class _GoneStore:
    """A store whose server no longer answers."""

    def clone(self):
        raise torch.distributed.DistStoreError("Timed out after 10 seconds waiting for the store")


def test_peer_watch_names_rank_0_when_the_store_does_not_answer():
    watch = PeerWatch(torch.distributed.HashStore(), rank=1, world_size=2, interval=0.05)
    watch.stop()
    watch.store = _GoneStore()
    assert watch.describe_lost() == ("rank 0 (it serves the rendezvous store, which does not answer: "
                                     "DistStoreError: Timed out after 10 seconds waiting for the store)")


# A process that starts a heartbeat on a real TCP store and exits without stopping it; beating every
# millisecond, the thread is inside a store call when the interpreter ends.
_UNSTOPPED_WATCH = """
import datetime, torch.distributed as dist
from training.reliability import PeerWatch
store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=5))
PeerWatch(store, 0, 1, interval=0.001)
"""


def test_a_heartbeat_nobody_stopped_ends_with_the_interpreter_not_in_an_abort():
    # Without the stop at exit every such process aborted: "terminate called without an active
    # exception", status 134 (seen in a srun task that set up the process group and never closed).
    # (6 of 6 such processes aborted before.)
    result = subprocess.run([sys.executable, "-c", _UNSTOPPED_WATCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def _wait_for_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _timed_rank(rank: int, world_size: int, port: int, join_s: float, operations_s: float, report_file: str,
                rank_0_report: Optional[str] = None) -> None:
    """One rank of a gloo process group on loopback, joining with the given timeouts; writes what it
    saw to ``report_file`` (JSON), after writing ``REPORT.waiting`` as it starts to wait.

    With ``rank_0_report`` (rank 1): it joins 3 operation timeouts after rank 0 began to wait, then
    stays away from the first collective until rank 0 has reported on it."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    if rank_0_report is not None:
        _wait_for_file(Path(f"{rank_0_report}.waiting"))
        time.sleep(3 * operations_s)
    Path(f"{report_file}.waiting").touch()
    start = time.monotonic()
    try:
        init_process_group_with_timeouts("gloo", join_timeout=datetime.timedelta(seconds=join_s),
                                         timeout=datetime.timedelta(seconds=operations_s))
    except Exception as error:
        report = {"joined": False, "waited": time.monotonic() - start, "error": f"{type(error).__name__}: {error}"}
    else:
        report = {"joined": True, "waited": time.monotonic() - start,
                  "store_timeout": distributed_c10d._get_default_store().timeout.total_seconds()}
        if rank_0_report is not None:
            _wait_for_file(Path(rank_0_report))
        else:
            start = time.monotonic()
            try:
                torch.distributed.all_reduce(torch.ones(1))
                report["collective"] = "completed"
            except RuntimeError as error:
                report["collective"] = str(error)
            report["collective_waited"] = time.monotonic() - start
    Path(report_file).write_text(json.dumps(report))


def test_a_rank_that_joins_later_than_the_operations_timeout_starts_and_operations_keep_their_timeout(tmp_path):
    operations_s, join_s = 1.0, 60.0
    pair_port, alone_port = free_port(), free_port()
    reports = [str(tmp_path / f"{name}.json") for name in ("rank_0", "rank_1", "alone")]
    # Forked from the suite's fork server, which has imported torch and this package.
    processes = [training_process.CONTEXT.Process(target=_timed_rank, args=args) for args in (
        (0, 2, pair_port, join_s, operations_s, reports[0]),
        (1, 2, pair_port, join_s, operations_s, reports[1], reports[0]),
        # A rank whose peer never comes: the start fails after the join timeout, here the short one.
        (0, 2, alone_port, operations_s, join_s, reports[2]))]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=120)
    finally:
        for process in processes:
            process.kill()
    rank_0, rank_1, alone = (json.loads(Path(report).read_text()) for report in reports)
    assert rank_0["joined"] and rank_1["joined"], (rank_0, rank_1)
    assert rank_0["waited"] > 3 * operations_s, rank_0  # rank 1 came later than the operations' timeout
    # The collective operations and the store (PeerWatch's heartbeats) time out after the short one,
    # not the long one.
    assert rank_0["store_timeout"] == rank_1["store_timeout"] == operations_s
    assert "Timed out" in rank_0["collective"], rank_0
    assert operations_s <= rank_0["collective_waited"] < join_s / 2, rank_0
    # ...naming the rendezvous, the timeout and its flag, with torch's reason.
    assert not alone["joined"] and alone["error"].startswith(
        f"JoinError: not every rank joined the rendezvous at 127.0.0.1:{alone_port} within 1 s "
        "(--dist-join-timeout): DistStoreError: "), alone
    assert "waiting for clients" in alone["error"], alone
    assert operations_s <= alone["waited"] < join_s / 2, alone


@pytest.mark.slow
def test_a_run_whose_peer_never_joins_stops_with_status_1_naming_the_rendezvous(tmp_path, fashion_mnist_data,
                                                                               tiny_model_config):
    # Rank 0 of 2 as torchrun would start it; rank 1 never comes.
    port = free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": "0",
           "LOCAL_RANK": "0"}
    argv = training_argv(tmp_path, "alone", "--train-data", str(fashion_mnist_data["small_csv"]),
                         "--batch-size", "16", "--epochs", "1", "--dist-join-timeout", "1")
    process = launch(argv, tmp_path / "alone.stdout", env=env)
    assert process.wait(timeout=120) == 1
    output = (tmp_path / "alone.stdout").read_text()
    assert (f"JoinError: not every rank joined the rendezvous at 127.0.0.1:{port} within 1 s "
            "(--dist-join-timeout): DistStoreError: ") in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
