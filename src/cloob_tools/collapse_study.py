"""Why CLOOB collapses: the collapse recipe over seeds and variants, with the Hopfield step logged every step.

The collapse recipe: a 2-layer ViT (``cloob_tools/model_configs/vit32-collapse-cloob.json``: embed and
width 64, patch 8 at 32 px, text context 16, QuickGELU) on 6,000 Fashion-MNIST training images with
captions from 4 templates, ``--loss cloob --scale-hopfield 8 --batch-size 128 --epochs 5 --lr 1e-3
--warmup 5 --wd 0.1 --precision fp32 --workers 0``, one thread. Each variant changes one thing
(:data:`VARIANTS`). Every run goes through ``python -m training.main`` with ``--log-every-n-steps 1``
and ``--report-to tensorboard``, so its tensorboard folder holds the loss and :mod:`training.monitor`'s
diagnostics and collapse warning of every step (:mod:`cloob_tools.results` reads them). Finished runs are skipped; the summary (``summary.md``, ``summary.json`` and
``trajectories.png``: the diagnostics of the first steps of a collapsed and a healthy seed) is
rewritten from every finished run in ``--out``.

    python -m cloob_tools.collapse_study --out collapse-out --variants base --seeds 0,1,2,3,4,5
    python -m cloob_tools.collapse_study --out collapse-out --variants warmup-50,lr-3e-4,wd-0 --seeds 3
"""
import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import console
from .data.fashion_mnist import write_fashion_mnist_dataset
from .plots import pyplot, save_figure
from .reports import markdown_table
from .results import first_warning_step, read_training_logs
from .runs import REPORT_TO, model_config, run_training

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.collapse_study"
MODEL = "vit32-collapse-cloob"
TEMPLATES = ("a photo of a {c}.", "a grayscale photo of a {c}.", "a product photo of the {c}.", "an image of a {c}.")
BATCH_SIZE = 128
RECIPE = ("--loss", "cloob", "--scale-hopfield", "8", "--batch-size", str(BATCH_SIZE), "--lr", "1e-3",
          "--warmup", "5", "--wd", "0.1", "--precision", "fp32", "--workers", "0", "--device", "cpu")
# Variant name -> the flags it adds (argparse keeps the last value of a repeated flag).
VARIANTS: Dict[str, Sequence[str]] = {
    "base": (),
    "warmup-50": ("--warmup", "50"),
    "lr-3e-4": ("--lr", "3e-4"),
    "wd-0": ("--wd", "0"),
    "beta-32": ("--scale-hopfield", "32"),
    "infoloob": ("--loss", "infoloob"),
    "beta-from-spread-2": ("--hopfield-beta-from-spread", "2"),
}
# Diagnostics shown in the summary table, at the last step.
SHOWN = ("mean_cosine_images", "mean_cosine_texts", "positive_minus_negative", "attended_patterns_image_from_images")


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def train(out: Path, data: Path, variant: str, seed: int, epochs: int) -> Path:
    """One ``training.main`` run of the recipe with ``variant``'s flags; returns its folder."""
    name = run_name(variant, seed)
    folder = out / "runs" / name
    if (folder / "finished").exists():
        return folder
    argv = ["--add-model-config", str(model_config(MODEL)), "--model", MODEL, "--train-data", str(data),
            "--dataset-type", "csv", *RECIPE, "--epochs", str(epochs), *VARIANTS[variant], "--seed", str(seed),
            "--log-every-n-steps", "1", "--save-frequency", "0", *REPORT_TO, "--logs", str(out / "runs"),
            "--name", name]
    if folder.exists():  # an interrupted run: start it again
        shutil.rmtree(folder)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    # One thread, as the recipe's run: the trajectory (collapse or not) depends on the arithmetic.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _logger.info("training %s", name)
    run_training(argv, env, log_file=out / "runs" / f"{name}.stdout")
    (folder / "finished").touch()
    return folder


def summarize_run(folder: Path, variant: str, seed: int) -> Dict[str, Any]:
    """Loss curve, diagnostics and first collapse warning of a finished run."""
    logs = read_training_logs(folder)
    diagnostics = logs["diagnostics"]
    return {"variant": variant, "seed": seed, "final_loss": logs["loss_curve"]["loss"][-1],
            "first_warning_step": first_warning_step(logs["collapse_warning"]),
            "final": {key: diagnostics[key]["value"][-1] for key in SHOWN if key in diagnostics},
            "loss_curve": logs["loss_curve"], "diagnostics": diagnostics}


def plot_trajectories(runs: Sequence[Mapping[str, Any]], path: Path, steps: int = 60) -> Optional[Path]:
    """The first ``steps`` steps of the first collapsed and the first healthy base run."""
    base = [run for run in runs if run["variant"] == "base"]
    picks = [next((run for run in base if bool(run["first_warning_step"]) is collapsed), None) for collapsed in (True, False)]
    picks = [run for run in picks if run is not None]
    if not picks:
        return None
    keys = ("loss", "mean_cosine_images", "positive_minus_negative", "attended_patterns_image_from_images",
            "beta_times_spread_images")
    figure, axes = pyplot().subplots(1, len(keys), figsize=(18, 3.4))
    for run in picks:
        label = f"seed {run['seed']} ({'collapsed' if run['first_warning_step'] else 'healthy'})"
        d = run["diagnostics"]
        series = {"loss": (run["loss_curve"]["step"], run["loss_curve"]["loss"]),
                  "beta_times_spread_images": (d["spread_images"]["step"], [
                      b * s for b, s in zip(d["beta_images"]["value"], d["spread_images"]["value"])])}
        for axis, key in zip(axes, keys):
            x, y = series[key] if key in series else (d[key]["step"], d[key]["value"])
            cut = [i for i, step in enumerate(x) if step <= steps]
            axis.plot([x[i] for i in cut], [y[i] for i in cut], marker=".", label=label)
            axis.set_title(key.replace("_", " "), fontsize=9)
            axis.set_xlabel("step")
            axis.grid(True, alpha=0.3)
    axes[3].set_yscale("log")
    axes[4].set_yscale("log")
    axes[0].legend(fontsize=7)
    save_figure(figure, path)
    return path


def write_summary(out: Path, runs: List[Dict[str, Any]]) -> Path:
    """``summary.md`` (collapsed seeds per variant, the last step of every run, the plot) and ``summary.json``."""
    rows = [[run["variant"], run["seed"], f"{run['final_loss']:.5f}",
             run["first_warning_step"] if run["first_warning_step"] is not None else "—",
             *(f"{run['final'][key]:.4g}" if key in run["final"] else "n/a" for key in SHOWN)]
            for run in sorted(runs, key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))]
    counts = []
    for variant in VARIANTS:
        group = [run for run in runs if run["variant"] == variant]
        if group:
            collapsed = sorted(run["seed"] for run in group if run["first_warning_step"] is not None)
            counts.append([variant, f"{len(collapsed)} of {len(group)}", ", ".join(map(str, collapsed)) or "—"])
    plot = plot_trajectories(runs, out / "trajectories.png")
    text = (f"# Collapse runs (`{PROG}`)\n\n" + markdown_table(["variant", "collapsed", "seeds"], counts)
            + "\n\nLast step of every run (diagnostics of the training batch):\n\n"
            + markdown_table(["variant", "seed", "final loss", "collapse warning at step", *SHOWN], rows,
                             "lrrr" + "r" * len(SHOWN))
            + "\n" + (f"\n![first steps]({plot.name})\n" if plot else ""))
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        [{key: run[key] for key in ("variant", "seed", "final_loss", "first_warning_step", "final")} for run in runs],
        indent=1))
    return out / "summary.md"


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="base", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-samples", type=int, default=6000, help="Fashion-MNIST training images")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    data = args.out / f"data-{args.num_samples}"
    csv = data / "train.csv"
    if not csv.exists():
        write_fashion_mnist_dataset(data, "train", args.num_samples, seed=0, templates=TEMPLATES)
    for seed in (int(seed) for seed in args.seeds.split(",")):
        for variant in variants:
            train(args.out, csv, variant, seed, args.epochs)
    runs = []
    for folder in sorted((args.out / "runs").iterdir()):
        if (folder / "finished").exists():
            variant, seed = folder.name.rsplit("-s", 1)
            runs.append(summarize_run(folder, variant, int(seed)))
    summary = write_summary(args.out, runs)
    _logger.info("wrote %s", summary)
    return summary


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
