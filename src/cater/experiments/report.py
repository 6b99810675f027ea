"""The ablation report: per-group tables over seeds with CIs and the baselines, conclusions drawn only where the
CIs (and the seed ranges) separate, and a CSV (markdown and CSV here; the rows in `results`, the charts in `charts`)."""
from __future__ import annotations

from pathlib import Path

from cater.experiments.charts import render_chart
from cater.experiments.grid import Grid
from cater.experiments.results import BASELINE_TITLES, Row, Table, _ci_of, report_baselines, summarize
from cater.experiments.show import Baseline


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
