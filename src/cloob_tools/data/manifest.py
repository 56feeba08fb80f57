"""The data manifest: what a run of the tools trains and is evaluated on.

A manifest (``manifest.json``, written by :mod:`cloob_tools.data.make_demo_data` and
:mod:`cloob_tools.data.make_stamps_digits_data`, or by hand for other data)::

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
from pathlib import Path
from typing import Any, Dict, Mapping

_logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
TASKS = ("zeroshot_classification", "zeroshot_retrieval")


def set_entry(root: Path, task: str, num_samples: int) -> Dict[str, Any]:
    """The ``benchmark`` entry of a CLIP_benchmark set a builder wrote under ``root``."""
    return {"root": str(root), "task": task, "num_samples": num_samples}


def write_manifest(out: Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``manifest`` (what a builder made under ``out``) as ``out/manifest.json``; returns it.

    The file holds its paths relative to ``out``, as :func:`load_manifest` reads them: whatever the
    working directory the builder ran in, and wherever the folder is moved.
    """
    folder = os.path.abspath(out)

    def relative(spec: str) -> str:
        return os.path.relpath(os.path.abspath(spec), folder)

    written = {**manifest, "train_data": relative(manifest["train_data"]),
               "benchmark": {name: {**spec, "root": relative(spec["root"])} for name, spec in manifest["benchmark"].items()}}
    if manifest.get("analysis_data"):
        written["analysis_data"] = relative(manifest["analysis_data"])
    (out / MANIFEST_NAME).write_text(json.dumps(written, indent=2) + "\n")
    return manifest


def log_written(out: Path, manifest: Mapping[str, Any]) -> None:
    """Log, at the end of a builder's command line, where its manifest is and what it says."""
    _logger.info("wrote %s", out / MANIFEST_NAME)
    _logger.info("%s", json.dumps(manifest, indent=2))


def load_manifest(path: Path) -> Dict[str, Any]:
    """Read a data manifest, paths made absolute; ``ValueError`` naming the problem for a bad one."""
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
