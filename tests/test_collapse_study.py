"""cloob_tools.collapse_study: real training.main runs of the collapse recipe, summarised from their tensorboard logs."""
import json

import pytest

from cloob_tools import collapse_study


@pytest.mark.slow
def test_runs_are_summarised_and_finished_ones_skipped(tmp_path, fashion_mnist_available):
    argv = ["--out", str(tmp_path), "--num-samples", "256", "--epochs", "1", "--variants", "base,wd-0", "--seeds", "0"]
    summary = collapse_study.main(argv)
    runs = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(run["variant"] for run in runs) == ["base", "wd-0"]
    for run in runs:
        assert run["final_loss"] > 0 and run["first_warning_step"] is None  # 2 steps cannot collapse
        assert 1 <= run["final"]["attended_patterns_image_from_images"] <= 128
    params = (tmp_path / "runs" / "wd-0-s0" / "params.txt").read_text()
    assert "wd: 0.0" in params and "log_every_n_steps: 1" in params and "seed: 0" in params
    text = summary.read_text()
    assert "| base | 0 of 1 | — |" in text and "](trajectories.png)" in text
    assert (tmp_path / "trajectories.png").is_file()
    before = (tmp_path / "runs" / "base-s0" / "out.log").stat().st_mtime
    collapse_study.main(argv)  # finished runs are not trained again
    assert (tmp_path / "runs" / "base-s0" / "out.log").stat().st_mtime == before


def test_unknown_variants_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        collapse_study.main(["--out", str(tmp_path), "--variants", "base,nonsense"])
    assert "--variants: unknown nonsense" in capsys.readouterr().err
