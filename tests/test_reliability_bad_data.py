"""Broken CSV data: structural problems fail at start, broken samples are skipped and counted.

Real Fashion-MNIST PNGs with planted faults: missing, truncated and corrupt image files, an empty
caption and a caption that is not UTF-8.
"""
import json

import open_clip
import pytest

from conftest import TINY_MODEL, run_training, training_argv
from cloob_tools.data import load_fashion_mnist, make_captions, write_csv_dataset
from training.data_checks import BadDataError, CheckedCsvDataset, check_shards

ROWS = 64
BROKEN_ROWS = 6


@pytest.fixture
def broken_csv(tmp_path, fashion_mnist_available):
    """A CSV of 64 real images and captions, 6 of them broken in the 6 ways the module skips."""
    images, labels = load_fashion_mnist("test")
    path = write_csv_dataset(tmp_path / "broken", images[:ROWS], make_captions(labels[:ROWS]))
    image_dir = path.parent / "images"
    (image_dir / "000003.png").unlink()
    (image_dir / "000010.png").unlink()
    truncated = image_dir / "000020.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    (image_dir / "000030.png").write_bytes(b"not a png at all" * 10)
    lines = path.read_bytes().split(b"\n")
    lines[1 + 40] = lines[1 + 40].split(b"\t")[0] + b"\t"  # empty caption
    lines[1 + 50] = lines[1 + 50].split(b"\t")[0] + b"\ta caf\xe9 in latin-1"  # not UTF-8
    path.write_bytes(b"\n".join(lines))
    return path


def _dataset(path, max_bad_samples=1000, **kwargs) -> CheckedCsvDataset:
    _, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    return CheckedCsvDataset(str(path), preprocess, "filepath", "title", tokenizer=open_clip.get_tokenizer(TINY_MODEL),
                             max_bad_samples=max_bad_samples, **kwargs)


@pytest.mark.slow
def test_training_and_evaluation_skip_and_count_broken_samples(tmp_path, broken_csv, tiny_model_config):
    argv = training_argv(tmp_path, "broken", "--train-data", str(broken_csv), "--val-data", str(broken_csv),
                         "--batch-size", "16", "--epochs", "1", "--workers", "1")
    run_training(argv, tmp_path / "broken.stdout")
    log = (tmp_path / "broken" / "out.log").read_text() + (tmp_path / "broken.stdout").read_text()
    assert f"Epoch 0: {BROKEN_ROWS} broken training samples skipped" in log
    assert "000003.png): [Errno 2] No such file or directory" in log
    results = (tmp_path / "broken" / "checkpoints" / "results.jsonl").read_text().splitlines()
    (result,) = [json.loads(line) for line in results]
    assert (result["broken_train_samples"], result["broken_val_samples"]) == (BROKEN_ROWS, BROKEN_ROWS)


def test_more_broken_samples_than_the_limit_stop_with_a_clear_error(broken_csv, tiny_model_config):
    dataset = _dataset(broken_csv, max_bad_samples=BROKEN_ROWS - 1)
    with pytest.raises(BadDataError, match="more than --max-bad-samples 5 broken samples"):
        for index in range(len(dataset)):
            dataset[index]
    assert dataset.bad_samples.count == BROKEN_ROWS


def test_a_broken_sample_is_replaced_by_the_next_readable_one(broken_csv, tiny_model_config, caplog):
    dataset = _dataset(broken_csv)
    image, text = dataset[3]  # missing file: row 5 of the CSV (index 4) stands in
    expected_image, expected_text = dataset[4]
    assert (image == expected_image).all() and (text == expected_text).all()
    assert dataset.bad_samples.count == 1 and "Skipping broken sample 1: row 4" in caplog.text


@pytest.mark.parametrize("content, fix", [
    ("filepath,title\n/x.png,a caption\n", "Set --csv-separator"),
    ("path\ttitle\n/x.png\ta caption\n", "no column 'filepath'"),
    ("filepath\ttitle\n", "a header but no rows"),
    ("", "the file is empty"),
])
def test_structural_problems_fail_at_start_naming_the_file_and_the_fix(tmp_path, tiny_model_config, content, fix):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(BadDataError, match=str(path)) as error:
        _dataset(path)
    assert fix in str(error.value)


def test_a_missing_csv_file_is_named(tmp_path, tiny_model_config):
    with pytest.raises(BadDataError, match="no such CSV file"):
        _dataset(tmp_path / "missing.csv")


def test_a_shard_list_with_missing_shards_fails_at_start(fashion_mnist_data):
    shards = [str(path) for path in fashion_mnist_data["shards"]]
    assert check_shards("::".join(shards)) == shards
    pattern = shards[0].replace("000000.tar", "{000000..000009}.tar")
    with pytest.raises(BadDataError, match=r"6 of 10 shards do not exist, e.g. .*000004.tar"):
        check_shards(pattern)
