"""The study's grid: the settings of every run, their folder names and ``training.main`` flags, and the
estimate of the time the runs still to do will take."""
import argparse
import hashlib
import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from open_clip_cloob.settings import HOPFIELD_LOSSES

from ..data.manifest import dataset_type
from ..runs import DEMO_MODEL, training_argv

PROG = "python -m cloob_tools.study"
DEFAULT_STEPS, DEFAULT_EVAL_POINTS, DEFAULT_SEEDS = 1200, 4, "0,1,2"
SMOKE = {"steps": 4, "eval_points": 2, "seeds": "0"}
# Flags the study sets for every run; --extra-flags must not change them.
STUDY_FLAGS = ("--loss", "--hopfield-beta", "--scale-hopfield", "--seed", "--epochs", "--train-num-samples",
               "--train-data", "--dataset-type", "--batch-size", "--save-frequency", "--delete-previous-checkpoint",
               "--resume", "--logs", "--name", "--model", "--add-model-config", "--device", "--val-data",
               "--val-num-samples", "--report-to")
# Rates of the default setup (demo-vit, batch 128, the demo's full data, validation on, CPU) for the
# estimate until runs in the folder have measured their own: medians of
# `python scripts/study.py --losses cloob,clip --seeds 0 --steps 200 --eval-points 2` on the 2-core
# machine on 2026-12-02, under `nice -n 15` beside other jobs (load average 3-4.5): an idle machine is faster.
REFERENCE_RATES = {"device": "cpu", "model": DEMO_MODEL, "batch_size": 128,
                   "seconds_per_step": 0.26, "overhead_s": 16.0, "eval_point_s": 16.0, "analysis_s": 8.0}


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
                for beta in args.betas if loss in HOPFIELD_LOSSES else [None]:
                    runs.append({
                        "loss": loss, "hopfield_beta": beta, "seed": seed, "steps": args.steps,
                        "eval_points": args.eval_points, "batch_size": args.batch_size, "model": args.model,
                        "extra_flags": extra, "device": args.device, "validate": args.validate, "data": data,
                    })
    return runs


def settings_hash(settings: Mapping[str, Any]) -> str:
    """The first 10 hex digits of the SHA-1 of the settings' JSON (keys sorted)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_id(settings: Mapping[str, Any]) -> str:
    """The run's folder name: readable settings, then a hash of all of them."""
    beta = f"-b{settings['hopfield_beta']:g}" if settings["hopfield_beta"] is not None else ""
    return f"{settings['loss']}{beta}-s{settings['seed']}-{settings_hash(settings)}"


def config_key(settings: Mapping[str, Any]) -> str:
    """Runs that differ only in the seed share this key (one row of the report)."""
    return settings_hash({key: value for key, value in settings.items() if key != "seed"})


def run_argv(settings: Mapping[str, Any], manifest: Mapping[str, Any], runs: Path, model_config_file: Optional[Path]
             ) -> List[str]:
    """``training.main`` flags of one run (:func:`cloob_tools.runs.training_argv` plus the study's own)."""
    validation = manifest.get("analysis_data") if settings["validate"] else None
    # OpenCLIP reads validation data with the training data's --dataset-type; auto when they differ.
    data_type = manifest["dataset_type"]
    if validation and dataset_type(validation) != data_type:
        data_type = "auto"
    argv = training_argv(settings["loss"], manifest["train_data"], runs, run_id(settings), settings["steps"],
                         settings["batch_size"], settings["device"], epochs=settings["eval_points"],
                         seed=settings["seed"], data_type=data_type, model=settings["model"],
                         model_config_file=model_config_file)
    # An epoch checkpoint at every eval point; the run resumes from the last one after an interruption
    # (a new run finds none and starts from scratch).
    argv += ["--save-frequency", "1", "--resume", "latest"]
    if settings["hopfield_beta"] is not None:
        argv += ["--hopfield-beta", f"{settings['hopfield_beta']:g}"]
    if validation:
        argv += ["--val-data", validation]
        if manifest.get("analysis_num_samples"):
            argv += ["--val-num-samples", str(manifest["analysis_num_samples"])]
    return argv + list(settings["extra_flags"])


def steps_per_point(settings: Mapping[str, Any]) -> int:
    """Training steps between two eval points (an epoch of the run)."""
    return settings["steps"] // settings["eval_points"]


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
            rates, source = REFERENCE_RATES, "the reference measurement in cloob_tools.study.plan"
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
    """One line: runs in the grid, finished, to run, and the estimated wall time with its source."""
    seconds, source = estimate_seconds(todo, results, args.seconds_per_step)
    steps = sum(settings["steps"] for settings in todo)
    when = "unknown" if seconds is None else f"{seconds / 3600:.2f} h ({seconds:.0f} s)"
    jobs = f", with --jobs {args.jobs} about 1/{args.jobs} of that at best" if args.jobs > 1 and seconds else ""
    return (f"{len(todo) + done} runs in the grid, {done} finished, {len(todo)} to run ({steps} training steps "
            f"on {args.device}); estimated wall time {when}{jobs}; from {source}")
