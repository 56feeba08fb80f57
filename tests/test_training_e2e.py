"""End to end, one process: training.main trains CLOOB through OpenCLIP's real loop on real images.

Two runs: the shared learning run of ``conftest.tiny_cloob_run`` (the loss falls, zero-shot beats
chance, logs/params/checkpoints speak CLOOB, the Hopfield diagnostics are logged and no collapse
warning is) and a short run exercising OpenCLIP's features with the CLOOB loss, resumed once.
"""
import json
import math
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from conftest import (
    CORRUPT_IMAGENET_IMAGES, LEARNING_BATCH_SIZE, LEARNING_EPOCHS, TINY_MODEL, run_training, tensorboard_scalars,
    training_argv)
from cloob_tools.data import CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, load_fashion_mnist
from training.monitor import COLLAPSE_TAG, DIAGNOSTIC_PREFIX
from training.scheduler import cosine_restarts_lr

pytestmark = pytest.mark.slow

ZERO_SHOT_IMAGES = 2000  # held out: Fashion-MNIST's test split, never trained on
LOSS_LINE = re.compile(r"Train Epoch: \d+ .* Cloob_loss: (-?[\d.]+)")


def _train_losses(run: Path) -> list:
    return [float(value) for value in LOSS_LINE.findall((run / "out.log").read_text())]


def _params(run: Path) -> dict:
    return dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())


def zero_shot_accuracy(checkpoint: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 zero-shot accuracy, the paper's protocol: mean prompt embedding per class, argmax cosine."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(checkpoint))
    model.eval()
    templates = [lambda c, template=template: template.format(c=c) for template in CAPTION_TEMPLATES]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(
            model, open_clip.get_tokenizer(TINY_MODEL), [name.lower() for name in FASHION_MNIST_CLASSES],
            templates, device="cpu")
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images])
        predictions = (model.encode_image(pixels, normalize=True) @ classifier).argmax(dim=1)
    return (predictions.numpy() == labels).mean()


def test_cloob_model_trains_with_the_cloob_loss(tiny_cloob_run):
    log = (tiny_cloob_run / "out.log").read_text()
    assert "Loss: CloobLoss (hopfield_beta 8, inv_tau 30.0, frozen) over a global batch of 128" in log
    assert "Contrastive_loss" not in log  # ClipLoss's key
    assert len(_train_losses(tiny_cloob_run)) >= 20


def test_loss_falls_clearly_below_its_start(tiny_cloob_run):
    losses = _train_losses(tiny_cloob_run)
    plateau = 2 * math.log(LEARNING_BATCH_SIZE - 1) / 30  # all similarities equal
    assert losses[0] == pytest.approx(plateau, rel=0.05)
    final = float(np.mean(losses[-3:]))
    print(f"CLOOB training loss: first {losses[0]:.4f}, mean of last three logged {final:.4f}")
    assert final < 0.9 * losses[0]


def test_zero_shot_top1_on_held_out_images_beats_chance_widely(tiny_cloob_run):
    images, labels = load_fashion_mnist("test")
    accuracy = zero_shot_accuracy(
        tiny_cloob_run / "checkpoints" / f"epoch_{LEARNING_EPOCHS}.pt", images[:ZERO_SHOT_IMAGES],
        labels[:ZERO_SHOT_IMAGES])
    print(f"zero-shot top-1 on {ZERO_SHOT_IMAGES} held-out Fashion-MNIST images: {accuracy:.3f} (chance 0.1)")
    assert accuracy > 0.3


def test_torch_keeps_its_exit_statistics_to_itself(tiny_cloob_run):
    # OpenCLIP's logging setup raises torch's loggers to INFO; training.main lowers them before exit.
    output = (tiny_cloob_run.parent / "learning.stdout").read_text()
    assert "Train Epoch" in output and "TorchDynamo" not in output and "FakeTensor" not in output


def test_params_txt_records_the_cloob_settings(tiny_cloob_run):
    params = _params(tiny_cloob_run)
    assert {key: params[key] for key in ("loss", "hopfield_beta", "init_inv_tau", "learnable_inv_tau")} == {
        "loss": "cloob", "hopfield_beta": "8.0", "init_inv_tau": "30.0", "learnable_inv_tau": "False"}


def test_checkpoint_records_the_settings_and_keeps_the_frozen_temperature(tiny_cloob_run):
    checkpoints = tiny_cloob_run / "checkpoints"
    latest = torch.load(checkpoints / "epoch_latest.pt", map_location="cpu", weights_only=True)
    assert latest["epoch"] == LEARNING_EPOCHS
    assert latest["cloob"] == {
        "loss": "cloob", "hopfield_beta": 8.0, "hopfield_beta_from_spread": None, "hopfield_warmin": 0,
        "learnable_hopfield_beta": None, "init_inv_tau": 30.0, "learnable_inv_tau": False, "restart_cycles": 1}
    assert "cloob" not in latest["optimizer"]  # the settings are a top-level entry, not optimizer state
    assert latest["state_dict"]["logit_scale"].item() == pytest.approx(math.log(30.0))
    assert torch.equal(torch.load(checkpoints / f"epoch_{LEARNING_EPOCHS}.pt", weights_only=True)["state_dict"]
                       ["visual.conv1.weight"], latest["state_dict"]["visual.conv1.weight"])


def test_validation_reports_the_cloob_loss_next_to_openclips_metrics(tiny_cloob_run):
    results = [json.loads(line) for line in (tiny_cloob_run / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert [result["epoch"] for result in results] == list(range(1, LEARNING_EPOCHS + 1))
    assert all({"cloob_val_loss", "clip_val_loss", "image_to_text_R@1"} <= result.keys() for result in results)
    # Held-out images: the validation loss moves below its value for indistinguishable embeddings.
    assert results[-1]["cloob_val_loss"] < 2 * math.log(LEARNING_BATCH_SIZE - 1) / 30
    val_losses = [value for _, value in tensorboard_scalars(tiny_cloob_run, "val/cloob_val_loss")]
    assert val_losses == pytest.approx([result["cloob_val_loss"] for result in results])
    assert len(tensorboard_scalars(tiny_cloob_run, "train/cloob_loss")) >= 20


def test_the_healthy_run_logs_hopfield_diagnostics_and_never_warns_of_collapse(tiny_cloob_run):
    log = (tiny_cloob_run / "out.log").read_text()
    assert "COLLAPSE" not in log
    flags = tensorboard_scalars(tiny_cloob_run, COLLAPSE_TAG)
    losses = tensorboard_scalars(tiny_cloob_run, "train/cloob_loss")
    # Diagnostics on exactly the steps OpenCLIP logs (its loop's logging condition, mirrored).
    assert [step for step, _ in flags] == [step for step, _ in losses] and not any(value for _, value in flags)
    attended = [value for _, value in tensorboard_scalars(tiny_cloob_run, DIAGNOSTIC_PREFIX +
                                                          "attended_patterns_image_from_images")]
    assert all(1.0 <= value <= LEARNING_BATCH_SIZE for value in attended) and attended[-1] < attended[0]
    results = [json.loads(line) for line in (tiny_cloob_run / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert all("collapse_warning" not in result for result in results)
    gap = [result["val_hopfield_positive_minus_negative"] for result in results]
    assert all(math.isfinite(value) for value in gap) and gap[-1] > 0


FEATURE_FLAGS = (
    "--batch-size", "32", "--accum-freq", "2", "--grad-checkpointing", "--precision", "amp_bf16",
    "--lr", "1e-3", "--warmup", "2", "--lr-scheduler", "cosine-restarts", "--restart-cycles", "2",
    "--report-to", "tensorboard", "--save-most-recent", "--log-every-n-steps", "1",
)


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, fashion_mnist_data, tiny_model_config) -> Path:
    """Epoch 1 with accumulation, gradient checkpointing, bf16 autocast and cosine restarts; then
    ``--resume latest`` for epoch 2. (Zero-shot "ImageNet" during training is checked on the
    learning run: its 80,000-prompt classifier costs minutes under CPU bf16 autocast.)"""
    logs = tmp_path_factory.mktemp("feature_runs")
    common = training_argv(logs, "features", "--train-data", str(fashion_mnist_data["small_csv"]), *FEATURE_FLAGS)
    run_training([*common, "--epochs", "1"], logs / "epoch1.stdout")
    run_training([*common, "--epochs", "2", "--resume", "latest"], logs / "epoch2.stdout")
    return logs / "features"


def test_openclip_features_run_with_the_cloob_loss(feature_run):
    log = (feature_run / "out.log").read_text()
    # 512 samples / (32 x 2 accumulated) = 8 optimizer steps per epoch.
    assert "over a global batch of 64 = 32 per rank x accum_freq 2 x world_size 1" in log
    params = _params(feature_run)
    assert (params["precision"], params["grad_checkpointing"], params["accum_freq"]) == ("amp_bf16", "True", "2")
    losses = _train_losses(feature_run)
    assert len(losses) == 16 and all(math.isfinite(loss) for loss in losses)


def test_cosine_restarts_drives_the_learning_rate(feature_run):
    # OpenCLIP sizes the schedule by the run's --epochs: 8 steps in the first run, 16 after resuming.
    steps_per_epoch = 8
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0)
    schedules = {epochs: cosine_restarts_lr(optimizer, 1e-3, 2, steps_per_epoch * epochs, cycles=2) for epochs in (1, 2)}
    logged = tensorboard_scalars(feature_run, "train/lr")
    assert [step for step, _ in logged] == list(range(2 * steps_per_epoch))
    expected = [schedules[1 + step // steps_per_epoch](step) for step, _ in logged]
    assert [value for _, value in logged] == pytest.approx(expected, rel=1e-5)


def test_resume_latest_continues_from_the_saved_epoch(feature_run):
    log = (feature_run / "out.log").read_text()  # both runs append to it
    assert "=> resuming checkpoint" in log and "(epoch 1)" in log
    assert (log.count("Start epoch 0"), log.count("Start epoch 1")) == (1, 1)
    latest = torch.load(feature_run / "checkpoints" / "epoch_latest.pt", map_location="cpu", weights_only=True)
    assert latest["epoch"] == 2 and latest["cloob"]["restart_cycles"] == 2


def test_zero_shot_imagenet_during_training_keeps_working_and_skips_unreadable_images(tiny_cloob_run):
    results = [json.loads(line) for line in (tiny_cloob_run / "checkpoints" / "results.jsonl").read_text().splitlines()]
    # OpenCLIP evaluates zero-shot every --zeroshot-frequency (2) epochs and after the last one.
    assert ["imagenet-zeroshot-val-top1" in result for result in results] == [False, True]
    assert 0.0 <= results[-1]["imagenet-zeroshot-val-top1"] <= 1.0
    assert results[-1]["broken_imagenet-val_samples"] == CORRUPT_IMAGENET_IMAGES
    assert results[-1]["broken_train_samples"] == 0
