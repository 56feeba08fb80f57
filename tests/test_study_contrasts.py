"""cloob_tools.study.contrasts: the planned contrasts of study folders, on hand-made results (no training) and
on the committed results of the corpus study (docs/study/corpus)."""
import json
import re
import shutil
from pathlib import Path

import pytest

from cloob_tools.study import contrasts
from cloob_tools.study.report import group_configs

REPO = Path(__file__).resolve().parents[1]
T_2 = 4.302652729911275  # t_{0.975, 2}: the 95 % interval of 3 paired seeds
HALF = T_2 / 3 ** 0.5  # half width of the interval for a standard deviation of 1 over 3 seeds
SETS = {"names": {"task": "zeroshot_retrieval", "chance_percent": 1.0},
        "groups": {"task": "zeroshot_classification", "chance_percent": 10.0}}
TRAIN_DATA = "data/train/train-{000000..000001}.tar"
WARMIN = ["--hopfield-warmin", "600"]


def result(loss, seed, m, rank=None, batch=128, steps=1200, flags=()):
    """A run's result with only the fields the contrasts read; M = ``m`` (both R@1 directions of the one
    retrieval set), the images' effective rank ``rank`` (no analysis when None)."""
    settings = {"loss": loss, "hopfield_beta": 8.0 if loss in ("cloob", "cloob-infonce") else None, "seed": seed,
                "steps": steps, "eval_points": 4, "batch_size": batch, "model": "demo-vit", "extra_flags": list(flags),
                "device": "cpu", "validate": True,
                "data": {"train_data": TRAIN_DATA, "dataset_type": "webdataset",
                         "zeroshot": {name: f"data/benchmark/{name}" for name in SETS}, "analysis_data": None}}
    metrics = {"names": {"text_retrieval_recall@1": m / 100, "image_retrieval_recall@1": m / 100},
               "groups": {"acc1": 0.5}}
    return {"run": f"{loss}-s{seed}-b{batch}-{steps}-{len(flags)}", "settings": settings, "zeroshot_sets": SETS,
            "zeroshot": [{"metrics": metrics}],
            "analysis": None if rank is None else {"effective_rank_image": rank}}


def runs(loss, values, ranks=(None, None, None), **settings):
    """The runs of one configuration at seeds 0, 1, 2 (as many as ``values``)."""
    return [result(loss, seed, m, rank, **settings) for seed, (m, rank) in enumerate(zip(values, ranks))]


def configs_of(results, label="corpus, 0 % template captions", share=0.0):
    labelled = [contrasts.labelled(r, Path("study"), label, share) for r in results]
    return group_configs(labelled), {label: 0}


def interval(mean, half=HALF):
    return pytest.approx({"mean": mean, "low": mean - half, "high": mean + half, "n": 3})


# Batch axis: gap at 128 = cloob − clip = −1, 1, 3; at 512 = 5, 6, 10; d = 6, 5, 7 (mean 6, sd 1).
# Ranks: gap at 128 = 0, 0, 0; at 512 = 1, 2, 3 (mean 2, sd 1).
BATCH_RUNS = [*runs("cloob", [10, 12, 14], [5, 5, 5]), *runs("clip", [11, 11, 11], [5, 5, 5]),
              *runs("cloob", [20, 21, 25], [6, 7, 8], batch=512, steps=300),
              *runs("clip", [15, 15, 15], [5, 5, 5], batch=512, steps=300)]


def test_the_batch_size_contrast_is_the_paired_difference_of_the_cloob_clip_gaps():
    configs, labels = configs_of(BATCH_RUNS)
    plain, interactions = contrasts.batch_contrasts(configs, labels)
    (row,) = interactions
    assert row.primary == interval(6.0) and row.secondary == interval(2.0)
    assert row.plan == "corpus-plan.md 7"
    assert row.decision == ("(cloob − clip) at batch 512, 300 steps beats (cloob − clip) at batch 128, 1200 steps")
    assert row.condition == "batch 512 vs 128, 300 vs 1200 steps"
    # The plain gaps: at 128 d = −1, 1, 3 (mean 1, sd 2); at 512 d = 5, 6, 10 (mean 7, sd √7).
    assert [entry.condition for entry in plain] == ["batch 128, 1200 steps", "batch 512, 300 steps"]
    assert plain[0].primary == interval(1.0, 2 * HALF) and plain[0].decision == "no difference shown"
    assert plain[1].primary == interval(7.0, 7 ** 0.5 * HALF) and plain[1].decision == "cloob beats clip"
    table = contrasts.contrast_table(interactions, "none")
    assert "| +6.00 [+3.52, +8.48] (n=3) | +2.00 [-0.48, +4.48] (n=3) |" in table


def test_the_duplicate_caption_contrast_pairs_shares_in_the_same_condition():
    # Gap at share 0: 2, 2, 2; at share 0.5: 0, −2, −1; d = −2, −4, −3 (mean −3, sd 1).
    base = [contrasts.labelled(r, Path("a"), "corpus, 0 % template captions", 0.0)
            for r in runs("cloob", [12, 12, 12]) + runs("clip", [10, 10, 10])]
    fifty = [contrasts.labelled(r, Path("b"), "corpus, 50 % template captions", 0.5)
             for r in runs("cloob", [10, 8, 9]) + runs("clip", [10, 10, 10])
             + runs("cloob", [1, 2, 3], batch=256, steps=600) + runs("clip", [1, 1, 1], batch=256, steps=600)]
    labels = {"corpus, 0 % template captions": 0, "corpus, 50 % template captions": 1}
    plain, interactions = contrasts.share_contrasts(group_configs(base + fifty), labels)
    (row,) = interactions  # batch 256 has no share-0 reference
    assert row.primary == interval(-3.0) and row.secondary is None  # no analysis: the rank is n/a
    assert row.decision == "(cloob − clip) at 0 % beats (cloob − clip) at 50 %"
    assert row.data == "corpus, 50 % template captions vs corpus, 0 % template captions"
    assert [(entry.data, entry.primary["mean"]) for entry in plain] == [
        ("corpus, 0 % template captions", pytest.approx(2.0)), ("corpus, 50 % template captions", pytest.approx(-1.0))]


def test_remedies_are_paired_with_the_same_loss_without_flags_and_described_against_infoloob():
    results = [*runs("cloob", [10, 11, 12]), *runs("infoloob", [15, 15, 15]), *runs("clip", [1, 1, 1]),
               *runs("cloob", [14, 16, 18], flags=WARMIN),
               *runs("cloob", [30], flags=["--learnable-hopfield-beta", "shared"])]
    configs, labels = configs_of(results)
    rows = contrasts.remedy_contrasts(configs, labels)
    assert [(row.name, row.decision) for row in rows] == [
        ("cloob β=8 --hopfield-warmin 600 − cloob β=8", "cloob β=8 --hopfield-warmin 600 beats cloob β=8"),
        ("cloob β=8 --hopfield-warmin 600 − infoloob", "described, not decided"),
        ("cloob β=8 --learnable-hopfield-beta shared − cloob β=8", "n/a (fewer than 2 paired seeds)"),
        ("cloob β=8 --learnable-hopfield-beta shared − infoloob", "described, not decided")]
    # warm-in − cloob: d = 4, 5, 6 (mean 5, sd 1); − infoloob: d = −1, 1, 3 (mean 1, sd 2).
    assert rows[0].primary == interval(5.0) and rows[1].primary == interval(1.0, 2 * HALF)
    assert rows[2].primary is None and rows[3].primary is None
    table = contrasts.contrast_table(rows, "none")
    # rank (no analysis) in rows 1 and 2; M, rank and decision in row 3; M and rank in row 4
    assert table.count("n/a (fewer than 2 paired seeds)") == 7
    # The flags do not enter the loss comparisons: cloob − clip and cloob − infoloob of the plain cells only.
    assert [(row.name, row.condition) for row in contrasts.loss_contrasts(configs, labels)] == [
        ("cloob − clip", "batch 128, 1200 steps"), ("cloob − infoloob", "batch 128, 1200 steps")]


def test_the_data_is_named_by_its_manifest_or_else_by_its_path(tmp_path, monkeypatch):
    data = {"train_data": TRAIN_DATA}
    assert contrasts.data_label(tmp_path, data) == (str(tmp_path / TRAIN_DATA), None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"fashion_share": 0.9}))
    assert contrasts.data_label(tmp_path, data) == ("corpus, 90 % template captions", 0.9)
    outside = {"train_data": f"{tmp_path}/data/train/a.tar::{tmp_path}/other/b.tar"}  # absolute: the folder is not used
    assert contrasts.data_label(Path("elsewhere"), outside) == ("corpus, 90 % template captions", 0.9)
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"train_data": "train/x.tar"}))  # no share
    assert contrasts.data_label(tmp_path, data) == (str(tmp_path / TRAIN_DATA), None)
    assert contrasts.data_label(Path("elsewhere"), outside) == (outside["train_data"], None)
    monkeypatch.chdir(tmp_path)  # an absolute path below the working directory is named relative to it
    assert contrasts.data_label(Path("elsewhere"), outside) == ("data/train/a.tar::other/b.tar", None)


def write_study(folder, results, share):
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "manifest.json").write_text(json.dumps({"fashion_share": share}))
    commands = [f"python -m cloob_tools.study --out {folder.name}"]
    (folder / "results.json").write_text(json.dumps({"runs": results, "commands": commands}))


def test_the_command_line_writes_every_planned_contrast_of_two_folders(tmp_path):
    write_study(tmp_path / "base", [*BATCH_RUNS, *runs("infoloob", [9, 9, 9], [5, 5, 5]),
                                    *runs("cloob", [13, 14, 14], [5, 5, 5], flags=WARMIN)], 0.0)
    # Share 0.5: gap at batch 128 = 0, 1, 1 against −1, 1, 3: d = 1, 0, −2 (mean −1/3).
    write_study(tmp_path / "f50", [*runs("cloob", [10, 11, 12], [4, 4, 4]), *runs("clip", [10, 10, 11], [5, 5, 5])],
                0.5)
    out, plot = tmp_path / "out" / "contrasts.md", tmp_path / "out" / "forest.png"
    assert contrasts.main([str(tmp_path / "base"), str(tmp_path / "f50"), "--out", str(out), "--plot", str(plot)]) == out
    text = out.read_text()
    assert plot.stat().st_size > 0 and "![forest plot of the contrasts on M](forest.png)" in text
    base, fifty = "corpus, 0 % template captions", "corpus, 50 % template captions"
    for section in ("comparisons 1–6", "docs/study/remedies-plan.md", "comparison 7", "comparison 8"):
        assert section in text
    # Cells: the base's cloob at batch 128, M = 10, 12, 14: mean 12, sd 2.
    assert (f"| {base} | cloob β=8 | batch 128, 1200 steps | 0,1,2 | 12.00 [{12 - 2 * HALF:.2f}, {12 + 2 * HALF:.2f}] "
            f"| 3 | 5.00 |") in text
    # Loss comparisons in both folders, labelled by data and steps.
    assert f"| corpus-plan.md 1 | cloob − clip | {base} | batch 512, 300 steps | +7.00 [" in text
    assert f"| corpus-plan.md 2 | cloob − infoloob | {base} | batch 128, 1200 steps | +3.00 [" in text
    assert f"| corpus-plan.md 1 | cloob − clip | {fifty} | batch 128, 1200 steps | +0.67 [" in text
    # Remedy: warm-in − cloob d = 3, 2, 0 (mean 5/3); − infoloob d = 4, 5, 5.
    assert (f"| remedies-plan.md | cloob β=8 --hopfield-warmin 600 − cloob β=8 | {base} | batch 128, 1200 steps "
            f"| +1.67 [") in text
    assert re.search(r"\| remedies-plan.md \| cloob β=8 --hopfield-warmin 600 − infoloob \| .* \| "
                     r"\+4\.67 \[.*\] \(n=3\) \| \+0\.00 \[\+0\.00, \+0\.00\] \(n=3\) \| described, not decided \|", text)
    # The two axes.
    assert ("| corpus-plan.md 7 | (cloob − clip) at batch 512, 300 steps − (cloob − clip) at batch 128, 1200 steps "
            f"| {base} | batch 512 vs 128, 300 vs 1200 steps | +6.00 [+3.52, +8.48] (n=3) |") in text
    assert (f"| corpus-plan.md 8 | (cloob − clip) at 50 % − (cloob − clip) at 0 % | {fifty} vs {base} "
            "| batch 128, 1200 steps | -0.33 [") in text
    assert "python -m cloob_tools.study --out base\n" in text and "python -m cloob_tools.study --out f50\n" in text


def test_a_folder_without_results_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'empty'}: no results.json")):
        contrasts.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out.md")])


def test_the_corpus_study_gives_the_loss_comparisons_of_its_report(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(REPO / "docs" / "study" / "corpus" / "results.json", folder)
    out = contrasts.main([str(folder), "--out", str(tmp_path / "contrasts.md")])
    text = out.read_text()
    label = str(folder / "data" / "train" / "train-{000000..000004}.tar")  # no manifest in the copy
    assert f"| corpus-plan.md 1 | cloob − clip | {label} | batch 128, 1200 steps | -3.65 [-8.25, +0.95] (n=3) " \
           "| -2.78 [-11.27, +5.70] (n=3) | no difference shown |" in text
    report = (REPO / "docs" / "study" / "corpus" / "report.md").read_text()
    rows = re.findall(r"^\| (\S+ − \S+) \| 1200 \| (.+) \| (.+) \| (.+) \|$", report, flags=re.M)
    assert len(rows) == 6
    for number, (name, primary, secondary, decided) in enumerate(rows, start=1):
        assert (f"| corpus-plan.md {number} | {name} | {label} | batch 128, 1200 steps | {primary} | {secondary} "
                f"| {decided} |") in text
    assert "python -m cloob_tools.study --data study-corpus" in text
    # The same folder's batch-size axis and remedies (docs/study/report.md quotes these rows).
    assert f"| corpus-plan.md 7 | (cloob − clip) at batch 512, 300 steps − (cloob − clip) at batch 128, 1200 steps " \
           f"| {label} | batch 512 vs 128, 300 vs 1200 steps | -0.08 [-6.69, +6.53] (n=3) |" in text
    assert f"| remedies-plan.md | cloob β=8 --hopfield-warmin 600 − cloob β=8 | {label} | batch 128, 1200 steps " \
           "| +3.51 [+0.05, +6.97] (n=3) | +13.43 [+7.13, +19.73] (n=3) | cloob β=8 --hopfield-warmin 600 beats " \
           "cloob β=8 |" in text
