#!/usr/bin/env python
"""Training throughput (samples/s) of CLOOB vs CLIP through ``training.main``, measured in one run.

Both losses train the same model on the same batches with the same flags; only ``--loss`` differs.
Data come from OpenCLIP's ``--dataset-type synthetic`` so that image decoding does not dilute the
difference (the loop, model, optimizer and loss are the real ones). Runs alternate CLIP, CLOOB,
CLIP, ... ``--repeats`` times; the figure per run is the median of OpenCLIP's logged samples/s over
the steps after ``--warmup-steps``.

    python scripts/bench_train.py                                     # CPU: tiny test ViT, batch 128
    python scripts/bench_train.py --model RN50-cloob --batch-size 256 --precision amp_bf16 --workers 8   # GPU

Each run has ``--timeout`` seconds; one that fails or runs out of time stops the benchmark with the
end of its log (exit status 1).
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "model_configs" / "tiny-test-vit-cloob.json"
# OpenCLIP's step log: "... Batch (t): 0.123, 1040.52/s, 1040.52/s/gpu ..."
SAMPLES_PER_SECOND = re.compile(r"Batch \(t\): [\d.]+, ([\d.]+)/s,")


def train_command(args: argparse.Namespace, loss: str, logs: str, name: str) -> List[str]:
    """``training.main`` argv for one throughput run."""
    cmd = [sys.executable, "-m", "training.main",
           "--model", args.model, "--loss", loss,
           "--dataset-type", "synthetic", "--train-num-samples", str(args.batch_size * args.steps),
           "--batch-size", str(args.batch_size), "--epochs", "1", "--lr", "1e-4", "--warmup", "1",
           "--precision", args.precision, "--workers", str(args.workers), "--log-every-n-steps", "1",
           "--save-frequency", "0", "--logs", logs, "--name", name, "--seed", "0"]
    if args.model == "tiny-test-vit-cloob":
        cmd += ["--add-model-config", str(TINY_CONFIG)]
    return cmd + args.extra


def samples_per_second(log_text: str, warmup_steps: int) -> float:
    """Median logged samples/s after the first ``warmup_steps`` logged steps."""
    rates = [float(m) for m in SAMPLES_PER_SECOND.findall(log_text)][warmup_steps:]
    if not rates:
        raise RuntimeError("no step timings after warm-up in the training log; raise --steps")
    return statistics.median(rates)


def run(args: argparse.Namespace, loss: str, logs: str, index: int) -> float:
    name = f"{loss}-{index}"
    # This repository's code first; packages on PYTHONPATH (e.g. wheels carried to a GPU machine) stay.
    python_path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(train_command(args, loss, logs, name), capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": python_path}, timeout=args.timeout)
    except subprocess.TimeoutExpired as timeout:
        stderr = timeout.stderr or b""  # bytes even with text=True
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        raise RuntimeError(f"training.main --loss {loss} took over {args.timeout:.0f} s:\n{stderr[-3000:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"training.main --loss {loss} failed:\n{proc.stderr[-3000:]}")
    return samples_per_second(Path(logs, name, "out.log").read_text(), args.warmup_steps)


def _device(logs: str) -> str:
    """The device the first run trained on, from its params.txt (``device: cuda``)."""
    params = Path(logs, "clip-0", "params.txt").read_text()
    return next(line.split(": ", 1)[1] for line in params.splitlines() if line.startswith("device: "))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-test-vit-cloob")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5, help="logged steps left out of the median")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="runs per loss, alternating")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per training run")
    parser.add_argument("--note", default="", help="recorded with the results, e.g. the machine")
    parser.add_argument("--out", default="bench-out/train.json")
    parser.add_argument("extra", nargs="*", help="further training.main flags, after --")
    return parser.parse_args(argv)


def main(argv=None) -> Dict:
    args = parse_args(argv)
    rates: Dict[str, List[float]] = {"clip": [], "cloob": []}
    with tempfile.TemporaryDirectory() as logs:
        for index in range(args.repeats):
            for loss in ("clip", "cloob"):
                rates[loss].append(run(args, loss, logs, index))
                print(f"run {index} --loss {loss}: {rates[loss][-1]:.1f} samples/s", flush=True)
        device = _device(logs)
    clip, cloob = statistics.median(rates["clip"]), statistics.median(rates["cloob"])
    result = {"command": shlex.join(["python", "scripts/bench_train.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": time.strftime("%Y-%m-%d"), "device": device, "note": args.note,
              "model": args.model, "batch_size": args.batch_size, "precision": args.precision,
              "clip_samples_per_s": clip, "cloob_samples_per_s": cloob, "cloob_over_clip": cloob / clip,
              "runs": rates}
    print(f"{args.model} batch {args.batch_size} {args.precision}: CLIP {clip:.1f}/s, CLOOB {cloob:.1f}/s, "
          f"CLOOB/CLIP = {cloob / clip:.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
