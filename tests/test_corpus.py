"""The corpus (cloob_tools.data.make_corpus) on a small real slice: unique captions, counts, splits that keep
near-duplicates together, CLIP_benchmark sets, the Fashion-MNIST share, licences."""
import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from cloob_tools.data import emoji as emoji_data
from cloob_tools.data import make_corpus
from cloob_tools.data.symbols import base_character, is_generated_name

SLICE = 40  # pairs per source: every set of the corpus gets a few held-out images


def corpus_available() -> None:
    """Skip, naming what to install, when a source's Debian packages are missing."""
    try:
        make_corpus.check_packages()
    except FileNotFoundError as error:
        pytest.skip(str(error))


def read_listing(out: Path):
    with open(out / "pairs.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def shards(out: Path, folder: str):
    return sorted(str(path) for path in (out / folder).glob("*.tar"))


@pytest.fixture(scope="module")
def loaded():
    corpus_available()
    return {source.name: source.load() for source in make_corpus.SOURCES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    corpus_available()
    out = tmp_path_factory.mktemp("corpus")
    return out, make_corpus.build(out, per_source=SLICE, samples_per_shard=64)


@pytest.fixture(scope="module")
def half_fashion(tmp_path_factory, fashion_mnist_available):
    corpus_available()
    out = tmp_path_factory.mktemp("corpus-fashion")
    return out, make_corpus.build(out, fashion_share=0.5, per_source=SLICE, fashion_test=30, samples_per_shard=64)


def test_every_caption_is_unique_as_the_model_reads_it(corpus):
    out, manifest = corpus
    rows = read_listing(out)
    keys = [make_corpus.caption_key(row["caption"]) for row in rows]
    assert len(keys) == len(set(keys))
    trained = [sample["txt"] for sample in wds.WebDataset(shards(out, "train"), shardshuffle=False).decode()]
    assert sorted(trained) == sorted(row["caption"] for row in rows if row["split"] == "train")
    assert len(trained) == manifest["train_num_samples"]


def test_repeated_captions_keep_the_first_pair():
    pairs = [make_corpus.Pair("stamps", "The letter A.", "stamp:upper", None),
             make_corpus.Pair("stamps", "the letter a", "stamp:lower", None),
             make_corpus.Pair("flags", "Norway", "flag:no", None)]
    kept, dropped = make_corpus.unique_captions(pairs)
    assert kept == [pairs[0], pairs[2]] and dropped == {"stamps": 1}


def test_every_source_is_counted_with_its_licences(corpus):
    out, manifest = corpus
    counts = Counter((row["source"], row["split"]) for row in read_listing(out))
    assert list(manifest["sources"]) == [source.name for source in make_corpus.SOURCES]
    for name, entry in manifest["sources"].items():
        assert (entry["train"], entry["held_out"]) == (counts[name, "train"], counts[name, "held_out"])
        assert entry["train"] > 0 and entry["held_out"] > 0 and entry["licences"]
    assert manifest["train_num_samples"] == sum(entry["train"] for entry in manifest["sources"].values())


@pytest.mark.parametrize("package", sorted(make_corpus.LICENCES))
def test_recorded_licence_is_the_packages_own(package):
    copyright_file = Path("/usr/share/doc") / package / "copyright"
    if not copyright_file.is_file():
        pytest.skip(f"{copyright_file} is missing: install the Debian package {package} (`make data`)")
    assert make_corpus.LICENCES[package][1] in copyright_file.read_text(encoding="utf-8", errors="replace")


def test_near_duplicate_groups_lie_on_one_side(corpus):
    out, _ = corpus
    sides = {}
    for row in read_listing(out):
        sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(split) == 1 for split in sides.values())
    assert {"train", "held_out"} <= set().union(*sides.values())


def test_the_groups_hold_the_near_duplicates(loaded):
    group = {(pair.source, pair.caption): pair.group for pairs in loaded.values() for pair in pairs}
    assert group["emoji", "thumbs up"] == group["emoji", "thumbs up: dark skin tone"] == "emoji:thumbs up"
    assert group["emoji", "flag: Norway"] == group["flags", "Norway"] == "flag:no"
    assert group["emoji", "flag: Scotland"] == group["flags", "United Kingdom"] == "flag:gb"
    assert group["symbols", "latin small letter e with acute"] == group["symbols", "latin capital letter e"] \
        == group["symbols", "circled latin small letter e"] == "symbol:e"
    assert group["stamps", "A Magellanic penguin."] == "stamp:animals/birds"


def test_split_is_a_seeded_draw_per_group():
    groups = [f"emoji:{index}" for index in range(2000)]
    held = [make_corpus.is_held_out(group, 0.2, seed=0) for group in groups]
    assert 0.17 < np.mean(held) < 0.23
    assert held == [make_corpus.is_held_out(group, 0.2, seed=0) for group in groups]
    assert held != [make_corpus.is_held_out(group, 0.2, seed=1) for group in groups]


def test_a_slice_takes_whole_groups_in_both_splits():
    pairs = [make_corpus.Pair("emoji", f"{group} {index}", f"emoji:{group}", None)
             for group in range(200) for index in range(group % 3 + 1)]
    taken = make_corpus.slice_groups(pairs, 50, 0.2, seed=0)
    assert taken == make_corpus.slice_groups(pairs, 50, 0.2, seed=0) and 45 <= len(taken) <= 50
    held = [make_corpus.is_held_out(pair.group, 0.2, seed=0) for pair in taken]
    assert 7 <= sum(held) <= 10
    counts, taken_counts = Counter(pair.group for pair in pairs), Counter(pair.group for pair in taken)
    assert all(taken_counts[group] == counts[group] for group in taken_counts)


def test_symbols_have_written_names_only(loaded):
    names = [pair.caption for pair in loaded["symbols"]]
    assert {"rightwards arrow", "alchemical symbol for aqua regia", "latin small letter e with acute"} <= set(names)
    assert not any(is_generated_name(name.upper()) for name in names)
    # Variant forms and the emoji's own characters belong elsewhere.
    assert not {"mathematical bold capital a", "fullwidth latin capital letter a", "ohm sign", "grinning face",
                "black heart suit"} & set(names)
    for name, generated in [("CJK UNIFIED IDEOGRAPH-4E00", True), ("BRAILLE PATTERN DOTS-1245", True),
                            ("DOMINO TILE HORIZONTAL-01-02", True), ("HANGUL SYLLABLE GA", True),
                            ("LATIN SMALL LETTER SHARP S", False), ("LEFT-POINTING ANGLE BRACKET", False)]:
        assert is_generated_name(name) is generated, name
    assert [base_character(char) for char in "ÉⓔE⑹→"] == ["e", "e", "e", "6", "→"]


def test_benchmark_sets_are_read_by_clip_benchmarks_wds_loader(corpus):
    from clip_benchmark.datasets.builder import build_dataset

    out, manifest = corpus
    assert set(manifest["benchmark"]) == {"emoji_names", "symbol_names", "stamp_captions", "flag_names", "emoji_group",
                                          "emoji_skin_tone", "symbol_block", "stamp_category"}
    held_out = {row["caption"] for row in read_listing(out) if row["split"] == "held_out"}
    for name, spec in manifest["benchmark"].items():
        dataset = build_dataset(f"wds/{name}", root=spec["root"], split="test", task=spec["task"])
        samples = list(dataset)
        assert len(samples) == spec["num_samples"] >= make_corpus.MIN_SET_SIZE
        assert all(image.size == (64, 64) for image, _ in samples)
        if spec["task"] == "zeroshot_retrieval":
            assert {captions[0] for _, captions in samples} <= held_out
        else:
            assert all(0 <= label < len(dataset.classes) for _, label in samples)
            assert dataset.templates and all("{c}" in template for template in dataset.templates)
    classes = build_dataset("wds/emoji_skin_tone", root=manifest["benchmark"]["emoji_skin_tone"]["root"]).classes
    assert classes == list(emoji_data.SKIN_TONES)


def test_fashion_share_replaces_training_pairs_and_keeps_the_held_out_sets(corpus, half_fashion):
    (_, plain), (out, mixed) = corpus, half_fashion
    assert mixed["train_num_samples"] == plain["train_num_samples"]
    assert mixed["sources"]["fashion_mnist"]["train"] == round(0.5 * plain["train_num_samples"])
    assert sum(entry["train"] for entry in mixed["sources"].values()) == mixed["train_num_samples"]
    assert {name: spec["num_samples"] for name, spec in mixed["benchmark"].items() if name != "fashion_mnist"} == \
        {name: spec["num_samples"] for name, spec in plain["benchmark"].items()}
    assert mixed["benchmark"]["fashion_mnist"]["num_samples"] == 30
    splits = Counter(row["split"] for row in read_listing(out))
    assert splits["replaced"] == mixed["sources"]["fashion_mnist"]["train"]
    captions = [sample["txt"] for sample in wds.WebDataset(shards(out, "train"), shardshuffle=False).decode()]
    assert sum(caption.startswith("a ") and caption.endswith(".") for caption in captions) >= splits["replaced"]
    assert len(set(captions)) < len(captions)  # the templates repeat: the stress case


def test_bad_input_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"--fashion-share must be in \[0, 1\), got 1.0"):
        make_corpus.build(tmp_path, fashion_share=1.0)
    monkeypatch.setenv("SYMBOL_FONT", str(tmp_path / "missing.ttf"))
    with pytest.raises(FileNotFoundError, match=r"symbols: install the Debian packages fonts-symbola and "
                                                r"unicode-data \(`make data`\)"):
        make_corpus.check_packages()


def test_a_manifest_written_from_any_working_directory_loads_from_any_other(tmp_path, monkeypatch):
    from cloob_tools.data.manifest import load_manifest, write_manifest

    monkeypatch.chdir(tmp_path)
    out = Path("runs") / "data"  # relative to the working directory, as on a command line
    (out / "benchmark" / "names" / "test").mkdir(parents=True)
    write_manifest(out, {"train_data": str(out / "train" / "train-{000000..000001}.tar"),
                         "benchmark": {"names": {"root": str(out / "benchmark" / "names"), "task": "zeroshot_retrieval"}},
                         "analysis_data": str(out / "analysis" / "analysis-000000.tar")})
    monkeypatch.chdir(tmp_path / "runs")  # the study reads it from elsewhere
    manifest = load_manifest(Path("data") / "manifest.json")
    assert manifest["train_data"] == str(tmp_path / "runs" / "data" / "train" / "train-{000000..000001}.tar")
    assert manifest["benchmark"]["names"]["root"] == str(tmp_path / "runs" / "data" / "benchmark" / "names")
    assert manifest["analysis_data"] == str(tmp_path / "runs" / "data" / "analysis" / "analysis-000000.tar")
