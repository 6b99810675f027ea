"""Stratified, seeded mini subsets of the official splits."""
from __future__ import annotations

from collections import Counter

import pytest

from cater.data.schema import Sample
from cater.data.splits import stratified_subset


def pool(counts: dict[str, int]) -> list[Sample]:
    samples = []
    for qtype, n in counts.items():
        for i in range(n):
            samples.append(Sample(id=f"{qtype}-{i:03d}", dataset="d", split="train", video=f"v{i}.mp4", question="q?",
                                  choices=["a", "b"], answer_idx=i % 2, question_type=qtype))
    return samples


COUNTS = {"first": 60, "count": 30, "after": 9, "direction": 1}


@pytest.mark.parametrize("n", [10, 20, 37, 50, 99])
def test_keeps_type_proportions(n):
    samples = pool(COUNTS)
    subset = stratified_subset(samples, n, seed=0)
    assert len(subset) == n
    assert len({s.id for s in subset}) == n
    got = Counter(s.question_type for s in subset)
    for qtype, count in COUNTS.items():
        assert abs(got[qtype] - n * count / len(samples)) < 1.0  # largest remainder: within one of the quota


def test_seeded_and_deterministic():
    samples = pool(COUNTS)
    a = [s.id for s in stratified_subset(samples, 30, seed=1)]
    assert a == [s.id for s in stratified_subset(samples, 30, seed=1)]
    assert a == [s.id for s in stratified_subset(list(reversed(samples)), 30, seed=1)]  # input order does not matter
    assert a != [s.id for s in stratified_subset(samples, 30, seed=2)]
    assert a == sorted(a)


def test_n_at_least_len_or_none_returns_all():
    samples = pool({"a": 3, "b": 2})
    for n in (None, 5, 50):
        assert stratified_subset(samples, n, seed=0) == samples


def test_non_positive_n_is_an_error():
    with pytest.raises(ValueError, match="must be positive"):
        stratified_subset(pool({"a": 3}), 0, seed=0)


def test_first_subset_keeps_file_order_as_the_seed_caps_do():
    from cater.data.splits import subset

    samples = pool(COUNTS)[::-1]  # file order, not id order
    first = subset(samples, 7, seed=0, mode="first")
    assert first == samples[:7]
    assert subset(samples, None, seed=0, mode="first") == samples
    assert subset(samples, 7, seed=0) == stratified_subset(samples, 7, seed=0)
    with pytest.raises(ValueError, match="subset must be stratified or first"):
        subset(samples, 7, seed=0, mode="random")
    with pytest.raises(ValueError, match="positive"):
        subset(samples, 0, seed=0, mode="first")


def test_params_accept_the_subset_modes():
    from cater.config import ConfigError
    from cater.params_schema import validate

    validate({"splits": {"subset": "first", "train_n": 5}}, "p.yaml", required=())
    with pytest.raises(ConfigError, match="splits.subset is 'head', expected one of stratified, first"):
        validate({"splits": {"subset": "head"}}, "p.yaml", required=())
