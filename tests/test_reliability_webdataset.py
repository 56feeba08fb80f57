"""Webdataset data through OpenCLIP's own pipeline: broken samples counted and limited, a batch order
that the seed fixes, resampled resume.

Real Fashion-MNIST PNGs in tar shards with planted faults: a sample without image, one without
caption, an empty and a non-UTF-8 caption, a corrupt and a truncated image, and a shard cut off
in the middle of a file.
"""
import io
import json
import os
import re
import tarfile
from itertools import islice
from pathlib import Path
from typing import Dict, List

import open_clip
import pytest
import torch

from conftest import (
    CORRUPT_IMAGENET_IMAGES, TINY_MODEL, launch, run_training, tensorboard_scalars, training_argv, wait_for, wait_ok)
from cloob_tools.data import load_fashion_mnist, make_captions, write_webdataset_shards
from training import openclip_hooks, params
from training.data_checks import BadDataError
from training.reliability import ContinuedDraw

SAMPLES_PER_SHARD = 32
# Shard 0 loses 6 samples; shard 1 is cut inside the image of its sample 20: samples 0-19 survive.
PLANTED = {3: "no image", 5: "no caption (.txt)", 7: "empty caption", 9: "caption is not valid UTF-8",
           11: "UnidentifiedImageError", 13: "image file is truncated"}
KEPT_OF_CUT_SHARD = 20
READABLE = SAMPLES_PER_SHARD - len(PLANTED) + KEPT_OF_CUT_SHARD
BROKEN = len(PLANTED) + 1  # the cut shard's read error


def _read_members(path: Path) -> Dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def _write_members(path: Path, members: Dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def broken_shards(tmp_path_factory, fashion_mnist_available) -> List[Path]:
    """Two shards of 32 real samples: shard 0 with the :data:`PLANTED` faults, shard 1 cut short."""
    images, labels = load_fashion_mnist("test")
    count = 2 * SAMPLES_PER_SHARD
    shards = write_webdataset_shards(tmp_path_factory.mktemp("broken_shards"), images[:count],
                                     make_captions(labels[:count]), samples_per_shard=SAMPLES_PER_SHARD)
    members = _read_members(shards[0])
    key = "{:08d}".format
    del members[f"{key(3)}.png"]
    del members[f"{key(5)}.txt"]
    members[f"{key(7)}.txt"] = b"  "
    members[f"{key(9)}.txt"] = b"a caf\xe9 in latin-1"
    members[f"{key(11)}.png"] = b"not a png at all" * 10
    members[f"{key(13)}.png"] = members[f"{key(13)}.png"][:60]
    _write_members(shards[0], members)
    with tarfile.open(shards[1]) as tar:
        cut_image = tar.getmember(f"{key(SAMPLES_PER_SHARD + KEPT_OF_CUT_SHARD)}.png")
    shards[1].write_bytes(shards[1].read_bytes()[:cut_image.offset_data + cut_image.size // 2])
    return shards


def _args(*flags: str):
    args = params.parse_args(["--model", TINY_MODEL, "--dataset-type", "webdataset", "--workers", "0", *flags])
    args.rank, args.world_size = 0, 1  # set by OpenCLIP's main() from the launcher
    return args


def _val_pipeline(shards: List[Path], batch_size: int, *flags: str):
    args = _args("--val-data", "::".join(map(str, shards)), "--batch-size", str(batch_size), *flags)
    _, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    return openclip_hooks.get_wds_dataset(args, preprocess, is_train=False, tokenizer=open_clip.get_tokenizer(TINY_MODEL))


def test_broken_samples_are_skipped_counted_and_named(broken_shards, tiny_model_config, caplog):
    replaced = ("filter_no_caption_or_no_image", "log_and_continue", "tarfile_to_samples_nothrow")
    originals = {name: getattr(openclip_hooks.openclip_data, name) for name in replaced}
    info = _val_pipeline(broken_shards, 8, "--max-bad-samples", str(BROKEN))
    images = [len(batch_images) for batch_images, _ in info.dataloader]
    assert sum(images) == READABLE
    assert info.dataloader.bad_samples.count == BROKEN
    warnings = [record.getMessage() for record in caplog.records if "Skipping broken sample" in record.getMessage()]
    # The first five, in pipeline order, each naming its shard and key and the problem.
    for message, index in zip(warnings, sorted(PLANTED)):
        assert f"{broken_shards[0]}: sample {index:08d}" in message and PLANTED[index] in message, message
    assert len(warnings) == 5
    # OpenCLIP's originals are back once the pipeline is built.
    assert {name: getattr(openclip_hooks.openclip_data, name) for name in replaced} == originals


def test_a_cut_shard_counts_once_and_names_the_shard(broken_shards, tiny_model_config, caplog):
    info = _val_pipeline(broken_shards[1:], 8)
    assert sum(len(batch_images) for batch_images, _ in info.dataloader) == KEPT_OF_CUT_SHARD
    assert info.dataloader.bad_samples.count == 1
    assert "Skipping broken sample 1: reading a shard: ReadError(\"unexpected end of data @ " in caplog.text
    assert str(broken_shards[1]) in caplog.text and "Skipping broken sample 2" not in caplog.text


def test_more_broken_samples_than_the_limit_stop_with_a_clear_error(broken_shards, tiny_model_config):
    info = _val_pipeline(broken_shards, 8, "--max-bad-samples", "3")
    with pytest.raises(BadDataError, match="more than --max-bad-samples 3 broken samples .* sample 00000009: caption is not valid UTF-8"):
        for _ in info.dataloader:
            pass


@pytest.mark.slow
def test_training_and_evaluation_report_broken_webdataset_and_folder_images(
        tmp_path, broken_shards, imagenet_style_folder, tiny_model_config):
    shards = "::".join(map(str, broken_shards))
    data_flags = ("--dataset-type", "webdataset", "--val-data", shards, "--batch-size", "8", "--workers", "1")
    run_training(training_argv(tmp_path, "train", *data_flags, "--train-data", shards,
                               "--train-num-samples", "48", "--epochs", "1"), tmp_path / "train.stdout")
    (train_result,) = map(json.loads, (tmp_path / "train" / "checkpoints" / "results.jsonl").read_text().splitlines())
    # Training reads the shards until its 6 batches are full: all broken samples of shard 0 at least.
    assert train_result["broken_train_samples"] >= len(PLANTED)
    assert train_result["broken_val_samples"] == BROKEN
    log = (tmp_path / "train" / "out.log").read_text()
    assert f"Epoch 0: {train_result['broken_train_samples']} broken training samples skipped" in log
    # (A training run's zero-shot folder counts are checked on conftest's learning run.)

    # An evaluation-only run (no --train-data) reports its counts too, zero-shot folder included.
    run_training(training_argv(tmp_path, "eval", *data_flags, "--imagenet-val", str(imagenet_style_folder)),
                 tmp_path / "eval.stdout")
    (eval_result,) = map(json.loads, (tmp_path / "eval" / "checkpoints" / "results.jsonl").read_text().splitlines())
    assert (eval_result["broken_val_samples"], eval_result["broken_imagenet-val_samples"]) == (
        BROKEN, CORRUPT_IMAGENET_IMAGES)
    assert "imagenet-zeroshot-val-top1" in eval_result
    assert "broken_train_samples" not in eval_result


def _first_training_texts(shards: str, seed: int) -> torch.Tensor:
    """The tokens of the first batch of OpenCLIP's training pipeline over ``shards`` (shuffled)."""
    args = _args("--train-data", shards, "--train-num-samples", "512", "--batch-size", "64", "--seed", str(seed))
    _, preprocess, _ = open_clip.create_model_and_transforms(TINY_MODEL)
    info = openclip_hooks.get_wds_dataset(args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer(TINY_MODEL))
    info.set_epoch(0)
    _, texts = next(iter(info.dataloader))
    return texts


def test_the_seed_fixes_the_batch_order(fashion_mnist_data, tiny_model_config):
    # webdataset's sample shuffle seeds itself from the clock and the process id unless given a
    # generator: two runs of one seed drew different batches.
    shards = "::".join(map(str, fashion_mnist_data["shards"]))
    first = _first_training_texts(shards, seed=0)
    assert torch.equal(first, _first_training_texts(shards, seed=0))
    assert not torch.equal(first, _first_training_texts(shards, seed=1))


def _resampled_training_data(args):
    """OpenCLIP's resampled training pipeline as the hook builds it (images and texts left raw)."""
    return openclip_hooks.get_wds_dataset(args, lambda image: image, is_train=True, tokenizer=lambda text: text)


def _draws(info, count: int = 12) -> List[str]:
    """The first shards the pipeline's sampler draws at the current shared epoch value."""
    return [draw["url"] for draw in islice(iter(openclip_hooks.resampled_shards(info)), count)]


def _shard_draws(args, shared_epoch_value: int) -> List[str]:
    info = _resampled_training_data(args)
    info.shared_epoch.set_value(shared_epoch_value)
    return _draws(info)


def test_resampled_draws_depend_on_seed_and_epoch_and_a_resume_draws_afresh(fashion_mnist_data):
    shards = "::".join(map(str, fashion_mnist_data["shards"]))
    flags = ("--train-data", shards, "--dataset-resampled", "--train-num-samples", "512")
    args = _args(*flags, "--seed", "0")
    epoch_0 = _shard_draws(args, 0)
    assert epoch_0 == _shard_draws(args, 0)  # reproducible, also without dataloader workers
    assert epoch_0 != _shard_draws(args, 1)  # OpenCLIP's own seed repeats the draws of every epoch there
    assert epoch_0 != _shard_draws(_args(*flags, "--seed", "1"), 0)
    # Resumed after 5 steps of epoch 0: OpenCLIP's set_epoch(0) goes through ContinuedDraw.
    info = _resampled_training_data(args)
    ContinuedDraw(info.shared_epoch, steps_done=5).set_value(0)
    resumed = _draws(info)
    assert resumed not in (epoch_0, _shard_draws(args, 1))
    assert resumed == _shard_draws(args, 5 << 24)


@pytest.mark.slow
def test_a_resampled_run_resumed_inside_an_epoch_draws_afresh_for_its_remaining_steps(
        tmp_path, fashion_mnist_data, tiny_model_config):
    shards = "::".join(map(str, fashion_mnist_data["shards"]))
    flags = ("--dataset-type", "webdataset", "--train-data", shards, "--dataset-resampled",
             "--train-num-samples", "512", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3",
             "--warmup", "5", "--log-every-n-steps", "1", "--save-every-n-steps", "20",
             "--report-to", "tensorboard")
    full = launch(training_argv(tmp_path, "full", *flags), tmp_path / "full.stdout")
    step_checkpoint, kept = tmp_path / "full" / "checkpoints" / "epoch_0_step_20.pt", tmp_path / "step_20.pt"
    try:
        # epoch_1.pt supersedes the step checkpoint at the end of the run, which then deletes it.
        wait_for(lambda: step_checkpoint.exists() or full.poll() is not None, "the step checkpoint")
        os.link(step_checkpoint, kept)
    finally:
        wait_ok([full], [tmp_path / "full.stdout"])
    run_training(training_argv(tmp_path, "resumed", *flags, "--resume", str(kept)), tmp_path / "resumed.stdout")
    log = (tmp_path / "resumed" / "out.log").read_text()
    assert "Resuming inside epoch 0 after 20 steps" in log
    assert "the rest of epoch 0 draws its shards afresh (resumed after 20 steps)" in log
    # The 12 remaining steps of 32, under their own step numbers on the console and in tensorboard.
    assert re.findall(r"Train Epoch: 0 \[\s*(\d+)/512", log) == [str(16 * step) for step in range(21, 33)]
    assert [step for step, _ in tensorboard_scalars(tmp_path / "resumed", "train/lr")] == list(range(20, 32))
    full_lr = dict(tensorboard_scalars(tmp_path / "full", "train/lr"))
    assert dict(tensorboard_scalars(tmp_path / "resumed", "train/lr")) == {step: full_lr[step] for step in range(20, 32)}
    assert (tmp_path / "resumed" / "checkpoints" / "epoch_1.pt").is_file()
