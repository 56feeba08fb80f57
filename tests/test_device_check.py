"""The GPU check (``scripts/device_check.sh``) rehearsed on the CPU, its failures, the carried wheels.

A GPU machine is lent only at times; these keep the check from rotting before one arrives:

- ``--smoke`` runs the same script end to end on the CPU with tiny sizes (no CUDA tests): every
  part, the JSON files, the summary table;
- a part that hangs is stopped at its time limit and named, the next parts still run or are
  reported as not started, and the exit status is 1; a missing wheel folder stops it at once;
- the wheels of ``scripts/device_carry.sh`` are the versions tested here, and with the packages
  of the GPU machine's image they satisfy every dependency of this project.
"""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cloob_tools.perf_report import loss_table, train_table

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "device_check.sh"
CARRY = REPO / "scripts" / "device_carry.sh"
OUTPUTS = {"summary.md", "parts.json", "loss.json", "train.json", "device_check.log"}
# The GPU machine's interpreter, for the environment markers of the dependencies.
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CHECK), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable})


def _parts(out: Path) -> dict:
    return {part["part"]: part for part in json.loads((out / "parts.json").read_text())}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    completed = _check("--smoke", "--out", str(out))
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-3000:]
    return out, completed


@pytest.mark.slow
def test_smoke_rehearsal_runs_every_part_and_writes_every_file(smoke):
    out, completed = smoke
    assert {path.name for path in out.iterdir()} == OUTPUTS
    parts = _parts(out)
    assert [parts[name]["status"] for name in ("install", "environment", "tests", "loss", "train")] == [
        "skipped", "skipped", "skipped", "ok", "ok"]
    assert "=== [summary] ok" in completed.stdout and "=== device check passed" in completed.stdout
    assert (out / "device_check.log").read_text() == completed.stdout  # everything printed, stderr too


@pytest.mark.slow
def test_smoke_results_and_summary_come_from_the_benchmarks(smoke):
    out, _ = smoke
    loss, train = (json.loads((out / name).read_text()) for name in ("loss.json", "train.json"))
    assert (loss["device"], loss["precision"]) == ("cpu", "bf16")
    assert [(r["impl"], r["n"], r["d"]) for r in loss["results"]] == [
        ("clip", 256, 32), ("cloob-direct", 256, 32), ("cloob-chunked", 256, 32)]
    assert all("error" not in r and r["ms"] > 0 and r["tflops_per_s"] > 0 for r in loss["results"]), loss
    assert all("Self CPU time total" in r["profile"] for r in loss["results"])  # --profile-sizes 256
    assert train["device"] == "cpu" and train["cloob_over_clip"] == pytest.approx(
        train["cloob_samples_per_s"] / train["clip_samples_per_s"])
    summary = (out / "summary.md").read_text()
    assert loss_table(loss["results"]) in summary and train_table(train) in summary
    assert "| loss | ok |" in summary and "| tests | skipped | 0 | --smoke (no CUDA tests on the CPU) |" in summary
    assert loss["results"][2]["profile"].rstrip() in summary  # the chunked step's profile


def test_a_part_that_hangs_is_stopped_at_its_limit_and_the_next_is_not_started(tmp_path):
    # A Python whose loss benchmark hangs; every other part runs as usual.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$2" = cloob_tools.bench_loss ]; then exec sleep 600; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    # 19 s in all, 15 of them kept for the summary: the loss part gets at most 4 s (less by the
    # seconds the script took to get there, which depends on the machine's load), the training part none.
    completed = subprocess.run(["bash", str(CHECK), "--smoke", "--budget", "19", "--out", str(tmp_path / "out")],
                               capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": str(python)})
    assert completed.returncode == 1, completed.stdout[-3000:]
    parts = _parts(tmp_path / "out")
    assert parts["loss"]["status"] == "FAILED"
    assert re.fullmatch(r"stopped after its [1-4] s limit", parts["loss"]["detail"]), parts["loss"]
    assert parts["train"]["status"] == "FAILED" and parts["train"]["detail"].startswith("not started")
    assert "=== device check FAILED: loss train" in completed.stdout
    assert "| loss | FAILED |" in (tmp_path / "out" / "summary.md").read_text()


def test_a_carry_folder_without_wheels_stops_the_check_at_once(tmp_path):
    completed = _check("--carry", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), timeout=60)
    assert completed.returncode == 1
    assert "no wheels in" in completed.stdout and "scripts/device_carry.sh" in completed.stdout
    assert list(_parts(tmp_path / "out")) == ["install"]


def test_an_unknown_argument_is_refused_with_the_usage():
    completed = _check("--gpu")
    assert completed.returncode == 2 and "unknown argument '--gpu'" in completed.stderr
    assert "--carry" in completed.stderr


def _bash_array(name: str) -> list:
    match = re.search(rf"^{name}=\((.*?)\)", CARRY.read_text(), flags=re.S | re.M)
    return match[1].split()


def test_carried_wheels_are_installed_here_so_their_versions_are_the_tested_ones():
    # device_carry.sh pins each to the version installed in the project's environment.
    names = _bash_array("WHEELS")
    assert names and all(importlib.metadata.version(name) for name in names)


def _needs(requirements, extras=("",)) -> set:
    """Names of the requirements that apply on the GPU machine for the given extras."""
    names = set()
    for requirement in map(Requirement, requirements or ()):
        if requirement.marker is None or any(
                requirement.marker.evaluate({**DEVICE_MARKERS, "extra": extra}) for extra in extras):
            names.add(canonicalize_name(requirement.name))
    return names


def test_carried_wheels_and_the_device_image_satisfy_every_dependency():
    carried = {canonicalize_name(name) for name in _bash_array("WHEELS")}
    provided = {canonicalize_name(name) for name in _bash_array("DEVICE_PROVIDES")}
    assert "torch" not in carried  # the machine's own build, never replaced
    needed = _needs(importlib.metadata.requires("open_clip_cloob"))
    needed |= _needs(importlib.metadata.requires("open_clip_torch"), extras=("", "training"))
    for name in carried:
        needed |= _needs(importlib.metadata.requires(name))
    assert needed - carried - provided == set()
