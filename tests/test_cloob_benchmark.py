"""Zero-shot harness: CLIP_benchmark unchanged and through our wrapper, on real Fashion-MNIST images;
the paper-protocol script and its Markdown table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloob_checkpoints import CLOOB_SETTINGS, random_model, tiny_model_dir, training_checkpoint
from open_clip_cloob import benchmark
from open_clip_cloob.export import export_model_folder
from cloob_tools.data import (CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, load_fashion_mnist, make_captions,
                          write_clip_benchmark_set)

REPO = Path(__file__).resolve().parents[1]
PAPER_SCRIPT = REPO / "scripts" / "zeroshot_paper.sh"
TABLE_TOOL = ("-m", "cloob_tools.zeroshot_paper_table")
PAPER_TEMPLATES = REPO / "scripts" / "zeroshot_paper_templates.json"
NUM_IMAGES = 60


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, fashion_mnist_available):
    """Classification and retrieval sets from the first Fashion-MNIST test images."""
    root = tmp_path_factory.mktemp("clip_benchmark_data")
    images, labels = load_fashion_mnist("test")
    images, labels = images[:NUM_IMAGES], labels[:NUM_IMAGES]
    captions = make_captions(labels, seed=1)
    # Two shards each; line i of classnames.txt names label i: the class order follows the label order.
    write_clip_benchmark_set(root / "fashion_mnist", images, captions, labels, classnames=FASHION_MNIST_CLASSES,
                             templates=CAPTION_TEMPLATES, samples_per_shard=len(images) // 2)
    write_clip_benchmark_set(root / "fashion_mnist_captions", images, captions, samples_per_shard=len(images) // 2)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported tiny CLOOB model (random weights: the numbers only have to agree, not be good)."""
    root = tmp_path_factory.mktemp("benchmark-model")
    name = tiny_model_dir(root / "config")
    return export_model_folder(training_checkpoint(random_model(name), CLOOB_SETTINGS), root / "model", name)


@pytest.fixture(scope="module")
def results(datasets, model_dir, tmp_path_factory):
    """{(tool, task): result dict} of the unchanged ``clip_benchmark`` console script and our wrapper."""
    out = tmp_path_factory.mktemp("benchmark-results")
    runs = {}
    tasks = (("zeroshot_classification", "fashion_mnist"), ("zeroshot_retrieval", "fashion_mnist_captions"))
    for task, dataset in tasks:
        args = ["eval", "--dataset", f"wds/{dataset}", "--dataset_root", str(datasets / dataset), "--task", task,
                "--model", f"local-dir:{model_dir}", "--pretrained", "none", "--batch_size", "16",
                "--num_workers", "0", "--no_amp", "--dump_classnames", "--quiet"]
        harness_output, wrapper_output = out / f"harness-{task}.json", out / f"wrapper-{task}.json"
        subprocess.run([str(Path(sys.executable).with_name("clip_benchmark")), *args, "--output", str(harness_output)],
                       check=True, capture_output=True, text=True, timeout=300)
        benchmark.main([*args, "--output", str(wrapper_output)])
        for tool, path in (("harness", harness_output), ("wrapper", wrapper_output)):
            runs[tool, task] = {"path": path, **json.loads(path.read_text())}
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("task", ["zeroshot_classification", "zeroshot_retrieval"])
def test_harness_and_wrapper_give_identical_numbers(results, task):
    harness, wrapper = results["harness", task], results["wrapper", task]
    assert harness["metrics"] == wrapper["metrics"]
    assert (harness["dataset"], harness["model"], harness["task"]) == (wrapper["dataset"], wrapper["model"], task)
    assert all(0.0 <= value <= 1.0 for value in harness["metrics"].values())


@pytest.mark.slow
def test_class_order_follows_label_order(results):
    for tool in ("harness", "wrapper"):
        assert results[tool, "zeroshot_classification"]["classnames"] == list(FASHION_MNIST_CLASSES)


@pytest.mark.slow
def test_paper_table_from_real_harness_output(results, tmp_path):
    result = results["harness", "zeroshot_classification"]
    # The same real result, filed under ImageNet, to see a row with paper numbers and a delta.
    as_imagenet = tmp_path / "imagenet1k.json"
    as_imagenet.write_text(json.dumps({**{k: v for k, v in result.items() if k != "path"}, "dataset": "imagenet1k"}))
    table_path = tmp_path / "table.md"
    retrieval = results["harness", "zeroshot_retrieval"]["path"]
    completed = subprocess.run([sys.executable, *TABLE_TOOL, str(result["path"]), str(as_imagenet),
                                str(retrieval), "--output", str(table_path)],
                               check=True, capture_output=True, text=True)
    table = table_path.read_text()
    assert completed.stdout == table
    assert "no acc1 (task zeroshot_retrieval), skipped" in completed.stderr
    top1 = 100 * result["metrics"]["acc1"]
    assert f"`local-dir:{result['model'].removeprefix('local-dir:')}` (pretrained `none`)" in table
    assert f"| ImageNet | {top1:.2f} | {top1 - 35.7:+.2f} | 35.70 | 23.97 | 20.33 |" in table
    assert "| Birdsnap | not run | — | 28.90 | 3.06 | 2.26 |" in table
    assert f"| wds/fashion_mnist | {top1:.2f} | — | — | — | — |" in table
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines() if line.startswith("| ")]
    assert rows[1:9] == ["Birdsnap", "Country211", "Flowers102", "GTSRB", "UCF101", "Stanford Cars", "ImageNet",
                         "ImageNet-V2"]  # the order of the paper's zero-shot table


def test_paper_script_runs_the_eight_datasets_with_the_protocol():
    completed = subprocess.run(["bash", str(PAPER_SCRIPT), "RN50-cloob", "yfcc15m"], check=True, capture_output=True,
                               text=True, env={**os.environ, "DRY_RUN": "1", "DATA_ROOT": "/data", "OUT": "/out"})
    commands = completed.stdout.splitlines()
    evals = [line.split() for line in commands[:-1]]
    datasets = [command[command.index("--dataset") + 1] for command in evals]
    assert datasets == ["imagenet1k", "imagenetv2", "cars", "flowers", "gtsrb", "country211", "wds/birdsnap",
                        "wds/ucf101"]
    for command, dataset in zip(evals, datasets):
        assert command[:4] == ["python", "-m", "open_clip_cloob.benchmark", "eval"]
        name = dataset.removeprefix("wds/")
        assert ["--model", "RN50-cloob", "--pretrained", "yfcc15m"] == command[command.index("--model"):][:4]
        assert command[command.index("--dataset_root") + 1] == f"/data/{name}"
        assert command[command.index("--task") + 1] == "zeroshot_classification"
        assert ("--custom_template_file" in command) == dataset.startswith("wds/")
    assert commands[-1].split()[1:] == [*TABLE_TOOL, *[f"/out/{d.removeprefix('wds/')}.json" for d in datasets],
                                        "--output", "/out/table.md"]


def test_templates_and_class_lists_follow_the_paper_protocol():
    """The paper's zero-shot protocol: the number of CLIP templates per dataset; class names in the datasets' label order."""
    import clip_benchmark.datasets.builder as builder

    package = Path(builder.__file__).parent
    templates = json.loads((package / "en_zeroshot_classification_templates.json").read_text())
    classnames = json.loads((package / "en_classnames.json").read_text())
    assert {name: len(templates[name]) for name in ("imagenet1k", "cars", "flowers", "gtsrb", "country211")} == {
        "imagenet1k": 80, "cars": 8, "flowers": 1, "gtsrb": 3, "country211": 5}
    assert "imagenetv2" not in templates  # so CLIP_benchmark falls back to ImageNet's 80
    assert {name: len(classnames[name]) for name in ("imagenet1k", "flowers", "gtsrb", "country211")} == {
        "imagenet1k": 1000, "flowers": 102, "gtsrb": 43, "country211": 211}
    # Label 0 of each dataset: ImageNet n01440764, Flowers102 class 1, GTSRB class 0, Country211 "AD" (sorted codes).
    assert [classnames[name][0] for name in ("imagenet1k", "flowers", "gtsrb", "country211")] == [
        "tench", "pink primrose", "red and white circle 20 kph speed limit", "Andorra"]
    ours = json.loads(PAPER_TEMPLATES.read_text())
    assert ours["birdsnap"] == ["a photo of a {c}, a type of bird."]
    assert len(ours["ucf101"]) == len(set(ours["ucf101"])) == 48
    assert all(template.count("{c}") == 1 for template in ours["ucf101"])
