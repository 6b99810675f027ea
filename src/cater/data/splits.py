"""Official splits and optional mini subsets: stratified by question type and seeded, or the first N in file
order (the seed repository's `--max_train/--max_val/--max_test`)."""
from __future__ import annotations

import random
from collections import defaultdict

from cater.data.schema import Sample


def stratified_subset(samples: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """`n` samples with question types in the same proportions as `samples` (largest remainder)."""
    if n is None or n >= len(samples):
        return list(samples)
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    by_type: dict[str, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.id):
        by_type[sample.question_type].append(sample)
    quotas = {t: n * len(group) / len(samples) for t, group in by_type.items()}
    counts = {t: int(q) for t, q in quotas.items()}
    for t in sorted(quotas, key=lambda t: (counts[t] - quotas[t], t))[: n - sum(counts.values())]:
        counts[t] += 1
    rng = random.Random(seed)
    chosen = []
    for t in sorted(by_type):
        chosen.extend(rng.sample(by_type[t], counts[t]))
    return sorted(chosen, key=lambda s: s.id)


def first_subset(samples: list[Sample], n: int | None) -> list[Sample]:
    """The first `n` samples in their file order (data/samples.jsonl follows the official files)."""
    if n is not None and n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    return list(samples if n is None else samples[:n])


def subset(samples: list[Sample], n: int | None, seed: int, mode: str = "stratified") -> list[Sample]:
    if mode == "first":
        return first_subset(samples, n)
    if mode != "stratified":
        raise ValueError(f"splits.subset must be stratified or first, got {mode!r}")
    return stratified_subset(samples, n, seed)
