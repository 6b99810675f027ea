"""The ablation report's charts: one PNG bar chart per group (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

from cater.experiments.results import BASELINE_TITLES, Table


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
