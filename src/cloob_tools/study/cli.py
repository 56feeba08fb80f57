"""A study (``make study``): a grid of ``training.main`` runs, zero-shot during training, a report with plots.

The grid is losses × β × seeds × extra flag sets; β multiplies only the losses with a Hopfield step
(``cloob``, ``cloob-infonce``), the others run once per seed and flag set. Every run trains through
``python -m training.main`` with the demo's recipe (:mod:`cloob_tools.runs`) in ``--eval-points``
equal epochs; OpenCLIP writes a checkpoint after each, which is exported
(:mod:`open_clip_cloob.export`), evaluated zero-shot on every held-out set with CLIP_benchmark
(:mod:`open_clip_cloob.benchmark`) and deleted. The last one is also measured
(:mod:`open_clip_cloob.analysis`: effective rank, alignment, uniformity, modality gap).

::

    python -m cloob_tools.study --out study-out                                # what `make study` runs
    python -m cloob_tools.study --losses cloob,clip,infoloob,cloob-infonce --betas 8 --seeds 0,1,2 \\
        --steps 1200 --eval-points 4 --out study-out
    python -m cloob_tools.study --losses cloob --betas 2,4,8,16,32 --out study-out          # a β sweep
    python -m cloob_tools.study --extra-flags "--lr 5e-4" --extra-flags "--lr 2e-3" ...     # a grid over flags
    python -m cloob_tools.study --data other/manifest.json ...         # other data (see cloob_tools.data.manifest)
    python -m cloob_tools.study --train-data 'shards/{00..09}.tar' --zeroshot bench/cars bench/flowers \\
        --analysis-data 'pairs/{0..1}.tar' --analysis-num-samples 2000 ...
    python -m cloob_tools.study ... --dry-run                          # the plan and its estimated time only

Knobs: ``--losses`` (default: every ``--loss`` of ``training.main``), ``--betas``, ``--seeds``,
``--extra-flags`` (more ``training.main`` flags for every run; repeat it for one grid dimension
per flag set; the flags the study sets itself are refused), ``--steps`` and ``--eval-points``
(steps must be a multiple), ``--batch-size``, ``--model``/``--model-config``, ``--device``,
``--no-validate`` (by default the held-out analysis pairs are also ``--val-data``, so that
``results.jsonl`` holds the validation metrics of every eval point), ``--jobs N`` (N runs at a
time), ``--keep-models`` (keep each run's final model folder),
``--seconds-per-step`` (for the estimate), ``--smoke`` (the default data's small size, 4 steps, 2 points).

Data: by default Fashion-MNIST + emoji (:mod:`cloob_tools.data.make_demo_data`, the demo's ``--data
fashion-emoji``, on which the published study ran), built once into ``OUT/data/``; or a
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
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import open_clip
import torch

from open_clip_cloob.settings import DEFAULT_HOPFIELD_BETA, LOSSES
from training import params as training_params

from ..data.make_demo_data import build_demo_data
from ..data.manifest import benchmark_set, dataset_type, load_manifest
from ..runs import DEMO_MODEL, RunFailed, launch_training, model_config, training_env
from .plan import (DEFAULT_EVAL_POINTS, DEFAULT_SEEDS, DEFAULT_STEPS, PROG, SMOKE, check_extra_flags, describe_plan,
                   estimate_seconds, parse_list, plan, run_id)
from .report import write_report
from .runner import RESULT_NAME, Launcher, Study, finished_results, read_json, run_grid

_logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The study's argparse parser; its help is this module's docstring."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    grid = parser.add_argument_group("grid")
    grid.add_argument("--losses", default=",".join(LOSSES),
                      help="--loss values of training.main, comma-separated (default: all it offers)")
    grid.add_argument("--betas", default=f"{DEFAULT_HOPFIELD_BETA:g}",
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
    grid.add_argument("--model", default=DEMO_MODEL, help="OpenCLIP model name (default: the demo's %(default)s)")
    grid.add_argument("--model-config", type=Path, default=None,
                      help=f"its config JSON, registered for training and export (default: {DEMO_MODEL}.json "
                           f"of cloob_tools/model_configs for {DEMO_MODEL})")
    grid.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    grid.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                      help="pass the analysis pairs as --val-data (validation metrics in results.jsonl at every "
                           "eval point)")
    data = parser.add_argument_group("data (default: Fashion-MNIST + emoji, the demo's --data fashion-emoji, "
                                     "built into OUT/data)")
    data.add_argument("--data", type=Path, default=None, metavar="MANIFEST",
                      help="a data manifest (cloob_tools.data.manifest; cloob_tools.data.make_corpus and "
                           "make_demo_data write one)")
    data.add_argument("--train-data", default=None, help="webdataset shard spec or CSV (with --zeroshot)")
    data.add_argument("--zeroshot", type=Path, nargs="+", default=None, metavar="FOLDER",
                      help="CLIP_benchmark wds/ folders, named by their folder name")
    data.add_argument("--analysis-data", default=None, help="held-out image-text pairs (webdataset spec or CSV)")
    data.add_argument("--analysis-num-samples", type=int, default=None,
                      help="pairs in --analysis-data (needed for validation on webdataset pairs)")
    run = parser.add_argument_group("running")
    run.add_argument("--out", type=Path, default=Path("study-out"), help="study folder (default: %(default)s)")
    run.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    run.add_argument("--keep-models", action="store_true", help="keep each run's final model folder")
    run.add_argument("--seconds-per-step", type=float, default=None,
                     help="for the time estimate (default: measured by the finished runs in OUT, else the "
                          "reference measurement of the default setup on CPU)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and estimate; train nothing")
    run.add_argument("--smoke", action="store_true",
                     help="the default data's small size, few steps: checks the pipeline; the numbers mean nothing")
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
    unknown = [loss for loss in args.losses if loss not in LOSSES]
    if unknown:
        parser.error(f"--losses {','.join(unknown)}: not a --loss of training.main here "
                     f"(it offers {', '.join(LOSSES)})")
    if any(beta <= 0 for beta in args.betas):
        parser.error("--betas must be > 0")
    if args.eval_points is None:
        args.eval_points = SMOKE["eval_points"] if smoke else DEFAULT_EVAL_POINTS
    if args.eval_points < 1 or args.jobs < 1 or args.batch_size < 1:
        parser.error("--eval-points, --jobs and --batch-size must be at least 1")
    if args.model_config is None and args.model == DEMO_MODEL:
        args.model_config = model_config(DEMO_MODEL)
    if sum(option is not None for option in (args.data, args.train_data)) > 1:
        parser.error("give --data or --train-data, not both")
    if (args.train_data is None) != (args.zeroshot is None):
        parser.error("--train-data and --zeroshot go together")
    return args


def study_data(args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    """The manifest of the study's data: --data, --train-data ..., or Fashion-MNIST + emoji (built once in ``out``)."""
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
        _logger.info("[study] building the Fashion-MNIST + emoji data (%s) into %s", size, manifest.parent)
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
    study = Study(args, manifest, out, launcher, shlex.join([*PROG.split(), *argv]))
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
