"""The one reader of what a ``training.main`` run logs as data: its tensorboard scalars and OpenCLIP's
``results.jsonl``. The tools never parse console lines; those are for people.

Tags (``--report-to tensorboard``): OpenCLIP logs ``train/loss``, ``train/scale`` (the inverse
temperature), ``train/batch_time`` (seconds of the logged step), ``train/samples_per_second`` and
``train/lr`` on its logging steps, at the step's 0-based index; :mod:`training.monitor` logs
``train/hopfield/<key>`` (the Hopfield diagnostics of the batch) and ``train/collapse_warning`` (1 while
it warns) on the same steps. ``checkpoints/results.jsonl`` holds a line per evaluation (the
validation metrics of an epoch) and the monitor's collapse warning.
"""
import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from open_clip_cloob import cli
from training.monitor import COLLAPSE_TAG, DIAGNOSTIC_PREFIX

LOSS_TAG = "train/loss"
SCALE_TAG = "train/scale"
BATCH_TIME_TAG = "train/batch_time"
SAMPLES_PER_SECOND_TAG = "train/samples_per_second"

# {"step": [...], "value": [...]} (and "wall_time" as read): one tag's scalars in step order.
Series = Dict[str, List[float]]


def read_scalars(tensorboard: Path) -> Dict[str, Series]:
    """Every scalar tag of a run's tensorboard folder: ``{tag: {"step", "value", "wall_time"}}``; empty
    when there is no such folder.

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
                  "value": [event.value for event in events.Scalars(tag)],
                  "wall_time": [event.wall_time for event in events.Scalars(tag)]}
            for tag in events.Tags()["scalars"]}


def series(scalars: Mapping[str, Series], tag: str) -> Optional[Series]:
    """``{"step", "value"}`` of one tag, or None when the run did not log it."""
    if tag not in scalars:
        return None
    return {"step": list(scalars[tag]["step"]), "value": list(scalars[tag]["value"])}


def loss_curve(scalars: Mapping[str, Series]) -> Dict[str, List[float]]:
    """Steps done (1 after the first step: the axis of the eval points), total loss, inverse temperature
    and seconds of each logged step."""
    loss = scalars[LOSS_TAG]
    return {"step": [step + 1 for step in loss["step"]], "loss": list(loss["value"]),
            "inv_tau": list(scalars[SCALE_TAG]["value"]), "seconds_per_step": list(scalars[BATCH_TIME_TAG]["value"])}


def hopfield_diagnostics(scalars: Mapping[str, Series]) -> Dict[str, Series]:
    """``{key: {"step", "value"}}`` of the monitor's Hopfield diagnostics (empty for a run without them)."""
    return {tag[len(DIAGNOSTIC_PREFIX):]: series(scalars, tag) for tag in scalars if tag.startswith(DIAGNOSTIC_PREFIX)}


def read_training_logs(run: Path) -> Dict[str, Any]:
    """The curves of a run folder (OpenCLIP's ``logs/NAME``): ``loss_curve`` (:func:`loss_curve`),
    ``diagnostics`` (:func:`hopfield_diagnostics`) and ``collapse_warning`` (None without the check)."""
    scalars = read_scalars(run / "tensorboard")
    if LOSS_TAG not in scalars:
        raise ValueError(f"{run}: no {LOSS_TAG} scalars in its tensorboard folder (a run read as data is "
                         "started with --report-to tensorboard)")
    return {"loss_curve": loss_curve(scalars), "diagnostics": hopfield_diagnostics(scalars),
            "collapse_warning": series(scalars, COLLAPSE_TAG)}


def first_warning_step(collapse_warning: Optional[Series]) -> Optional[int]:
    """The first step at which ``train/collapse_warning`` was above 0; None when it never was."""
    if collapse_warning is None:
        return None
    return next((step for step, value in zip(collapse_warning["step"], collapse_warning["value"]) if value > 0), None)


def samples_per_second(scalars: Mapping[str, Series], warmup_steps: int, batch_size: int,
                       log_every_n_steps: int = 1) -> float:
    """Median training throughput over the logged steps after the first ``warmup_steps``.

    Logging every step, the median of OpenCLIP's ``train/samples_per_second`` (each step's own);
    logging every N > 1 steps, the median over the windows between logged steps of ``batch_size`` ×
    steps / seconds (tensorboard's wall times): N − 1 ordinary steps and one logging step each.
    """
    if log_every_n_steps == 1:
        rates = list(scalars[SAMPLES_PER_SECOND_TAG]["value"])[warmup_steps:]
    else:
        logged = scalars[LOSS_TAG]
        windows = list(zip(logged["step"], logged["wall_time"]))[warmup_steps:]
        rates = [batch_size * (step - previous_step) / (time - previous_time)
                 for (previous_step, previous_time), (step, time) in zip(windows, windows[1:])]
    if not rates:
        raise ValueError("no step timings after warm-up in the training logs; raise --steps")
    return statistics.median(rates)


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
