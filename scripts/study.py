#!/usr/bin/env python
"""A study (``make study``): a grid of ``training.main`` runs, zero-shot during training, a report with plots.

The grid is losses × β × seeds × extra flag sets; β multiplies only the losses with a Hopfield step
(``cloob``, ``cloob-infonce``), the others run once per seed and flag set. Every run trains through
``python -m training.main`` with the demo's recipe (``scripts/pipeline.py``) in ``--eval-points``
equal epochs; OpenCLIP writes a checkpoint after each, which is exported
(:mod:`open_clip_cloob.export`), evaluated zero-shot on every held-out set with CLIP_benchmark
(:mod:`open_clip_cloob.benchmark`) and deleted. The last one is also measured
(:mod:`open_clip_cloob.analysis`: effective rank, alignment, uniformity, modality gap).

::

    python scripts/study.py --out study-out                                # what `make study` runs
    python scripts/study.py --losses cloob,clip,infoloob,cloob-infonce --betas 8 --seeds 0,1,2 \\
        --steps 1200 --eval-points 4 --out study-out
    python scripts/study.py --losses cloob --betas 2,4,8,16,32 --out study-out          # a β sweep
    python scripts/study.py --extra-flags "--lr 5e-4" --extra-flags "--lr 2e-3" ...     # a grid over flags
    python scripts/study.py --data other/manifest.json ...         # other data (see scripts/pipeline.py)
    python scripts/study.py --train-data 'shards/{00..09}.tar' --zeroshot bench/cars bench/flowers \\
        --analysis-data 'pairs/{0..1}.tar' --analysis-num-samples 2000 ...
    python scripts/study.py ... --dry-run                          # the plan and its estimated time only

Knobs: ``--losses`` (default: every ``--loss`` of ``training.main``), ``--betas``, ``--seeds``,
``--extra-flags`` (more ``training.main`` flags for every run; repeat it for one grid dimension
per flag set; the flags the study sets itself are refused), ``--steps`` and ``--eval-points``
(steps must be a multiple), ``--batch-size``, ``--model``/``--model-config``, ``--device``,
``--no-validate`` (by default the held-out analysis pairs are also ``--val-data``, so that
``results.jsonl`` holds the validation metrics of every eval point), ``--jobs N`` (N runs at a
time; their evaluations take turns), ``--keep-models`` (keep each run's final model folder),
``--seconds-per-step`` (for the estimate), ``--smoke`` (the demo's small data, 4 steps, 2 points).

Data: by default the demo's (``scripts/make_demo_data.py``), built once into ``OUT/data/``; or a
data manifest (``--data``); or ``--train-data`` (webdataset shards or a CSV) with ``--zeroshot``
folders in CLIP_benchmark's ``wds/`` layout and optional ``--analysis-data`` pairs. A CSV epoch is
one pass over the file, so with a CSV the steps follow from its size: steps = eval points ×
(rows // batch size). CSV files are read with OpenCLIP's default columns (``filepath``, ``title``,
tab-separated); ``--extra-flags`` can change them for training, not for the analysis.

On disk a finished run keeps its logs, tensorboard events and results (about 0.2 MB for the demo's
model); its epoch checkpoints exist from training until each is evaluated (``--eval-points`` of them
at most, e.g. 4 × 40 MB for the demo's model, 4 × 1.2 GB for RN50). ``--dry-run`` builds the demo's
data when it is missing (it names the runs).

Resumable: a run is keyed by its settings (``OUT/runs/<loss>[-b<β>]-s<seed>-<hash>/``); one whose
``result.json`` exists is skipped, an interrupted one continues (training with ``--resume latest``
from its last epoch checkpoint, then the eval points not yet evaluated). Several studies can write
into one folder: every invocation rewrites ``OUT/results.json`` and ``OUT/report.md`` (with PNG
plots) from all finished runs in it. Before it starts, the study prints its plan and estimated time.
"""
import argparse
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import open_clip
import torch

from open_clip_cloob import analysis, cli
from open_clip_cloob.checkpoint import atomic_write
from open_clip_cloob.export import export_model_folder
from pipeline import (MODEL, MODEL_CONFIG, REPO, benchmark_set, build_demo_data, chance_percent, dataset_type,
                      describe_loss, load_manifest, pyplot, read_loss_curve, training_argv, training_env,
                      uses_hopfield, zero_shot, zero_shot_metrics)
from training import params as training_params
from training.monitor import COLLAPSE_TAG, DIAGNOSTIC_PREFIX

_logger = logging.getLogger(__name__)

PROG = "scripts/study.py"
DEFAULT_STEPS, DEFAULT_EVAL_POINTS, DEFAULT_SEEDS = 1200, 4, "0,1,2"
SMOKE = {"steps": 4, "eval_points": 2, "seeds": "0"}
RESULT_NAME, SETTINGS_NAME, TRAINED_NAME = "result.json", "settings.json", "trained.json"
# What training.main logs on logging steps (tensorboard, training.monitor): the Hopfield diagnostics of
# the batch (in this order in the report) and the collapse warning.
DIAGNOSTICS = ("attended_patterns_image_from_images", "attended_patterns_text_from_images",
               "attended_patterns_image_from_texts", "attended_patterns_text_from_texts",
               "mean_cosine_images", "mean_cosine_texts", "positive_minus_negative",
               "spread_images", "spread_texts", "beta_images", "beta_texts")
EFFECTIVE_RANKS = (("effective_rank_image", "effective rank, images"), ("effective_rank_text", "effective rank, texts"))
# Flags the study sets for every run; --extra-flags must not change them.
STUDY_FLAGS = ("--loss", "--hopfield-beta", "--scale-hopfield", "--seed", "--epochs", "--train-num-samples",
               "--train-data", "--dataset-type", "--batch-size", "--save-frequency", "--delete-previous-checkpoint",
               "--resume", "--logs", "--name", "--model", "--add-model-config", "--device", "--val-data",
               "--val-num-samples", "--report-to")
# Rates of the default setup (demo-vit, batch 128, the demo's full data, validation on, CPU) for the
# estimate until runs in the folder have measured their own: medians of
# `python scripts/study.py --losses cloob,clip --seeds 0 --steps 200 --eval-points 2` on the 2-core
# machine on 2026-12-02, under `nice -n 15` beside other jobs (load average 3-4.5): an idle machine is faster.
REFERENCE_RATES = {"device": "cpu", "model": MODEL, "batch_size": 128,
                   "seconds_per_step": 0.26, "overhead_s": 16.0, "eval_point_s": 16.0, "analysis_s": 8.0}

Launcher = Callable[[Sequence[str], Path, Mapping[str, str]], Any]


class RunFailed(ChildProcessError):
    """A training run exited with an error; names the run and the end of its log."""


def launch_training(argv: Sequence[str], log_file: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """Start ``python -m training.main argv`` (in this working directory, where relative data paths point)
    with stdout and stderr to ``log_file``."""
    with open(log_file, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "training.main", *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env))


# ---------------------------------------------------------------------------------------------
# The grid


def parse_list(text: str, kind: Callable[[str], Any], flag: str) -> List[Any]:
    """``"a,b,c"`` as a list of ``kind``; a clear error naming ``flag`` otherwise."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise ValueError(f"{flag} {text!r}: {error}") from error
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{flag} {text!r}: give distinct comma-separated values")
    return values


def check_extra_flags(flags: Sequence[str]) -> None:
    """Refuse flags the study sets itself (the grid, the data, the eval points, the run folders)."""
    for flag in flags:
        if flag.split("=", 1)[0] in STUDY_FLAGS:
            raise ValueError(f"--extra-flags: {flag.split('=', 1)[0]} is set by the study (see {PROG} --help)")


def relative_to(path: str, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside (settings stay valid when the folder moves)."""
    prefix = f"{root}{os.sep}"
    return path[len(prefix):] if path.startswith(prefix) else path


def data_settings(manifest: Mapping[str, Any], out: Path) -> Dict[str, Any]:
    """The part of a run's settings that names its data (paths inside ``out`` relative to it)."""
    return {
        "train_data": relative_to(manifest["train_data"], out),
        "dataset_type": manifest["dataset_type"],
        "zeroshot": {name: relative_to(spec["root"], out) for name, spec in manifest["benchmark"].items()},
        "analysis_data": relative_to(manifest["analysis_data"], out) if manifest.get("analysis_data") else None,
    }


def plan(args: argparse.Namespace, manifest: Mapping[str, Any], out: Path) -> List[Dict[str, Any]]:
    """The settings of every run of the grid: seeds outermost (a study stopped early has every
    configuration at its first seeds), then flag sets, losses, β (Hopfield losses only)."""
    data = data_settings(manifest, out)
    runs = []
    for seed in args.seeds:
        for extra in args.extra_flags:
            for loss in args.losses:
                for beta in args.betas if uses_hopfield(loss) else [None]:
                    runs.append({
                        "loss": loss, "hopfield_beta": beta, "seed": seed, "steps": args.steps,
                        "eval_points": args.eval_points, "batch_size": args.batch_size, "model": args.model,
                        "extra_flags": extra, "device": args.device, "validate": args.validate, "data": data,
                    })
    return runs


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_id(settings: Mapping[str, Any]) -> str:
    """The run's folder name: readable settings, then a hash of all of them."""
    beta = f"-b{settings['hopfield_beta']:g}" if settings["hopfield_beta"] is not None else ""
    return f"{settings['loss']}{beta}-s{settings['seed']}-{settings_hash(settings)}"


def config_key(settings: Mapping[str, Any]) -> str:
    """Runs that differ only in the seed share this key (one row of the report)."""
    return settings_hash({key: value for key, value in settings.items() if key != "seed"})


def run_argv(settings: Mapping[str, Any], manifest: Mapping[str, Any], runs: Path, model_config: Optional[Path]
             ) -> List[str]:
    """``training.main`` flags of one run (:func:`pipeline.training_argv` plus the study's own)."""
    validation = manifest.get("analysis_data") if settings["validate"] else None
    # OpenCLIP reads validation data with the training data's --dataset-type; auto when they differ.
    data_type = manifest["dataset_type"]
    if validation and dataset_type(validation) != data_type:
        data_type = "auto"
    argv = training_argv(settings["loss"], manifest["train_data"], runs, run_id(settings), settings["steps"],
                         settings["batch_size"], settings["device"], epochs=settings["eval_points"],
                         seed=settings["seed"], data_type=data_type, model=settings["model"],
                         model_config=model_config)
    # An epoch checkpoint at every eval point; the run resumes from the last one after an interruption
    # (a new run finds none and starts from scratch); tensorboard holds the diagnostics.
    argv += ["--save-frequency", "1", "--resume", "latest", "--report-to", "tensorboard"]
    if settings["hopfield_beta"] is not None:
        argv += ["--hopfield-beta", f"{settings['hopfield_beta']:g}"]
    if validation:
        argv += ["--val-data", validation]
        if manifest.get("analysis_num_samples"):
            argv += ["--val-num-samples", str(manifest["analysis_num_samples"])]
    return argv + list(settings["extra_flags"])


# ---------------------------------------------------------------------------------------------
# One run: train, evaluate every epoch checkpoint, analyse the last, collect


class Study:
    """The shared state of one invocation: the output folder, the data, how training starts."""

    def __init__(self, args: argparse.Namespace, manifest: Mapping[str, Any], out: Path, launcher: Launcher,
                 command: str):
        self.args, self.manifest, self.out, self.launcher, self.command = args, manifest, out, launcher, command
        self.runs = out / "runs"
        self.model_config = args.model_config
        # CLIP_benchmark reads its arguments from sys.argv and the models share this process: one
        # evaluation at a time, whatever number of trainings run beside it.
        self.evaluation = threading.Lock()

    def folder(self, settings: Mapping[str, Any]) -> Path:
        return self.runs / run_id(settings)

    def execute(self, settings: Mapping[str, Any]) -> Dict[str, Any]:
        """Bring one run to its ``result.json`` from wherever it stopped; returns the result."""
        folder = self.folder(settings)
        if (folder / RESULT_NAME).is_file():
            return read_json(folder / RESULT_NAME)
        if folder.exists() and not self._resumable(folder, settings):
            _logger.warning("[study] %s: its remaining eval points lack their checkpoints; training it again",
                            folder.name)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / SETTINGS_NAME, {"settings": settings, "argv": self.argv(settings)})
        if not (folder / TRAINED_NAME).is_file():
            self._train(settings, folder)
        with self.evaluation:
            points = [self._evaluate_point(settings, folder, epoch)
                      for epoch in range(1, settings["eval_points"] + 1)]
            measured, seconds = self._analyse(settings, folder)
        sets = {name: {"task": spec["task"], "chance_percent": chance_percent(spec)}
                for name, spec in self.manifest["benchmark"].items()}
        result = collect_run(folder, settings, sets, points, measured, seconds, self.command)
        write_json(folder / RESULT_NAME, result)
        for leftover in (folder / "checkpoints").glob("*.pt"):  # step checkpoints, if --extra-flags asked for them
            leftover.unlink()
        if not self.args.keep_models:
            shutil.rmtree(folder / "final-model", ignore_errors=True)
        return result

    def argv(self, settings: Mapping[str, Any]) -> List[str]:
        """The ``training.main`` flags of a run of this invocation's data."""
        return run_argv(settings, self.manifest, self.runs, self.model_config)

    def _resumable(self, folder: Path, settings: Mapping[str, Any]) -> bool:
        """Whether every eval point still to do has its checkpoint (or training has not finished)."""
        if not (folder / TRAINED_NAME).is_file():
            return True
        last = settings["eval_points"]
        pending = [epoch for epoch in range(1, last + 1) if not point_file(folder, epoch).is_file()]
        if not pending:
            return (folder / "final-model" / "open_clip_config.json").is_file()
        return all(checkpoint_file(folder, epoch).is_file() for epoch in pending)

    def _train(self, settings: Mapping[str, Any], folder: Path) -> None:
        argv = self.argv(settings)
        log = folder / "stdout.log"
        _logger.info("[study] training %s: python -m training.main %s", folder.name, shlex.join(argv))
        began = time.monotonic()
        process = self.launcher(argv, log, training_env(settings["device"], self.args.jobs))
        try:
            status = process.wait()
        finally:
            if process.poll() is None:  # interrupted: stop the run (it saves a checkpoint on SIGTERM)
                process.send_signal(signal.SIGTERM)
                process.wait()
        if status != 0:
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RunFailed(f"{folder.name}: training.main exited with status {status}; log {log}:\n{tail}")
        write_json(folder / TRAINED_NAME, {"seconds": time.monotonic() - began})

    def _evaluate_point(self, settings: Mapping[str, Any], folder: Path, epoch: int) -> Dict[str, Any]:
        """Zero-shot of the checkpoint after ``epoch`` (exported, evaluated, deleted); cached in zeroshot/."""
        marker = point_file(folder, epoch)
        if marker.is_file():
            return read_json(marker)
        last = epoch == settings["eval_points"]
        began = time.monotonic()
        model_dir = folder / ("final-model" if last else "model")
        export_model_folder(checkpoint_file(folder, epoch), model_dir, settings["model"])
        metrics = zero_shot(model_dir, self.manifest["benchmark"], folder / "zeroshot" / f"epoch_{epoch}",
                            settings["device"])
        point = {"epoch": epoch, "step": epoch * steps_per_point(settings), "metrics": metrics,
                 "seconds": time.monotonic() - began}
        write_json(marker, point)
        if not last:
            shutil.rmtree(model_dir)
        checkpoint_file(folder, epoch).unlink()
        headline = zero_shot_metrics(self.manifest["benchmark"])
        _logger.info("[study] %s: step %d evaluated (%s)", folder.name, point["step"],
                     ", ".join(f"{label} {100 * metrics[name][key]:.1f}" for name, key, label in headline))
        return point

    def _analyse(self, settings: Mapping[str, Any], folder: Path) -> Tuple[Optional[Dict[str, Any]], float]:
        """:func:`open_clip_cloob.analysis.analyze_model` of the final model on the held-out pairs, if any."""
        data = self.manifest.get("analysis_data")
        if not data:
            return None, 0.0
        began = time.monotonic()
        measured = analysis.analyze_model(f"local-dir:{folder / 'final-model'}", data, device=settings["device"],
                                          dataset_type=dataset_type(data))
        measured["model"], measured["data"] = "final-model", relative_to(measured["data"], self.out)
        return measured, time.monotonic() - began


def steps_per_point(settings: Mapping[str, Any]) -> int:
    return settings["steps"] // settings["eval_points"]


def checkpoint_file(folder: Path, epoch: int) -> Path:
    return folder / "checkpoints" / f"epoch_{epoch}.pt"


def point_file(folder: Path, epoch: int) -> Path:
    return folder / "zeroshot" / f"epoch_{epoch}.json"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error}); delete it to redo that step") from error


def write_json(path: Path, content: Any) -> None:
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")


def read_scalars(tensorboard: Path) -> Dict[str, Dict[str, List[float]]]:
    """Every scalar tag of a run's tensorboard folder: ``{tag: {"step": [...], "value": [...]}}``.

    A run resumed from a checkpoint writes the steps after it again; tensorboard's reader drops the
    orphaned ones of the interrupted attempt.
    """
    if not tensorboard.is_dir():
        return {}
    reader = cli.require("tensorboard.backend.event_processing.event_accumulator", extra="demo",
                         purpose="reading the runs' tensorboard logs needs tensorboard")
    events = reader.EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {"step": [event.step for event in events.Scalars(tag)],
                  "value": [event.value for event in events.Scalars(tag)]}
            for tag in events.Tags()["scalars"]}


def read_validation(results_jsonl: Path) -> List[Dict[str, Any]]:
    """OpenCLIP's ``results.jsonl``: the metrics of every evaluation, by epoch (a repeated epoch: the last)."""
    if not results_jsonl.is_file():
        return []
    by_epoch = {}
    for line in results_jsonl.read_text().splitlines():
        if line.strip():
            metrics = json.loads(line)
            if "collapse_warning" not in metrics:  # training.monitor's line, not an evaluation
                by_epoch[metrics.get("epoch")] = metrics
    return [by_epoch[epoch] for epoch in sorted(by_epoch, key=lambda epoch: (epoch is None, epoch))]


def collect_run(folder: Path, settings: Mapping[str, Any], sets: Mapping[str, Any], points: List[Dict[str, Any]],
                measured: Optional[Dict[str, Any]], analysis_s: float, command: str) -> Dict[str, Any]:
    """What ``result.json`` holds: settings, curves, diagnostics, the zero-shot sets (task, chance) and
    their metrics at every eval point, the final analysis."""
    scalars = read_scalars(folder / "tensorboard")
    return {
        "run": folder.name,
        "settings": dict(settings),
        "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loss_curve": read_loss_curve(folder / "out.log", settings["batch_size"]),
        "diagnostics": {tag[len(DIAGNOSTIC_PREFIX):]: curve for tag, curve in scalars.items()
                        if tag.startswith(DIAGNOSTIC_PREFIX)},
        "collapse_warning": scalars.get(COLLAPSE_TAG),
        "validation": read_validation(folder / "checkpoints" / "results.jsonl"),
        "zeroshot_sets": sets,
        "zeroshot": points,
        "analysis": measured,
        "timings_s": {"train": read_json(folder / TRAINED_NAME)["seconds"],
                      "eval_points": [point["seconds"] for point in points], "analysis": analysis_s},
    }


def finished_results(runs: Path) -> List[Dict[str, Any]]:
    """Every ``result.json`` under ``runs``, oldest first."""
    results = [read_json(path) for path in sorted(runs.glob(f"*/{RESULT_NAME}"))]
    return sorted(results, key=lambda result: result["finished"])


# ---------------------------------------------------------------------------------------------
# Estimate


def measured_rates(results: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> Optional[Dict[str, float]]:
    """Means over finished runs of the same model, batch, device and data: seconds per step (each run's
    median of its logged step times), the rest of a training process (start, validation), an eval
    point, the analysis. Runs of these settings again are estimated at what these took in all."""
    same = [result for result in results if all(result["settings"][key] == settings[key] for key in
                                                  ("model", "batch_size", "device", "data", "validate"))]
    if not same:
        return None
    per_step = [statistics.median(result["loss_curve"]["seconds_per_step"]) for result in same]
    return {
        "seconds_per_step": statistics.fmean(per_step),
        "overhead_s": statistics.fmean(max(0.0, result["timings_s"]["train"] - rate * result["settings"]["steps"])
                                       for result, rate in zip(same, per_step)),
        "eval_point_s": statistics.fmean(s for result in same for s in result["timings_s"]["eval_points"]),
        "analysis_s": statistics.fmean(result["timings_s"]["analysis"] for result in same),
    }


def estimate_seconds(todo: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]],
                     seconds_per_step: Optional[float]) -> Tuple[Optional[float], str]:
    """Estimated wall time of the runs ``todo`` (one after another) and where the rates come from."""
    if not todo:
        return 0.0, "nothing to run"
    total, sources = 0.0, set()
    for settings in todo:
        rates = measured_rates(results, settings)
        source = "finished runs of this folder"
        if rates is None and all(settings[key] == REFERENCE_RATES[key] for key in ("device", "model", "batch_size")):
            rates, source = REFERENCE_RATES, "the reference measurement in scripts/study.py"
        if seconds_per_step is not None:
            rates = {**(rates or {"overhead_s": 0.0, "eval_point_s": 0.0, "analysis_s": 0.0}),
                     "seconds_per_step": seconds_per_step}
            source = "--seconds-per-step" + ("" if rates["eval_point_s"] else " (training only)")
        if rates is None:
            return None, (f"no finished run of model {settings['model']}, batch {settings['batch_size']} on "
                          f"{settings['device']} in this folder yet: pass --seconds-per-step")
        sources.add(source)
        total += (settings["steps"] * rates["seconds_per_step"] + rates["overhead_s"]
                  + settings["eval_points"] * rates["eval_point_s"] + rates["analysis_s"])
    return total, ", ".join(sorted(sources))


def describe_plan(todo: Sequence[Mapping[str, Any]], done: int, results: Sequence[Mapping[str, Any]],
                  args: argparse.Namespace) -> str:
    seconds, source = estimate_seconds(todo, results, args.seconds_per_step)
    steps = sum(settings["steps"] for settings in todo)
    when = "unknown" if seconds is None else f"{seconds / 3600:.2f} h ({seconds:.0f} s)"
    jobs = f", with --jobs {args.jobs} about 1/{args.jobs} of that at best" if args.jobs > 1 and seconds else ""
    return (f"{len(todo) + done} runs in the grid, {done} finished, {len(todo)} to run ({steps} training steps "
            f"on {args.device}); estimated wall time {when}{jobs}; from {source}")


# ---------------------------------------------------------------------------------------------
# Report


def fmt_cell(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± sample std (n=k)`` of the values given; ``n/a`` for none."""
    values = [scale * value for value in values if value is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def group_configs(results: Sequence[Mapping[str, Any]]) -> List[List[Mapping[str, Any]]]:
    """Runs grouped by their settings but the seed; ordered by loss (the baseline first), β, the rest."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for result in results:
        groups.setdefault(config_key(result["settings"]), []).append(result)
    order = [training_params.OPENCLIP_LOSS, *training_params.CLOOB_LOSSES]

    def key(group):
        settings = group[0]["settings"]
        loss = settings["loss"]
        return (order.index(loss) if loss in order else len(order), loss, settings["hopfield_beta"] or 0,
                json.dumps(settings, sort_keys=True))

    return [sorted(group, key=lambda result: result["settings"]["seed"]) for group in sorted(groups.values(), key=key)]


def config_labels(configs: Sequence[Sequence[Mapping[str, Any]]]) -> List[str]:
    """Short labels: the loss, β, and whatever other setting differs between the configurations shown."""
    varying = {key for key in configs[0][0]["settings"] if key not in ("seed", "loss", "hopfield_beta", "data")
               and len({json.dumps(group[0]["settings"][key]) for group in configs}) > 1}
    labels = []
    for group in configs:
        settings = group[0]["settings"]
        parts = [settings["loss"]] + ([f"β={settings['hopfield_beta']:g}"] if settings["hopfield_beta"] else [])
        for key in sorted(varying):
            value = settings[key]
            parts.append(shlex.join(value) if key == "extra_flags" else f"{key}={value}")
        labels.append(" ".join(part for part in parts if part))
    return labels


def aligned(curves: Sequence[Tuple[Sequence[float], Sequence[float]]]) -> Tuple[np.ndarray, np.ndarray]:
    """The steps all curves share and their values there: ``[steps]``, ``[curves, steps]``."""
    steps = sorted(set.intersection(*(set(curve[0]) for curve in curves)))
    values = np.array([[dict(zip(*curve))[step] for step in steps] for curve in curves], dtype=float)
    return np.array(steps), values


def plot_band(axis, curves, label: str, color: str, marker: Optional[str] = None) -> None:
    """Mean over seeds as a line, min–max over seeds as a band."""
    steps, values = aligned(curves)
    if not len(steps):
        return
    axis.plot(steps, values.mean(axis=0), color=color, marker=marker, label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        axis.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2)


def panel_grid(count: int, columns: int, size: Tuple[float, float] = (4.2, 3.3)):
    plt = pyplot()
    rows = math.ceil(count / columns)
    columns = min(columns, count)
    figure, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return plt, figure, list(axes.flat[:count])


def save(plt, figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def plot_learning_curves(configs, labels, colors, path: Path) -> str:
    """Training loss against the step, one panel per loss (their scales differ), one band per configuration."""
    losses = list(dict.fromkeys(group[0]["settings"]["loss"] for group in configs))
    plt, figure, axes = panel_grid(len(losses), 2, (6, 3.8))
    for axis, loss in zip(axes, losses):
        for group, label, color in zip(configs, labels, colors):
            if group[0]["settings"]["loss"] == loss:
                plot_band(axis, [(r["loss_curve"]["step"], r["loss_curve"]["loss"]) for r in group], label, color)
        axis.set_title(f"{loss}: {describe_loss(loss)}", fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    return save(plt, figure, path)


def plot_zero_shot(configs, labels, colors, metrics, sets, path: Path) -> str:
    """Every headline zero-shot metric against the step: one band per configuration, chance dashed."""
    plt, figure, axes = panel_grid(len(metrics), 3)
    for axis, (name, key, title) in zip(axes, metrics):
        for group, label, color in zip(configs, labels, colors):
            curves = [([point["step"] for point in r["zeroshot"]],
                       [100 * point["metrics"][name][key] for point in r["zeroshot"]]) for r in group]
            plot_band(axis, curves, label, color, marker="o")
        chance = sets[name]["chance_percent"]
        if chance is not None:
            axis.axhline(chance, color="black", linestyle="--", linewidth=1, label="chance")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel("%")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return save(plt, figure, path)


def plot_diagnostics(configs, labels, colors, keys, path: Path) -> str:
    """The Hopfield diagnostics of the training batches against the step, one panel per diagnostic."""
    plt, figure, axes = panel_grid(len(keys), 4, (4.2, 3.2))
    for axis, key in zip(axes, keys):
        for group, label, color in zip(configs, labels, colors):
            curves = [(r["diagnostics"][key]["step"], r["diagnostics"][key]["value"]) for r in group
                      if key in r["diagnostics"]]
            if curves:
                plot_band(axis, curves, label, color)
        axis.set_title(key.replace("_", " "), fontsize=9)
        axis.set_xlabel("step")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return save(plt, figure, path)


def final_values(group, name: str, key: str) -> List[Optional[float]]:
    """The metric at each run's last eval point (a zero-shot set) or in its analysis (``name`` None)."""
    if name is None:
        return [r["analysis"][key] if r["analysis"] else None for r in group]
    return [r["zeroshot"][-1]["metrics"][name][key] for r in group]


def final_columns(metrics) -> List[Tuple[Optional[str], str, str, float]]:
    """(set or None for the analysis, key, label, scale) of every final-table column."""
    return ([(name, key, f"{label} (%)", 100.0) for name, key, label in metrics]
            + [(None, key, label, 1.0) for key, label in EFFECTIVE_RANKS])


def plot_final(configs, labels, colors, metrics, sets, path: Path) -> str:
    """The final value of every column of the table: a bar per configuration (mean), a dot per seed,
    chance dashed."""
    columns = final_columns(metrics)
    plt, figure, axes = panel_grid(len(columns), 3, (max(4.2, 0.55 * len(configs) + 1.5), 3.6))
    for axis, (name, key, title, scale) in zip(axes, columns):
        for index, (group, color) in enumerate(zip(configs, colors)):
            values = [scale * value for value in final_values(group, name, key) if value is not None]
            if values:
                axis.bar(index, statistics.mean(values), color=color, alpha=0.6)
                axis.scatter([index] * len(values), values, color="black", s=10, zorder=3)
        if name is not None and sets[name]["chance_percent"] is not None:
            axis.axhline(sets[name]["chance_percent"], color="black", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(configs)), labels, rotation=45, ha="right", fontsize=7)
        axis.set_title(title, fontsize=10)
        axis.grid(True, axis="y", alpha=0.3)
    return save(plt, figure, path)


def beta_sweeps(configs) -> Dict[str, List[int]]:
    """Configurations that differ only in β, with at least two β: {label of the rest: config indices}."""
    sweeps: Dict[str, List[int]] = {}
    for index, group in enumerate(configs):
        settings = group[0]["settings"]
        if settings["hopfield_beta"] is not None:
            rest = {key: value for key, value in settings.items() if key not in ("seed", "hopfield_beta")}
            sweeps.setdefault(json.dumps(rest, sort_keys=True), []).append(index)
    return {key: indices for key, indices in sweeps.items() if len(indices) > 1}


def plot_beta_sweeps(configs, labels, sweeps, metrics, path: Path) -> str:
    """Final values against β (log scale): mean over seeds as a line, every seed a dot."""
    columns = final_columns(metrics)
    plt, figure, axes = panel_grid(len(columns), 3)
    for axis, (name, key, title, scale) in zip(axes, columns):
        for color_index, indices in enumerate(sweeps.values()):
            color = f"C{color_index}"
            betas, means = [], []
            for index in sorted(indices, key=lambda i: configs[i][0]["settings"]["hopfield_beta"]):
                beta = configs[index][0]["settings"]["hopfield_beta"]
                values = [scale * v for v in final_values(configs[index], name, key) if v is not None]
                if values:
                    axis.scatter([beta] * len(values), values, color=color, s=10)
                    betas.append(beta)
                    means.append(statistics.mean(values))
            label = re.sub(r" β=\S+", "", labels[indices[0]])
            axis.plot(betas, means, color=color, marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("Hopfield β")
        axis.set_title(title, fontsize=10)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return save(plt, figure, path)


def final_table(configs, labels, metrics) -> str:
    """Markdown: one row per configuration, mean ± std over seeds of every final zero-shot metric and
    the effective ranks."""
    columns = final_columns(metrics)
    lines = ["| configuration | steps | seeds | " + " | ".join(label for _, _, label, _ in columns) + " |",
             "|---|---:|---|" + "---:|" * len(columns)]
    for group, label in zip(configs, labels):
        cells = [fmt_cell(final_values(group, name, key), scale, 1 if scale == 100 else 2)
                 for name, key, _, scale in columns]
        seeds = ",".join(str(r["settings"]["seed"]) for r in group)
        lines.append(f"| {label} | {group[0]['settings']['steps']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def analysis_table(configs, labels) -> str:
    """Markdown: every measure of :data:`open_clip_cloob.analysis.METRICS`, mean ± std over seeds."""
    lines = ["| measure | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for key, name in analysis.METRICS:
        lines.append(f"| {name} | " + " | ".join(fmt_cell(final_values(group, None, key), digits=3)
                                                 for group in configs) + " |")
    return "\n".join(lines) + "\n"


def collapse_lines(results) -> str:
    """Markdown: the runs whose ``train/collapse_warning`` went above 0, with the first such step."""
    logged = [r for r in results if r["collapse_warning"] is not None]
    if not logged:
        return "n/a: no run logged `train/collapse_warning` (a `training.main` without the collapse check).\n"
    lines = []
    for r in logged:
        warning = r["collapse_warning"]
        steps = [step for step, value in zip(warning["step"], warning["value"]) if value > 0]
        if steps:
            lines.append(f"- `{r['run']}`: first warning at step {steps[0]}\n")
    return "".join(lines) or f"None of the {len(logged)} runs that check for collapse warned.\n"


def data_section(index: int, results: Sequence[Mapping[str, Any]], report: Path) -> str:
    """The report's section for the runs of one data set: tables and plots."""
    sets = results[0]["zeroshot_sets"]
    configs = group_configs(results)
    labels = config_labels(configs)
    palette = pyplot().get_cmap("tab10" if len(configs) <= 10 else "tab20")
    colors = [palette(i % palette.N) for i in range(len(configs))]
    metrics = zero_shot_metrics(sets)
    suffix = "" if index == 1 else f"-data{index}"
    data = results[0]["settings"]["data"]
    plots = {
        "loss": plot_learning_curves(configs, labels, colors, report / f"loss_curves{suffix}.png"),
        "zeroshot": plot_zero_shot(configs, labels, colors, metrics, sets, report / f"zeroshot_curves{suffix}.png"),
        "final": plot_final(configs, labels, colors, metrics, sets, report / f"final{suffix}.png"),
    }
    keys = [key for key in DIAGNOSTICS if any(key in r["diagnostics"] for r in results)]
    keys += sorted({key for r in results for key in r["diagnostics"]} - set(keys))
    if keys:
        plot = plot_diagnostics(configs, labels, colors, keys, report / f"diagnostics{suffix}.png")
        diagnostics = f"![Hopfield diagnostics]({plot})\n"
    else:
        diagnostics = ("n/a: no run logged `train/hopfield/*` scalars (a `training.main` without the Hopfield "
                       "diagnostics).\n")
    sweeps = beta_sweeps(configs)
    sweep = ("\n### Final values against β\n\n![β sweep](" + plot_beta_sweeps(
        configs, labels, sweeps, metrics, report / f"beta_sweep{suffix}.png") + ")\n") if sweeps else ""
    analysis_md = analysis_table(configs, labels) if any(r["analysis"] for r in results) else \
        "n/a: the data has no held-out analysis pairs (`analysis_data`).\n"
    set_lines = ", ".join(f"`{name}` ({sets[name]['task'].replace('zeroshot_', '')})" for name in sets)
    return f"""## Data {index}: `{data['train_data']}` ({data['dataset_type']})

Zero-shot sets (CLIP_benchmark): {set_lines}. Held-out analysis pairs: `{data['analysis_data'] or 'none'}`.

### Final zero-shot (last eval point) and effective rank

Mean ± sample standard deviation over seeds; n = runs in the cell.

{final_table(configs, labels, metrics)}
![final values]({plots['final']})
{sweep}
### Learning curves (training loss; line = mean over seeds, band = min–max)

![learning curves]({plots['loss']})

### Zero-shot during training (line = mean over seeds, band = min–max)

![zero-shot during training]({plots['zeroshot']})

### Hopfield diagnostics of the training batches

{diagnostics}
### Representation analysis of the final models (held-out pairs, `open_clip_cloob.analysis`)

{analysis_md}
### Collapse warnings

{collapse_lines(results)}"""


def write_report(out: Path, results: Sequence[Mapping[str, Any]], smoke: bool) -> Path:
    """``results.json`` (every finished run) and ``report.md`` with its plots, one section per data set."""
    by_data: Dict[str, List[Mapping[str, Any]]] = {}
    for result in results:
        by_data.setdefault(json.dumps(result["settings"]["data"], sort_keys=True), []).append(result)
    commands = list(dict.fromkeys(result["command"] for result in results))
    write_json(out / "results.json", {"runs": list(results), "commands": commands})
    sections = [data_section(index, group, out) for index, group in enumerate(by_data.values(), start=1)]
    run_rows = "\n".join(
        f"| `{r['run']}` | {r['settings']['loss']} | {r['settings']['hopfield_beta'] or ''} | "
        f"{r['settings']['seed']} | {r['settings']['steps']} | {r['timings_s']['train']:.0f} | "
        f"{statistics.median(r['loss_curve']['seconds_per_step']):.3f} | {r['finished']} |" for r in results)
    banner = ("**Smoke run** (`--smoke`): a few steps on a data subset to check the pipeline; the numbers mean "
              "nothing.\n\n" if smoke else "")
    command_lines = "\n".join(commands)
    text = f"""# Loss study: {len(results)} runs

{banner}Generated by `{PROG}` on {time.strftime('%Y-%m-%d')} from every finished run in this folder; every
number was measured by those runs. Each run trains through `training.main` and is evaluated
zero-shot with CLIP_benchmark after each of its equal epochs (the eval points). Bands and ± are
over seeds; n is the number of runs behind a value.

{"".join(sections)}
## Runs

| run | loss | β | seed | steps | training s | s/step (median) | finished |
|---|---|---:|---:|---:|---:|---:|---|
{run_rows}

## Commands

```
{command_lines}
```
"""
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    grid = parser.add_argument_group("grid")
    grid.add_argument("--losses", default=",".join(training_params.LOSSES),
                      help="--loss values of training.main, comma-separated (default: all it offers)")
    grid.add_argument("--betas", default=f"{training_params.DEFAULT_HOPFIELD_BETA:g}",
                      help="Hopfield β values, for the losses with a Hopfield step only (default: %(default)s)")
    grid.add_argument("--seeds", default=None, help=f"default: {DEFAULT_SEEDS} ({SMOKE['seeds']} with --smoke)")
    grid.add_argument("--extra-flags", action="append", default=None, metavar="FLAGS",
                      help="more training.main flags for every run, one string; repeat for a grid over flag sets")
    grid.add_argument("--steps", type=int, default=None,
                      help=f"training steps per run (default {DEFAULT_STEPS}; {SMOKE['steps']} with --smoke; "
                           "with a CSV: eval points × rows // batch)")
    grid.add_argument("--eval-points", type=int, default=None,
                      help=f"zero-shot evaluations per run, evenly spaced, the last at the end (default "
                           f"{DEFAULT_EVAL_POINTS}; {SMOKE['eval_points']} with --smoke)")
    grid.add_argument("--batch-size", type=int, default=128)
    grid.add_argument("--model", default=MODEL, help="OpenCLIP model name (default: the demo's %(default)s)")
    grid.add_argument("--model-config", type=Path, default=None,
                      help=f"its config JSON, registered for training and export (default: {MODEL_CONFIG.name} "
                           f"for {MODEL})")
    grid.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    grid.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                      help="pass the analysis pairs as --val-data (validation metrics in results.jsonl at every "
                           "eval point)")
    data = parser.add_argument_group("data (default: the demo's, built into OUT/data)")
    data.add_argument("--data", type=Path, default=None, metavar="MANIFEST",
                      help="a data manifest (scripts/pipeline.py; scripts/make_demo_data.py writes one)")
    data.add_argument("--train-data", default=None, help="webdataset shard spec or CSV (with --zeroshot)")
    data.add_argument("--zeroshot", type=Path, nargs="+", default=None, metavar="FOLDER",
                      help="CLIP_benchmark wds/ folders, named by their folder name")
    data.add_argument("--analysis-data", default=None, help="held-out image-text pairs (webdataset spec or CSV)")
    data.add_argument("--analysis-num-samples", type=int, default=None,
                      help="pairs in --analysis-data (needed for validation on webdataset pairs)")
    run = parser.add_argument_group("running")
    run.add_argument("--out", type=Path, default=REPO / "study-out", help="study folder (default: %(default)s)")
    run.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    run.add_argument("--keep-models", action="store_true", help="keep each run's final model folder")
    run.add_argument("--seconds-per-step", type=float, default=None,
                     help="for the time estimate (default: measured by the finished runs in OUT, else the "
                          "reference measurement of the default setup on CPU)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and estimate; train nothing")
    run.add_argument("--smoke", action="store_true",
                     help="the demo's small data, few steps: checks the pipeline; the numbers mean nothing")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The study's command line, checked: lists parsed, the grid's losses offered by training.main."""
    parser = build_parser()
    args = parser.parse_args(argv)
    smoke = args.smoke
    try:
        args.seeds = parse_list(args.seeds or (SMOKE["seeds"] if smoke else DEFAULT_SEEDS), int, "--seeds")
        args.betas = parse_list(args.betas, float, "--betas")
        args.losses = parse_list(args.losses, str, "--losses")
        args.extra_flags = [shlex.split(flags) for flags in (args.extra_flags or [""])]
        for flags in args.extra_flags:
            check_extra_flags(flags)
    except ValueError as error:
        parser.error(str(error))
    unknown = [loss for loss in args.losses if loss not in training_params.LOSSES]
    if unknown:
        parser.error(f"--losses {','.join(unknown)}: not a --loss of training.main here "
                     f"(it offers {', '.join(training_params.LOSSES)})")
    if any(beta <= 0 for beta in args.betas):
        parser.error("--betas must be > 0")
    if args.eval_points is None:
        args.eval_points = SMOKE["eval_points"] if smoke else DEFAULT_EVAL_POINTS
    if args.eval_points < 1 or args.jobs < 1 or args.batch_size < 1:
        parser.error("--eval-points, --jobs and --batch-size must be at least 1")
    if args.model_config is None and args.model == MODEL:
        args.model_config = MODEL_CONFIG
    if sum(option is not None for option in (args.data, args.train_data)) > 1:
        parser.error("give --data or --train-data, not both")
    if (args.train_data is None) != (args.zeroshot is None):
        parser.error("--train-data and --zeroshot go together")
    return args


def study_data(args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    """The manifest of the study's data: --data, --train-data ..., or the demo's (built once in ``out``)."""
    if args.data is not None:
        return load_manifest(args.data)
    if args.train_data is not None:
        names = [root.name for root in args.zeroshot]
        if len(set(names)) != len(names):
            raise ValueError(f"--zeroshot: the sets are named by their folders, and {names} repeat a name")
        return {"train_data": args.train_data, "dataset_type": dataset_type(args.train_data),
                "benchmark": {root.name: benchmark_set(root) for root in args.zeroshot},
                "analysis_data": args.analysis_data, "analysis_num_samples": args.analysis_num_samples}
    size = "smoke" if args.smoke else "full"
    manifest = out / "data" / size / "manifest.json"
    if not manifest.is_file():
        _logger.info("[study] building the demo's data (%s) into %s", size, manifest.parent)
        build_demo_data(manifest.parent, size)
    return load_manifest(manifest)


def resolve_steps(args: argparse.Namespace, manifest: Mapping[str, Any]) -> int:
    """The steps per run: --steps; with a CSV the file's size fixes them (an epoch is one pass over it)."""
    if manifest["dataset_type"] == "csv":
        import pandas

        rows = len(pandas.read_csv(manifest["train_data"], sep="\t"))
        steps = args.eval_points * (rows // args.batch_size)
        if steps == 0 or args.steps not in (None, steps):
            raise ValueError(f"{manifest['train_data']}: an epoch of this CSV is {rows} rows // batch "
                             f"{args.batch_size} = {rows // args.batch_size} steps, so {args.eval_points} eval "
                             f"points mean {steps} steps (--steps {args.steps}); use webdataset shards for "
                             "other step counts")
        return steps
    steps = args.steps or (SMOKE["steps"] if args.smoke else DEFAULT_STEPS)
    if steps % args.eval_points:
        raise ValueError(f"--steps {steps} is not a multiple of --eval-points {args.eval_points}")
    return steps


def run_grid(study: Study, todo: Sequence[Mapping[str, Any]], jobs: int) -> List[str]:
    """Run ``todo`` (``jobs`` trainings at a time); returns the failures (the other runs go on)."""
    failures = []

    def one(settings):
        try:
            study.execute(settings)
            results = finished_results(study.runs)
            remaining = [s for s in todo if not (study.folder(s) / RESULT_NAME).is_file()]
            _logger.info("[study] %s finished; %s", run_id(settings),
                         describe_plan(remaining, len(results), results, study.args))
        except RunFailed as error:
            _logger.error("[study] %s", error)
            failures.append(str(error).split(";")[0])

    if jobs == 1:
        for settings in todo:
            one(settings)
        return failures
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        for future in [pool.submit(one, settings) for settings in todo]:
            future.result()
    finally:  # after an interruption or an error: start no further runs
        pool.shutdown(cancel_futures=True)
    return failures


def main(argv: Optional[Sequence[str]] = None, launcher: Launcher = launch_training) -> Dict[str, Any]:
    """Run the study; returns what ``results.json`` holds. ``launcher`` starts a training process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.model_config is not None:
        open_clip.add_model_config(args.model_config)
    manifest = study_data(args, out)
    args.steps = resolve_steps(args, manifest)
    grid = plan(args, manifest, out)
    if args.device == "cpu" and args.jobs > 1:  # evaluations here share the cores with trainings
        torch.set_num_threads(int(training_env(args.device, args.jobs).get("OMP_NUM_THREADS", 1)))
    study = Study(args, manifest, out, launcher, shlex.join(["python", PROG, *argv]))
    for settings in grid:  # training.main's own parser checks every command line before anything runs
        training_params.parse_args(study.argv(settings))
    results = finished_results(study.runs)
    todo = [settings for settings in grid if not (study.folder(settings) / RESULT_NAME).is_file()]
    _logger.info("[study] %s", describe_plan(todo, len(grid) - len(todo), results, args))
    if args.dry_run:
        for settings in todo:
            _logger.info("[study] to run: %s", run_id(settings))
        return {"runs": results, "todo": todo, "estimate_s": estimate_seconds(todo, results, args.seconds_per_step)[0]}
    failures = run_grid(study, todo, args.jobs)
    results = finished_results(study.runs)
    if results:
        report = write_report(out, results, args.smoke)
        _logger.info("[study] %d finished runs in %s", len(results), report)
    if failures:
        raise RunFailed(f"{len(failures)} of {len(todo)} runs failed (the same command again retries them): "
                        + "; ".join(failures))
    return read_json(out / "results.json")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s | %(message)s", datefmt="%H:%M:%S")
    for name in (__name__, "open_clip_cloob"):
        logging.getLogger(name).setLevel(logging.INFO)
    sys.exit(cli.run(main, PROG, console_logging=False))
