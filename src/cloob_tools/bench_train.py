"""Training throughput (samples/s) of CLOOB vs CLIP through ``training.main``, measured in one run.

Both losses train the same model on the same batches with the same flags; only ``--loss`` differs.
``--monitor-overhead`` compares CLOOB with and without ``training.monitor`` instead (only
``--no-hopfield-monitor`` differs): with ``--log-every-n-steps`` N > 1 the figure per run is the
median over OpenCLIP's logged windows of N steps of their mean step time, N − 1 normal steps and
one logging step (the only one that computes the Hopfield diagnostics), timed by tensorboard's wall
times of the logged steps.
Data come from OpenCLIP's ``--dataset-type synthetic`` so that image decoding does not dilute the
difference (the loop, model, optimizer and loss are the real ones). Runs alternate CLIP, CLOOB,
CLIP, ... ``--repeats`` times; the figure per run is the median of OpenCLIP's logged samples/s over
the steps after ``--warmup-steps``, read from the run's tensorboard scalars (:mod:`cloob_tools.results`).

    python -m cloob_tools.bench_train                                     # CPU: tiny test ViT, batch 128
    python -m cloob_tools.bench_train --model RN50-cloob --batch-size 256 --precision amp_bf16 --workers 8   # GPU
    python -m cloob_tools.bench_train --monitor-overhead --log-every-n-steps 10 --steps 200 --out bench-out/monitor.json

Each run has ``--timeout`` seconds; one that fails or runs out of time stops the benchmark with the
end of its log (exit status 1).
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import console
from .results import read_scalars, samples_per_second
from .runs import REPORT_TO, model_config, run_training

PROG = "python -m cloob_tools.bench_train"
TINY_MODEL = "tiny-test-vit-cloob"
# The runs compared: label -> training.main flags.
LOSS_VARIANTS = {"clip": ("--loss", "clip"), "cloob": ("--loss", "cloob")}
MONITOR_VARIANTS = {"unmonitored": ("--loss", "cloob", "--no-hopfield-monitor"), "monitored": ("--loss", "cloob")}


def train_argv(args: argparse.Namespace, flags: Sequence[str], logs: str, name: str) -> List[str]:
    """``training.main`` flags of one throughput run with ``flags`` (the loss, ...)."""
    argv = ["--model", args.model, *flags,
            "--dataset-type", "synthetic", "--train-num-samples", str(args.batch_size * args.steps),
            "--batch-size", str(args.batch_size), "--epochs", "1", "--lr", "1e-4", "--warmup", "1",
            "--precision", args.precision, "--workers", str(args.workers), "--log-every-n-steps",
            str(args.log_every_n_steps), "--save-frequency", "0", *REPORT_TO, "--logs", logs, "--name", name,
            "--seed", "0"]
    if args.model == TINY_MODEL:
        argv += ["--add-model-config", str(model_config(TINY_MODEL))]
    return argv + args.extra


def run(args: argparse.Namespace, label: str, flags: Sequence[str], logs: str, index: int) -> float:
    """Samples/s of one run (:func:`cloob_tools.results.samples_per_second`)."""
    name = f"{label}-{index}"
    run_training(train_argv(args, flags, logs, name), os.environ, log_file=Path(logs, f"{name}.stdout"),
                 timeout=args.timeout)
    return samples_per_second(read_scalars(Path(logs, name, "tensorboard")), args.warmup_steps, args.batch_size,
                              args.log_every_n_steps)


def _device(logs: str, label: str) -> str:
    """The device the first run trained on, from its params.txt (``device: cuda``)."""
    params = Path(logs, f"{label}-0", "params.txt").read_text()
    return next(line.split(": ", 1)[1] for line in params.splitlines() if line.startswith("device: "))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5, help="logged steps left out of the median")
    parser.add_argument("--log-every-n-steps", type=int, default=1,
                        help="OpenCLIP's logging interval; > 1 measures the mean step time of each window")
    parser.add_argument("--monitor-overhead", action="store_true",
                        help="CLOOB with training.monitor vs without (--no-hopfield-monitor) instead of CLOOB vs CLIP")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="runs per loss, alternating")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per training run")
    parser.add_argument("--note", default="", help="recorded with the results, e.g. the machine")
    parser.add_argument("--out", default="bench-out/train.json")
    parser.add_argument("extra", nargs="*", help="further training.main flags, after --")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    variants = MONITOR_VARIANTS if args.monitor_overhead else LOSS_VARIANTS
    (baseline, baseline_flags), (measured, measured_flags) = variants.items()
    rates: Dict[str, List[float]] = {baseline: [], measured: []}
    with tempfile.TemporaryDirectory() as logs:
        for index in range(args.repeats):
            for label, flags in variants.items():
                rates[label].append(run(args, label, flags, logs, index))
                print(f"run {index} {label} ({shlex.join(flags)}): {rates[label][-1]:.1f} samples/s", flush=True)
        device = _device(logs, baseline)
    base, other = statistics.median(rates[baseline]), statistics.median(rates[measured])
    result = {"command": shlex.join([*PROG.split(), *(sys.argv[1:] if argv is None else argv)]),
              "date": time.strftime("%Y-%m-%d"), "device": device, "note": args.note,
              "model": args.model, "batch_size": args.batch_size, "precision": args.precision,
              "log_every_n_steps": args.log_every_n_steps,
              f"{baseline}_samples_per_s": base, f"{measured}_samples_per_s": other,
              f"{measured}_over_{baseline}": other / base, "runs": rates}
    print(f"{args.model} batch {args.batch_size} {args.precision}, logging every {args.log_every_n_steps} steps: "
          f"{baseline} {base:.1f}/s, {measured} {other:.1f}/s, {measured}/{baseline} = {other / base:.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
