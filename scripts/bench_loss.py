#!/usr/bin/env python
"""Forward+backward time and peak memory of CloobLoss (direct and memory-efficient) and OpenCLIP's
ClipLoss, measured in the same run, with ratios.

    python scripts/bench_loss.py --sizes 1024,4096 --dims 512,1024 --out bench-out/loss_cpu.json
    python scripts/bench_loss.py --device cuda --precision bf16 --sizes 4096,32768,262144 --dims 1024

Each case runs in a fresh subprocess (``--case``) so its peak memory is its own: on CPU the peak
resident set size (VmHWM, reset just before) above the one before the loss ran, on CUDA ``torch.cuda.max_memory_allocated``
above the allocation before it. Time is the median of ``--repeats`` forward+backward passes after
one warm-up pass (none when a pass takes longer than ``--max-warmup-seconds``).

FLOP counts (matrix products only, 2·N²·d FLOPs per [N, N, d] product, single process):
    clip          6 products: X Yᵀ and Y Xᵀ forward, 4 in backward               -> 12 N²d
    cloob-direct  27 products: 9 forward (X Xᵀ, Y Xᵀ shared by both cross-modal
                  retrievals, Y Yᵀ, 4 softmax·memory, 2 InfoLOOB), 18 backward     -> 54 N²d
    cloob-chunked 34 products: 14 forward (8 for the retrievals, whose cross product is
                  not shared; 6 for InfoLOOB, which accumulates its gradient there),
                  20 backward (5 per retrieval, recomputing each block's scores)    -> 68 N²d
"""
import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

_logger = logging.getLogger("bench_loss")

PRODUCTS = {"clip": 6, "cloob-direct": 27, "cloob-chunked": 34}


def make_loss(impl: str) -> torch.nn.Module:
    """The loss module an implementation name stands for."""
    if impl == "clip":
        from open_clip.loss import ClipLoss
        return ClipLoss()
    from open_clip_cloob import CloobLoss
    return CloobLoss(hopfield_beta=8.0, memory_efficient={"cloob-direct": False, "cloob-chunked": True}[impl])


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Restart the kernel's resident-set high-water mark (VmHWM) at the current RSS; return that RSS.

    A process-lifetime maximum (getrusage) would include whatever importing torch touched, and pages
    evicted since then make "peak minus current" meaningless on a busy machine.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(impl: str, n: int, d: int, device: str, precision: str, repeats: int,
             max_warmup_seconds: float) -> Dict:
    """Time and peak memory of one loss on one [n, d] batch, measured in this process."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    g = torch.Generator(device="cpu").manual_seed(0)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
    scale = torch.tensor(30.0, device=device)
    loss_fn = make_loss(impl)

    def step() -> float:
        image.grad = text.grad = None
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            loss = loss_fn(image, text, scale)
        loss.backward()
        _sync(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _reset_peak_rss()
    times = [step()]
    if times[0] < max_warmup_seconds:
        times = [step() for _ in range(repeats)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = _status_bytes("VmHWM") - before
    seconds = statistics.median(times)
    flops = PRODUCTS[impl] * 2 * n * n * d
    return {"impl": impl, "n": n, "d": d, "device": device.type, "precision": precision,
            "ms": seconds * 1e3, "peak_mib": peak / 2 ** 20, "flops": flops,
            "tflops_per_s": flops / seconds / 1e12, "runs": len(times)}


def run_case_in_subprocess(impl: str, n: int, d: int, device: str, precision: str, repeats: int,
                           max_warmup_seconds: float, timeout: float) -> Dict:
    """``run_case`` in a fresh interpreter, so that the peak memory belongs to this case alone."""
    cmd = [sys.executable, os.path.abspath(__file__), "--case", impl, str(n), str(d), "--device", device,
           "--precision", precision, "--repeats", str(repeats), "--max-warmup-seconds", str(max_warmup_seconds)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "n": n, "d": d, "device": device, "precision": precision, "error": f"timeout {timeout}s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"impl": impl, "n": n, "d": d, "device": device, "precision": precision,
                "error": f"exit {proc.returncode}: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(results: List[Dict]) -> str:
    """Markdown table with ratios to ClipLoss (time) and to the direct CLOOB path (time, memory)."""
    by_key = {(r["n"], r["d"], r["impl"]): r for r in results}
    lines = ["| N | d | loss | fwd+bwd ms | peak MiB | TFLOP/s | time / ClipLoss | time / direct | memory / direct |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['d']} | {r['impl']} | {r['error']} | | | | | |")
            continue
        clip, direct = by_key.get((r["n"], r["d"], "clip")), by_key.get((r["n"], r["d"], "cloob-direct"))

        def ratio(ref, key):
            return f"{r[key] / ref[key]:.2f}" if ref and "error" not in ref and ref[key] > 0 else "-"
        lines.append(f"| {r['n']} | {r['d']} | {r['impl']} | {r['ms']:.1f} | {r['peak_mib']:.0f} | "
                     f"{r['tflops_per_s']:.3f} | {ratio(clip, 'ms')} | {ratio(direct, 'ms')} | {ratio(direct, 'peak_mib')} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="fp32, or bf16/fp16 features and autocast")
    parser.add_argument("--sizes", default="1024,2048,4096", help="comma-separated global batch sizes N")
    parser.add_argument("--dims", default="512,1024", help="comma-separated embedding dims d")
    parser.add_argument("--impls", default="clip,cloob-direct,cloob-chunked", help=f"any of {sorted(PRODUCTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-warmup-seconds", type=float, default=20.0,
                        help="skip warm-up and repeats when one pass takes longer than this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--out", default="bench-out/loss.json", help="JSON file for the results")
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "N", "D"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.case:
        impl, n, d = args.case
        print(json.dumps(run_case(impl, int(n), int(d), args.device, args.precision, args.repeats,
                                  args.max_warmup_seconds)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = []
    for d in (int(v) for v in args.dims.split(",")):
        for n in (int(v) for v in args.sizes.split(",")):
            for impl in args.impls.split(","):
                result = run_case_in_subprocess(impl, n, d, args.device, args.precision, args.repeats,
                                                args.max_warmup_seconds, args.timeout)
                _logger.info("%s", json.dumps(result))
                results.append(result)
    table = format_table(results)
    print(f"device={args.device} precision={args.precision} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": args.device, "precision": args.precision, "torch": torch.__version__,
                   "results": results, "table": table}, f, indent=2)


if __name__ == "__main__":
    main()
