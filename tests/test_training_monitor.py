"""training.monitor: Hopfield diagnostics on OpenCLIP's logging steps and the collapse warning.

Unit tests drive the monitor with the real ``CloobLoss`` and a real tensorboard writer, step by
step; end to end, the collapse recipe (2-layer ViT, 6,000 Fashion-MNIST images, 4 caption
templates, lr 1e-3 after a 5-step warmup) collapses and must warn. That the suite's healthy learning
run does not warn is checked with that run's other tests (test_training_e2e.py).
"""
import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cloob_tools.data import write_fashion_mnist_dataset
from cloob_tools.runs import model_config
from conftest import launch, tensorboard_scalars, wait_ok
from open_clip_cloob import CloobLoss, collapsed_loss, hopfield_diagnostics
from training.monitor import COLLAPSE_STEPS, COLLAPSE_TAG, DIAGNOSTIC_PREFIX, HopfieldMonitor, is_logging_step

N, D = 16, 8


def run_args(tmp_path: Path, **overrides) -> argparse.Namespace:
    settings = dict(loss="cloob", batch_size=N, accum_freq=1, world_size=1, rank=0, warmup=2, log_every_n_steps=5,
                    wandb=False, save_logs=True, checkpoint_path=str(tmp_path), hopfield_warmin=0)
    return argparse.Namespace(**{**settings, **overrides})


def features(collapsed: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if collapsed:  # every embedding the same direction up to 1e-7: identical retrievals
        base = torch.randn(1, D, generator=generator)
        noise = 1e-7 * torch.randn(2, N, D, generator=generator)
        return F.normalize(base + noise[0], dim=-1), F.normalize(base + noise[1], dim=-1)
    return tuple(F.normalize(torch.randn(N, D, generator=generator), dim=-1) for _ in range(2))


def train_steps(monitor: HopfieldMonitor, loss: CloobLoss, steps: int, steps_per_epoch: int, collapsed,
                tb_writer=None):
    """Call ``loss`` as OpenCLIP's loop does (keywords, output_dict) for ``steps`` steps."""
    inv_tau = torch.tensor(30.0)
    for step in range(steps):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if in_epoch == 0:
            monitor.begin_epoch(epoch, 0, steps_per_epoch, tb_writer)
        for micro in range(monitor.args.accum_freq):
            image, text = features(collapsed(step), seed=step)
            loss(image_features=image.requires_grad_(), text_features=text, logit_scale=inv_tau, output_dict=True)


def test_openclip_logging_condition():
    # OpenCLIP logs step 0, every log_every_n_steps-th and the last of an epoch.
    assert [i for i in range(12) if is_logging_step(i, 12, 5)] == [0, 5, 10, 11]
    assert [i for i in range(3) if is_logging_step(i, 3, 100)] == [0, 2]


def test_diagnostics_land_in_tensorboard_on_logging_steps_only(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    loss = CloobLoss()
    monitor = HopfieldMonitor(loss, run_args(tmp_path))
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer:
        train_steps(monitor, loss, steps=24, steps_per_epoch=12, collapsed=lambda step: False, tb_writer=writer)
    logged = tensorboard_scalars(tmp_path, DIAGNOSTIC_PREFIX + "mean_cosine_images")
    assert [step for step, _ in logged] == [0, 5, 10, 11, 12, 17, 22, 23]
    image, text = features(False, seed=17)
    expected = hopfield_diagnostics(image, text, 8.0)
    for key, value in expected.items():
        assert dict(tensorboard_scalars(tmp_path, DIAGNOSTIC_PREFIX + key))[17] == pytest.approx(value, rel=1e-5)
    assert all(value == 0.0 for _, value in tensorboard_scalars(tmp_path, COLLAPSE_TAG))
    assert not (tmp_path / "results.jsonl").exists()


def test_collapse_warns_after_enough_steps_past_warmup(tmp_path, caplog):
    from torch.utils.tensorboard import SummaryWriter

    loss = CloobLoss()
    monitor = HopfieldMonitor(loss, run_args(tmp_path, warmup=10, log_every_n_steps=1))
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer, caplog.at_level("WARNING"):
        train_steps(monitor, loss, steps=10 + COLLAPSE_STEPS + 5, steps_per_epoch=100, collapsed=lambda step: True,
                    tb_writer=writer)
    flags = dict(tensorboard_scalars(tmp_path, COLLAPSE_TAG))
    # Steps inside the warmup do not count: the first warning after COLLAPSE_STEPS collapsed steps past it.
    first = min(step for step, value in flags.items() if value == 1.0)
    assert first == 10 + COLLAPSE_STEPS - 1
    assert all(flags[step] == 1.0 for step in flags if step >= first)
    warnings = [record.getMessage() for record in caplog.records if "COLLAPSE" in record.getMessage()]
    assert len(warnings) == 6 and "--warmup" in warnings[0] and "--hopfield-beta-from-spread" in warnings[0]
    entries = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["collapse_warning"]["step"] == first
    assert entries[0]["collapse_warning"]["mean_cosine_images"] == pytest.approx(1.0, abs=1e-5)


def test_a_healthy_step_resets_the_count(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    loss = CloobLoss()
    monitor = HopfieldMonitor(loss, run_args(tmp_path, warmup=0, log_every_n_steps=1))
    recovered = COLLAPSE_STEPS - 2
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer:
        train_steps(monitor, loss, steps=2 * COLLAPSE_STEPS - 3, steps_per_epoch=1000,
                    collapsed=lambda step: step != recovered, tb_writer=writer)
    assert all(value == 0.0 for _, value in tensorboard_scalars(tmp_path, COLLAPSE_TAG))


def test_leaving_the_collapsed_value_is_logged(tmp_path, caplog):
    from torch.utils.tensorboard import SummaryWriter

    loss = CloobLoss()
    monitor = HopfieldMonitor(loss, run_args(tmp_path, warmup=0, log_every_n_steps=1))
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer, caplog.at_level("WARNING"):
        train_steps(monitor, loss, steps=COLLAPSE_STEPS + 5, steps_per_epoch=1000,
                    collapsed=lambda step: step < COLLAPSE_STEPS + 2, tb_writer=writer)
    flags = [value for _, value in tensorboard_scalars(tmp_path, COLLAPSE_TAG)]
    assert flags[COLLAPSE_STEPS - 1:COLLAPSE_STEPS + 2] == [1.0] * 3 and flags[COLLAPSE_STEPS + 2:] == [0.0] * 3
    left = [record.getMessage() for record in caplog.records if "left its collapsed value" in record.getMessage()]
    assert left == [f"Step {COLLAPSE_STEPS + 2}: the loss has left its collapsed value (collapse warned at step "
                    f"{COLLAPSE_STEPS - 1})"]


def test_accumulated_micro_batches_count_as_one_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    loss = CloobLoss()
    monitor = HopfieldMonitor(loss, run_args(tmp_path, accum_freq=2, batch_size=N // 2))
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer:
        train_steps(monitor, loss, steps=6, steps_per_epoch=6, collapsed=lambda step: False, tb_writer=writer)
    assert [step for step, _ in tensorboard_scalars(tmp_path, DIAGNOSTIC_PREFIX + "positive_minus_negative")] == [0, 5]


def test_the_collapsed_value_follows_the_objective_and_temperature(tmp_path):
    for name, objective in (("cloob", "infoloob"), ("cloob-infonce", "infonce"), ("infoloob", "infoloob")):
        monitor = HopfieldMonitor(CloobLoss(), run_args(tmp_path, loss=name))
        assert monitor._collapsed_at_unit_inv_tau / 30 == pytest.approx(collapsed_loss(N, 30.0, objective))


# --- End to end: the collapse recipe ----------------------------------------------------------------

RECIPE_TEMPLATES = ("a photo of a {c}.", "a grayscale photo of a {c}.", "a product photo of the {c}.",
                   "an image of a {c}.")
COLLAPSE_CONFIG = model_config("vit32-collapse-cloob")
# The collapse recipe, 1 of its 5 epochs (47 steps: the warning needs 30 collapsed steps after warmup, and
# OpenCLIP's last logging step of the epoch, 46, checks them); with this data and seed it collapses on step 5
# (on one thread, as launch() runs it).
RECIPE_FLAGS = ("--loss", "cloob", "--scale-hopfield", "8", "--batch-size", "128", "--epochs", "1", "--lr", "1e-3",
               "--warmup", "5", "--wd", "0.1", "--precision", "fp32", "--workers", "0", "--seed", "3")


@pytest.fixture(scope="module")
def collapse_run(tmp_path_factory, fashion_mnist_available) -> Path:
    root = tmp_path_factory.mktemp("collapse")
    train = write_fashion_mnist_dataset(root / "data", "train", 6000, seed=0, templates=RECIPE_TEMPLATES)
    argv = ["--add-model-config", str(COLLAPSE_CONFIG), "--model", "vit32-collapse-cloob", "--device", "cpu",
            "--train-data", str(train), "--dataset-type", "csv", *RECIPE_FLAGS, "--save-frequency", "0",
            "--report-to", "tensorboard", "--logs", str(root / "runs"), "--name", "collapse"]
    log = root / "collapse.stdout"
    wait_ok([launch(argv, log)], [log])
    return root / "runs" / "collapse"


@pytest.mark.slow
def test_the_collapse_recipe_warns(collapse_run):
    log = (collapse_run / "out.log").read_text()
    collapsed = collapsed_loss(128, 30.0)
    last_step = [line for line in log.splitlines() if "Train Epoch: 0" in line][-1]
    assert f"Cloob_loss: {collapsed:#.5g}" in last_step  # it did collapse: the loss sits there at the end
    warnings = [line for line in log.splitlines() if "COLLAPSE at step" in line]
    assert warnings and "Try a longer --warmup" in warnings[0]
    flags = tensorboard_scalars(collapse_run, COLLAPSE_TAG)
    assert flags[0][1] == 0.0 and flags[-1][1] == 1.0
    entry, = [json.loads(line) for line in (collapse_run / "checkpoints" / "results.jsonl").read_text().splitlines()]
    details = entry["collapse_warning"]
    assert details["collapsed_steps"] >= 30 and details["mean_cosine_images"] > 0.95
    assert details["attended_patterns_image_from_images"] > 0.9 * 128  # the retrieval attends to the whole batch
    assert abs(details["positive_minus_negative"]) < 1e-3
