"""Zero-shot evaluation of an exported model folder on held-out sets with CLIP_benchmark.

:func:`zero_shot` evaluates every set of a data manifest's ``benchmark`` mapping
(:mod:`cloob_tools.data.manifest`) in one subprocess, ``python -m cloob_tools.zeroshot``, which runs
``open_clip_cloob.benchmark`` (CLIP_benchmark's command line) once per set: CLIP_benchmark reads its
arguments from ``sys.argv``, so it runs in a process of its own and never beside a tool's threads;
one process for all sets pays its imports once.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from open_clip_cloob import benchmark

from . import console

PROG = "python -m cloob_tools.zeroshot"


def benchmark_argv(model_dir: Path, name: str, spec: Mapping[str, Any], output: Path, device: str) -> List[str]:
    """``open_clip_cloob.benchmark`` arguments that evaluate ``model_dir`` on the set ``name`` (a manifest
    entry: its ``root`` and ``task``), metrics to ``output``."""
    return ["eval", "--dataset", f"wds/{name}", "--dataset_root", spec["root"], "--task", spec["task"],
            "--model", f"local-dir:{model_dir}", "--pretrained", "none", "--batch_size", "256",
            "--num_workers", "0", "--recall_k", "1", "5", "--output", str(output), "--quiet",
            *([] if device == "cuda" else ["--no_amp"])]


def zero_shot(model_dir: Path, sets: Mapping[str, Mapping[str, Any]], out: Path, device: str,
              env: Optional[Mapping[str, str]] = None) -> Dict[str, Dict[str, float]]:
    """CLIP_benchmark on every held-out set (in a subprocess with ``env``); returns ``{set: its metrics}``,
    each set's result file kept as ``out/<set>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "cloob_tools.zeroshot", "--model-dir", str(model_dir),
                    "--sets", json.dumps(dict(sets)), "--out", str(out), "--device", device],
                   check=True, env=None if env is None else dict(env))
    return {name: json.loads((out / f"{name}.json").read_text())["metrics"] for name in sets}


def zero_shot_metrics(sets: Mapping[str, Mapping[str, Any]]) -> List[Tuple[str, str, str]]:
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Evaluate one model folder on every set given (the process :func:`zero_shot` starts)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="an exported model folder")
    parser.add_argument("--sets", type=json.loads, required=True,
                        help='JSON: {"NAME": {"root": FOLDER, "task": TASK}, ...}, a manifest\'s benchmark mapping')
    parser.add_argument("--out", type=Path, required=True, help="folder for the result files, one per set")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for name, spec in args.sets.items():
        benchmark.main(benchmark_argv(args.model_dir, name, spec, args.out / f"{name}.json", args.device))


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
