"""The README and the pages of docs/ tell the truth: the Python example runs, the numbers, flags and
defaults they state are the code's."""
import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LOSS_DOC = REPO / "docs" / "loss.md"
TRAINING_DOC = REPO / "docs" / "training.md"


def test_readme_loss_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    loss = namespace["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    # A random RN50 starts with nearly collinear embeddings: the loss sits near 2·τ·log(N−1).
    assert abs(loss.item() - 2 * torch.log(torch.tensor(3.0)).item() / 30) < 0.05


def _section(title: str, path: Path = README) -> str:
    text = path.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_readme_value_of_an_untrained_model_is_what_the_loss_computes():
    from open_clip_cloob import CloobLoss

    match = re.search(r"L = 2·τ·log\(N−1\) \(([\d.]+) for N = (\d+),\s+inv_tau = (\d+)\)", LOSS_DOC.read_text())
    assert match, "docs/loss.md's 'Values' sentence changed: update this test"
    stated, n, inv_tau = float(match[1]), int(match[2]), float(match[3])
    collinear = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1).expand(n, 8)
    loss = CloobLoss(hopfield_beta=8.0)(collinear, collinear, torch.tensor(inv_tau))
    assert round(loss.item(), 3) == stated


def test_readme_chunk_threshold_is_the_code_constant():
    from open_clip_cloob.loss import CHUNK_ELEMENTS

    exponent = re.search(r"`open_clip_cloob\.loss\.CHUNK_ELEMENTS` \(2([²³⁴⁵⁶⁷⁸⁹⁰¹]+) elements\)", LOSS_DOC.read_text())
    assert exponent, "docs/loss.md no longer states CHUNK_ELEMENTS: update this test"
    assert CHUNK_ELEMENTS == 2 ** int(exponent[1].translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")))


def test_readme_training_flags_exist():
    """Every flag in the README's flag table and on a `training.main` command line (README, docs/training.md) is accepted."""
    helped = subprocess.run([sys.executable, "-m", "training.params", "--help"], capture_output=True, text=True,
                            timeout=300)
    known = set(re.findall(r"--[a-z][\w-]*", helped.stdout))
    assert "--hopfield-beta" in known and "--train-data" in known, helped.stdout[-2000:] + helped.stderr[-2000:]
    text = README.read_text() + TRAINING_DOC.read_text()
    table = re.findall(r"^\| `(--[^|]*)\|", _section("Training"), flags=re.M)
    commands = [line.split("training.main", 1)[1] for line in text.replace("\\\n", " ").splitlines()
                if "-m training.main" in line]
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(table + commands)))
    assert len(table) >= 6, table
    assert mentioned and mentioned <= known, sorted(mentioned - known)


def test_readme_stated_defaults_are_the_parser_defaults():
    """`--flag` (default N) (README, docs/training.md) and the README's flag table match training.params."""
    from training.params import add_cloob_args, add_reliability_args

    parser = add_reliability_args(add_cloob_args(argparse.ArgumentParser()))
    stated = dict(re.findall(r"`(--[a-z][\w-]*)` \(default (\d+)\)", README.read_text() + TRAINING_DOC.read_text()))
    stated.update(re.findall(r"^\| `(--[a-z][\w-]*)`[^|]*\| (\d+) \|", _section("Training"), flags=re.M))
    assert {"--hopfield-beta", "--max-nonfinite-steps", "--max-bad-samples"} <= stated.keys(), stated
    for flag, value in stated.items():
        default = parser.get_default(flag[2:].replace("-", "_"))
        assert default == float(value), (flag, value, default)
