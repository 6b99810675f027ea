"""The official dataset adapters by name: `ADAPTERS[cfg["name"]](cfg) -> list[Sample]`, each imported when used.

The helpers they share live in cater.data.adapters, which imports none of them, so there is no import cycle.
"""
from __future__ import annotations

from typing import Callable

from cater.data.schema import Sample


def _load_msrvtt_qa(cfg: dict) -> list[Sample]:
    from cater.data import msrvtt_qa

    return msrvtt_qa.load(cfg)


def _load_msvd_qa(cfg: dict) -> list[Sample]:
    from cater.data import msrvtt_qa

    return msrvtt_qa.load_msvd(cfg)


def _load_activitynet_qa(cfg: dict) -> list[Sample]:
    from cater.data import activitynet_qa

    return activitynet_qa.load(cfg)


def _load_tvqa(cfg: dict) -> list[Sample]:
    from cater.data import tvqa

    return tvqa.load(cfg)


def _load_seed_jsonl(cfg: dict) -> list[Sample]:
    from cater.data import seed_jsonl

    return seed_jsonl.load(cfg)


# each adapter module is imported on first use
ADAPTERS: dict[str, Callable[[dict], list[Sample]]] = {
    "msrvtt_qa": _load_msrvtt_qa,
    "msvd_qa": _load_msvd_qa,
    "activitynet_qa": _load_activitynet_qa,
    "tvqa": _load_tvqa,
    "seed_jsonl": _load_seed_jsonl,
}


def adapter_stats(name: str) -> dict:
    """Counts from the latest `load` of adapter `name` (a copy)."""
    from cater.data import activitynet_qa, msrvtt_qa, seed_jsonl, tvqa

    modules = {"msrvtt_qa": msrvtt_qa, "msvd_qa": msrvtt_qa, "activitynet_qa": activitynet_qa, "tvqa": tvqa,
               "seed_jsonl": seed_jsonl}
    if name not in modules:
        raise KeyError(f"unknown dataset adapter {name!r}; known: {sorted(modules)}")
    stats = modules[name].last_stats
    return dict(stats) if stats.get("dataset") == name else {}
