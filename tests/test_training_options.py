"""OpenCLIP training options users combine with CLOOB, through ``training.main`` on real images.

- ``--precision pure_bf16 --lock-image``: the model trains in bfloat16 (every weight of the
  checkpoint is bf16) with a finite CLOOB loss, and the locked image tower does not move while the
  text tower does.
- ``--train-data-upsampling-factors`` with ``--dataset-resampled`` over two webdataset sources: the
  shards are drawn in the ratio of the factors. One source holds only broken samples, so the number
  of broken samples skipped (``results.jsonl``) counts its draws against the good source's.
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

from conftest import run_training, small_csv_argv, training_argv

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
