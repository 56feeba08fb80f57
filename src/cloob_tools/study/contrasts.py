"""The planned contrasts of one or more study folders, each decided by the rule of the plans.

::

    python -m cloob_tools.study.contrasts study-corpus --out contrasts.md
    python -m cloob_tools.study.contrasts study-corpus study-corpus-f50 study-corpus-f90 \\
        --out docs/study/contrasts.md --plot docs/study/contrasts.png

Reads the ``results.json`` of every folder given (written by ``python -m cloob_tools.study``) and writes
one markdown file: every contrast of docs/study/corpus-plan.md (comparisons 1–8) and of
docs/study/remedies-plan.md that the runs allow, each as the paired-by-seed mean difference d̄ with its
95 % interval d̄ ± t · sd(d)/√n and the plan's decision on the primary metric M
(:func:`.report.retrieval_score`); the images' effective rank gets the same interval, described and not
decided. A contrast with fewer than 2 seeds in common is ``n/a``.

The runs of all folders are pooled by their data, named by the data's manifest (``manifest.json`` in
the folder above the training shards, e.g. ``OUT/data/manifest.json``): ``corpus, P % template
captions`` for a corpus built with ``--fashion-share`` (``python -m cloob_tools.data.make_corpus``),
otherwise the path of the training data. A configuration is a run's settings but the seed, within its
data; a condition is what the compared configurations share (data, batch size, steps, extra flags).

- **Cells**: M of every configuration, mean over seeds with its 95 % t-interval, and the mean effective
  rank of the images.
- **Loss comparisons** (corpus-plan.md 1–6): the pairs of :data:`.report.PLANNED_COMPARISONS` within
  each condition.
- **Remedies** (remedies-plan.md): every configuration with extra flags minus the same loss without
  them (decided), and minus plain ``infoloob`` (described, not decided).
- **Batch size** (corpus-plan.md 7): within one data set, d_s = [M_cloob(b) − M_clip(b)] −
  [M_cloob(128) − M_clip(128)], batch 128 at the same number of samples (or at the same steps); and
  cloob − clip at each batch size.
- **Duplicate captions** (corpus-plan.md 8): (cloob − clip) at template-caption share P minus at share 0,
  same batch and steps; and cloob − clip at each share.

``--plot`` adds a forest plot: one row per contrast (the plain cloob − clip of the two axes, comparison 1's
rows, only once), its mean and interval on M, a line at 0.
"""
import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import console
from ..plots import pyplot
from ..reports import markdown_table
from .plan import config_key
from .report import (CONFIDENCE, PLANNED_COMPARISONS, decision, format_difference, group_configs,
                     paired_difference, paired_scores, plan_configs, planned_pairs, seed_differences, seed_scores,
                     t_interval)

_logger = logging.getLogger(__name__)

PROG = "python -m cloob_tools.study.contrasts"
RESULTS_NAME = "results.json"
CORPUS_PLAN = "docs/study/corpus-plan.md"
REMEDIES_PLAN = "docs/study/remedies-plan.md"
REFERENCE_BATCH = 128
MISSING = "n/a (fewer than 2 paired seeds)"
DESCRIBED = "described, not decided"
# Settings shown beside batch, steps and flags when they differ between the configurations.
OTHER_SETTINGS = ("model", "eval_points", "device", "validate")

# The runs of one configuration, one per seed.
Group = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Contrast:
    """One row of a contrast table: A − B where (data, condition), its paired differences on M (primary)
    and on the images' effective rank (secondary), and the decision on M."""
    plan: str
    name: str
    data: str
    condition: str
    primary: Optional[Dict[str, float]]
    secondary: Optional[Dict[str, float]]
    decision: str


def read_study(folder: Path) -> Dict[str, Any]:
    """A study folder's ``results.json``; an error naming the folder when it has none."""
    path = folder / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {RESULTS_NAME} (a study folder of python -m cloob_tools.study, "
                                f"written when its runs finish)")
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_path(folder: Path, data: Mapping[str, Any]) -> Path:
    """Where the manifest of a run's data lies: beside the folder of its (first) training shards, the
    path taken relative to the study folder when it is relative."""
    first = data["train_data"].split("::")[0]
    return folder / Path(first).parent.parent / "manifest.json"


def data_label(folder: Path, data: Mapping[str, Any]) -> Tuple[str, Optional[float]]:
    """The name of a run's data and its share of template captions: ``corpus, P % template captions``
    when its manifest has ``fashion_share``, else the training data's path (inside ``folder`` when relative;
    an absolute path below the working directory relative to it)."""
    path = manifest_path(folder, data)
    if path.is_file():
        share = json.loads(path.read_text(encoding="utf-8")).get("fashion_share")
        if share is not None:
            return f"corpus, {100 * share:g} % template captions", float(share)
    train_data = data["train_data"]
    if not Path(train_data.split("::")[0]).is_absolute():
        return str(folder / train_data), None
    # Data outside the study folder, named from the working directory when it lies below it.
    return train_data.replace(f"{Path.cwd()}{os.sep}", ""), None


def labelled(result: Mapping[str, Any], folder: Path, label: str, share: Optional[float]) -> Dict[str, Any]:
    """A copy of a run's result whose data settings also name the data (``label``, ``fashion_share``),
    so that runs of different data never share a configuration, and which names its study folder."""
    data = {**result["settings"]["data"], "label": label, "fashion_share": share}
    return {**result, "settings": {**result["settings"], "data": data}, "study": str(folder)}


def load_runs(folders: Sequence[Path]) -> Tuple[List[Dict[str, Any]], Dict[str, List[str]]]:
    """The runs of every folder (:func:`labelled`), and each folder's study commands. Two runs of the
    same data, settings and seed (in two folders) are an error."""
    runs, commands, seen = [], {}, {}
    for folder in dict.fromkeys(folders):
        results = read_study(folder)
        commands[str(folder)] = list(results.get("commands", []))
        for result in results["runs"]:
            run = labelled(result, folder, *data_label(folder, result["settings"]["data"]))
            key = (config_key(run["settings"]), run["settings"]["seed"])
            if key in seen:
                raise ValueError(f"{folder}: run {result.get('run')} has the data, settings and seed of run "
                                 f"{seen[key]['run']} in {seen[key]['study']}")
            seen[key] = run
            runs.append(run)
    return runs, commands


def varying_settings(configs: Sequence[Group]) -> List[str]:
    """The settings of :data:`OTHER_SETTINGS` that differ between the configurations."""
    return [key for key in OTHER_SETTINGS
            if len({json.dumps(group[0]["settings"].get(key)) for group in configs}) > 1]


def condition_text(settings: Mapping[str, Any], varying: Sequence[str] = (), flags: bool = True) -> str:
    """``batch B, S steps`` (and the extra flags, and the ``varying`` settings) of a configuration."""
    parts = [f"batch {settings['batch_size']}", f"{settings['steps']} steps"]
    if flags and settings["extra_flags"]:
        parts.append(shlex.join(settings["extra_flags"]))
    return ", ".join(parts + [f"{key} {settings[key]}" for key in varying])


def config_name(settings: Mapping[str, Any]) -> str:
    """The loss, β (where set) and extra flags of a configuration."""
    beta = f" β={settings['hopfield_beta']:g}" if settings["hopfield_beta"] is not None else ""
    flags = f" {shlex.join(settings['extra_flags'])}" if settings["extra_flags"] else ""
    return f"{settings['loss']}{beta}{flags}"


def sort_key(settings: Mapping[str, Any], labels: Mapping[str, int]) -> Tuple[Any, ...]:
    """Order of conditions: data (as the folders name them), batch size, steps, the rest."""
    return (labels.get(settings["data"]["label"], len(labels)), settings["batch_size"], settings["steps"],
            json.dumps(settings, sort_keys=True))


def mean_interval(values: Sequence[float]) -> str:
    """``mean [low, high]`` of the values (the 95 % t-interval of the mean); one value without interval."""
    values = [value for value in values if value is not None]
    if not values:
        return "n/a"
    interval = t_interval(values)
    if interval is None:
        return f"{values[0]:.2f} (one seed)"
    return f"{interval['mean']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"


def cell_table(configs: Sequence[Group], labels: Mapping[str, int]) -> str:
    """Markdown: every configuration, its M as mean over seeds with its 95 % t-interval, n, and the
    images' effective rank (mean over the seeds that have it)."""
    varying = varying_settings(configs)
    rows = []
    # By condition, the plain configurations before those with extra flags, else as group_configs orders them.
    for group in sorted(configs, key=lambda group: (*sort_key(group[0]["settings"], labels)[:3],
                                                    shlex.join(group[0]["settings"]["extra_flags"]))):
        settings = group[0]["settings"]
        scores, ranks = seed_scores(group, group[0]["zeroshot_sets"])
        rank = f"{statistics.mean(ranks.values()):.2f}" if ranks else "n/a"
        rows.append([settings["data"]["label"], config_name(settings), condition_text(settings, varying, flags=False),
                     ",".join(str(seed) for seed in scores), mean_interval(list(scores.values())), len(scores), rank])
    header = ["data", "configuration", "condition", "seeds", f"M: mean [{CONFIDENCE:.0%} interval]", "n",
              "effective rank, images (mean)"]
    return markdown_table(header, rows, "lllrrrr") + "\n"


def contrast(plan: str, first: str, second: str, data: str, condition: str, differences: Sequence[Any],
             decided: bool = True) -> Contrast:
    """A :class:`Contrast` of A = ``first`` and B = ``second`` from its differences on M and the rank;
    decided on M by the plan's rule, or only described."""
    return Contrast(plan, f"{first} − {second}", data, condition, differences[0], differences[1],
                    decision(first, second, differences[0]) if decided else DESCRIBED)


def loss_contrasts(configs: Sequence[Group], labels: Mapping[str, int]) -> List[Contrast]:
    """corpus-plan.md 1–6: every planned comparison of losses within a condition (:func:`.report.planned_pairs`),
    ordered by data, batch size and steps, then as the plan numbers them."""
    varying = varying_settings(configs)
    pairs = sorted(planned_pairs(configs), key=lambda pair: sort_key(
        {**pair[2][0]["settings"], "loss": None, "hopfield_beta": None}, labels))
    found = []
    for first, second, first_group, second_group in pairs:
        settings = first_group[0]["settings"]
        number = next(index for index, pair in enumerate(PLANNED_COMPARISONS, start=1) if pair == (first, second))
        found.append(contrast(f"corpus-plan.md {number}", first, second, settings["data"]["label"],
                              condition_text(settings, varying),
                              paired_scores(first_group, second_group, first_group[0]["zeroshot_sets"])))
    return found


def remedy_contrasts(configs: Sequence[Group], labels: Mapping[str, int]) -> List[Contrast]:
    """remedies-plan.md: each configuration with extra flags (A) minus the same loss and β without them
    (decided on M), and minus plain ``infoloob`` in the same condition (described, not decided)."""
    varying = varying_settings(configs)
    index = {config_key(group[0]["settings"]): group for group in configs}
    infoloob = plan_configs(configs, "infoloob")
    found = []
    for group in sorted(configs, key=lambda group: sort_key(group[0]["settings"], labels)):
        settings = group[0]["settings"]
        if not settings["extra_flags"]:
            continue
        sets = group[0]["zeroshot_sets"]
        where = (settings["data"]["label"], condition_text(settings, varying, flags=False))
        plain = index.get(config_key({**settings, "extra_flags": []}))
        if plain is not None:
            found.append(contrast("remedies-plan.md", config_name(settings), config_name(plain[0]["settings"]),
                                  *where, paired_scores(group, plain, sets)))
        baseline = infoloob.get(config_key({**settings, "loss": None, "hopfield_beta": None, "extra_flags": []}))
        if baseline is not None:
            found.append(contrast("remedies-plan.md", config_name(settings), "infoloob", *where,
                                  paired_scores(group, baseline, sets), decided=False))
    return found


def cloob_clip_conditions(configs: Sequence[Group]) -> List[Tuple[Mapping[str, Any], Group, Group]]:
    """The conditions without extra flags that have both plain ``cloob`` and ``clip``: (the condition's
    settings but loss and β, cloob's runs, clip's runs)."""
    clips = plan_configs(configs, "clip")
    return [({**group[0]["settings"], "loss": None, "hopfield_beta": None}, group, clips[key])
            for key, group in plan_configs(configs, "cloob").items()
            if key in clips and not group[0]["settings"]["extra_flags"]]


def gap_scores(cloob: Group, clip: Group) -> List[Dict[int, float]]:
    """Per seed, M_cloob − M_clip and the same for the images' effective rank."""
    return [seed_differences(first, second) for first, second in
            zip(seed_scores(cloob, cloob[0]["zeroshot_sets"]), seed_scores(clip, cloob[0]["zeroshot_sets"]))]


def interaction(condition: Tuple[Any, Group, Group], reference: Tuple[Any, Group, Group]
                ) -> List[Optional[Dict[str, float]]]:
    """The paired difference of the cloob − clip gaps, d_s = [cloob − clip](condition, s) −
    [cloob − clip](reference, s), on M and on the images' effective rank."""
    return [paired_difference(first, second) for first, second in
            zip(gap_scores(*condition[1:]), gap_scores(*reference[1:]))]


def without(settings: Mapping[str, Any], *keys: str) -> str:
    """The :func:`config_key` of ``settings`` with ``keys`` left out (set to ``None``)."""
    return config_key({**settings, **{key: None for key in keys}})


def gap_contrast(plan: str, condition: Tuple[Mapping[str, Any], Group, Group], varying: Sequence[str]) -> Contrast:
    """cloob − clip in one condition."""
    settings = condition[0]
    return contrast(plan, "cloob", "clip", settings["data"]["label"], condition_text(settings, varying),
                    paired_scores(condition[1], condition[2], condition[1][0]["zeroshot_sets"]))


def batch_contrasts(configs: Sequence[Group], labels: Mapping[str, int]) -> Tuple[List[Contrast], List[Contrast]]:
    """corpus-plan.md 7, within each data set: (cloob − clip) at batch b minus (cloob − clip) at batch 128
    with the same number of samples (steps × batch) or else the same steps, paired by seed; and the
    plain cloob − clip of every condition that takes part. Returns (plain, interactions)."""
    varying = varying_settings(configs)
    conditions = sorted(cloob_clip_conditions(configs), key=lambda found: sort_key(found[0], labels))
    references = {}
    for found in conditions:
        if found[0]["batch_size"] == REFERENCE_BATCH:
            references[(without(found[0], "batch_size", "steps"), found[0]["steps"])] = found
    plain, interactions = {}, []
    for found in conditions:
        settings = found[0]
        batch, steps = settings["batch_size"], settings["steps"]
        if batch == REFERENCE_BATCH:
            continue
        same_samples = batch * steps // REFERENCE_BATCH if batch * steps % REFERENCE_BATCH == 0 else None
        for reference_steps in dict.fromkeys((same_samples, steps)):
            reference = references.get((without(settings, "batch_size", "steps"), reference_steps))
            if reference is None:
                continue
            first = f"(cloob − clip) at batch {batch}, {steps} steps"
            second = f"(cloob − clip) at batch {REFERENCE_BATCH}, {reference[0]['steps']} steps"
            interactions.append(contrast("corpus-plan.md 7", first, second, settings["data"]["label"],
                                         condition_text({**settings, "batch_size": f"{batch} vs {REFERENCE_BATCH}",
                                                         "steps": f"{steps} vs {reference[0]['steps']}"}, varying),
                                         interaction(found, reference)))
            plain.setdefault(id(reference), reference)
            plain.setdefault(id(found), found)
    used = sorted(plain.values(), key=lambda found: sort_key(found[0], labels))
    return [gap_contrast("corpus-plan.md 7", found, varying) for found in used], interactions


def share_contrasts(configs: Sequence[Group], labels: Mapping[str, int]) -> Tuple[List[Contrast], List[Contrast]]:
    """corpus-plan.md 8, across data sets with a template-caption share: (cloob − clip) at share P minus
    (cloob − clip) at share 0, the same batch, steps and other settings, paired by seed; and the plain
    cloob − clip of every condition that takes part. Returns (plain, interactions)."""
    varying = varying_settings(configs)
    conditions = sorted((found for found in cloob_clip_conditions(configs)
                         if found[0]["data"]["fashion_share"] is not None),
                        key=lambda found: sort_key(found[0], labels))
    references = {without(found[0], "data"): found for found in conditions if found[0]["data"]["fashion_share"] == 0}
    plain, interactions = {}, []
    for found in conditions:
        settings = found[0]
        reference = references.get(without(settings, "data"))
        if settings["data"]["fashion_share"] == 0 or reference is None:
            continue
        share, base = (f"{100 * entry[0]['data']['fashion_share']:g} %" for entry in (found, reference))
        interactions.append(contrast("corpus-plan.md 8", f"(cloob − clip) at {share}", f"(cloob − clip) at {base}",
                                     f"{settings['data']['label']} vs {reference[0]['data']['label']}",
                                     condition_text(settings, varying), interaction(found, reference)))
        plain.setdefault(id(reference), reference)
        plain.setdefault(id(found), found)
    used = sorted(plain.values(), key=lambda found: sort_key(found[0], labels))
    return [gap_contrast("corpus-plan.md 8", found, varying) for found in used], interactions


def contrast_table(contrasts: Sequence[Contrast], empty: str) -> str:
    """Markdown: one row per contrast (plan, A − B, data, condition, M and rank intervals, decision);
    ``empty`` (a line) when there are none."""
    if not contrasts:
        return f"n/a: {empty}\n"
    header = ["plan", "A − B", "data", "condition", f"M: mean [{CONFIDENCE:.0%} interval]",
              "effective rank, images", "decision on M"]
    rows = [[row.plan, row.name, row.data, row.condition, format_difference(row.primary, MISSING),
             format_difference(row.secondary, MISSING), row.decision] for row in contrasts]
    return markdown_table(header, rows, "llllrrl") + "\n"


def plot_forest(contrasts: Sequence[Contrast], path: Path) -> str:
    """A forest plot: one row per contrast (top to bottom in the order given), its mean on M as a dot
    and its interval as a bar (decided: black, described: grey; ``n/a`` marked), a line at 0.
    Returns the file name."""
    labels = [f"{row.plan}: {row.name} | {row.data} | {row.condition}" for row in contrasts]
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 1.2 + 0.28 * max(len(contrasts), 1)))
    for position, row in enumerate(contrasts):
        y = len(contrasts) - 1 - position
        if row.primary is None:
            axis.text(0, y, "n/a", va="center", ha="center", fontsize=7, color="tab:red")
            continue
        color = "grey" if row.decision == DESCRIBED else "black"
        axis.errorbar(row.primary["mean"], y, xerr=[[row.primary["mean"] - row.primary["low"]],
                                                    [row.primary["high"] - row.primary["mean"]]],
                      fmt="o", color=color, ecolor=color, capsize=3, markersize=4)
    axis.axvline(0, color="tab:blue", linewidth=1)
    axis.set_yticks(range(len(contrasts)))
    axis.set_yticklabels(labels[::-1], fontsize=7)
    axis.set_ylim(-0.8, max(len(contrasts), 1) - 0.2)
    axis.set_xlabel(f"paired difference in M (percentage points), mean and {CONFIDENCE:.0%} interval")
    axis.set_title("Planned contrasts (grey: described, not decided)")
    axis.grid(axis="x", alpha=0.3)
    # Tight bounding box: tight_layout alone clips long tick labels.
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path.name


def write_contrasts(folders: Sequence[Path], out: Path, plot: Optional[Path] = None) -> Path:
    """The markdown of every planned contrast of the runs in ``folders`` at ``out`` (and the forest plot
    at ``plot``); returns ``out``."""
    runs, commands = load_runs(folders)
    if not runs:
        raise ValueError(f"{', '.join(map(str, folders))}: no finished runs in {RESULTS_NAME}")
    labels = {label: index for index, label in enumerate(dict.fromkeys(
        run["settings"]["data"]["label"] for run in runs))}
    configs = group_configs(runs)
    batch_plain, batch_interactions = batch_contrasts(configs, labels)
    share_plain, share_interactions = share_contrasts(configs, labels)
    losses, remedies = loss_contrasts(configs, labels), remedy_contrasts(configs, labels)
    figure = ""
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        # The plain cloob − clip of the two axes are comparison 1's rows again: not repeated in the plot.
        plot_forest([*losses, *remedies, *batch_interactions, *share_interactions], plot)
        figure = f"![forest plot of the contrasts on M]({Path(os.path.relpath(plot, out.parent)).as_posix()})\n\n"
    folder_rows = [[f"`{folder}`", ", ".join(sorted({run["settings"]["data"]["label"] for run in runs
                                                      if run["study"] == folder})),
                    sum(run["study"] == folder for run in runs)] for folder in commands]
    no_shares = ("no two data sets with template-caption shares 0 and P > 0 have plain cloob and clip in the same "
                 "condition.")
    command_lines = "\n".join(f"# {folder}\n" + "\n".join(lines or ["(none recorded)"])
                              for folder, lines in commands.items())
    text = f"""# Planned contrasts: {len(runs)} runs in {len(commands)} study folder(s)

Generated by `{PROG}` on {time.strftime('%Y-%m-%d')} from the `{RESULTS_NAME}` of the folders below;
every number was measured by their runs.

M is the mean over the retrieval sets of ½ (image→text R@1 + text→image R@1), in %, at the last eval
point. Each contrast A − B is paired by seed, d_s = A(s) − B(s), and given as d̄ [d̄ ± t · sd(d)/√n]
({CONFIDENCE:.0%} interval, t = t₀.₉₇₅,ₙ₋₁) over the n seeds both sides have. The rule of
`{CORPUS_PLAN}`: A beats B when the interval on M lies above 0, B beats A when it lies
below, otherwise no difference is shown. The images' effective rank gets the same interval and is
described, not decided. With fewer than 2 paired seeds a contrast is {MISSING}.

{markdown_table(["study folder", "data", "runs"], folder_rows, "llr")}

{figure}## Cells: every configuration

M as mean over seeds with its {CONFIDENCE:.0%} t-interval (mean ± t · sd/√n).

{cell_table(configs, labels)}
## Loss comparisons (`{CORPUS_PLAN}`, comparisons 1–6)

Configurations that differ in the loss only (β the paper's), within each data set, batch size, steps
and flags.

{contrast_table(losses, "no two configurations differ in the loss only.")}
## Remedies (`{REMEDIES_PLAN}`)

Each configuration with extra flags against the same loss without them, in the same condition
(decided on M), and against plain `infoloob` ({DESCRIBED}).

{contrast_table(remedies, "no configuration with extra flags beside its plain counterpart.")}
## Batch size (`{CORPUS_PLAN}`, comparison 7)

cloob − clip at each batch size taking part:

{contrast_table(batch_plain, "no data set has plain cloob and clip at two batch sizes.")}
Per seed d_s = [M_cloob(b) − M_clip(b)] − [M_cloob({REFERENCE_BATCH}) − M_clip({REFERENCE_BATCH})], the
reference batch {REFERENCE_BATCH} with the same number of samples (or the same steps):

{contrast_table(batch_interactions, f"no data set has plain cloob and clip at batch {REFERENCE_BATCH} and another.")}
## Duplicate captions (`{CORPUS_PLAN}`, comparison 8)

cloob − clip at each share of template captions taking part:

{contrast_table(share_plain, no_shares)}
Per seed d_s = [M_cloob(P) − M_clip(P)] − [M_cloob(0) − M_clip(0)], the same batch size and steps:

{contrast_table(share_interactions, no_shares)}
## Study commands

```
{command_lines}
```
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line: study folders, ``--out`` (markdown), ``--plot`` (PNG)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("studies", nargs="+", type=Path, metavar="STUDY_DIR",
                        help=f"study folders (--out of python -m cloob_tools.study) with a {RESULTS_NAME}")
    parser.add_argument("--out", type=Path, required=True, help="the markdown file to write")
    parser.add_argument("--plot", type=Path, default=None, help="also write a forest plot of the contrasts (PNG)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Write the contrasts of the study folders given; returns the markdown's path."""
    args = build_parser().parse_args(argv)
    path = write_contrasts(args.studies, args.out, args.plot)
    _logger.info("wrote %s%s", path, f" and {args.plot}" if args.plot else "")
    return path


if __name__ == "__main__":
    sys.exit(console.run(main, PROG))
