"""cloob_tools.study: a tiny grid end to end (training.main runs, zero-shot at two eval points, the report), and
how a study resumes: finished runs are skipped, an interrupted run is trained again, new seeds add runs."""
import json
import re
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from cloob_tools.runs import MODEL_CONFIGS
from conftest import TINY_MODEL, TINY_MODEL_CONFIG, launch
from cloob_tools import study as study_package
from cloob_tools.data import (CAPTION_TEMPLATES, FASHION_MNIST_CLASSES, load_fashion_mnist, make_captions,
                          write_clip_benchmark_set, write_fashion_mnist_dataset)
from open_clip_cloob.analysis import METRICS

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("loss_curves.png", "zeroshot_curves.png", "final.png", "retrieval_score.png")


def _study_module():
    return study_package


@pytest.fixture(scope="module")
def study_data(tmp_path_factory, fashion_mnist_data):
    """A second dataset as a user would bring it: webdataset training shards, two CLIP_benchmark sets
    (classification, retrieval) and held-out pairs, all real Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("study_data")
    images, labels = load_fashion_mnist("test")
    # Small sets and two prompt templates: CLIP_benchmark's cost per eval point is mostly the model's load
    # and the classifier's prompts.
    classes = write_clip_benchmark_set(root / "fashion_classes", images[:48], make_captions(labels[:48], seed=7),
                                       labels[:48], FASHION_MNIST_CLASSES, CAPTION_TEMPLATES[:2])
    captions = write_clip_benchmark_set(root / "fashion_captions", images[48:72], make_captions(labels[48:72], seed=8))
    pairs = write_fashion_mnist_dataset(root / "pairs", "test", 48, "webdataset", seed=5, samples_per_shard=48)
    return ["--train-data", "::".join(str(shard) for shard in fashion_mnist_data["shards"]),
            "--zeroshot", str(classes), str(captions), "--analysis-data", str(pairs[0]),
            "--analysis-num-samples", "48"]


def grid_argv(data, out, seeds="0"):
    return [*data, "--losses", "cloob,clip", "--seeds", seeds, "--steps", "4", "--eval-points", "2",
            "--batch-size", "32", "--model", TINY_MODEL, "--model-config", str(TINY_MODEL_CONFIG),
            "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, study_data):
    """Two runs (cloob, clip) of 4 steps with 2 eval points, trained side by side (--jobs 2), the clip run
    killed as it starts; then the same command again: it trains the killed run and skips the other."""
    study = _study_module()
    out = tmp_path_factory.mktemp("study")
    argv = grid_argv(study_data, out)
    launches, killed = [], []

    def launcher(train_argv, log_file, env):
        name = train_argv[train_argv.index("--name") + 1]
        launches.append(name)
        process = launch(train_argv, log_file, env=env)
        if name.startswith("clip") and not killed:
            process.kill()  # an interruption: the run's folder stays, unfinished
            killed.append(name)
        return process

    # The evaluations run in this process: one thread, like the training processes (conftest.launch);
    # OpenMP threads spin-waiting for a busy core slow them several times on the shared test machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(study.RunFailed, match="1 of 2 runs failed"):
            study.main([*argv, "--jobs", "2"], launcher=launcher)
        first = json.loads((out / "results.json").read_text())
        resumed = study.main(argv, launcher=launcher)
    finally:
        torch.set_num_threads(threads)
    return {"study": study, "out": out, "data": study_data, "argv": argv, "launches": launches,
            "interrupted": killed[0], "first": first, "resumed": resumed}


@pytest.mark.slow
def test_every_run_is_trained_once_and_skipped_when_finished(smoke_study):
    launches, interrupted = smoke_study["launches"], smoke_study["interrupted"]
    assert len(launches) == 3 and launches.count(interrupted) == 2  # killed, then trained again
    finished_first = [run["run"] for run in smoke_study["first"]["runs"]]
    assert finished_first == [name for name in launches[:2] if name != interrupted]
    assert interrupted.startswith("clip-s0-")
    assert {run["run"] for run in smoke_study["resumed"]["runs"]} == set(launches)


@pytest.mark.slow
def test_results_hold_curves_zero_shot_per_point_and_the_analysis(smoke_study):
    runs = smoke_study["resumed"]["runs"]
    assert sorted((run["settings"]["loss"], run["settings"]["hopfield_beta"]) for run in runs) == [
        ("clip", None), ("cloob", 8.0)]
    for run in runs:
        assert run["loss_curve"]["step"] == [1, 2, 3, 4]
        assert [point["step"] for point in run["zeroshot"]] == [2, 4]
        for point in run["zeroshot"]:
            assert 0 <= point["metrics"]["fashion_classes"]["acc1"] <= 1
            assert 0 <= point["metrics"]["fashion_captions"]["image_retrieval_recall@1"] <= 1
        assert run["zeroshot_sets"]["fashion_classes"]["chance_percent"] == 10.0
        assert [entry["epoch"] for entry in run["validation"]] == [1, 2]  # the held-out pairs as --val-data
        assert all(isinstance(run["analysis"][key], float) for key, _ in METRICS)
        assert 1 <= run["analysis"]["effective_rank_image"] <= run["analysis"]["embed_dim"]
        if run["settings"]["loss"] == "clip":  # no Hopfield step to watch
            assert run["diagnostics"] == {} and run["collapse_warning"] is None
        else:  # training.main's monitor, on its logging steps
            assert sorted(run["diagnostics"]) == sorted(smoke_study["study"].DIAGNOSTICS)
            assert run["diagnostics"]["mean_cosine_images"]["step"] == run["collapse_warning"]["step"]
            assert not any(run["collapse_warning"]["value"])
        folder = smoke_study["out"] / "runs" / run["run"]
        assert not list(folder.rglob("*.pt")) and not (folder / "final-model").exists()  # only results kept


@pytest.mark.slow
def test_report_has_plots_tables_and_the_commands(smoke_study):
    import matplotlib.image

    out = smoke_study["out"]
    text = (out / "report.md").read_text()
    for plot in PLOTS:
        assert f"]({plot})" in text and matplotlib.image.imread(out / plot).ndim == 3
    runs = {run["settings"]["loss"]: run for run in smoke_study["resumed"]["runs"]}
    top1 = 100 * runs["cloob"]["zeroshot"][-1]["metrics"]["fashion_classes"]["acc1"]
    rank = runs["cloob"]["analysis"]["effective_rank_text"]
    assert f"| cloob β=8 | 4 | 0 | {top1:.1f} (n=1) |" in text and f"{rank:.2f} (n=1)" in text
    assert "](diagnostics.png)" in text and "n/a: no run logged" not in text
    assert "python -m cloob_tools.study " + " ".join(smoke_study["argv"][:2]) in text
    # M during training: the one retrieval set's ½ (image→text + text→image R@1) at each eval point.
    scores = [50 * (point["metrics"]["fashion_captions"]["image_retrieval_recall@1"]
                    + point["metrics"]["fashion_captions"]["text_retrieval_recall@1"])
              for point in runs["cloob"]["zeroshot"]]
    assert f"| cloob β=8 | 0 | 2, 4 | {scores[0]:.2f}, {scores[1]:.2f} |" in text


@pytest.mark.slow
def test_more_seeds_plan_only_the_missing_runs(smoke_study):
    study = smoke_study["study"]
    plan = study.main([*grid_argv(smoke_study["data"], smoke_study["out"], seeds="0,1"), "--dry-run"])
    assert sorted((s["loss"], s["seed"]) for s in plan["todo"]) == [("clip", 1), ("cloob", 1)]


@pytest.mark.slow
def test_report_with_diagnostics_seeds_and_a_beta_sweep(smoke_study, tmp_path):
    """The report's diagnostics, collapse warning, seeds and β sweep, from a finished run's folder with its
    tensorboard scalars replaced by the test's own (values of the library's hopfield_diagnostics, a
    warning at step 3, a loss curve), and from copies of its result under other seeds and β (the numbers
    are the test's own)."""
    from torch.utils.tensorboard import SummaryWriter

    from open_clip_cloob import hopfield_diagnostics

    study = smoke_study["study"]
    runs = {run["settings"]["loss"]: run for run in smoke_study["resumed"]["runs"]}
    cloob = runs["cloob"]
    folder = tmp_path / cloob["run"]
    shutil.copytree(smoke_study["out"] / "runs" / cloob["run"], folder)
    shutil.rmtree(folder / "tensorboard")
    generator = torch.Generator().manual_seed(0)
    with SummaryWriter(str(folder / "tensorboard")) as writer:
        for step in (1, 2, 3, 4):
            features = torch.nn.functional.normalize(torch.randn(2, 32, 16, generator=generator), dim=-1)
            for key, value in hopfield_diagnostics(features[0], features[1], 8.0).items():
                writer.add_scalar(f"train/hopfield/{key}", value, step)
            writer.add_scalar("train/collapse_warning", float(step == 3), step)
            for tag, value in (("train/loss", 1.0 / step), ("train/scale", 30.0), ("train/batch_time", 0.1)):
                writer.add_scalar(tag, value, step)
    collected = study.collect_run(folder, cloob["settings"], cloob["zeroshot_sets"], cloob["zeroshot"],
                                  cloob["analysis"], 0.0, cloob["command"])
    assert sorted(collected["diagnostics"]) == sorted(study.DIAGNOSTICS)
    assert collected["diagnostics"]["mean_cosine_images"]["step"] == [1, 2, 3, 4]
    assert collected["collapse_warning"]["value"] == [0.0, 0.0, 1.0, 0.0]
    assert collected["loss_curve"]["step"] == [2, 3, 4, 5]  # steps done: OpenCLIP logs a step at its 0-based index
    assert collected["loss_curve"]["loss"] == pytest.approx([1.0, 1 / 2, 1 / 3, 1 / 4])

    def variant(seed, beta, acc1):
        copy = json.loads(json.dumps(collected))
        copy["settings"].update(seed=seed, hopfield_beta=beta)
        copy["run"] = study.run_id(copy["settings"])
        copy["zeroshot"][-1]["metrics"]["fashion_classes"]["acc1"] = acc1
        return copy

    results = [runs["clip"], variant(0, 8.0, 0.25), variant(1, 8.0, 0.35), variant(0, 2.0, 0.5)]
    report = study.write_report(tmp_path, results, smoke=False).read_text()
    for plot in (*PLOTS, "diagnostics.png", "beta_sweep.png"):
        assert f"]({plot})" in report and (tmp_path / plot).is_file()
    assert "| cloob β=8 | 4 | 0,1 | 30.0 ± 7.1 (n=2) |" in report and "| cloob β=2 | 4 | 0 | 50.0 (n=1) |" in report
    assert f"- `{results[1]['run']}`: first warning at step 3" in report


@pytest.mark.slow
def test_estimate_of_new_seeds_is_what_the_finished_runs_took(smoke_study):
    """The estimate rates come from the folder's finished runs: the same settings under other seeds are
    estimated at the time those runs measured (training, eval points, analysis)."""
    study = smoke_study["study"]
    runs = smoke_study["resumed"]["runs"]
    todo = [{**run["settings"], "seed": 1} for run in runs]
    estimate, source = study.estimate_seconds(todo, runs, seconds_per_step=None)
    took = sum(run["timings_s"]["train"] + sum(run["timings_s"]["eval_points"]) + run["timings_s"]["analysis"]
               for run in runs)
    assert source == "finished runs of this folder" and estimate == pytest.approx(took, rel=1e-6)
    assert study.estimate_seconds(todo, [], seconds_per_step=None)[0] is None  # tiny model: no reference


@pytest.mark.parametrize("argv, message", [
    (["--losses", "cloob,nonsense"], "--losses nonsense: not a --loss of training.main"),
    (["--seeds", "0,0"], "--seeds '0,0': give distinct comma-separated values"),
    (["--betas", "8,x"], "--betas '8,x': could not convert string to float"),
    (["--extra-flags", "--lr 1e-4 --seed=3"], "--extra-flags: --seed is set by the study"),
    (["--train-data", "x.tar"], "--train-data and --zeroshot go together"),
])
def test_bad_grids_are_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        _study_module().parse_args(argv)
    assert message in capsys.readouterr().err


def test_steps_must_fit_the_eval_points_and_a_csv(tmp_path):
    study = _study_module()
    with pytest.raises(ValueError, match="--steps 10 is not a multiple of --eval-points 4"):
        study.resolve_steps(study.parse_args(["--steps", "10"]), {"dataset_type": "webdataset"})
    csv = tmp_path / "pairs.csv"
    csv.write_text("filepath\ttitle\n" + "".join(f"{i}.png\tcaption {i}\n" for i in range(100)))
    manifest = {"train_data": str(csv), "dataset_type": "csv"}
    args = study.parse_args(["--batch-size", "16", "--eval-points", "2"])
    assert study.resolve_steps(args, manifest) == 12  # 2 epochs of 100 // 16 steps
    with pytest.raises(ValueError, match="6 steps, so 2 eval points mean 12 steps"):
        study.resolve_steps(study.parse_args(["--batch-size", "16", "--eval-points", "2", "--steps", "10"]), manifest)


def test_documented_study_commands_use_existing_flags():
    known = set(_study_module().build_parser()._option_string_actions)
    text = (REPO / "docs" / "tooling.md").read_text().replace("\\\n", " ")
    lines = [line.split("cloob_tools.study", 1)[1] for line in text.splitlines() if "python -m cloob_tools.study " in line]
    # Quoted --extra-flags values are training.main's flags.
    flags = {flag for line in lines
             for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", re.sub(r'"[^"]*"', "", line.split("#")[0]))}
    assert len(lines) >= 4 and flags and flags <= known, flags - known


def test_documented_contrasts_commands_use_existing_flags():
    from cloob_tools.study import contrasts

    known = set(contrasts.build_parser()._option_string_actions)
    for path in (REPO / "docs" / "tooling.md", REPO / "docs" / "study" / "report.md"):
        text = path.read_text().replace("\\\n", " ")
        lines = [line.split("cloob_tools.study.contrasts", 1)[1] for line in text.splitlines()
                 if "python -m cloob_tools.study.contrasts" in line]
        flags = {flag for line in lines for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line)}
        assert lines and flags <= known, (path, flags - known)


def test_study_width_variant_changes_only_the_embedding_width():
    """docs/study's width check trains demo-vit-e256: demo-vit with a 256-wide embedding and nothing else changed."""
    configs = MODEL_CONFIGS
    base = json.loads((configs / "demo-vit.json").read_text())
    wide = json.loads((configs / "demo-vit-e256.json").read_text())
    assert {key: value for key, value in wide.items() if base.get(key) != value} == {"embed_dim": 256}
    assert set(base) == set(wide)
    open_clip.add_model_config(configs / "demo-vit-e256.json")
    model = open_clip.create_model("demo-vit-e256").eval()
    with torch.no_grad():
        images = model.encode_image(torch.zeros(2, 3, 32, 32))
        texts = model.encode_text(torch.zeros(2, 24, dtype=torch.long))
    assert images.shape == texts.shape == (2, 256)


def test_paired_difference_is_the_mean_of_the_seed_differences_with_its_t_interval():
    from cloob_tools.study.report import decision, paired_difference

    # d = 1, 1.5, 2 (seed 3 only in one cell): mean 1.5, sd 0.5, t(0.975, 2) = 4.3027.
    difference = paired_difference({0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}, {0: 0.0, 1: 0.5, 2: 1.0})
    half = 4.302652729911275 * 0.5 / 3 ** 0.5
    assert difference == pytest.approx({"mean": 1.5, "low": 1.5 - half, "high": 1.5 + half, "n": 3})
    assert decision("cloob", "clip", difference) == "cloob beats clip"
    assert decision("clip", "cloob", paired_difference({0: 0.0, 1: 0.5, 2: 1.0}, {0: 1.0, 1: 2.0, 2: 3.0})) == \
        "cloob beats clip"
    assert decision("a", "b", paired_difference({0: 1.0, 1: -1.0}, {0: 0.0, 1: 0.0})) == "no difference shown"
    assert paired_difference({0: 1.0}, {0: 0.0}) is None and decision("a", "b", None).startswith("n/a")


def test_the_retrieval_score_during_training_is_the_mean_over_seeds_at_each_eval_point():
    from cloob_tools.study.report import retrieval_curve_table, retrieval_curves

    sets = {"names": {"task": "zeroshot_retrieval"}, "groups": {"task": "zeroshot_classification"}}

    def run(seed, recalls):
        return {"settings": {"seed": seed}, "zeroshot": [
            {"step": 50 * (index + 1), "metrics": {"names": {"text_retrieval_recall@1": recall,
                                                             "image_retrieval_recall@1": recall / 2},
                                                   "groups": {"acc1": 0.9}}}
            for index, recall in enumerate(recalls)]}

    # M = 100 · (r + r/2) / 2 = 75 r: seed 0 gives 7.5 and 15, seed 1 22.5 and 30.
    group = [run(0, [0.1, 0.2]), run(1, [0.3, 0.4])]
    table = retrieval_curve_table([group], ["cloob"], [retrieval_curves(group, sets)])
    assert "| cloob | 0,1 | 50, 100 | 15.00, 22.50 |" in table


def test_the_report_decides_the_planned_comparisons_on_the_retrieval_score():
    from cloob_tools.study.report import paired_table

    sets = {"names": {"task": "zeroshot_retrieval"}, "groups": {"task": "zeroshot_classification"}}

    def run(loss, beta, seed, recall):
        metrics = {"names": {"text_retrieval_recall@1": recall, "image_retrieval_recall@1": recall},
                   "groups": {"acc1": 0.5}}
        return {"settings": {"loss": loss, "hopfield_beta": beta, "seed": seed, "steps": 100},
                "zeroshot": [{"metrics": metrics}], "analysis": {"effective_rank_image": 5.0 + seed}}

    configs = [[run("clip", None, seed, 0.20 + 0.01 * seed) for seed in range(3)],
               [run("cloob", 8.0, seed, 0.10 + 0.02 * seed) for seed in range(3)],
               [run("cloob", 16.0, seed, 0.90) for seed in range(3)]]  # another β: not the plan's cloob
    table = paired_table(configs, sets)
    # M: cloob − clip = −10, −9, −8 points; the effective rank is the same in both.
    assert "| cloob − clip | 100 | -9.00 [-11.48, -6.52] (n=3) | +0.00 [+0.00, +0.00] (n=3) | clip beats cloob |" in table
    assert table.count("\n") == 3  # header, alignment, the one comparison present
