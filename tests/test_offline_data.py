"""cloob_tools.data: real Fashion-MNIST images as OpenCLIP CSV and webdataset data."""
import numpy as np
import pytest
import webdataset as wds
from open_clip_train.data import CsvDataset
from PIL import Image

from cloob_tools.data import (
    CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, load_fashion_mnist, make_captions, write_clip_benchmark_set,
    write_csv_dataset, write_webdataset_shards)


@pytest.fixture(scope="module")
def test_split(fashion_mnist_available):
    return load_fashion_mnist("test")


def test_load_returns_the_documented_arrays(test_split):
    images, labels = test_split
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images.std() > 50  # real pictures, not an empty buffer
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_fashion_mnist("validation")


def test_captions_are_varied_name_the_class_and_are_seeded():
    labels = [7] * 200
    captions = make_captions(labels, seed=3)
    assert len(set(captions)) == len(CAPTION_TEMPLATES)
    assert all("sneaker" in caption for caption in captions)
    assert make_captions(labels, seed=3) == captions != make_captions(labels, seed=4)


def test_csv_dataset_is_read_by_openclips_csv_loader(tmp_path, test_split):
    images, labels = test_split[0][:5], test_split[1][:5]
    csv_path = write_csv_dataset(tmp_path, images, make_captions(labels))
    dataset = CsvDataset(str(csv_path), transforms=np.asarray, img_key="filepath", caption_key="title",
                         tokenizer=lambda texts: texts)
    image, caption = dataset[2]
    assert image.shape == (28, 28, 3) and (image[..., 0] == images[2]).all()
    assert caption == make_captions(labels)[2]


def test_webdataset_shards_hold_png_txt_and_cls(tmp_path, test_split):
    images, labels = test_split[0][:25], test_split[1][:25]
    captions = make_captions(labels)
    shards = write_webdataset_shards(tmp_path, images, captions, labels, samples_per_shard=10)
    assert [path.name for path in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = list(wds.WebDataset([str(path) for path in shards], shardshuffle=False).decode("pil"))
    assert len(samples) == 25
    last = samples[-1]
    assert isinstance(last["png"], Image.Image) and (np.asarray(last["png"])[..., 0] == images[-1]).all()
    assert (last["txt"], last["cls"]) == (captions[-1], int(labels[-1]))


def test_writers_reject_mismatched_lengths(tmp_path, test_split):
    with pytest.raises(ValueError, match="3 images, 2 captions"):
        write_webdataset_shards(tmp_path, test_split[0][:3], ["a photo of a bag."] * 2)
    with pytest.raises(ValueError, match="3 images, 3 captions, 2 labels"):
        write_webdataset_shards(tmp_path, test_split[0][:3], ["a photo of a bag."] * 3, labels=[8, 8])
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_clip_benchmark_set_refuses_labels_without_class_names(tmp_path):
    images, captions = np.zeros((2, 28, 28), dtype=np.uint8), ["a photo of a bag."] * 2
    with pytest.raises(ValueError, match="needs classnames and templates"):
        write_clip_benchmark_set(tmp_path / "set", images, captions, labels=[8, 8])
    with pytest.raises(ValueError, match=r"labels \[10\] have no class name \(10 classnames\)"):
        write_clip_benchmark_set(tmp_path / "set", images, captions, labels=[8, 10],
                                 classnames=FASHION_MNIST_CLASSES, templates=CAPTION_TEMPLATES)
    assert not (tmp_path / "set").exists()
