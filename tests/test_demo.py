"""The quickstart demo: a smoke run (few steps, a slice of the corpus) produces every report artifact."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from open_clip_cloob.analysis import METRICS
from cloob_tools import demo
from cloob_tools.data import make_corpus

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("loss_curves.png", "zeroshot.png", "spectra.png", "hopfield.png")
SMOKE_STEPS = 3
# training.main settings that may differ between the two runs: the loss and what it implies, the run name.
LOSS_DEPENDENT = {"loss", "init_inv_tau", "learnable_inv_tau", "name", "checkpoint_path", "log_path",
                  "tensorboard_path", "wandb_path"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    try:
        make_corpus.check_packages()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    root = tmp_path_factory.mktemp("demo")
    readme = root / "README.md"
    readme.write_text(f"# title\n\nbefore\n{demo.README_BEGIN}\nold text\n{demo.README_END}\nafter\n")
    completed = subprocess.run(
        [sys.executable, "-m", "cloob_tools.demo", "--smoke", "--steps", str(SMOKE_STEPS), "--work", str(root / "work"),
         "--report", str(root / "report"), "--readme", str(readme)],
        capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return {"root": root, "report": root / "report", "readme": readme, "log": completed.stdout + completed.stderr,
            "demo": demo, "manifest": json.loads((root / "work" / "data" / "manifest.json").read_text())}


@pytest.mark.slow
def test_every_stage_reports_its_time(smoke_run):
    stages = re.findall(r"\[demo (\d)/(\d)\] .* done in [\d.]+ s \([\d.]+ s since start\)", smoke_run["log"])
    assert [int(index) for index, _ in stages] == list(range(1, 8)) and {total for _, total in stages} == {"7"}
    assert "Train Epoch: 0" in smoke_run["log"]  # OpenCLIP's step logs stream through


@pytest.mark.slow
def test_report_artifacts_are_complete_and_parseable(smoke_run):
    import matplotlib.image

    report = smoke_run["report"]
    results = json.loads((report / "results.json").read_text())
    metrics = demo.shown_metrics("corpus", smoke_run["manifest"]["benchmark"])
    assert {name for name, _, _ in metrics} >= {"emoji_names", "symbol_names", "stamp_captions", "flag_names"}
    assert results["settings"]["steps"] == SMOKE_STEPS and results["settings"]["smoke"] is True
    for loss in ("clip", "cloob"):
        curve = results["loss_curves"][loss]
        assert curve["step"] == list(range(1, SMOKE_STEPS + 1))
        assert len(curve["loss"]) == SMOKE_STEPS and all(isinstance(value, float) for value in curve["loss"])
        zeroshot = results["zeroshot"][loss]
        for name, key, _ in metrics:
            assert 0.0 <= zeroshot[name][key] <= 1.0
    for label in ("CLIP", "CLOOB"):
        measured = results["analysis"][label]
        assert all(isinstance(measured[key], float) for key, _ in METRICS)
        assert 1.0 <= measured["effective_rank_image"] <= measured["embed_dim"]
        assert len(measured["spectrum_text"]) == measured["embed_dim"]
    assert results["timings_s"]["total"] > 0
    hopfield = results["hopfield_diagnostics"]  # training.monitor's lines of the CLOOB run, every step logged
    assert {key for _, lines, _ in smoke_run["demo"].HOPFIELD_PANELS for key, _ in lines} <= hopfield.keys()
    assert hopfield["mean_cosine_images"]["step"] == list(range(SMOKE_STEPS))
    batch = results["settings"]["batch_size"]
    assert all(1.0 <= value <= batch for value in hopfield["attended_patterns_image_from_images"]["value"])
    for plot in PLOTS:
        assert matplotlib.image.imread(report / plot).ndim == 3
    text = (report / "report.md").read_text()
    assert all(f"]({plot})" in text for plot in PLOTS)
    assert f"| {METRICS[0][1]} | {results['analysis']['CLIP']['alignment']:.4f} |" in text
    recall = [100 * results["zeroshot"][loss]["emoji_names"]["text_retrieval_recall@1"] for loss in ("clip", "cloob")]
    chance = 100 / smoke_run["manifest"]["benchmark"]["emoji_names"]["num_samples"]
    assert f"| emoji image→name R@1 | {chance:.1f} | {recall[0]:.1f} | {recall[1]:.1f} |" in text
    for name, entry in smoke_run["manifest"]["sources"].items():  # the data section lists every source
        row = f"| {name} | {entry['kind']} | {entry['captions']} | {entry['train']:,} | {entry['held_out']:,} |"
        assert row in text


@pytest.mark.slow
def test_both_runs_share_every_setting_but_the_loss(smoke_run):
    runs = smoke_run["root"] / "work" / "runs"
    params = {}
    for loss in ("clip", "cloob"):
        lines = (runs / f"demo-{loss}" / "params.txt").read_text().splitlines()
        params[loss] = dict(line.split(": ", 1) for line in lines if ": " in line)
    assert (params["clip"]["loss"], params["cloob"]["loss"]) == ("clip", "cloob")
    differing = {key for key in params["clip"].keys() | params["cloob"].keys()
                 if params["clip"].get(key) != params["cloob"].get(key)}
    assert differing <= LOSS_DEPENDENT
    models = smoke_run["root"] / "work" / "models"
    assert all((models / f"demo-{loss}" / "open_clip_config.json").is_file() for loss in ("clip", "cloob"))


@pytest.mark.slow
def test_readme_block_is_regenerated(smoke_run):
    text = smoke_run["readme"].read_text()
    demo = smoke_run["demo"]
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{demo.README_END}\nafter\n")
    assert "old text" not in text
    block = text[text.index(demo.README_BEGIN):text.index(demo.README_END)]
    assert "](report/spectra.png)" in block and "](report/report.md)" in block  # relative to the README
    report = (smoke_run["report"] / "report.md").read_text()
    for line in block.splitlines():
        if line.startswith("| "):
            assert line in report  # the same tables as the report


def test_data_options_are_checked_and_fashion_emoji_stays_available():
    assert demo.parse_args([]).data == "corpus"
    assert demo.parse_args(["--data", "fashion-emoji"]).data == "fashion-emoji"
    with pytest.raises(SystemExit):
        demo.parse_args(["--data", "fashion-emoji", "--fashion-share", "0.5"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--fashion-share", "1"])
    sets = {"emoji_names": {}, "fashion_mnist": {}}
    shown = {data: [name for name, _, _ in demo.shown_metrics(data, sets)] for data in demo.DATA_CHOICES}
    assert shown == {"corpus": ["emoji_names", "emoji_names", "fashion_mnist"],
                     "fashion-emoji": ["fashion_mnist", "emoji_names", "emoji_names"]}


def test_results_name_paths_inside_the_repository_relative_to_it(monkeypatch):
    monkeypatch.chdir(REPO)  # the repository is where `make demo` runs
    assert demo.repo_relative(f"local-dir:{REPO}/demo-out/models/demo-clip") == "local-dir:demo-out/models/demo-clip"
    assert demo.repo_relative("/tmp/work/data") == "/tmp/work/data"


def test_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert demo.update_readme(readme, "table") is False
    assert readme.read_text() == "# no markers\n"


def test_committed_readme_block_is_the_committed_report():
    """The README's demo numbers are those of docs/demo (written together by `make demo`, never by hand)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(demo.README_BEGIN) + len(demo.README_BEGIN):text.index(demo.README_END)]
    report = (REPO / "docs" / "demo" / "report.md").read_text()
    results = json.loads((REPO / "docs" / "demo" / "results.json").read_text())
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(rows) >= 10 and all(line in report for line in rows)
    assert "local-dir:/" not in json.dumps(results)  # the committed report names no machine's paths
    settings = results["settings"]
    assert (f"on {settings['date']} ({settings['steps']} steps, {settings['device']}, "
            f"{results['timings_s']['total'] / 60:.1f} min in all") in block
    for link in re.findall(r"\]\((docs/demo/[^)]+)\)", block):
        assert (REPO / link).is_file(), link
