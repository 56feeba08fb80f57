"""What ``scripts/demo.py`` and ``scripts/study.py`` share: the demo's model and data, ``training.main``
runs and their logs, zero-shot evaluation through CLIP_benchmark, plots.

A *data manifest* (``manifest.json``, written by ``scripts/make_demo_data.py`` or by hand for other
data) names what a run trains and is evaluated on::

    {"train_data": "shards/train-{000000..000045}.tar",   # webdataset shard spec, or a .csv/.tsv file
     "dataset_type": "webdataset",                         # optional: by the suffix of train_data
     "benchmark": {"NAME": {"root": "bench/NAME",          # CLIP_benchmark wds/ layout
                            "task": "zeroshot_classification",   # or zeroshot_retrieval
                            "num_samples": 2000}},          # optional: the chance level of retrieval
     "analysis_data": "pairs/analysis-{000000..000003}.tar",     # optional: held-out pairs
     "analysis_num_samples": 1730}                         # with analysis_data as webdataset

Relative paths are taken relative to the manifest's folder.
"""
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from make_demo_data import build
from offline_data import fashion_mnist_dir
from offline_data.emoji import INSTALL_HINT, emoji_available
from open_clip_cloob import LOSS_VARIANTS, benchmark

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIG = REPO / "scripts" / "demo_model_configs" / "demo-vit.json"
MODEL = MODEL_CONFIG.stem
DATA_WORKERS = 1  # data loader processes per training run
# Data sizes of the demo's builder: the full demo, and --smoke (enough for every stage to produce its files).
DATA_SIZES = {
    "full": {"fashion_train": 20000, "fashion_test": 2000, "analysis_fashion": 1000, "samples_per_shard": 2000},
    "smoke": {"fashion_train": 512, "fashion_test": 100, "analysis_fashion": 50, "samples_per_shard": 256},
}
TASKS = ("zeroshot_classification", "zeroshot_retrieval")
# OpenCLIP's step log line: epoch, samples seen this epoch, samples per epoch, mean seconds per step since
# the previous log line, inverse temperature, total loss (current value).
_TRAIN_LOG = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) .* Batch \(t\): ([\d.]+).* Logit Scale: ([\d.]+) "
                        r".*\bLoss: ([-\d.e+]+)")


def check_data_packages() -> None:
    """Fail early, saying what to install, when the Debian data packages of the demo's data are missing."""
    missing = []
    if not (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file():
        missing.append("Fashion-MNIST: install the Debian package dataset-fashion-mnist")
    if not emoji_available():
        missing.append(f"emoji: {INSTALL_HINT}")
    if missing:
        raise SystemExit("the demo's data needs real images from Debian packages (`make data` installs them):\n  "
                         + "\n  ".join(missing))


def build_demo_data(out: Path, size: str) -> Dict[str, Any]:
    """Write the demo's data (``scripts/make_demo_data.py``, sizes :data:`DATA_SIZES` ``[size]``) under
    ``out``; returns its manifest."""
    check_data_packages()
    return build(out, emoji_holdout=0.2, seed=0, **DATA_SIZES[size])


def load_manifest(path: Path) -> Dict[str, Any]:
    """Read a data manifest (see the module docstring), paths made absolute; clear errors for bad ones."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON: {error}") from error
    if not isinstance(manifest, dict) or "train_data" not in manifest or not manifest.get("benchmark"):
        raise ValueError(f"{path}: a data manifest needs 'train_data' and a non-empty 'benchmark' mapping")

    def absolute(spec: str) -> str:
        return spec if os.path.isabs(spec) else str(path.parent.resolve() / spec)

    manifest["train_data"] = absolute(manifest["train_data"])
    if manifest.get("analysis_data"):
        manifest["analysis_data"] = absolute(manifest["analysis_data"])
    for name, spec in manifest["benchmark"].items():
        if not isinstance(spec, dict) or "root" not in spec:
            raise ValueError(f"{path}: benchmark set {name!r} needs a 'root' folder")
        if spec.get("task", TASKS[0]) not in TASKS:
            raise ValueError(f"{path}: benchmark set {name!r} has task {spec['task']!r}; expected one of {TASKS}")
        spec["root"] = absolute(spec["root"])
        spec.setdefault("task", TASKS[0])
        if not (Path(spec["root"]) / "test").is_dir():
            raise ValueError(f"{path}: benchmark set {name!r}: {spec['root']} has no test/ folder "
                             "(CLIP_benchmark's wds/ layout)")
    manifest.setdefault("dataset_type", dataset_type(manifest["train_data"]))
    return manifest


def dataset_type(data: str) -> str:
    """OpenCLIP's ``--dataset-type`` for a data spec: ``csv`` for a .csv/.tsv file, ``webdataset`` otherwise."""
    return "csv" if Path(data).suffix in (".csv", ".tsv") else "webdataset"


def benchmark_set(root: Path) -> Dict[str, Any]:
    """The manifest entry of a CLIP_benchmark ``wds/`` folder; the task from its ``dataset_type.txt``."""
    if not (root / "test").is_dir():
        raise ValueError(f"{root}: not a CLIP_benchmark wds/ folder (no test/ inside)")
    kind = root / "dataset_type.txt"
    retrieval = kind.is_file() and kind.read_text().strip() == "retrieval"
    return {"root": str(root.resolve()), "task": TASKS[1] if retrieval else TASKS[0]}


def training_argv(loss: str, train_data: str, runs: Path, name: str, steps: int, batch_size: int, device: str,
                  epochs: int = 1, seed: int = 0, data_type: str = "webdataset", model: str = MODEL,
                  model_config: Optional[Path] = MODEL_CONFIG) -> List[str]:
    """``training.main`` flags of one run of the demo's recipe: ``steps`` steps of ``batch_size`` in ``epochs``
    equal epochs (webdataset: ``--train-num-samples`` per epoch; a CSV epoch is one pass over the file,
    the caller makes the two agree), OpenCLIP's experiment folder ``runs/name``; ``model_config``
    (None for a registered model) is registered with ``--add-model-config``. ``data_type`` is
    OpenCLIP's ``--dataset-type`` (``auto`` for training and validation data of different types).

    Each run leaves the loss-dependent defaults of ``training.main`` in place: a CLOOB-family loss
    keeps the paper's fixed inverse temperature 30 and β = 8, CLIP learns its temperature as
    OpenCLIP does.
    """
    samples = [] if dataset_type(train_data) == "csv" else ["--train-num-samples", str(steps // epochs * batch_size)]
    config = [] if model_config is None else ["--add-model-config", str(model_config)]
    return [
        *config, "--model", model, "--loss", loss,
        "--train-data", train_data, "--dataset-type", data_type, *samples,
        "--batch-size", str(batch_size), "--epochs", str(epochs),
        "--lr", "1e-3", "--wd", "0.1", "--warmup", str(max(1, steps // 20)),
        "--device", device, "--precision", "amp" if device == "cuda" else "fp32",
        "--workers", str(DATA_WORKERS), "--seed", str(seed), "--log-every-n-steps", str(max(1, steps // 50)),
        "--logs", str(runs), "--name", name,
    ]


def training_env(device: str, concurrent_runs: int = 1) -> Dict[str, str]:
    """The environment of a training run: on CPU, compute threads for the cores the data workers leave,
    shared by ``concurrent_runs`` runs.

    torch computes on one thread per core by default; beside a data loader worker that oversubscribes
    the cores, and OpenMP threads spin-waiting for a busy core slowed the demo's steps 1.7x on 2
    cores (0.19 s instead of 0.11 s per step of 128). ``OMP_NUM_THREADS`` set by the user wins.
    """
    env = dict(os.environ)
    if device == "cpu" and "OMP_NUM_THREADS" not in env:
        free = len(os.sched_getaffinity(0)) - concurrent_runs * DATA_WORKERS
        env["OMP_NUM_THREADS"] = str(max(1, free // concurrent_runs))
    return env


def read_loss_curve(out_log: Path, global_batch_size: int) -> Dict[str, List[float]]:
    """Step, total loss, inverse temperature and seconds per step (the mean since the previous log line)
    of every step log line of an OpenCLIP ``out.log``.

    A run resumed with ``--resume latest`` appends to its log and logs the steps after its checkpoint
    again: the last line of a step wins.
    """
    by_step: Dict[int, tuple] = {}
    for line in out_log.read_text().splitlines():
        match = _TRAIN_LOG.search(line)
        if match:
            epoch, seen, per_epoch, seconds, scale, loss = match.groups()
            by_step[(int(epoch) * int(per_epoch) + int(seen)) // global_batch_size] = (
                float(loss), float(scale), float(seconds))
    if not by_step:
        raise ValueError(f"{out_log}: no training step lines")
    steps = sorted(by_step)
    return {"step": steps, **{key: [by_step[step][index] for step in steps]
                              for index, key in enumerate(("loss", "inv_tau", "seconds_per_step"))}}


# training.monitor's console line on logging steps: "Hopfield step 120: mean_cosine_images 0.4102 ...".
_HOPFIELD_LOG = re.compile(r"Hopfield step (\d+): (.+)$")


def read_hopfield_diagnostics(out_log: Path) -> Dict[str, Dict[str, List[float]]]:
    """``{key: {"step": [...], "value": [...]}}``: the Hopfield diagnostics ``training.monitor`` logged in
    an OpenCLIP ``out.log`` (empty for a run without them; the last line of a step wins)."""
    by_step: Dict[int, Dict[str, float]] = {}
    for line in out_log.read_text().splitlines():
        match = _HOPFIELD_LOG.search(line)
        if match:
            words = match.group(2).split()
            by_step[int(match.group(1))] = {key: float(value) for key, value in zip(words[::2], words[1::2])}
    steps = sorted(by_step)
    keys = sorted({key for values in by_step.values() for key in values})
    return {key: {"step": [step for step in steps if key in by_step[step]],
                  "value": [by_step[step][key] for step in steps if key in by_step[step]]} for key in keys}


def zero_shot(model_dir: Path, sets: Mapping[str, Mapping[str, Any]], out: Path, device: str) -> Dict[str, Dict]:
    """CLIP_benchmark on every held-out set; returns {set: its metrics}."""
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, spec in sets.items():
        output = out / f"{name}.json"
        benchmark.main([
            "eval", "--dataset", f"wds/{name}", "--dataset_root", spec["root"], "--task", spec["task"],
            "--model", f"local-dir:{model_dir}", "--pretrained", "none", "--batch_size", "256",
            "--num_workers", "0", "--recall_k", "1", "5", "--output", str(output), "--quiet",
            *([] if device == "cuda" else ["--no_amp"]),
        ])
        results[name] = json.loads(output.read_text())["metrics"]
    return results


def zero_shot_metrics(sets: Mapping[str, Mapping[str, Any]]) -> List[tuple]:
    """``(set, CLIP_benchmark metric key, label)`` of the headline metrics of every set: top-1 of a
    classification set, R@1 both ways of a retrieval set."""
    metrics = []
    for name, spec in sets.items():
        if spec["task"] == "zeroshot_retrieval":
            metrics += [(name, "text_retrieval_recall@1", f"{name} image→text R@1"),
                        (name, "image_retrieval_recall@1", f"{name} text→image R@1")]
        else:
            metrics.append((name, "acc1", f"{name} top-1"))
    return metrics


def chance_percent(spec: Mapping[str, Any]) -> Optional[float]:
    """Expected score of random guessing on a set, in percent: one over its classes (``classnames.txt``),
    or over a retrieval set's size (``num_samples``; None when the manifest does not give it)."""
    if spec["task"] == "zeroshot_retrieval":
        return 100 / spec["num_samples"] if spec.get("num_samples") else None
    classes = (Path(spec["root"]) / "classnames.txt").read_text(encoding="utf-8").split("\n")
    return 100 / len([name for name in classes if name.strip()])


def describe_loss(loss: str) -> str:
    """What a ``--loss`` name optimises, for plot titles (``LOSS_VARIANTS``; ``clip`` is OpenCLIP's)."""
    if loss not in LOSS_VARIANTS:
        return "InfoNCE (OpenCLIP)"
    variant = LOSS_VARIANTS[loss]
    objective = {"infoloob": "InfoLOOB", "infonce": "InfoNCE"}[variant["objective"]]
    return f"τ·{objective} of " + ("Hopfield retrievals" if variant["hopfield"] else "the embeddings")


def uses_hopfield(loss: str) -> bool:
    """Whether a ``--loss`` retrieves from a Hopfield memory (so that β matters)."""
    return bool(LOSS_VARIANTS.get(loss, {}).get("hopfield", False))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
