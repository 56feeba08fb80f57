"""Running the study's runs: train, evaluate every epoch checkpoint, analyse the last, collect; resume.

A run is keyed by its settings (``OUT/runs/<run id>/``, :func:`cloob_tools.study.plan.run_id`); one whose
``result.json`` exists is done, an interrupted one continues where it stopped.
"""
import argparse
import concurrent.futures
import json
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from open_clip_cloob import analysis
from open_clip_cloob.checkpoint import atomic_write
from open_clip_cloob.export import export_model_folder

from ..data.manifest import dataset_type
from ..results import read_training_logs, read_validation
from ..runs import RunFailed, training_env, wait_for_training
from ..zeroshot import chance_percent, zero_shot, zero_shot_metrics
from .plan import describe_plan, relative_to, run_argv, run_id, steps_per_point

_logger = logging.getLogger(__name__)

RESULT_NAME, SETTINGS_NAME, TRAINED_NAME = "result.json", "settings.json", "trained.json"

Launcher = Callable[[Sequence[str], Path, Mapping[str, str]], Any]


class Study:
    """The shared state of one invocation: the output folder, the data, how training starts."""

    def __init__(self, args: argparse.Namespace, manifest: Mapping[str, Any], out: Path, launcher: Launcher,
                 command: str):
        self.args, self.manifest, self.out, self.launcher, self.command = args, manifest, out, launcher, command
        self.runs = out / "runs"
        self.model_config = args.model_config

    def folder(self, settings: Mapping[str, Any]) -> Path:
        """The run's folder, ``OUT/runs/<run id>``."""
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
        points = [self._evaluate_point(settings, folder, epoch) for epoch in range(1, settings["eval_points"] + 1)]
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
        wait_for_training(self.launcher(argv, log, training_env(settings["device"], self.args.jobs)), folder.name, log)
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
                            settings["device"], training_env(settings["device"], self.args.jobs))
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


def checkpoint_file(folder: Path, epoch: int) -> Path:
    """OpenCLIP's checkpoint of a run after ``epoch``."""
    return folder / "checkpoints" / f"epoch_{epoch}.pt"


def point_file(folder: Path, epoch: int) -> Path:
    """The zero-shot result of a run's eval point after ``epoch`` (written once it is evaluated)."""
    return folder / "zeroshot" / f"epoch_{epoch}.json"


def read_json(path: Path) -> Any:
    """A JSON file of the study folder; ``ValueError`` saying how to redo a broken one."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error}); delete it to redo that step") from error


def write_json(path: Path, content: Any) -> None:
    """Write ``content`` as JSON atomically (an interruption leaves the old file or none)."""
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")


def collect_run(folder: Path, settings: Mapping[str, Any], sets: Mapping[str, Any], points: List[Dict[str, Any]],
                measured: Optional[Dict[str, Any]], analysis_s: float, command: str) -> Dict[str, Any]:
    """What ``result.json`` holds: settings, curves, diagnostics, the zero-shot sets (task, chance) and
    their metrics at every eval point, the final analysis."""
    return {
        "run": folder.name,
        "settings": dict(settings),
        "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        **read_training_logs(folder),
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
