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


def test_val_from_train_holds_out_whole_videos_seeded():
    from cater.data.splits import hold_out_videos

    train = [Sample(id=f"v{v}-q{q}", dataset="d", split="train", video=f"v{v}.mp4", question="q?", choices=["a", "b"],
                    answer_idx=q % 2, question_type="t") for v in range(20) for q in range(3)]
    kept, val = hold_out_videos(train, 0.25, seed=0)
    assert len({s.video_id for s in val}) == 5 and len(kept) + len(val) == len(train)
    assert not {s.video_id for s in val} & {s.video_id for s in kept}  # no video on both sides
    assert hold_out_videos(train, 0.25, seed=0) == (kept, val) and hold_out_videos(train, 0.25, seed=1)[1] != val
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match="val_from_train"):
            hold_out_videos(train, bad, seed=0)


def test_the_splits_stage_holds_out_val_from_train_and_refuses_a_second_val(tmp_path, monkeypatch):
    import json

    from cater.data.schema import read_samples, write_samples
    from cater.stages import splits as stage

    def sample(v, q, split):
        return Sample(id=f"{split}-v{v}-q{q}", dataset="tvqa", split=split, video=f"data/v{v}", video_id=f"v{v}",
                      question="q?", choices=["a", "b"], answer_idx=q % 2, question_type="what")

    samples = [sample(v, q, "train") for v in range(10) for q in range(2)] + [sample(v, 0, "test") for v in range(10, 14)]
    monkeypatch.chdir(tmp_path)
    write_samples(tmp_path / "data/samples.jsonl", samples)
    (tmp_path / "data/frames").mkdir(parents=True)
    (tmp_path / "data/frames/index.json").write_text(json.dumps({s.video_id: {} for s in samples}))
    params = {"splits": {"train_n": None, "val_n": None, "test_n": None, "seed": 0, "val_from_train": 0.2}}
    stage.run(params, None)
    train, val = (read_samples(tmp_path / f"data/splits/{name}.jsonl") for name in ("train", "val"))
    assert len({s.video_id for s in val}) == 2 and len(val) == 4 and len(train) == 16
    assert all(s.split == "val" for s in val) and not {s.video_id for s in val} & {s.video_id for s in train}
    assert json.loads((tmp_path / "data/splits/summary.json").read_text())["val_from_train"] == 0.2
    write_samples(tmp_path / "data/samples.jsonl", samples + [sample(99, 0, "val")])
    (tmp_path / "data/frames/index.json").write_text(json.dumps({s.video_id: {} for s in samples} | {"v99": {}}))
    with pytest.raises(ValueError, match="already has 1 val sample"):
        stage.run(params, None)
