"""The ablation results: the baseline's experiments grouped into the grid's rows (per seed: test accuracy, its
CI, per-type accuracies, the trivial baselines), and the statistics over seeds the report shows."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
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



BASELINE_TITLES = {"majority_letter": "majority letter", "majority_answer_per_type": "majority answer per type"}


def report_baselines(tables: list[Table]) -> tuple[dict[str, dict] | None, int]:
    """The trivial baselines of the test split (eval.json's test.baselines; they depend on the data only,
    so every experiment has the same ones). Returns the reference row's first seed's (else any row's)
    and how many distinct versions the experiments have."""
    rows = sorted((r for t in tables for r in t.rows if r.baselines), key=lambda r: not r.reference)
    distinct = {json.dumps(b, sort_keys=True) for r in rows for b in r.baselines}
    return (rows[0].baselines[0] if rows else None), len(distinct)
