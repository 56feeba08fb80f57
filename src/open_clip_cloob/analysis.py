"""Representation diagnostics of the CLOOB paper for any OpenCLIP model and image-text set.

CLOOB's claim (Fürst et al., NeurIPS 2022) is that InfoNCE lets CLIP "explain away": it matches
image and text by a few salient features, while CLOOB's Hopfield retrieval makes the embeddings use
more directions. These functions measure that on paired, L2-normalised embeddings ``x`` (images)
and ``y`` (texts), each an ``[n, d]`` tensor whose row ``i`` of ``x`` and row ``i`` of ``y`` are a pair:

- :func:`alignment` (Wang & Isola 2020): ``E_i ‖x_i − y_i‖^α``, α = 2; 0 for perfectly aligned pairs.
- :func:`uniformity` (Wang & Isola 2020): ``log E_{i<j} exp(−t ‖x_i − x_j‖²)``, t = 2; 0 for a collapsed
  set, more negative the more uniformly the points spread over the sphere (about −4 at best).
- :func:`covariance_spectrum` and :func:`effective_rank` (Roy & Vetterli 2007): the eigenvalues λ of the
  embedding covariance and ``exp(H(p))`` with ``p = λ / Σλ`` — the entropy is taken over the normalised
  **covariance eigenvalues** (the squared singular values of the centred embeddings), so an isotropic
  set in d dimensions has effective rank d and a set spread along one line has 1.
- :func:`modality_gap` (Liang et al. 2022): ``‖mean(x) − mean(y)‖``, the distance between the two
  modalities' centroids; 0 when images and texts occupy the same region of the sphere.

Command line: embed an image-text set with a model and write a table, ``analysis.json`` and plots::

    python -m open_clip_cloob.analysis --model local-dir:/path/to/model --data pairs.csv --output out/
    python -m open_clip_cloob.analysis --model RN50-cloob --pretrained yfcc15m \\
        --data 'shards/test-{000000..000009}.tar' --num-samples 5000 --output out/

``--data`` takes what OpenCLIP's training takes: a CSV with image paths and captions (OpenCLIP's
``--csv-*`` flags) or a webdataset shard spec (``{key}.png|jpg|jpeg|webp`` + ``{key}.txt``).
The measures need only the library; reading data needs OpenCLIP's data pipeline (the ``[train]``
extra) and plots need matplotlib (the ``[demo]`` extra), each imported when used.
"""
import argparse
import itertools
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import open_clip
import torch

from . import cli

_logger = logging.getLogger(__name__)

MODALITIES = ("image", "text")
RESULTS_NAME = "analysis.json"
SPECTRUM_PLOT_NAME = "spectrum.png"
SPECTRUM_PLOT_FLOOR = 1e-7
_READING_DATA = "reading image-text data needs OpenCLIP's data pipeline"

# Rows of the table: result key -> label. Arrows mark the direction usually read as better: closer
# pairs, points spread more evenly, more directions in use.
METRICS: Tuple[Tuple[str, str], ...] = (
    ("alignment", "alignment E‖x−y‖² (pairs, ↓)"),
    ("uniformity_image", "uniformity, images (t=2, ↓)"),
    ("uniformity_text", "uniformity, texts (t=2, ↓)"),
    ("effective_rank_image", "effective rank, images (↑)"),
    ("effective_rank_text", "effective rank, texts (↑)"),
    ("modality_gap", "modality gap ‖mean x − mean y‖"),
)


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: ``mean_i ‖x_i − y_i‖₂^α`` over the ``n`` pairs.

    Args:
        x, y: ``[n, d]`` embeddings, row ``i`` of each forming a positive pair (normally unit rows).
        alpha: exponent α (Wang & Isola use 2).
    """
    _check_pairs(x, y)
    return (x.double() - y.double()).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: ``log mean_{i<j} exp(−t ‖x_i − x_j‖₂²)`` over distinct pairs.

    Args:
        x: ``[n, d]`` embeddings (normally unit rows), ``n ≥ 2``.
        t: the Gaussian kernel's scale (Wang & Isola use 2).

    Returns:
        0 for identical rows. For unit rows it is at least ``−2t·n/(n−1)`` (Jensen, with the mean
        squared distance at most ``2n/(n−1)``) and tends to ``−2t`` for points spread uniformly over a
        sphere of growing dimension.
    """
    _check_matrix(x, "uniformity")
    exponents = torch.pdist(x.double()).pow(2).mul(-t)
    # log of a mean of exponentials, without underflow for widely spread points.
    return (torch.logsumexp(exponents, dim=0) - math.log(len(exponents))).item()


def covariance_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the covariance ``Σ = (x − x̄)ᵀ(x − x̄) / (n − 1)`` in descending order.

    Args:
        x: ``[n, d]`` embeddings, ``n ≥ 2``.

    Returns:
        float64 ``[d]`` tensor, non-negative (round-off below zero is clipped to 0).
    """
    _check_matrix(x, "a covariance")
    centred = x.double() - x.double().mean(dim=0)
    covariance = centred.T @ centred / (len(x) - 1)
    return torch.linalg.eigvalsh(covariance).flip(0).clamp_min(0.0)


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(−Σ p_k log p_k)`` with ``p = λ / Σλ``.

    Args:
        eigenvalues: ``[d]`` non-negative covariance eigenvalues (:func:`covariance_spectrum`);
            zeros contribute nothing (``0 log 0 = 0``).

    Returns:
        A value in ``[1, d]``: ``k`` for ``k`` equal non-zero eigenvalues, 1 for a rank-1 covariance.
    """
    eigenvalues = eigenvalues.double()
    if eigenvalues.ndim != 1 or (eigenvalues < 0).any() or not eigenvalues.sum() > 0:
        raise ValueError("effective_rank needs a 1-D tensor of non-negative values with a positive sum")
    p = eigenvalues / eigenvalues.sum()
    entropy = -torch.special.xlogy(p, p).sum()
    return entropy.exp().item()


def modality_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """Liang et al.'s modality gap: ``‖mean_i x_i − mean_j y_j‖₂``, the distance of the centroids.

    Args:
        x: ``[n, d]`` image embeddings; y: ``[m, d]`` text embeddings (need not be paired).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need [n, d] and [m, d] tensors, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return (x.double().mean(dim=0) - y.double().mean(dim=0)).norm().item()


def _check_matrix(x: torch.Tensor, what: str) -> None:
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{what} needs an [n, d] tensor with n >= 2, got shape {tuple(x.shape)}")


def _check_pairs(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"paired embeddings need two [n, d] tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def analyze_embeddings(image_features: torch.Tensor, text_features: torch.Tensor) -> Dict[str, Any]:
    """All diagnostics of paired embeddings, as a JSON-serialisable dict.

    Args:
        image_features, text_features: ``[n, d]`` L2-normalised embeddings, row ``i`` a pair.

    Returns:
        ``num_pairs``, ``embed_dim``, every key of :data:`METRICS`, and ``spectrum_image`` /
        ``spectrum_text``: the covariance eigenvalues, descending (lists of ``d`` floats).
    """
    _check_pairs(image_features, text_features)
    features = dict(zip(MODALITIES, (image_features, text_features)))
    results: Dict[str, Any] = {
        "num_pairs": len(image_features),
        "embed_dim": image_features.shape[1],
        "alignment": alignment(image_features, text_features),
        "modality_gap": modality_gap(image_features, text_features),
    }
    for modality, x in features.items():
        spectrum = covariance_spectrum(x)
        results[f"uniformity_{modality}"] = uniformity(x)
        results[f"effective_rank_{modality}"] = effective_rank(spectrum)
        results[f"spectrum_{modality}"] = spectrum.tolist()
    return results


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of :data:`METRICS`, one column per entry of ``results`` (label -> results)."""
    labels = list(results)
    lines = [
        "| metric | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for key, name in METRICS:
        lines.append(f"| {name} | " + " | ".join(f"{results[label][key]:.4f}" for label in labels) + " |")
    lines.append("| pairs | " + " | ".join(str(results[label]["num_pairs"]) for label in labels) + " |")
    return "\n".join(lines) + "\n"


def plot_spectra(results: Mapping[str, Mapping[str, Any]], path: Union[str, os.PathLike]) -> Path:
    """Plot the normalised covariance spectra ``λ_k / Σλ`` (log scale) of each entry of ``results``.

    One panel per modality, one line per label (e.g. one per model); the legend gives the effective
    rank. Writes a PNG to ``path`` and returns it.
    """
    # A bare Figure renders to files without pyplot: no display needed, and the caller's pyplot
    # backend and open figures are left alone.
    figure = cli.require("matplotlib.figure", extra="demo", purpose="plots need matplotlib").Figure(figsize=(10, 4))
    axes = figure.subplots(1, len(MODALITIES), sharey=True)
    for axis, modality in zip(axes, MODALITIES):
        for label, result in results.items():
            spectrum = torch.tensor(result[f"spectrum_{modality}"], dtype=torch.float64)
            ranks = torch.arange(1, len(spectrum) + 1)
            axis.semilogy(ranks, spectrum / spectrum.sum(), marker=".",
                          label=f"{label} (effective rank {result[f'effective_rank_{modality}']:.1f})")
        axis.set_title(f"{modality} embeddings")
        # Below this share of the variance a direction is round-off (e.g. the one a LayerNorm in
        # front of a square projection removes); showing it would squash the informative range.
        axis.set_ylim(bottom=SPECTRUM_PLOT_FLOOR)
        axis.set_xlabel("eigenvalue index k")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    axes[0].set_ylabel("λ_k / Σλ  (covariance eigenvalues)")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


PairLoader = Iterable[Tuple[torch.Tensor, torch.Tensor]]


def image_text_loader(
    data: str,
    preprocess: Callable,
    tokenizer: Callable,
    batch_size: int = 256,
    num_samples: Optional[int] = None,
    dataset_type: str = "auto",
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_separator: str = "\t",
    workers: int = 0,
) -> PairLoader:
    """Batches of ``(images [b, 3, H, W], tokens [b, L])`` from a CSV or webdataset shards, in file order.

    Args:
        data: a CSV (``dataset_type`` ``"csv"``, or ``"auto"`` with a ``.csv``/``.tsv`` suffix) read
            by OpenCLIP's ``CsvDataset`` with the ``csv_*`` settings, or a webdataset shard spec
            (brace patterns and ``::`` lists as in OpenCLIP) of ``{key}.png|jpg|jpeg|webp`` + ``{key}.txt``.
        preprocess: the model's image transform; tokenizer: its tokenizer.
        num_samples: stop after this many pairs (default: all).
    """
    if dataset_type == "auto":
        dataset_type = "csv" if Path(data).suffix in (".csv", ".tsv") else "webdataset"
    if dataset_type == "csv":
        dataset = _openclip_data().CsvDataset(data, preprocess, csv_img_key, csv_caption_key, sep=csv_separator,
                                              tokenizer=tokenizer)
        if num_samples is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(num_samples, len(dataset))))
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    if dataset_type == "webdataset":
        return _webdataset_batches(data, preprocess, tokenizer, batch_size, num_samples)
    raise ValueError(f"unknown dataset_type {dataset_type!r}; expected auto, csv or webdataset")


def _webdataset_batches(spec: str, preprocess: Callable, tokenizer: Callable, batch_size: int,
                        num_samples: Optional[int]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    # OpenCLIP's evaluation pipeline (open_clip_train.data.get_wds_dataset with is_train=False)
    # minus its dependence on the training arguments: no shuffling, every sample once.
    openclip_data = _openclip_data()
    wds = cli.require("webdataset", extra="train", purpose=_READING_DATA)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(openclip_data.expand_urls(spec)[0]),
        wds.tarfile_to_samples(),
        wds.select(openclip_data.filter_no_caption_or_no_image),
        wds.decode("pilrgb"),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text"),
    )
    samples = itertools.islice(pipeline, num_samples)
    while batch := list(itertools.islice(samples, batch_size)):
        images, texts = zip(*batch)
        yield torch.stack(images), torch.stack(texts)


def _openclip_data() -> Any:
    """OpenCLIP's data module (CSV and webdataset readers), which needs the ``[train]`` extra."""
    return cli.require("open_clip_train.data", extra="train", purpose=_READING_DATA)


@torch.no_grad()
def embed_pairs(model: torch.nn.Module, loader: PairLoader, device: Union[str, torch.device] = "cpu"
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings of every pair of ``loader``: two float32 ``[n, d]`` tensors (CPU)."""
    model.eval()
    image_features, text_features = [], []
    for images, texts in loader:
        image_features.append(model.encode_image(images.to(device), normalize=True).float().cpu())
        text_features.append(model.encode_text(texts.to(device), normalize=True).float().cpu())
    if not image_features:
        raise ValueError("the data yielded no image-text pairs")
    return torch.cat(image_features), torch.cat(text_features)


def analyze_model(
    model_name: str,
    data: str,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    **loader_kwargs: Any,
) -> Dict[str, Any]:
    """Embed ``data`` with an OpenCLIP model and return :func:`analyze_embeddings` of it.

    Args:
        model_name: any OpenCLIP model name, a CLOOB config (``RN50-cloob``) or ``local-dir:DIR``.
        data: see :func:`image_text_loader`, which receives ``loader_kwargs``.
        pretrained: OpenCLIP's ``pretrained`` (a tag or a checkpoint file); None for ``local-dir:``
            folders, which carry their weights.
    """
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    loader = image_text_loader(data, preprocess, tokenizer, **loader_kwargs)
    image_features, text_features = embed_pairs(model, loader, device)
    _logger.info("embedded %d image-text pairs of %s with %s", len(image_features), data, model_name)
    return {"model": model_name, "pretrained": pretrained, "data": data,
            **analyze_embeddings(image_features, text_features)}


def write_results(results: Mapping[str, Any], out_dir: Union[str, os.PathLike], label: str) -> Dict[str, Path]:
    """Write ``analysis.json`` and ``spectrum.png`` for one model's results; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / RESULTS_NAME
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return {"json": json_path, "spectrum": plot_spectra({label: results}, out_dir / SPECTRUM_PLOT_NAME)}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_cloob.analysis",
        description="Alignment, uniformity, covariance spectrum / effective rank and modality gap of an "
                    "OpenCLIP model's embeddings of an image-text set.",
    )
    parser.add_argument("--model", required=True, help="OpenCLIP model name or local-dir:FOLDER")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file (not for local-dir:)")
    parser.add_argument("--data", required=True, help="CSV of image paths and captions, or webdataset shard spec")
    parser.add_argument("--dataset-type", choices=("auto", "csv", "webdataset"), default="auto",
                        help="auto: csv for a .csv/.tsv file, webdataset otherwise")
    parser.add_argument("--csv-img-key", default="filepath")
    parser.add_argument("--csv-caption-key", default="title")
    parser.add_argument("--csv-separator", default="\t")
    parser.add_argument("--num-samples", type=int, default=None, help="analyse the first N pairs (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="data loader workers (CSV only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", required=True, help=f"folder for {RESULTS_NAME} and {SPECTRUM_PLOT_NAME}")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point: analyse, log the table, write the files; returns the results."""
    args = parse_args(argv)
    results = analyze_model(
        args.model, args.data, pretrained=args.pretrained, device=args.device, batch_size=args.batch_size,
        num_samples=args.num_samples, dataset_type=args.dataset_type, csv_img_key=args.csv_img_key,
        csv_caption_key=args.csv_caption_key, csv_separator=args.csv_separator, workers=args.workers)
    paths = write_results(results, args.output, label=args.model)
    _logger.info("\n%s", format_table({args.model: results}))
    _logger.info("wrote %s and %s", paths["json"], paths["spectrum"])
    return results


if __name__ == "__main__":
    sys.exit(cli.run(main, "python -m open_clip_cloob.analysis"))
