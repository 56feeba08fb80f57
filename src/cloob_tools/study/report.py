"""The study's report: ``results.json`` and ``report.md`` with tables and plots, one section per data set,
from every finished run in the study folder."""
import json
import math
import shlex
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from scipy import stats

from open_clip_cloob import analysis
from open_clip_cloob.settings import CLOOB_LOSSES, DEFAULT_HOPFIELD_BETA, OPENCLIP_LOSS

from ..plots import pyplot
from ..reports import markdown_table
from ..results import first_warning_step
from ..zeroshot import zero_shot_metrics
from .plan import PROG, config_key
from .plots import (beta_sweeps, final_columns, final_values, plot_beta_sweeps, plot_diagnostics, plot_final,
                    plot_learning_curves, plot_retrieval_score, plot_zero_shot)
from .runner import write_json

# What training.main logs on logging steps (tensorboard, training.monitor): the Hopfield diagnostics of
# the batch (in this order in the report) and the collapse warning.
DIAGNOSTICS = ("attended_patterns_image_from_images", "attended_patterns_text_from_images",
               "attended_patterns_image_from_texts", "attended_patterns_text_from_texts",
               "mean_cosine_images", "mean_cosine_texts", "positive_minus_negative",
               "spread_images", "spread_texts", "beta_images", "beta_texts")


# The comparisons of docs/study/corpus-plan.md, by --loss: A − B, paired by seed, between
# configurations that differ in the loss only (β the paper's where the loss has one).
PLANNED_COMPARISONS: Tuple[Tuple[str, str], ...] = (
    ("cloob", "clip"), ("cloob", "infoloob"), ("cloob-infonce", "infonce"), ("infoloob", "infonce"),
    ("cloob", "cloob-infonce"), ("infonce", "clip"))
CONFIDENCE = 0.95


def retrieval_score(result: Mapping[str, Any], sets: Mapping[str, Mapping[str, Any]], point: int = -1) -> float:
    """The plan's primary metric M of one run, in %: the mean over the retrieval sets of
    ½ (image→text R@1 + text→image R@1) at the run's eval point ``point`` (default: the last)."""
    metrics = result["zeroshot"][point]["metrics"]
    names = [name for name, spec in sets.items() if spec["task"] == "zeroshot_retrieval"]
    return 100 * statistics.mean(
        (metrics[name]["text_retrieval_recall@1"] + metrics[name]["image_retrieval_recall@1"]) / 2 for name in names)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Optional[Dict[str, float]]:
    """The mean of the values and its t-interval: mean ± t_{(1+confidence)/2, n−1} · sd / √n (sd the sample
    standard deviation), as ``{"mean", "low", "high", "n"}``. ``None`` for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean = statistics.mean(values)
    half_width = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values)
                       / math.sqrt(len(values)))
    return {"mean": mean, "low": mean - half_width, "high": mean + half_width, "n": len(values)}


def seed_differences(first: Mapping[int, float], second: Mapping[int, float]) -> Dict[int, float]:
    """first[s] − second[s] for every seed s both have, by seed (ascending)."""
    return {seed: first[seed] - second[seed] for seed in sorted(first.keys() & second.keys())}


def paired_difference(first: Mapping[int, float], second: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Optional[Dict[str, float]]:
    """The mean of d_s = first[s] − second[s] over the seeds s both have, and its t-interval:
    d̄ ± t_{(1+confidence)/2, n−1} · sd(d) / √n. ``None`` for fewer than 2 common seeds."""
    return t_interval(list(seed_differences(first, second).values()), confidence)


def decision(first: str, second: str, difference: Optional[Mapping[str, float]]) -> str:
    """The plan's rule: the first beats the second when the interval lies above 0, the second the first
    when it lies below, otherwise no difference is shown."""
    if difference is None:
        return "n/a (fewer than 2 paired seeds)"
    if difference["low"] > 0:
        return f"{first} beats {second}"
    if difference["high"] < 0:
        return f"{second} beats {first}"
    return "no difference shown"


def format_difference(difference: Optional[Mapping[str, float]], missing: str = "n/a") -> str:
    """``mean [low, high] (n=k)`` of a :func:`paired_difference` (signed, 2 decimals); ``missing`` for ``None``."""
    if difference is None:
        return missing
    return f"{difference['mean']:+.2f} [{difference['low']:+.2f}, {difference['high']:+.2f}] (n={difference['n']})"


def image_effective_rank(result: Mapping[str, Any]) -> Optional[float]:
    """The effective rank of the image embeddings of a run's final model (the plan's secondary metric for
    the representation); ``None`` for a run without the analysis."""
    return result["analysis"]["effective_rank_image"] if result["analysis"] else None


def seed_scores(group: Sequence[Mapping[str, Any]], sets: Mapping[str, Mapping[str, Any]]
                ) -> Tuple[Dict[int, float], Dict[int, float]]:
    """The runs of one configuration by seed: their M (:func:`retrieval_score`) and their images'
    effective rank (runs without the analysis left out)."""
    ranks = {result["settings"]["seed"]: image_effective_rank(result) for result in group}
    return ({result["settings"]["seed"]: retrieval_score(result, sets) for result in group},
            {seed: rank for seed, rank in ranks.items() if rank is not None})


def paired_scores(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]],
                  sets: Mapping[str, Mapping[str, Any]]) -> List[Optional[Dict[str, float]]]:
    """The :func:`paired_difference` A − B of two configurations' runs (A's, B's) in M and in the images'
    effective rank."""
    return [paired_difference(*scores) for scores in zip(seed_scores(first, sets), seed_scores(second, sets))]


def plan_configs(configs: Sequence[Sequence[Mapping[str, Any]]], loss: str) -> Dict[str, Sequence[Mapping[str, Any]]]:
    """The configurations of ``loss`` (β the paper's or none), by the :func:`config_key` of their settings
    but the loss, β and seed."""
    found = {}
    for group in configs:
        settings = group[0]["settings"]
        if settings["loss"] == loss and settings["hopfield_beta"] in (None, DEFAULT_HOPFIELD_BETA):
            found[config_key({**settings, "loss": None, "hopfield_beta": None})] = group
    return found


def planned_pairs(configs: Sequence[Sequence[Mapping[str, Any]]]
                  ) -> List[Tuple[str, str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]]:
    """Every planned comparison present: (A's loss, B's loss, A's runs, B's runs) for each two
    configurations that differ in the loss only, in the order of :data:`PLANNED_COMPARISONS`."""
    pairs = []
    for first, second in PLANNED_COMPARISONS:
        seconds = plan_configs(configs, second)
        pairs += [(first, second, group, seconds[key]) for key, group in plan_configs(configs, first).items()
                  if key in seconds]
    return pairs


def paired_table(configs: Sequence[Sequence[Mapping[str, Any]]], sets: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: every planned comparison present in the study, its paired difference in M and in the
    images' effective rank with their intervals, and the decision on M."""
    rows = []
    for first, second, first_group, second_group in planned_pairs(configs):
        cells = paired_scores(first_group, second_group, sets)
        rows.append([f"{first} − {second}", first_group[0]["settings"]["steps"], *map(format_difference, cells),
                     decision(first, second, cells[0])])
    if not rows:
        return "n/a: the study has no two configurations that differ in the loss only.\n"
    header = ["A − B", "steps", f"M: mean [{CONFIDENCE:.0%} interval]", "effective rank, images", "decision on M"]
    return markdown_table(header, rows, "lrrrl") + "\n"


def retrieval_curves(group: Sequence[Mapping[str, Any]], sets: Mapping[str, Mapping[str, Any]]
                     ) -> List[Tuple[List[int], List[float]]]:
    """M (:func:`retrieval_score`) during training: ``(steps, values)`` of each run of one configuration,
    one value per eval point."""
    return [([point["step"] for point in result["zeroshot"]],
             [retrieval_score(result, sets, index) for index in range(len(result["zeroshot"]))]) for result in group]


def retrieval_curve_table(configs: Sequence[Sequence[Mapping[str, Any]]], labels: Sequence[str],
                          curves: Sequence[Sequence[Tuple[List[int], List[float]]]]) -> str:
    """Markdown: one row per configuration, M at each of its eval points, mean over its runs (one per seed);
    ``curves`` are the configurations' :func:`retrieval_curves`."""
    rows = []
    for group, label, group_curves in zip(configs, labels, curves):
        steps = group_curves[0][0]
        means = [statistics.mean(values[index] for _, values in group_curves) for index in range(len(steps))]
        rows.append([label, ",".join(str(r["settings"]["seed"]) for r in group), ", ".join(map(str, steps)),
                     ", ".join(f"{mean:.2f}" for mean in means)])
    return markdown_table(["configuration", "seeds", "eval steps", "M at each eval point (mean over seeds)"], rows,
                          "llrr") + "\n"


def fmt_cell(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± sample std (n=k)`` of the values given; ``n/a`` for none."""
    values = [scale * value for value in values if value is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def group_configs(results: Sequence[Mapping[str, Any]]) -> List[List[Mapping[str, Any]]]:
    """Runs grouped by their settings but the seed; ordered by loss (the baseline first), β, the rest."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for result in results:
        groups.setdefault(config_key(result["settings"]), []).append(result)
    order = [OPENCLIP_LOSS, *CLOOB_LOSSES]

    def key(group):
        settings = group[0]["settings"]
        loss = settings["loss"]
        return (order.index(loss) if loss in order else len(order), loss, settings["hopfield_beta"] or 0,
                json.dumps(settings, sort_keys=True))

    return [sorted(group, key=lambda result: result["settings"]["seed"]) for group in sorted(groups.values(), key=key)]


def config_labels(configs: Sequence[Sequence[Mapping[str, Any]]]) -> List[str]:
    """Short labels: the loss, β, and whatever other setting differs between the configurations shown."""
    varying = {key for key in configs[0][0]["settings"] if key not in ("seed", "loss", "hopfield_beta", "data")
               and len({json.dumps(group[0]["settings"][key]) for group in configs}) > 1}
    labels = []
    for group in configs:
        settings = group[0]["settings"]
        parts = [settings["loss"]] + ([f"β={settings['hopfield_beta']:g}"] if settings["hopfield_beta"] else [])
        for key in sorted(varying):
            value = settings[key]
            parts.append(shlex.join(value) if key == "extra_flags" else f"{key}={value}")
        labels.append(" ".join(part for part in parts if part))
    return labels


def final_table(configs, labels, metrics) -> str:
    """Markdown: one row per configuration, mean ± std over seeds of every final zero-shot metric and
    the effective ranks."""
    columns = final_columns(metrics)
    rows = [[label, group[0]["settings"]["steps"], ",".join(str(r["settings"]["seed"]) for r in group),
             *(fmt_cell(final_values(group, name, key), scale, 1 if scale == 100 else 2) for name, key, _, scale in columns)]
            for group, label in zip(configs, labels)]
    header = ["configuration", "steps", "seeds", *(label for _, _, label, _ in columns)]
    return markdown_table(header, rows, "lrl" + "r" * len(columns)) + "\n"


def analysis_table(configs, labels) -> str:
    """Markdown: every measure of :data:`open_clip_cloob.analysis.METRICS`, mean ± std over seeds."""
    rows = [[name, *(fmt_cell(final_values(group, None, key), digits=3) for group in configs)]
            for key, name in analysis.METRICS]
    return markdown_table(["measure", *labels], rows, "l" + "r" * len(labels)) + "\n"


def collapse_lines(results) -> str:
    """Markdown: the runs whose ``train/collapse_warning`` went above 0, with the first such step."""
    logged = [r for r in results if r["collapse_warning"] is not None]
    if not logged:
        return "n/a: no run logged `train/collapse_warning` (a `training.main` without the collapse check).\n"
    warned = [(r["run"], first_warning_step(r["collapse_warning"])) for r in logged]
    return ("".join(f"- `{run}`: first warning at step {step}\n" for run, step in warned if step is not None)
            or f"None of the {len(logged)} runs that check for collapse warned.\n")


def data_section(index: int, results: Sequence[Mapping[str, Any]], report: Path) -> str:
    """The report's section for the runs of one data set: tables and plots."""
    sets = results[0]["zeroshot_sets"]
    configs = group_configs(results)
    labels = config_labels(configs)
    palette = pyplot().get_cmap("tab10" if len(configs) <= 10 else "tab20")
    colors = [palette(i % palette.N) for i in range(len(configs))]
    metrics = zero_shot_metrics(sets)
    suffix = "" if index == 1 else f"-data{index}"
    data = results[0]["settings"]["data"]
    plots = {
        "loss": plot_learning_curves(configs, labels, colors, report / f"loss_curves{suffix}.png"),
        "zeroshot": plot_zero_shot(configs, labels, colors, metrics, sets, report / f"zeroshot_curves{suffix}.png"),
        "final": plot_final(configs, labels, colors, metrics, sets, report / f"final{suffix}.png"),
    }
    if any(spec["task"] == "zeroshot_retrieval" for spec in sets.values()):
        curves = [retrieval_curves(group, sets) for group in configs]
        plot = plot_retrieval_score(curves, labels, colors, report / f"retrieval_score{suffix}.png")
        primary = f"{retrieval_curve_table(configs, labels, curves)}\n![M during training]({plot})\n"
    else:
        primary = "n/a: the data has no retrieval set.\n"
    keys = [key for key in DIAGNOSTICS if any(key in r["diagnostics"] for r in results)]
    keys += sorted({key for r in results for key in r["diagnostics"]} - set(keys))
    if keys:
        plot = plot_diagnostics(configs, labels, colors, keys, report / f"diagnostics{suffix}.png")
        diagnostics = f"![Hopfield diagnostics]({plot})\n"
    else:
        diagnostics = ("n/a: no run logged `train/hopfield/*` scalars (a `training.main` without the Hopfield "
                       "diagnostics).\n")
    sweeps = beta_sweeps(configs)
    sweep = ("\n### Final values against β\n\n![β sweep](" + plot_beta_sweeps(
        configs, labels, sweeps, metrics, report / f"beta_sweep{suffix}.png") + ")\n") if sweeps else ""
    analysis_md = analysis_table(configs, labels) if any(r["analysis"] for r in results) else \
        "n/a: the data has no held-out analysis pairs (`analysis_data`).\n"
    set_lines = ", ".join(f"`{name}` ({sets[name]['task'].replace('zeroshot_', '')})" for name in sets)
    return f"""## Data {index}: `{data['train_data']}` ({data['dataset_type']})

Zero-shot sets (CLIP_benchmark): {set_lines}. Held-out analysis pairs: `{data['analysis_data'] or 'none'}`.

### Final zero-shot (last eval point) and effective rank

Mean ± sample standard deviation over seeds; n = runs in the cell.

{final_table(configs, labels, metrics)}
![final values]({plots['final']})

### Paired differences (the rule of docs/study/corpus-plan.md)

M is the mean over the retrieval sets of ½ (image→text R@1 + text→image R@1), in %, at the last eval
point; per seed d = A − B; the interval is d̄ ± t · sd(d)/√n. A beats B when the interval on M lies
above 0, B beats A when below.

{paired_table(configs, sets)}
### M during training (line = mean over seeds, band = min–max)

{primary}{sweep}
### Learning curves (training loss; line = mean over seeds, band = min–max)

![learning curves]({plots['loss']})

### Zero-shot during training (line = mean over seeds, band = min–max)

![zero-shot during training]({plots['zeroshot']})

### Hopfield diagnostics of the training batches

{diagnostics}
### Representation analysis of the final models (held-out pairs, `open_clip_cloob.analysis`)

{analysis_md}
### Collapse warnings

{collapse_lines(results)}"""


def write_report(out: Path, results: Sequence[Mapping[str, Any]], smoke: bool) -> Path:
    """``results.json`` (every finished run) and ``report.md`` with its plots, one section per data set."""
    by_data: Dict[str, List[Mapping[str, Any]]] = {}
    for result in results:
        by_data.setdefault(json.dumps(result["settings"]["data"], sort_keys=True), []).append(result)
    commands = list(dict.fromkeys(result["command"] for result in results))
    write_json(out / "results.json", {"runs": list(results), "commands": commands})
    sections = [data_section(index, group, out) for index, group in enumerate(by_data.values(), start=1)]
    run_table = markdown_table(
        ["run", "loss", "β", "seed", "steps", "training s", "s/step (median)", "finished"],
        [[f"`{r['run']}`", r["settings"]["loss"], r["settings"]["hopfield_beta"] or "", r["settings"]["seed"],
          r["settings"]["steps"], f"{r['timings_s']['train']:.0f}",
          f"{statistics.median(r['loss_curve']['seconds_per_step']):.3f}", r["finished"]] for r in results], "llrrrrrl")
    banner = ("**Smoke run** (`--smoke`): a few steps on a data subset to check the pipeline; the numbers mean "
              "nothing.\n\n" if smoke else "")
    command_lines = "\n".join(commands)
    text = f"""# Loss study: {len(results)} runs

{banner}Generated by `{PROG}` on {time.strftime('%Y-%m-%d')} from every finished run in this folder; every
number was measured by those runs. Each run trains through `training.main` and is evaluated
zero-shot with CLIP_benchmark after each of its equal epochs (the eval points). Bands and ± are
over seeds; n is the number of runs behind a value.

{"".join(sections)}
## Runs

{run_table}

## Commands

```
{command_lines}
```
"""
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"
