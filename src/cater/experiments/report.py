"""The ablation report: per-group tables over seeds with CIs and the baselines, conclusions drawn only where the
CIs (and the seed ranges) separate, a CSV, and one chart per group."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cater.experiments.grid import AXES, SEED_KEY, Grid, Group, get_dotted
from cater.experiments.show import Baseline, ExpRecord


@dataclass
class Row:
    value: str
    config: dict[str, str]
    reference: bool
    seeds: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    cis: list[tuple[float, float] | None] = field(default_factory=list)   # per seed: the test accuracy's 95% CI
    n: set = field(default_factory=set)
    chance: list[float] = field(default_factory=list)
    per_type: dict[str, list[float]] = field(default_factory=dict)
    per_type_cis: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)
    baselines: list[dict] = field(default_factory=list)  # per seed: eval.json's test.baselines
    failed: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # succeeded, but the test split has no labels

    @property
    def mean(self) -> float | None:
        return sum(self.accuracies) / len(self.accuracies) if self.accuracies else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None below two seeds)."""
        k = len(self.accuracies)
        if k < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((a - mean) ** 2 for a in self.accuracies) / (k - 1))

    @property
    def ci(self) -> tuple[float, float] | None:
        """The pooled 95% CI: the mean over seeds of each seed's CI bounds (None if a seed has no CI)."""
        return _mean_ci(self.cis)

    @property
    def seed_range(self) -> tuple[float, float] | None:
        return (min(self.accuracies), max(self.accuracies)) if self.accuracies else None

    def type_ci(self, qtype: str) -> tuple[float, float] | None:
        return _mean_ci(self.per_type_cis.get(qtype, []))

    def separates_from(self, other: "Row | None") -> bool | None:
        """True when this row's pooled CI and `other`'s are disjoint and every seed of one row is above
        every seed of the other; None when either row lacks results or CIs."""
        if other is None or self.ci is None or other.ci is None:
            return None
        cis_apart = self.ci[0] > other.ci[1] or self.ci[1] < other.ci[0]
        (lo, hi), (other_lo, other_hi) = self.seed_range, other.seed_range
        return cis_apart and (lo > other_hi or hi < other_lo)


def _mean_ci(cis: list) -> tuple[float, float] | None:
    if not cis or any(ci is None for ci in cis):
        return None
    return sum(ci[0] for ci in cis) / len(cis), sum(ci[1] for ci in cis) / len(cis)


def _ci_of(block: dict) -> tuple[float, float] | None:
    from cater.metrics import ci_of

    return ci_of(block)


@dataclass
class Table:
    group: Group
    rows: list[Row]

    def reference_row(self) -> Row | None:
        return next((r for r in self.rows if r.reference), None)


def _without(params: dict, keys: Iterable[str]) -> dict:
    params = copy.deepcopy(params)
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return params


def summarize(grid: Grid, baseline: Baseline) -> tuple[list[Table], list[ExpRecord]]:
    """Group the baseline's experiments into the grid's rows by their params: every param but the
    axes and the seed must equal the baseline's. Returns the tables and the experiments left out."""
    common = _without(baseline.params, AXES + (SEED_KEY,))
    tables = [Table(g, [Row(v, grid.row_config(g, v), grid.row_config(g, v) == grid.reference) for v in g.values])
              for g in grid.groups]
    rows_by_config: dict[tuple, list[Row]] = {}
    for table in tables:
        for row in table.rows:
            rows_by_config.setdefault(tuple(row.config[a] for a in AXES), []).append(row)
    unmatched, chosen = [], {}
    for record in sorted(baseline.experiments, key=lambda r: r.timestamp or ""):
        try:
            config = tuple(str(get_dotted(record.params, a)) for a in AXES)
            seed = int(get_dotted(record.params, SEED_KEY))
        except (KeyError, TypeError, ValueError):
            unmatched.append(record)
            continue
        if config not in rows_by_config or _without(record.params, AXES + (SEED_KEY,)) != common:
            unmatched.append(record)
            continue
        if record.state == "success" and record.test is not None:
            if record.test.get("accuracy") is None:  # e.g. TVQA test_public: no labels, nothing to average
                for row in rows_by_config[config]:
                    row.unlabelled.append(record.name)
            else:
                chosen[(config, seed)] = record  # the newest run of a configuration and seed wins
        elif record.state == "failed":
            for row in rows_by_config[config]:
                row.failed.append(record.name)
        else:
            for row in rows_by_config[config]:
                row.unfinished.append(record.name)
    for (config, seed), record in sorted(chosen.items(), key=lambda kv: kv[0][1]):
        test = record.test
        for row in rows_by_config[config]:
            row.seeds.append(seed)
            row.accuracies.append(float(test["accuracy"]))
            row.cis.append(_ci_of(test))
            row.n.add(test.get("n"))
            if test.get("chance") is not None:
                row.chance.append(float(test["chance"]))
            if test.get("baselines"):
                row.baselines.append(test["baselines"])
            for qtype, value in (test.get("per_type") or {}).items():
                if value.get("accuracy") is not None:
                    row.per_type.setdefault(qtype, []).append(float(value["accuracy"]))
                    row.per_type_cis.setdefault(qtype, []).append(_ci_of(value))
    return tables, unmatched


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


SEPARATES = {True: "yes", False: "no", None: "–"}


def render_table(table: Table, reference: "Row | float | None") -> str:
    """The group's markdown table. `reference` is the reference row (a float, the old reference mean,
    still gives Δ but no CI comparison); the group's own reference row is preferred when it has one."""
    own = table.reference_row()
    if own is not None and own.mean is not None:
        reference = own
    reference_row = reference if isinstance(reference, Row) else None
    reference_mean = reference_row.mean if reference_row is not None else reference
    types = sorted({t for row in table.rows for t in row.per_type})
    header = [table.group.title, "seeds", "test accuracy (mean ± std)", "95% CI", "seed range", "Δ vs reference",
              "CI separates from reference", "test n"] + types
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table.rows:
        label = f"**{row.value}** (reference)" if row.reference else row.value
        accuracy = "–" if row.mean is None else f"{row.mean:.3f} ± {_fmt(row.std)}"
        delta = None if row.mean is None or reference_mean is None else row.mean - reference_mean
        seeds = str(len(row.seeds)) + (f" ({len(row.failed)} failed)" if row.failed else "") + (
            f" ({len(row.unfinished)} unfinished)" if row.unfinished else "") + (
            f" ({len(row.unlabelled)} without test labels)" if row.unlabelled else "")
        n = "/".join(str(v) for v in sorted(row.n, key=str)) or "–"
        seed_range = "–" if row.seed_range is None else f"{row.seed_range[0]:.3f}–{row.seed_range[1]:.3f}"
        if row.reference and row.mean is not None:
            delta_cell, separates = "0 (reference)", "reference"
        else:
            delta_cell = _fmt(delta, True)
            separates = "–" if row.mean is None else SEPARATES[row.separates_from(reference_row)]
        cells = [label, seeds, accuracy, _fmt_ci(row.ci), seed_range, delta_cell, separates, n]
        for t in types:
            if not row.per_type.get(t):
                cells.append("–")
                continue
            ci = row.type_ci(t)
            cells.append(_fmt(sum(row.per_type[t]) / len(row.per_type[t])) + ("" if ci is None else " " + _fmt_ci(ci)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_HEADER = ["group", "axis", "value", "reference", "seeds", "failed", "mean", "std", "ci95_low", "ci95_high", "seed_min",
              "seed_max", "delta_vs_reference", "ci_separates_from_reference", "test_n", "per_seed"]


def render_csv(tables: list[Table], reference: "Row | None") -> str:
    """One line per row of every group, the numbers of the markdown tables unrounded (the seed's results CSV)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for table in tables:
        own = table.reference_row()
        ref = own if own is not None and own.mean is not None else reference
        for row in table.rows:
            delta = None if row.mean is None or ref is None or ref.mean is None else row.mean - ref.mean
            separates = "reference" if row.reference else {True: "yes", False: "no", None: ""}[row.separates_from(ref)]
            ci, seed_range = row.ci or (None, None), row.seed_range or (None, None)
            cells = [table.group.name, table.group.axis, row.value, row.reference, len(row.seeds), len(row.failed), row.mean,
                     row.std, *ci, *seed_range, delta, separates, "/".join(str(v) for v in sorted(row.n, key=str)),
                     " ".join(f"{seed}:{acc}" for seed, acc in zip(row.seeds, row.accuracies))]
            writer.writerow(["" if cell is None else cell for cell in cells])
    return buffer.getvalue()


def render_pairs(first: Table, second: Table) -> str:
    """Row by row at equal values: `first`'s row against `second`'s (e.g. hybrid vs no distillation at
    each label fraction), with the same separation rule as against the reference."""
    lines = [f"{first.group.title} vs {second.group.title}, at each `{second.group.axis}`:", "",
             f"| {second.group.axis} | {first.group.title} | {second.group.title} | Δ | CIs separate |", "|---|---:|---:|---:|---:|"]
    other = {r.value: r for r in second.rows}
    for row in first.rows:
        mate = other.get(row.value)
        if mate is None:
            continue
        cell = lambda r: "–" if r.mean is None else f"{r.mean:.3f} {_fmt_ci(r.ci)}"
        delta = None if row.mean is None or mate.mean is None else row.mean - mate.mean
        lines.append(f"| {row.value} | {cell(row)} | {cell(mate)} | {_fmt(delta, True)} | {SEPARATES[row.separates_from(mate)]} |")
    return "\n".join(lines)


def _names(rows: list[Row]) -> str:
    return ", ".join(f"`{r.value}`" for r in rows)


def conclusions(table: Table, reference: Row | None, baselines: dict[str, dict] | None = None) -> list[str]:
    """What the table allows one to say: a difference only where the CIs separate (see `Row.separates_from`)."""
    own = table.reference_row()
    if own is not None and own.mean is not None:
        reference = own
    rows = [r for r in table.rows if r.mean is not None and r is not reference and not r.reference]
    if reference is None or reference.ci is None or not rows:
        return []
    above = [r for r in rows if r.separates_from(reference) and r.mean > reference.mean]
    below = [r for r in rows if r.separates_from(reference) and r.mean < reference.mean]
    no_ci = [r for r in rows if r.ci is None]
    unclear = [r for r in rows if r not in above and r not in below and r not in no_ci]
    lines = []
    if above:
        lines.append(f"Above the reference `{reference.value}` (CIs separate): {_names(above)}.")
    if below:
        lines.append(f"Below the reference `{reference.value}` (CIs separate): {_names(below)}.")
    if unclear:
        lines.append(f"Not distinguishable from the reference `{reference.value}` (CIs overlap, or seeds on both sides; "
                     f"no difference is claimed): {_names(unclear)}.")
    if no_ci:
        lines.append(f"No CI recorded (metrics/eval.json from before CIs: re-run these experiments), "
                     f"so no comparison is made: {_names(no_ci)}.")
    best = _best_baseline(baselines)
    if best is not None:
        name, ci = best
        beaten = [r for r in [reference] + rows if r.ci is not None and r.ci[0] > ci[1]]
        not_beaten = [r for r in [reference] + rows if r.ci is not None and r not in beaten]
        if beaten:
            lines.append(f"Above the best trivial baseline ({BASELINE_TITLES[name]}, CIs separate): {_names(beaten)}.")
        if not_beaten:
            lines.append(f"Not distinguishable from the best trivial baseline ({BASELINE_TITLES[name]}): {_names(not_beaten)}.")
    return lines


BASELINE_TITLES = {"majority_letter": "majority letter", "majority_answer_per_type": "majority answer per type"}


def report_baselines(tables: list[Table]) -> tuple[dict[str, dict] | None, int]:
    """The trivial baselines of the test split (eval.json's test.baselines; they depend on the data only,
    so every experiment has the same ones). Returns the reference row's first seed's (else any row's)
    and how many distinct versions the experiments have."""
    rows = sorted((r for t in tables for r in t.rows if r.baselines), key=lambda r: not r.reference)
    distinct = {json.dumps(b, sort_keys=True) for r in rows for b in r.baselines}
    return (rows[0].baselines[0] if rows else None), len(distinct)


def _best_baseline(baselines: dict[str, dict] | None) -> tuple[str, tuple[float, float]] | None:
    candidates = [(name, _ci_of(b), b.get("accuracy")) for name, b in (baselines or {}).items() if name in BASELINE_TITLES]
    candidates = [(name, ci, acc) for name, ci, acc in candidates if ci is not None and acc is not None]
    if not candidates:
        return None
    name, ci, _ = max(candidates, key=lambda c: c[2])
    return name, ci


def render_baselines(baselines: dict[str, dict], chance: float | None, distinct: int) -> list[str]:
    lines = ["| baseline | test accuracy | 95% CI |", "|---|---:|---:|"]
    if chance is not None:
        lines.append(f"| chance (mean 1/options) | {chance:.3f} | – |")
    for name, title in BASELINE_TITLES.items():
        if name in baselines:
            lines.append(f"| {title} | {_fmt(baselines[name].get('accuracy'))} | {_fmt_ci(_ci_of(baselines[name]))} |")
    if distinct > 1:
        lines += ["", f"Note: the experiments report {distinct} different sets of baselines (their test data differ); "
                      "shown: the reference row's."]
    return lines


def render_chart(table: Table, path: Path, baselines: dict[str, dict] | None = None) -> None:
    """A bar chart of mean test accuracy with 95% CI error bars (± std where a row has no CI), chance
    and the trivial baselines as lines (Agg backend: no display, no JS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cater.io import atomic_path

    rows = [r for r in table.rows if r.mean is not None]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(len(rows), 1), 3.2), dpi=110)
    try:
        x = range(len(rows))
        below = [r.mean - r.ci[0] if r.ci else (r.std or 0.0) for r in rows]
        above = [r.ci[1] - r.mean if r.ci else (r.std or 0.0) for r in rows]
        ax.bar(x, [r.mean for r in rows], yerr=[below, above], capsize=4,
               color=["#d95f02" if r.reference else "#1b9e77" for r in rows])
        ax.set_xticks(list(x), [r.value for r in rows], rotation=20 if len(rows) > 4 else 0)
        chance = [c for r in rows for c in r.chance]
        if chance:
            ax.axhline(sum(chance) / len(chance), color="grey", linestyle="--", linewidth=1, label="chance")
        for (name, title), style in zip(BASELINE_TITLES.items(), (":", "-.")):
            value = ((baselines or {}).get(name) or {}).get("accuracy")
            if value is not None:
                ax.axhline(value, color="black", linestyle=style, linewidth=1, label=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel("test accuracy (95% CI)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{table.group.title} ({table.group.axis})", fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def build_report(grid: Grid, baseline: Baseline, out: Path, compare_command: str | None = None) -> str:
    """Write `out` (markdown) and one PNG per group beside it, in `<out stem>/`; returns the markdown."""
    from cater.io import atomic_write_text

    tables, unmatched = summarize(grid, baseline)
    reference = next((r for t in tables for r in t.rows if r.reference and r.mean is not None), None)
    baselines, distinct = report_baselines(tables)
    chance = [c for t in tables for r in t.rows for c in r.chance]
    reference_text = ", ".join(f"`{axis}={value}`" for axis, value in grid.reference.items())
    lines = [
        "# Ablations",
        "",
        f"Baseline commit `{baseline.rev[:7]}`{f' ({baseline.name})' if baseline.name else ''}. "
        f"Generated by `cater report` from `dvc exp show --json`; only experiments that succeeded are counted "
        "(a failed experiment is listed there with its baseline's metrics, which are ignored).",
        "",
        f"Reference row: {reference_text}; it is run once per seed and shared by every group. "
        "Accuracy is the mean over seeds (`train.seed`) ± the sample standard deviation; Δ is the difference of means "
        "from the reference row.",
        "",
        "**95% CI**: each seed's `metrics/eval.json` has a 95% percentile-bootstrap CI of its test accuracy that "
        "resamples videos (questions about one video are correlated); the column shows the mean over seeds of those "
        "lower and upper bounds, i.e. the test-set sampling uncertainty of one typical seed. It is not a CI of the "
        "mean over seeds: every seed is scored on the same test questions, so more seeds do not narrow it. "
        "**Seed range** is the lowest and highest seed's accuracy (training randomness). "
        "**CI separates from reference** is `yes` only when the row's CI and the reference row's CI are disjoint "
        "*and* every seed of one row is above every seed of the other; only those differences are claimed below. "
        "The per-type columns are mean accuracies per question type with their mean per-seed CIs.",
    ]
    if baselines:
        lines += ["", "## Trivial baselines (test split)", "",
                  "Fit on the train split, scored on the test split, with the same video bootstrap: `majority letter` "
                  "predicts the most frequent correct option position in train; `majority answer per type` predicts, per "
                  "question type, the choice whose text is train's most frequent correct answer (the type's majority "
                  "position when no choice has that text). A row is worth discussing only where its CI clears them.",
                  ""] + render_baselines(baselines, sum(chance) / len(chance) if chance else None, distinct)
    image_dir = out.parent / out.stem
    for table in tables:
        lines += ["", f"## {table.group.title} (`{table.group.axis}`)", "", render_table(table, reference)]
        said = conclusions(table, reference, baselines)
        if said:
            lines += [""] + said
        paired = next((t for t in tables if t.group.name == table.group.pair_with), None)
        if paired is not None:
            lines += ["", render_pairs(paired, table)]
        if any(r.mean is not None for r in table.rows):
            image = image_dir / f"{table.group.name}.png"
            render_chart(table, image, baselines)
            lines += ["", f"![{table.group.title}]({image.relative_to(out.parent).as_posix()})"]
    failed = sorted({name for t in tables for r in t.rows for name in r.failed})
    if failed:
        lines += ["", "## Failed experiments", "", "Not counted above; see `dvc queue logs <name>`:", ""]
        lines += [f"- `{name}`" for name in failed]
    if unmatched:
        lines += ["", f"{len(unmatched)} other experiment(s) at this baseline are not part of the grid and are not shown: "
                  + ", ".join(f"`{r.name}`" for r in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")]
    if compare_command:
        lines += ["", "All experiments side by side:", "", "```", compare_command, "```"]
    lines += ["", f"Every row's numbers, unrounded: [{out.stem}.csv]({out.stem}.csv)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out.with_suffix(".csv"), render_csv(tables, reference))
    atomic_write_text(out, text)
    return text


# The curated comparison: one column per axis that varies, test accuracy kept, the noise dropped.
