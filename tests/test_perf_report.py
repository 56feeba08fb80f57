"""The README's performance tables are generated from docs/perf/*.json; the device check's verdicts.

``python -m cloob_tools.perf_report`` renders every table from the benchmarks' JSON files, so each number in
the README can be traced to a measurement (machine, command, date); this checks that the README
holds exactly what the committed files give, and that the targets of a GPU run are judged right.
"""
import json
from pathlib import Path

import pytest

from cloob_tools import perf_report
from cloob_tools.reports import read_block

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / perf_report.DOCS


def test_readme_performance_block_is_generated_from_docs_perf():
    block = read_block(REPO / "README.md", perf_report.README_BEGIN, perf_report.README_END)
    assert block == perf_report.readme_block(DOCS), "run: python -m cloob_tools.perf_report readme"
    measured = json.loads((DOCS / "loss-cpu.json").read_text())
    assert measured["device"] == "cpu" and measured["results"] and measured["command"] in block


def _case(impl, n, ms, peak_mib, d=1024):
    return {"impl": impl, "n": n, "d": d, "ms": ms, "peak_mib": peak_mib, "tflops_per_s": 1.0}


def test_loss_table_gives_ratios_to_cliploss_and_to_the_direct_path():
    table = perf_report.loss_table([_case("clip", 4096, 10.0, 100.0), _case("cloob-direct", 4096, 40.0, 400.0),
                                    _case("cloob-chunked", 4096, 50.0, 100.0),
                                    {"impl": "cloob-direct", "n": 8192, "d": 1024, "error": "out of memory: x"}])
    rows = table.splitlines()[2:]
    assert rows[0].endswith("| 1.00 | 0.25 | 0.25 |")
    assert rows[2] == "| 4,096 | 1,024 | cloob-chunked | 50.0 | 100 | 1 | 5.00 | 1.25 | 0.25 |"
    assert rows[3].startswith("| 8,192 | 1,024 | cloob-direct | out of memory: x |")


def _verdicts(loss, train):
    rows = perf_report.targets_table(loss, train).splitlines()[2:]
    return [row.rsplit("|", 2)[1].strip() for row in rows]


def test_targets_are_judged_on_gpu_measurements_only():
    gpu = {"device": "cuda", "results": [_case("cloob-chunked", 32768, 149.0, 4000.0),
                                         {"impl": "cloob-chunked", "n": 262144, "d": 1024, "error": "skipped: x"}]}
    train = {"device": "cuda", "model": "RN50-cloob", "batch_size": 256, "cloob_over_clip": 0.94}
    assert _verdicts(gpu, train) == ["met", "met", "**missed**", "**missed**"]
    gpu["results"][0].update(ms=151.0, peak_mib=4097.0)
    train["cloob_over_clip"] = 0.96
    assert _verdicts(gpu, train) == ["**missed**", "**missed**", "**missed**", "met"]
    cpu = {**gpu, "device": "cpu"}
    assert _verdicts(cpu, {**train, "device": "cpu"}) == ["not measured"] * 4
    assert _verdicts(None, None) == ["not measured"] * 4


@pytest.mark.parametrize("name", ["loss-cpu.json"])
def test_committed_results_say_where_and_how_they_were_measured(name):
    measured = json.loads((DOCS / name).read_text())
    assert {"command", "date", "device", "device_name", "precision", "torch", "note"} <= measured.keys()
    assert measured["command"].startswith("python scripts/bench_loss.py")
