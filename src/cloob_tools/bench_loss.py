"""Forward+backward time and peak memory of CloobLoss (direct and memory-efficient) and OpenCLIP's
ClipLoss, measured in the same run, with ratios.

    python -m cloob_tools.bench_loss --sizes 1024,4096 --dims 512,1024 --out bench-out/loss_cpu.json
    python -m cloob_tools.bench_loss --device cuda --precision bf16 --sizes 8192,32768,262144 --dims 1024

Peak memory is the loss's own, above its inputs: on CPU the peak resident set size (VmHWM, reset
just before), each case in a fresh subprocess (``--isolate process``, the CPU default); on CUDA
``torch.cuda.max_memory_allocated``, reset before each case, so the cases share one process
(``--isolate none``, the CUDA default). Time is the median of ``--repeats`` forward+backward passes
after one warm-up pass (none when a pass takes longer than ``--max-warmup-seconds``). On CUDA, matrix
products may use TF32 as in ``training.main`` (OpenCLIP allows it; ``--no-tf32`` forbids it): the
loss computes in float32 whatever the features' precision.

A case that runs out of memory is recorded as such and its loss is not tried at larger N; a case
that would not finish within ``--budget-seconds`` (predicted from the last size, time ∝ N²) is
skipped. Either is a result, not a failure; any other error is, and makes the exit status 1 once
the JSON file (rewritten after every case) holds all results. ``--profile-sizes`` adds a
torch.profiler table of one more step (operators by their own time) to those cases.

FLOP counts (matrix products only, 2·N²·d FLOPs per [N, N, d] product, single process):
    clip          6 products: X Yᵀ and Y Xᵀ forward, 4 in backward               -> 12 N²d
    cloob-direct  27 products: 9 forward (X Xᵀ, Y Xᵀ shared by both cross-modal
                  retrievals, Y Yᵀ, 4 softmax·memory, 2 InfoLOOB), 18 backward     -> 54 N²d
    cloob-chunked 34 products: 14 forward (8 for the retrievals, whose cross product is
                  not shared; 6 for InfoLOOB, which accumulates its gradient there),
                  20 backward (5 per retrieval, recomputing each block's scores)    -> 68 N²d
"""
import argparse
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import console
from .perf_report import describe, loss_table

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.bench_loss"

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


def _profile_step(step: Callable[[], float], device: torch.device, rows: int = 20) -> str:
    """torch.profiler's table of one more step: operators by their own time on ``device``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        step()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=rows)


def run_case(impl: str, n: int, d: int, device: str, precision: str, repeats: int,
             max_warmup_seconds: float, tf32: bool = True, profile: bool = False) -> Dict:
    """Time and peak memory of one loss on one [n, d] batch, measured in this process.

    ``tf32``: allow TF32 matrix products on CUDA, as OpenCLIP's training main does. ``profile``: add
    ``"profile"``, the profiler table of one more step (after the measurement).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
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
    result = {"impl": impl, "n": n, "d": d, "device": device.type, "precision": precision,
              "ms": seconds * 1e3, "peak_mib": peak / 2 ** 20, "flops": flops,
              "tflops_per_s": flops / seconds / 1e12, "runs": len(times)}
    if profile:
        try:
            result["profile"] = _profile_step(step, device)
        except Exception as error:  # a profiler that fails must not cost the measurement
            result["profile_error"] = f"{type(error).__name__}: {error}"
    return result


# Messages of an allocation failure: PyTorch's CUDA and CPU allocators, and a process the kernel's
# out-of-memory killer ended (exit status -9 of a subprocess).
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory")


def _out_of_memory(message: str) -> bool:
    return any(text in message.lower() for text in _OUT_OF_MEMORY)


def _failed_case(impl: str, n: int, d: int, device: str, precision: str, error: str) -> Dict:
    """The result of a case that did not run or broke: its key and ``error``."""
    return {"impl": impl, "n": n, "d": d, "device": device, "precision": precision, "error": error}


def run_case_in_process(impl: str, n: int, d: int, device: str, precision: str, repeats: int,
                        max_warmup_seconds: float, tf32: bool = True, profile: bool = False) -> Dict:
    """``run_case`` here, an error recorded as the case's result; memory is released afterwards."""
    try:
        return run_case(impl, n, d, device, precision, repeats, max_warmup_seconds, tf32, profile)
    except Exception as error:  # recorded, and main() fails at the end unless it is out of memory
        first_line = (str(error).strip().splitlines() or [""])[0]
        label = "out of memory" if _out_of_memory(str(error)) else f"error {type(error).__name__}"
        return _failed_case(impl, n, d, device, precision, f"{label}: {first_line[:200]}")
    finally:
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def run_case_in_subprocess(impl: str, n: int, d: int, device: str, precision: str, repeats: int,
                           max_warmup_seconds: float, timeout: float, tf32: bool = True,
                           profile: bool = False) -> Dict:
    """``run_case`` in a fresh interpreter, so that the peak memory belongs to this case alone."""
    cmd = [sys.executable, "-m", "cloob_tools.bench_loss", "--case", impl, str(n), str(d), "--device", device,
           "--precision", precision, "--repeats", str(repeats), "--max-warmup-seconds", str(max_warmup_seconds),
           "--tf32" if tf32 else "--no-tf32"] + (["--profile-sizes", str(n)] if profile else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _failed_case(impl, n, d, device, precision, f"timeout {timeout:.0f}s")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        killed = proc.returncode == -9  # the kernel's out-of-memory killer, most likely
        label = "out of memory" if killed or _out_of_memory(proc.stderr) else f"exit {proc.returncode}"
        return _failed_case(impl, n, d, device, precision, f"{label}: {last[:200]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted_seconds(previous: Optional[Dict], n: int, repeats: int, max_warmup_seconds: float,
                      profile: bool) -> Optional[float]:
    """Seconds a case of size ``n`` should take, from the same loss at the last smaller size (time ∝ N²)."""
    if previous is None or "error" in previous:
        return None
    per_pass = previous["ms"] / 1e3 * (n / previous["n"]) ** 2
    passes = (1 if per_pass >= max_warmup_seconds else 1 + repeats) + int(profile)
    return per_pass * passes


def _machine(device: str) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} cores"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="fp32, or bf16/fp16 features and autocast")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="allow TF32 matrix products on CUDA, as training.main (OpenCLIP) does")
    parser.add_argument("--sizes", default="1024,2048,4096", help="comma-separated global batch sizes N")
    parser.add_argument("--dims", default="512,1024", help="comma-separated embedding dims d")
    parser.add_argument("--impls", default="clip,cloob-direct,cloob-chunked", help=f"any of {sorted(PRODUCTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-warmup-seconds", type=float, default=20.0,
                        help="skip warm-up and repeats when one pass takes longer than this")
    parser.add_argument("--isolate", choices=["process", "none"], default=None,
                        help="a fresh process per case (CPU default) or all in this one (CUDA default)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case (--isolate process)")
    parser.add_argument("--budget-seconds", type=float, default=float("inf"),
                        help="skip the cases that would not end within this many seconds of the start")
    parser.add_argument("--profile-sizes", default="", help="comma-separated N whose cases are also profiled")
    parser.add_argument("--note", default="", help="recorded with the results, e.g. what else ran on the machine")
    parser.add_argument("--out", default="bench-out/loss.json", help="JSON file for the results")
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.isolate is None:
        args.isolate = "none" if torch.device(args.device).type == "cuda" else "process"
    args.profile_sizes = {int(v) for v in args.profile_sizes.split(",") if v}
    return args


def sweep(args: argparse.Namespace, on_result: Callable[[List[Dict]], None]) -> List[Dict]:
    """Every case of ``args`` in order (dims, sizes, losses); ``on_result`` gets the results so far."""
    results: List[Dict] = []
    deadline = time.monotonic() + args.budget_seconds
    out_of_memory: Dict = {}  # (impl, d) -> the N that did not fit
    last: Dict = {}  # (impl, d) -> the last result
    for d in (int(v) for v in args.dims.split(",")):
        for n in (int(v) for v in args.sizes.split(",")):
            for impl in args.impls.split(","):
                profile = n in args.profile_sizes
                left = deadline - time.monotonic()
                expected = predicted_seconds(last.get((impl, d)), n, args.repeats, args.max_warmup_seconds, profile)
                if (impl, d) in out_of_memory:
                    result = _failed_case(impl, n, d, args.device, args.precision,
                                          f"skipped: out of memory at N = {out_of_memory[impl, d]:,}")
                elif left <= 0 or (expected is not None and expected > left):
                    expected_text = f"predicted {expected:.0f} s, " if expected is not None else ""
                    result = _failed_case(impl, n, d, args.device, args.precision,
                                          f"skipped: {expected_text}{max(left, 0):.0f} s left of --budget-seconds")
                elif args.isolate == "process":
                    result = run_case_in_subprocess(impl, n, d, args.device, args.precision, args.repeats,
                                                    args.max_warmup_seconds, min(args.timeout, left), args.tf32,
                                                    profile)
                else:
                    result = run_case_in_process(impl, n, d, args.device, args.precision, args.repeats,
                                                 args.max_warmup_seconds, args.tf32, profile)
                if result.get("error", "").startswith("out of memory"):
                    out_of_memory[impl, d] = n
                elif "error" not in result:
                    last[impl, d] = result
                _logger.info("%s", json.dumps({k: v for k, v in result.items() if k != "profile"}))
                if "profile" in result:
                    _logger.info("profile of %s at N = %d, d = %d:\n%s", impl, n, d, result["profile"])
                results.append(result)
                on_result(results)
    return results


def failed(results: List[Dict]) -> List[Dict]:
    """The cases that broke: errors other than running out of memory or skipping."""
    return [r for r in results if "error" in r and not r["error"].startswith(("out of memory", "skipped"))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.case:
        impl, n, d = args.case
        print(json.dumps(run_case(impl, int(n), int(d), args.device, args.precision, args.repeats,
                                  args.max_warmup_seconds, args.tf32, int(n) in args.profile_sizes)))
        return 0
    measured = {"command": shlex.join([*PROG.split(), *(sys.argv[1:] if argv is None else argv)]),
                "date": time.strftime("%Y-%m-%d"), "device": torch.device(args.device).type,
                "device_name": _machine(args.device), "precision": args.precision, "tf32": args.tf32,
                "torch": torch.__version__, "threads": torch.get_num_threads(), "isolate": args.isolate,
                "note": args.note}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def write(results: List[Dict]) -> None:
        with open(args.out, "w") as f:
            json.dump({**measured, "results": results}, f, indent=2)
            f.write("\n")

    results = sweep(args, write)
    print(f"{describe(measured)}\n\n{loss_table(results)}")
    broken = failed(results)
    if broken:
        _logger.error("%d case(s) failed: %s", len(broken), "; ".join(
            f"{r['impl']} N={r['n']} d={r['d']}: {r['error']}" for r in broken))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
