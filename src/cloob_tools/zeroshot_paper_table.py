"""Markdown table of zero-shot top-1 accuracies next to the CLOOB paper's numbers.

::

    python -m cloob_tools.zeroshot_paper_table results/*.json --output results/table.md

Reads CLIP_benchmark result files (``{"dataset", "model", "pretrained", "task", "metrics": {"acc1",
...}}``) and writes, per evaluated model, one row per dataset of the paper's zero-shot protocol (Fürst et al.
2022, in the paper's order; ``scripts/zeroshot_paper.sh`` runs it) next to the paper's published
numbers: the released YFCC-15M RN50 checkpoint, and RN50 trained on Conceptual Captions (CLOOB and
CLIP, mean of 5 runs, 31 epochs). Results on other datasets follow without paper numbers.
Standard library only, so it runs anywhere the JSON files are.
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

from .reports import markdown_table

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.zeroshot_paper_table"

# CLIP_benchmark dataset name -> (paper name, CLOOB YFCC-15M RN50 released checkpoint,
# CLOOB CC3M RN50, CLIP CC3M RN50), zero-shot top-1 %.
PAPER_RESULTS: Dict[str, Tuple[str, float, float, float]] = {
    "birdsnap": ("Birdsnap", 28.9, 3.06, 2.26),
    "country211": ("Country211", 7.9, 0.67, 0.67),
    "flowers": ("Flowers102", 55.1, 13.45, 12.56),
    "gtsrb": ("GTSRB", 8.1, 6.38, 7.66),
    "ucf101": ("UCF101", 25.3, 22.26, 20.98),
    "cars": ("Stanford Cars", 4.1, 1.23, 0.91),
    "imagenet1k": ("ImageNet", 35.7, 23.97, 20.33),
    "imagenetv2": ("ImageNet-V2", 34.6, 23.59, 20.24),
}
IMAGENET_YFCC_NOTE = ("Paper, YFCC-15M, ImageNet zero-shot top-1 (CLIP → CLOOB): RN50 34.6 → 35.7, "
                      "RN101 35.3 → 37.1, RN50x4 37.7 → 39.0.")
_DATASET_PREFIXES = ("wds/", "vtab/", "tfds/")

Run = Tuple[str, str]  # (model, pretrained)


def dataset_key(dataset: str) -> str:
    """``wds/birdsnap`` -> ``birdsnap``: the same dataset in another CLIP_benchmark loader."""
    for prefix in _DATASET_PREFIXES:
        if dataset.startswith(prefix):
            return dataset_key(dataset[len(prefix):])
    return dataset


def read_results(paths: Iterable[Path]) -> Dict[Run, Dict[str, float]]:
    """Top-1 accuracy in % per (model, pretrained) and dataset, from CLIP_benchmark result files."""
    results: Dict[Run, Dict[str, float]] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        if "acc1" not in result.get("metrics", {}):
            _logger.warning("%s: no acc1 (task %s), skipped", path, result.get("task"))
            continue
        run = (result["model"], result["pretrained"])
        results.setdefault(run, {})[result["dataset"]] = 100.0 * result["metrics"]["acc1"]
    return results


def _cell(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def paper_table(run: Run, accuracies: Dict[str, float]) -> str:
    """One Markdown table for one (model, pretrained) run."""
    measured = {dataset_key(dataset): value for dataset, value in accuracies.items()}
    rows = []
    for key, (name, released, cloob_cc, clip_cc) in PAPER_RESULTS.items():
        value = measured.get(key)
        delta = None if value is None else value - released
        rows.append([name, _cell(value) if value is not None else "not run", _cell(delta, signed=True),
                     _cell(released), _cell(cloob_cc), _cell(clip_cc)])
    rows += [[dataset, _cell(value), "—", "—", "—", "—"] for dataset, value in sorted(accuracies.items())
             if dataset_key(dataset) not in PAPER_RESULTS]
    header = ["dataset", "this run", "Δ vs released", "paper: CLOOB RN50 YFCC-15M (released)", "paper: CLOOB RN50 CC3M",
              "paper: CLIP RN50 CC3M"]
    return f"Zero-shot top-1 accuracy (%) of `{run[0]}` (pretrained `{run[1]}`):\n\n" + markdown_table(
        header, rows, "lrrrrr")


def render(results: Dict[Run, Dict[str, float]]) -> str:
    """All runs' tables plus the note on the other architectures' ImageNet numbers."""
    tables = [paper_table(run, accuracies) for run, accuracies in sorted(results.items())]
    return "\n\n".join(tables + [IMAGENET_YFCC_NOTE]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Markdown table of CLIP_benchmark zero-shot results next to the CLOOB paper's numbers.")
    parser.add_argument("results", nargs="+", type=Path, help="CLIP_benchmark result JSON files")
    parser.add_argument("--output", type=Path, default=None, help="write the table here (default: stdout only)")
    args = parser.parse_args(argv)
    results = read_results(args.results)
    if not results:
        parser.error("none of the files holds a zero-shot classification result (metrics.acc1)")
    text = render(results)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    print(text, end="")
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    main()
