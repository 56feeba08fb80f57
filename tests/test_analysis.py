"""Representation diagnostics: known answers on constructed embeddings, the data readers, the CLI."""
import importlib
import json
import math
import subprocess
import sys

import open_clip
import pytest
import torch

from cloob_checkpoints import CLOOB_SETTINGS, random_model, tiny_model_dir, training_checkpoint
from open_clip_cloob import analysis
from open_clip_cloob.export import export_model_folder
from cloob_tools.data import write_fashion_mnist_dataset


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=1)


def circle(n: int, dim: int = 2) -> torch.Tensor:
    """``n`` equally spaced unit vectors on a great circle of the sphere in ``dim`` dimensions."""
    angles = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    x = torch.zeros(n, dim, dtype=torch.float64)
    x[:, 0], x[:, 1] = angles.cos(), angles.sin()
    return x


def with_covariance(eigenvalues, n: int = 200, seed: int = 0) -> torch.Tensor:
    """``[n, d]`` data whose sample covariance is exactly ``diag(eigenvalues)``.

    The columns of Q (QR of centred noise) are orthonormal and orthogonal to the all-ones vector,
    so ``X = sqrt(n − 1) Q diag(sqrt λ)`` has zero mean and ``XᵀX / (n − 1) = diag(λ)``.
    """
    eigenvalues = torch.tensor(eigenvalues, dtype=torch.float64)
    noise = torch.randn(n, len(eigenvalues), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(noise - noise.mean(dim=0))
    return math.sqrt(n - 1) * q * eigenvalues.sqrt()


def test_alignment_known_values():
    x = unit_rows(torch.randn(50, 8))
    assert analysis.alignment(x, x) == 0.0  # perfect alignment
    assert analysis.alignment(x, -x) == pytest.approx(4.0)  # antipodal pairs: ‖2x‖² = 4
    e1, e2 = torch.eye(2)[:1].repeat(10, 1), torch.eye(2)[1:].repeat(10, 1)
    assert analysis.alignment(e1, e2) == pytest.approx(2.0)  # orthogonal pairs
    assert analysis.alignment(e1, e2, alpha=1.0) == pytest.approx(math.sqrt(2.0))
    with pytest.raises(ValueError, match=r"two \[n, d\] tensors of one shape, got \(50, 8\) and \(49, 8\)"):
        analysis.alignment(x, x[:-1])


def test_uniformity_collapsed_circle_and_sphere():
    collapsed = unit_rows(torch.ones(100, 16))
    assert analysis.uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    # Uniform on a circle: E exp(−2‖x − x'‖²) = E exp(−4 + 4 cos θ) = e^{−4} I₀(4).
    on_circle = analysis.uniformity(circle(2000, dim=32))
    assert on_circle == pytest.approx(-4 + math.log(torch.special.i0(torch.tensor(4.0)).item()), abs=5e-3)
    # Spread over a high-dimensional sphere, ‖x − x'‖² concentrates at 2: the value approaches −2t = −4.
    sphere = unit_rows(torch.randn(1000, 512, generator=torch.Generator().manual_seed(0)))
    on_sphere = analysis.uniformity(sphere)
    assert -4 * 1000 / 999 <= on_sphere < -3.95  # Jensen's bound, and close to it
    assert on_sphere < on_circle < 0  # more spread, more negative
    assert analysis.uniformity(sphere, t=1.0) == pytest.approx(-2.0, abs=0.03)


def test_covariance_spectrum_recovers_known_eigenvalues():
    eigenvalues = [0.5, 4.0, 0.0, 1.0, 2.0]
    spectrum = analysis.covariance_spectrum(with_covariance(eigenvalues))
    assert spectrum.dtype == torch.float64 and spectrum.shape == (5,)
    torch.testing.assert_close(spectrum, torch.tensor(sorted(eigenvalues, reverse=True), dtype=torch.float64))
    assert (spectrum >= 0).all()
    # Mean shift does not change a covariance.
    torch.testing.assert_close(analysis.covariance_spectrum(with_covariance(eigenvalues) + 3.0), spectrum)


@pytest.mark.parametrize("eigenvalues, expected", [
    ([1.0, 1.0, 1.0, 1.0], 4.0),
    ([3.0, 3.0, 0.0, 0.0], 2.0),
    ([5.0, 0.0, 0.0], 1.0),
    ([2.0, 1.0, 1.0], 2 ** 1.5),  # p = (1/2, 1/4, 1/4): H = 1.5 ln 2
])
def test_effective_rank_known_spectra(eigenvalues, expected):
    assert analysis.effective_rank(torch.tensor(eigenvalues)) == pytest.approx(expected)


def test_effective_rank_isotropic_versus_rank_one_embeddings():
    dim = 16
    isotropic = with_covariance([1.0] * dim, n=500)
    assert analysis.effective_rank(analysis.covariance_spectrum(isotropic)) == pytest.approx(dim)
    # Unit rows ±u: every embedding on one line through the origin.
    signs = torch.randint(0, 2, (500, 1), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    rank_one = signs * unit_rows(torch.randn(1, dim))
    assert analysis.effective_rank(analysis.covariance_spectrum(rank_one)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="positive sum"):
        analysis.effective_rank(torch.zeros(4))


@pytest.mark.parametrize("function", [analysis.uniformity, analysis.covariance_spectrum])
def test_single_row_or_vector_is_refused(function):
    with pytest.raises(ValueError, match=r"needs an \[n, d\] tensor with n >= 2, got shape \(1, 4\)"):
        function(torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        function(torch.ones(4))


def test_modality_gap():
    x = unit_rows(torch.randn(64, 8))
    assert analysis.modality_gap(x, x) == 0.0  # identical modalities
    assert analysis.modality_gap(x, x[torch.randperm(64)]) == pytest.approx(0.0, abs=1e-12)  # unpaired
    e1, e2 = torch.eye(3)[:1].repeat(5, 1), torch.eye(3)[1:2].repeat(7, 1)
    assert analysis.modality_gap(e1, e2) == pytest.approx(math.sqrt(2.0))


def test_analyze_embeddings_table_and_plot(tmp_path):
    images = with_covariance([4.0, 1.0, 1.0, 0.0])
    results = analysis.analyze_embeddings(unit_rows(images), unit_rows(images))
    json.dumps(results)  # serialisable as it is
    assert results["num_pairs"] == 200 and results["embed_dim"] == 4
    assert results["alignment"] == 0.0 and results["modality_gap"] == 0.0
    assert results["effective_rank_image"] == results["effective_rank_text"]
    assert len(results["spectrum_image"]) == 4
    table = analysis.format_table({"A": results, "B": results})
    lines = table.splitlines()
    assert lines[0] == "| metric | A | B |" and len(lines) == 2 + len(analysis.METRICS) + 1
    import matplotlib.image

    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    path = analysis.plot_spectra({"A": results, "B": results}, tmp_path / "spectra.png")
    assert matplotlib.image.imread(path).shape[2] in (3, 4)
    assert plt.get_fignums() == figures_before  # no figure left open in pyplot


def test_library_imports_without_matplotlib(monkeypatch):
    # None in sys.modules makes importing a module raise ImportError: hide matplotlib and every submodule.
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    module = importlib.reload(analysis)
    x = unit_rows(torch.randn(10, 4))
    assert module.analyze_embeddings(x, x)["alignment"] == 0.0
    with pytest.raises(ImportError, match="plots need matplotlib"):
        module.plot_spectra({"x": module.analyze_embeddings(x, x)}, "unused.png")


@pytest.fixture(scope="module")
def pair_sets(tmp_path_factory, fashion_mnist_available):
    """The same 48 Fashion-MNIST test images with captions as a CSV and as two webdataset shards."""
    root = tmp_path_factory.mktemp("analysis-data")
    csv_path = write_fashion_mnist_dataset(root / "csv", "test", 48, "csv", seed=5)
    shards = write_fashion_mnist_dataset(root / "wds", "test", 48, "webdataset", seed=5, samples_per_shard=24)
    return {"csv": str(csv_path), "webdataset": str(shards[0]).replace("000000", "{000000..000001}")}


def test_csv_and_webdataset_give_the_same_embeddings(pair_sets, tiny_model_config):
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-test-vit-cloob")
    tokenizer = open_clip.get_tokenizer("tiny-test-vit-cloob")
    features = {
        kind: analysis.embed_pairs(model, analysis.image_text_loader(
            spec, preprocess, tokenizer, batch_size=20, num_samples=40))
        for kind, spec in pair_sets.items()
    }
    for image_features, text_features in features.values():
        assert image_features.shape == text_features.shape == (40, 64)
        torch.testing.assert_close(image_features.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(features["csv"], features["webdataset"])


def test_cli_on_an_exported_tiny_model(pair_sets, tmp_path):
    name = tiny_model_dir(tmp_path / "config")
    model_dir = export_model_folder(training_checkpoint(random_model(name), CLOOB_SETTINGS), tmp_path / "model", name)
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "open_clip_cloob.analysis", "--model", f"local-dir:{model_dir}",
         "--data", pair_sets["webdataset"], "--batch-size", "16", "--device", "cpu", "--output", str(out)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / analysis.RESULTS_NAME).read_text())
    assert results["num_pairs"] == 48 and results["embed_dim"] == 64
    assert 1.0 <= results["effective_rank_image"] <= 64 and 1.0 <= results["effective_rank_text"] <= 64
    assert f"| {analysis.METRICS[0][1]} | {results['alignment']:.4f} |" in completed.stderr
    assert (out / analysis.SPECTRUM_PLOT_NAME).stat().st_size > 0
