"""OpenCLIP training options users combine with CLOOB, through ``training.main`` on real images.

- ``--precision pure_bf16 --lock-image``: the model trains in bfloat16 (every weight of the
  checkpoint is bf16) with a finite CLOOB loss, and the locked image tower does not move while the
  text tower does.
- ``--train-data-upsampling-factors`` with ``--dataset-resampled`` over two webdataset sources: the
  shards are drawn in the ratio of the factors. One source holds only broken samples, so the number
  of broken samples skipped (``results.jsonl``) counts its draws against the good source's.
- The remedies ``--hopfield-warmin`` and ``--learnable-hopfield-beta per-modality``: the Hopfield
  weight follows the warm-in's schedule step by step, also across a resume; the two βs start at
  ``--hopfield-beta`` and are trained apart; the checkpoint holds them as log β, and the exported
  model loads with ``open_clip.create_model`` with the learnt βs in its metadata.
"""
import io
import json
import math
import re
import tarfile
from pathlib import Path
from typing import List

import pytest
import torch

from conftest import TINY_MODEL, run_training, small_csv_argv, tensorboard_scalars, training_argv
from open_clip_cloob.export import export_model_folder
from training.scheduler import hopfield_warmin_weight

pytestmark = pytest.mark.slow

BATCH_SIZE = 16  # small_csv_argv
SHARD_SAMPLES = 8


def test_pure_bf16_with_a_locked_image_tower_trains_the_text_tower_only(tmp_path, fashion_mnist_data, tiny_model_config):
    argv = small_csv_argv(tmp_path, "bf16", fashion_mnist_data, "--precision", "pure_bf16", "--lock-image",
                          "--save-frequency", "1")
    run_training(argv, tmp_path / "bf16.stdout")
    checkpoints = tmp_path / "bf16" / "checkpoints"
    first, second = (torch.load(checkpoints / f"epoch_{epoch}.pt", weights_only=True)["state_dict"]
                     for epoch in (1, 2))
    assert {value.dtype for key, value in second.items() if value.is_floating_point()} == {torch.bfloat16}
    image_keys = [key for key in second if key.startswith("visual.")]
    text_keys = [key for key in second if key.startswith(("transformer.", "token_embedding", "ln_final",
                                                              "text_projection"))]
    assert image_keys and text_keys
    assert all(torch.equal(first[key], second[key]) for key in image_keys)  # locked: not one bit moved
    assert not all(torch.equal(first[key], second[key]) for key in text_keys)
    losses = [float(value) for value in re.findall(r"Loss: ([-\d.e+na]+)", (tmp_path / "bf16" / "out.log").read_text())]
    assert len(losses) == 2 * 512 // BATCH_SIZE and all(math.isfinite(loss) for loss in losses)
    assert "non-finite loss or gradient" not in (tmp_path / "bf16" / "out.log").read_text()


REMEDY_BATCH, WARMIN_STEPS = 32, 24  # 2 epochs x 16 steps: the weight reaches 1 after the resume


def test_warmin_and_learnt_betas_follow_their_schedule_resume_and_export(tmp_path, fashion_mnist_data,
                                                                         tiny_model_config):
    import open_clip

    flags = ("--hopfield-warmin", str(WARMIN_STEPS), "--learnable-hopfield-beta", "per-modality",
             "--report-to", "tensorboard", "--batch-size", str(REMEDY_BATCH))
    run_training(small_csv_argv(tmp_path, "remedies", fashion_mnist_data, *flags, "--epochs", "1"),
                 tmp_path / "first.stdout")
    run_training(small_csv_argv(tmp_path, "remedies", fashion_mnist_data, *flags, "--resume", "latest"),
                 tmp_path / "resumed.stdout")
    run = tmp_path / "remedies"
    weights = tensorboard_scalars(run, "train/hopfield/hopfield_weight")
    steps_per_epoch = 512 // REMEDY_BATCH
    assert [step for step, _ in weights] == list(range(2 * steps_per_epoch))  # both runs, logged every step
    assert [value for _, value in weights] == pytest.approx(
        [hopfield_warmin_weight(step, WARMIN_STEPS) for step in range(2 * steps_per_epoch)])
    image_betas = [value for _, value in tensorboard_scalars(run, "train/hopfield/beta_images")]
    text_betas = [value for _, value in tensorboard_scalars(run, "train/hopfield/beta_texts")]
    assert image_betas[0] == pytest.approx(8.0) and text_betas[0] == pytest.approx(8.0)
    assert abs(image_betas[-1] - 8.0) > 1e-3 and abs(image_betas[-1] - text_betas[-1]) > 1e-4  # learnt apart
    checkpoint = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert checkpoint["cloob"]["hopfield_warmin"] == WARMIN_STEPS
    assert checkpoint["cloob"]["learnable_hopfield_beta"] == "per-modality"
    learnt = {key: math.exp(checkpoint["state_dict"][key].item())
              for key in ("logit_scale_hopfield", "logit_scale_hopfield_text")}
    assert learnt["logit_scale_hopfield"] == pytest.approx(image_betas[-1], rel=0.02)  # one optimizer step later
    folder = export_model_folder(run / "checkpoints" / "epoch_2.pt", tmp_path / "exported", TINY_MODEL)
    model = open_clip.create_model(f"local-dir:{folder}")  # strict: the log βs are not weights
    assert "logit_scale_hopfield" not in model.state_dict()
    card = (folder / "README.md").read_text()
    assert f"| hopfield_beta_text | {learnt['logit_scale_hopfield_text']:.6g} |" in card


def _resplit(shards: List[Path], out: Path, broken: bool) -> str:
    """Write the samples of ``shards`` into shards of :data:`SHARD_SAMPLES`; with ``broken``, every
    image cut to its first 20 bytes (a PNG that does not decode). Returns the brace pattern."""
    out.mkdir(parents=True)
    samples = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
        for key in sorted({name.rsplit(".", 1)[0] for name in members}):
            samples.append({name.rsplit(".", 1)[1]: data for name, data in members.items()
                            if name.rsplit(".", 1)[0] == key} | {"__key__": key})
    count = len(samples) // SHARD_SAMPLES
    for index in range(count):
        with tarfile.open(out / f"{index:06d}.tar", "w") as tar:
            for sample in samples[index * SHARD_SAMPLES:(index + 1) * SHARD_SAMPLES]:
                for extension, data in sample.items():
                    if extension == "__key__":
                        continue
                    if broken and extension == "png":
                        data = data[:20]
                    info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(out / ("{000000..%06d}.tar" % (count - 1)))


def test_upsampling_factors_draw_the_sources_in_their_ratio(tmp_path, fashion_mnist_data, tiny_model_config):
    shards = fashion_mnist_data["shards"]
    good = _resplit(shards[:2], tmp_path / "good", broken=False)
    bad = _resplit(shards[2:], tmp_path / "bad", broken=True)  # as many shards as the good source
    good_samples = 512
    argv = training_argv(
        tmp_path, "upsampled", "--train-data", f"{good}::{bad}", "--dataset-type", "auto",
        "--dataset-resampled", "--train-data-upsampling-factors", "1::3", "--train-num-samples", str(good_samples),
        "--batch-size", str(BATCH_SIZE), "--epochs", "1", "--lr", "1e-3", "--warmup", "2",
        "--max-bad-samples", "100000", "--val-data", str(fashion_mnist_data["val_csv"]))
    run_training(argv, tmp_path / "upsampled.stdout")
    results = [json.loads(line) for line in (tmp_path / "upsampled" / "checkpoints" / "results.jsonl").open()]
    broken = results[-1]["broken_train_samples"]
    # Equal shard counts and factors 1::3: three draws of the broken source per draw of the good one.
    # Drawn shard by shard, 64 good ones here; without the factors the ratio is about 1.
    assert 2.2 <= broken / good_samples <= 4, broken
