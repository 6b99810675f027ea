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


def hold_out_videos(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): a seeded `fraction` of train's videos, with all their questions, becomes the validation split
    (no video on both sides), for releases whose labelled splits all go to train and test."""
    if not 0 < fraction < 1:
        raise ValueError(f"splits.val_from_train must be in (0, 1), got {fraction}")
    videos = sorted({s.video_id for s in train})
    random.Random(f"val_from_train:{seed}").shuffle(videos)
    held = set(videos[: max(1, round(fraction * len(videos)))])
    if len(held) == len(videos):
        raise ValueError(f"splits.val_from_train {fraction} would leave no training video (train has {len(videos)})")
    return [s for s in train if s.video_id not in held], [s for s in train if s.video_id in held]


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
