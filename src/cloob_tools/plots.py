"""The tools' plots: matplotlib on the file-only Agg backend, panels, bands over seeds, loss panels."""
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from open_clip_cloob.settings import LOSS_VARIANTS

# (steps, values) of one run's curve.
Curve = Tuple[Sequence[float], Sequence[float]]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(count: int, columns: int, size: Tuple[float, float] = (4.2, 3.3)) -> Tuple[Any, List[Any]]:
    """A figure of ``count`` panels in rows of ``columns`` (``size`` each); returns (figure, panels)."""
    rows = math.ceil(count / columns)
    columns = min(columns, count)
    figure, axes = pyplot().subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat[:count])


def save_figure(figure: Any, path: Path, dpi: int = 110) -> str:
    """Write ``figure`` to ``path`` (laid out tightly) and close it; returns the file name, for a link."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path.name


def aligned(curves: Sequence[Curve]) -> Tuple[np.ndarray, np.ndarray]:
    """The steps all curves share and their values there: ``[steps]``, ``[curves, steps]``."""
    steps = sorted(set.intersection(*(set(curve[0]) for curve in curves)))
    values = np.array([[dict(zip(*curve))[step] for step in steps] for curve in curves], dtype=float)
    return np.array(steps), values


def plot_band(axis: Any, curves: Sequence[Curve], label: str, color: Any, marker: Optional[str] = None) -> None:
    """Mean over the curves (seeds) as a line, their min–max as a band, on the steps they share."""
    steps, values = aligned(curves)
    if not len(steps):
        return
    axis.plot(steps, values.mean(axis=0), color=color, marker=marker, label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        axis.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2)


def describe_loss(loss: str) -> str:
    """What a ``--loss`` name optimises, for plot titles (``LOSS_VARIANTS``; ``clip`` is OpenCLIP's)."""
    if loss not in LOSS_VARIANTS:
        return "InfoNCE (OpenCLIP)"
    variant = LOSS_VARIANTS[loss]
    objective = {"infoloob": "InfoLOOB", "infonce": "InfoNCE"}[variant["objective"]]
    return f"τ·{objective} of " + ("Hopfield retrievals" if variant["hopfield"] else "the embeddings")


def plot_loss_panels(lines: Sequence[Tuple[str, str, Any, Sequence[Curve]]], path: Path,
                     size: Tuple[float, float] = (6, 3.8)) -> str:
    """Training loss against the step, one panel per ``--loss`` (their scales differ), two panels a row.

    ``lines``: ``(loss, label, color, curves)``, a band over ``curves`` (one per seed) each; returns the
    file name.
    """
    losses = list(dict.fromkeys(loss for loss, _, _, _ in lines))
    figure, axes = panel_grid(len(losses), 2, size)
    for axis, loss in zip(axes, losses):
        for line_loss, label, color, curves in lines:
            if line_loss == loss:
                plot_band(axis, curves, label, color, marker=".")
        axis.set_title(f"{loss}: {describe_loss(loss)}", fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(figure, path)
