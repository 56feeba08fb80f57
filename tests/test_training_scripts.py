"""The job and data scripts in scripts/: their argument lists go through training.main's parser
(``DRY_RUN=1``), so they cannot rot; the data preparation scripts produce what OpenCLIP reads."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloob_tools.data import cc3m_tsv_to_csv, load_fashion_mnist, make_fashion_mnist_data, write_csv_dataset

REPO = Path(__file__).parent.parent
SCRIPTS = REPO / "scripts"
GENERIC = ["--model", "RN50-cloob", "--train-data", "/data/train.csv", "--batch-size", "256"]

# script, extra environment, arguments, settings the resolved namespace must show
DRY_RUNS = {
    "torchrun": ("train_torchrun.sh", {}, GENERIC, {"batch_size": "256", "loss": "cloob", "report_to": "tensorboard"}),
    "slurm": ("train_slurm.sbatch", {}, GENERIC, {"batch_size": "256", "loss": "cloob", "save_frequency": "1"}),
    "cc3m-rn50": ("cc3m_rn50.sh", {}, [], {
        "model": "RN50-cloob", "batch_size": "128", "lr": "0.001", "wd": "0.1", "warmup": "20000",
        "lr_scheduler": "cosine", "restart_cycles": "10", "epochs": "70", "precision": "amp",
        "init_inv_tau": "30.0", "hopfield_beta": "8.0", "learnable_inv_tau": "False", "resume": "latest",
        "save_every_n_steps": "0"}),  # outside SLURM: torchrun, no step checkpoints
    "cc3m-rn50-imagenet": ("cc3m_rn50.sh", {"IMAGENET_VAL": "/data/imagenet/val"}, ["--epochs", "31"], {
        "imagenet_val": "/data/imagenet/val", "epochs": "31"}),
    # Under SLURM the recipe runs through train_slurm.sbatch: its defaults (step checkpoints), the
    # recipe's flags, then the command line's.
    "cc3m-rn50-slurm": ("cc3m_rn50.sh", {"SLURM_JOB_ID": "4242"}, ["--epochs", "31"], {
        "model": "RN50-cloob", "batch_size": "128", "restart_cycles": "10", "save_every_n_steps": "1000",
        "save_frequency": "1", "resume": "latest", "epochs": "31", "name": "cc3m-rn50-cloob"}),
    # yfcc15m.sbatch runs through train_slurm.sbatch too (its checkpoint defaults, then the recipe).
    **{f"yfcc15m-{model}": ("yfcc15m.sbatch", {"MODEL": model}, [], {
        "model": model, "dataset_type": "webdataset", "train_data": "/data/yfcc15m/{00000..01499}.tar",
        "train_num_samples": "14800000", "epochs": "28", "restart_cycles": "10", "init_inv_tau": "30.0",
        "hopfield_beta": "8.0", "name": f"yfcc15m-{model}", "save_every_n_steps": "1000", "save_frequency": "1",
        "resume": "latest", "report_to": "tensorboard"})
       for model in ("RN50-cloob", "RN101-cloob", "RN50x4-cloob")},
    "yfcc15m-shards": ("yfcc15m.sbatch", {"TRAIN_DATA": "/x/{0..3}.tar", "TRAIN_NUM_SAMPLES": "4000"}, [], {
        "train_data": "/x/{0..3}.tar", "train_num_samples": "4000"}),
}


def _dry_run(script: str, env: dict, args: list) -> subprocess.Popen:
    """Start ``script`` (a name in scripts/ or an absolute path) with ``DRY_RUN=1``, outside any SLURM job."""
    base_env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    run_env = {**base_env, "DRY_RUN": "1", "PYTHON": sys.executable, **env}
    return subprocess.Popen(["bash", str(SCRIPTS / script), *args], env=run_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def dry_run_outputs():
    """Run every script's dry run (``python -m training.params``: the training parser, no torch import)."""
    processes = {name: _dry_run(script, env, args) for name, (script, env, args, _) in DRY_RUNS.items()}
    return {name: (process.communicate(timeout=300)[0], process.returncode) for name, process in processes.items()}


@pytest.mark.parametrize("name", sorted(DRY_RUNS))
def test_script_arguments_parse_into_the_intended_settings(dry_run_outputs, name):
    output, returncode = dry_run_outputs[name]
    assert returncode == 0, output
    settings = dict(re.findall(r"^(\w+): (.*)$", output, flags=re.MULTILINE))
    expected = DRY_RUNS[name][3]
    assert {key: settings.get(key) for key in expected} == expected


@pytest.mark.parametrize("script", ["cc3m_rn50.sh", "yfcc15m.sbatch"])
def test_recipe_submitted_with_sbatch_finds_train_slurm_sbatch_via_the_submit_dir(tmp_path, script):
    # sbatch runs a copy of the script from its spool folder, away from the repository.
    spool_copy = tmp_path / "slurm_script"
    spool_copy.write_text((SCRIPTS / script).read_text())
    output, _ = _dry_run(str(spool_copy), {"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(REPO)}, []).communicate(
        timeout=300)
    settings = dict(re.findall(r"^(\w+): (.*)$", output, flags=re.MULTILINE))
    assert (settings.get("model"), settings.get("save_every_n_steps")) == ("RN50-cloob", "1000"), output

    lost = _dry_run(str(spool_copy), {"SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(tmp_path)}, [])
    output, _ = lost.communicate(timeout=300)
    assert lost.returncode == 1
    assert f"{script}: scripts/train_slurm.sbatch not found next to this script nor under " \
        f"SLURM_SUBMIT_DIR='{tmp_path}'" in output


def test_tsv_to_csv_resolves_urls_and_paths_and_skips_missing_images(tmp_path, fashion_mnist_available):
    images, _ = load_fashion_mnist("test")
    csv_path = write_csv_dataset(tmp_path / "pngs", images[:3], ["x"] * 3)
    root = csv_path.parent / "images"
    (root / "000002.png").rename(root / "7.jpg")  # row 7 is a URL whose download was saved as 7.jpg
    rows = [f"caption {i}\thttps://example.com/img/{i}.jpg" for i in range(8)]
    rows[0] = "a relative path\t000000.png"
    rows[1] = f"an absolute path\t{root / '000001.png'}"
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "train.csv"
    cc3m_tsv_to_csv.main(
        [str(tsv), "--image-root", str(root), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines == ["filepath\ttitle", f"{root / '000000.png'}\ta relative path",
                     f"{root / '000001.png'}\tan absolute path", f"{root / '7.jpg'}\tcaption 7"]


def test_fashion_mnist_script_writes_webdataset_shards(tmp_path, fashion_mnist_available):
    make_fashion_mnist_data.main(
        ["--out", str(tmp_path), "--format", "webdataset", "--num-samples", "30", "--samples-per-shard", "16"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train-000000.tar", "train-000001.tar"]
