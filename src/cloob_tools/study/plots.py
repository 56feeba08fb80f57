"""The study report's plots: curves with a band over seeds, final values per configuration, β sweeps.

``configs`` are the finished runs grouped by their settings but the seed
(:func:`cloob_tools.study.report.group_configs`); ``labels`` and ``colors`` go with them.
"""
import json
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..plots import panel_grid, plot_band, plot_loss_panels, save_figure



def plot_learning_curves(configs, labels, colors, path: Path) -> str:
    """Training loss against the step, one panel per loss (their scales differ), one band per configuration."""
    return plot_loss_panels([(group[0]["settings"]["loss"], label, color,
                              [(r["loss_curve"]["step"], r["loss_curve"]["loss"]) for r in group])
                             for group, label, color in zip(configs, labels, colors)], path)

EFFECTIVE_RANKS = (("effective_rank_image", "effective rank, images"), ("effective_rank_text", "effective rank, texts"))


def plot_zero_shot(configs, labels, colors, metrics, sets, path: Path) -> str:
    """Every headline zero-shot metric against the step: one band per configuration, chance dashed."""
    figure, axes = panel_grid(len(metrics), 3)
    for axis, (name, key, title) in zip(axes, metrics):
        for group, label, color in zip(configs, labels, colors):
            curves = [([point["step"] for point in r["zeroshot"]],
                       [100 * point["metrics"][name][key] for point in r["zeroshot"]]) for r in group]
            plot_band(axis, curves, label, color, marker="o")
        chance = sets[name]["chance_percent"]
        if chance is not None:
            axis.axhline(chance, color="black", linestyle="--", linewidth=1, label="chance")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel("%")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(figure, path)


def plot_retrieval_score(curves, labels, colors, path: Path) -> str:
    """The plan's primary metric M against the step, one band per configuration; ``curves`` holds, per
    configuration, the ``(steps, values)`` of each of its runs."""
    figure, (axis,) = panel_grid(1, 1, (7.5, 4.8))
    for group_curves, label, color in zip(curves, labels, colors):
        plot_band(axis, group_curves, label, color, marker="o")
    axis.set_title("M: mean over the retrieval sets of ½ (image→text + text→image R@1)", fontsize=10)
    axis.set_xlabel("step")
    axis.set_ylabel("%")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    return save_figure(figure, path)


def plot_diagnostics(configs, labels, colors, keys, path: Path) -> str:
    """The Hopfield diagnostics of the training batches against the step, one panel per diagnostic."""
    figure, axes = panel_grid(len(keys), 4, (4.2, 3.2))
    for axis, key in zip(axes, keys):
        for group, label, color in zip(configs, labels, colors):
            curves = [(r["diagnostics"][key]["step"], r["diagnostics"][key]["value"]) for r in group
                      if key in r["diagnostics"]]
            if curves:
                plot_band(axis, curves, label, color)
        axis.set_title(key.replace("_", " "), fontsize=9)
        axis.set_xlabel("step")
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(figure, path)


def final_values(group, name: str, key: str) -> List[Optional[float]]:
    """The metric at each run's last eval point (a zero-shot set) or in its analysis (``name`` None)."""
    if name is None:
        return [r["analysis"][key] if r["analysis"] else None for r in group]
    return [r["zeroshot"][-1]["metrics"][name][key] for r in group]


def final_columns(metrics) -> List[Tuple[Optional[str], str, str, float]]:
    """(set or None for the analysis, key, label, scale) of every final-table column."""
    return ([(name, key, f"{label} (%)", 100.0) for name, key, label in metrics]
            + [(None, key, label, 1.0) for key, label in EFFECTIVE_RANKS])


def plot_final(configs, labels, colors, metrics, sets, path: Path) -> str:
    """The final value of every column of the table: a bar per configuration (mean), a dot per seed,
    chance dashed."""
    columns = final_columns(metrics)
    figure, axes = panel_grid(len(columns), 3, (max(4.2, 0.55 * len(configs) + 1.5), 3.6))
    for axis, (name, key, title, scale) in zip(axes, columns):
        for index, (group, color) in enumerate(zip(configs, colors)):
            values = [scale * value for value in final_values(group, name, key) if value is not None]
            if values:
                axis.bar(index, statistics.mean(values), color=color, alpha=0.6)
                axis.scatter([index] * len(values), values, color="black", s=10, zorder=3)
        if name is not None and sets[name]["chance_percent"] is not None:
            axis.axhline(sets[name]["chance_percent"], color="black", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(configs)), labels, rotation=45, ha="right", fontsize=7)
        axis.set_title(title, fontsize=10)
        axis.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, path)


def beta_sweeps(configs) -> Dict[str, List[int]]:
    """Configurations that differ only in β, with at least two β: {label of the rest: config indices}."""
    sweeps: Dict[str, List[int]] = {}
    for index, group in enumerate(configs):
        settings = group[0]["settings"]
        if settings["hopfield_beta"] is not None:
            rest = {key: value for key, value in settings.items() if key not in ("seed", "hopfield_beta")}
            sweeps.setdefault(json.dumps(rest, sort_keys=True), []).append(index)
    return {key: indices for key, indices in sweeps.items() if len(indices) > 1}


def plot_beta_sweeps(configs, labels, sweeps, metrics, path: Path) -> str:
    """Final values against β (log scale): mean over seeds as a line, every seed a dot."""
    columns = final_columns(metrics)
    figure, axes = panel_grid(len(columns), 3)
    for axis, (name, key, title, scale) in zip(axes, columns):
        for color_index, indices in enumerate(sweeps.values()):
            color = f"C{color_index}"
            betas, means = [], []
            for index in sorted(indices, key=lambda i: configs[i][0]["settings"]["hopfield_beta"]):
                beta = configs[index][0]["settings"]["hopfield_beta"]
                values = [scale * v for v in final_values(configs[index], name, key) if v is not None]
                if values:
                    axis.scatter([beta] * len(values), values, color=color, s=10)
                    betas.append(beta)
                    means.append(statistics.mean(values))
            label = re.sub(r" β=\S+", "", labels[indices[0]])
            axis.plot(betas, means, color=color, marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("Hopfield β")
        axis.set_title(title, fontsize=10)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(figure, path)
